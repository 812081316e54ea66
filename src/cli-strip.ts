/**
 * One `scrubline strip` job (one input file to one output file), shared by the CLI's main thread
 * and its worker threads (cli-worker.ts), plus the worker pool that spreads a batch over cores.
 *
 * Why workers: rebuilding, the value scan and the keyed hash are JavaScript, so one Node thread
 * uses one core however many files are in flight. A batch of photos runs one worker per core.
 */
import { copyFile, mkdir, mkdtemp, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { setFlagsFromString } from 'node:v8';
import type { Config } from './config.js';
import type { Retention } from './context.js';
import { asScrubError, type ErrorCode } from './errors.js';
import { loadFingerprintKey } from './keys.js';
import { cleanFile, publicReport, type CleanFile, type PipelineDeps } from './pipeline.js';
import { randomId } from './steps/receive.js';
import { systemClock } from './steps/tag-expiry.js';
import { loadFfmpeg } from './tools/ffmpeg.js';

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

/** Initial old-generation size of each worker's heap (see stripInWorkers). */
const workerInitialOldSpaceMiB = 64;

/** Below this many files a batch runs on the main thread: starting workers costs more. */
export const minFilesForWorkers = 4;

export async function pipelineDeps(config: Config): Promise<PipelineDeps> {
  return {
    ffmpeg: await loadFfmpeg(config),
    fingerprintKey: loadFingerprintKey(config.dataDir, config.fingerprintKey),
    maxInputPixels: config.maxInputPixels,
    clock: systemClock,
  };
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

/**
 * Spreads jobs over `size` worker threads, two in flight per worker so one file's I/O overlaps
 * another's CPU work; `onOutcome` is called on the main thread as each job ends.
 */
export async function stripInWorkers(jobs: StripJob[], size: number, onOutcome: (outcome: StripOutcome) => void): Promise<void> {
  // A worker's heap stays ~10 MiB, so V8's old-generation limit sits just above it and every photo
  // or two (each promotes a little while its multi-megabyte buffers trigger scavenges) costs a
  // full mark-compact. Started at 64 MiB, the workers collect far less often: 100 photos took
  // 1.8 s instead of 2.4-2.8 s here (2 cores), sys time halved. V8 reads the flag when an isolate
  // is created, so it applies to the workers made below and not to this thread.
  setFlagsFromString(`--initial-old-space-size=${workerInitialOldSpaceMiB}`);
  // Under tsx (tests, scripts) this module is a .ts file and so is its worker.
  const entry = new URL(import.meta.url.endsWith('.ts') ? './cli-worker.ts' : './cli-worker.js', import.meta.url);
  let next = 0;
  const runWorker = (): Promise<void> =>
    new Promise((resolve, reject) => {
      const worker = new Worker(entry);
      let inFlight = 0;
      const feed = (): void => {
        if (next < jobs.length) {
          inFlight++;
          worker.postMessage(jobs[next++]);
        } else if (inFlight === 0) {
          void worker.terminate().then(() => resolve());
        }
      };
      worker.on('message', (outcome: StripOutcome) => {
        inFlight--;
        onOutcome(outcome);
        feed();
      });
      worker.once('error', reject);
      worker.once('online', () => {
        feed();
        if (inFlight > 0) feed();
      });
    });
  await Promise.all(Array.from({ length: Math.min(size, jobs.length) }, runWorker));
}
