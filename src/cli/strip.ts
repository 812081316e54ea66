/**
 * One `scrubline strip` job (one input file to one output file), shared by the CLI's main thread
 * (a few files) and its worker threads (worker.ts, a batch spread by pool.ts).
 */
import { copyFile, mkdir, mkdtemp, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Config } from '../config.js';
import type { Retention } from '../context.js';
import { asScrubError, ScrubError, type ErrorCode } from '../errors.js';
import { sharedDeps, type SharedDeps } from './pool.js';
import { cleanFile, publicReport, type CleanFile, type PipelineDeps } from '../pipeline.js';
import { randomId } from '../ids.js';
import { systemClock } from '../steps/tag-expiry.js';
import { ffmpegOnDemand, type Ffmpeg } from '../tools/ffmpeg.js';

export interface StripJob {
  input: string;
  /** Exact output path (-o), or a directory where `<input name>.<clean ext>` goes (--out-dir). */
  output?: string | undefined;
  outDir?: string | undefined;
  retention: Retention;
}

export type StripOutcome =
  | { ok: true; input: string; output: string; report: ReturnType<typeof publicReport> }
  | { ok: false; input: string; error: { code: ErrorCode; message: string; isRejection: boolean } };

/** The pipeline's dependencies on this thread, with ffmpeg looked up when a video first needs it. */
export type CliDeps = PipelineDeps & { ffmpeg: () => Promise<Ffmpeg> };

/** `previews`: only QA's reports show them; a stripped file on disk has no use for one. */
export function pipelineDeps(config: Config, shared: SharedDeps, previews = false): CliDeps {
  // A Buffer posted to a worker arrives as a plain Uint8Array.
  const fingerprintKey = Buffer.from(shared.fingerprintKey.buffer, shared.fingerprintKey.byteOffset, shared.fingerprintKey.byteLength);
  const ffmpeg = ffmpegOnDemand(
    config,
    (cause) =>
      new ScrubError('tool_unavailable', 'Video needs ffmpeg and ffprobe, which were not found or did not run: install ffmpeg, or set SCRUBLINE_FFMPEG_PATH and SCRUBLINE_FFPROBE_PATH. Images need neither.', { cause }),
  );
  return { ffmpeg, fingerprintKey, maxInputPixels: config.maxInputPixels, previews, clock: systemClock };
}

/** Dependencies for jobs run on this thread (a few files, inspect, fingerprint, qa). */
export async function localDeps(config: Config, previews = false): Promise<CliDeps> {
  return pipelineDeps(config, await sharedDeps(config), previews);
}

/** Runs `work` on a local file with a private work dir that is removed whatever happens. */
export async function withWorkDir<T>(
  config: Config,
  input: string,
  work: (received: { id: string; inputPath: string; inputBytes: number; workDir: string }) => Promise<T>,
): Promise<T> {
  const tmpRoot = path.join(config.dataDir, 'tmp');
  await mkdir(tmpRoot, { recursive: true, mode: 0o700 });
  const workDir = await mkdtemp(path.join(tmpRoot, 'cli-'));
  try {
    const { size } = await stat(input);
    return await work({ id: randomId(), inputPath: path.resolve(input), inputBytes: size, workDir });
  } finally {
    await rm(workDir, { recursive: true, force: true });
  }
}

/** Moves a verified file into place atomically (never a half-written output). */
async function publish(file: CleanFile, target: string): Promise<void> {
  const partial = `${target}.scrubline-partial`;
  try {
    // Same file system: a rename, no second write of the bytes.
    await rename(file.path, partial);
  } catch {
    await copyFile(file.path, partial);
  }
  await rename(partial, target);
}

export async function stripOne(config: Config, deps: PipelineDeps, job: StripJob): Promise<StripOutcome> {
  try {
    return await withWorkDir(config, job.input, async (received) => {
      const file = await cleanFile(received, job.retention, deps);
      const report = publicReport(file);
      const output = job.output ?? path.join(job.outDir!, `${path.parse(job.input).name}.${file.ext}`);
      await publish(file, output);
      return { ok: true as const, input: job.input, output, report };
    });
  } catch (err) {
    const error = asScrubError(err);
    return { ok: false, input: job.input, error: { code: error.code, message: error.publicMessage, isRejection: error.isRejection } };
  }
}
