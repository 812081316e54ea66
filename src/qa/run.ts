/**
 * Runs every file of a suite through scrubline, in process (the same pipeline as the service) or
 * against a running service (`--url`), as many at once as there are cores, and judges each.
 */
import { openAsBlob } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import path from 'node:path';
import { localDeps, withWorkDir } from '../cli/strip.js';
import type { Config } from '../config.js';
import { asScrubError } from '../errors.js';
import { cleanFile, type CleanFile, type LoadedPipelineDeps } from '../pipeline.js';
import type { Fingerprint } from '../steps/fingerprint.js';
import { sniff } from '../steps/sniff.js';
import { makeThumbnail } from '../http/thumbnails.js';
import { readExifValues } from '../tools/exifr.js';
import { loadFfmpeg, probe, rotationOf, type ProbeResult } from '../tools/ffmpeg.js';
import { readImageInfo } from '../tools/sharp.js';
import { judge, type Geometry, type Observed, type Verdict } from './judge.js';
import type { Suite, SuiteFile } from './suite.js';

export interface FileResult extends SuiteFile, Verdict {
  seen: Observed;
}

export type Target = { kind: 'local'; config: Config } | { kind: 'remote'; url: URL; token: string };

const mainVideo = (info: ProbeResult) => info.streams.find((s) => s.codec_type === 'video' && s.disposition?.attached_pic !== 1);

function geometryOf(fingerprint: Fingerprint): Geometry | undefined {
  if (fingerprint.family === 'image') return { width: fingerprint.width, height: fingerprint.height, orientation: fingerprint.orientation };
  const video = fingerprint.streams.find((s) => s.type === 'video');
  return video ? { width: video.width, height: video.height, rotation: video.rotation ?? 0 } : undefined;
}

/** An independent second look at a cleaned file with the tag readers (categories, never values). */
async function dirtyParts(file: CleanFile, deps: LoadedPipelineDeps): Promise<string[]> {
  if (file.kind.family === 'image') {
    const blocks = await readExifValues(await readFile(file.path));
    return Object.entries(blocks)
      .filter(([block, tags]) => !(block === 'ifd0' && Object.keys(tags).every((k) => k === 'Orientation')) && !(file.kind.format === 'tiff' && block === 'ifd0'))
      .map(([block]) => block);
  }
  const info = await probe(deps.ffmpeg, file.path, file.kind.demuxer);
  const found = new Set<string>();
  for (const key of Object.keys(info.format.tags ?? {})) if (!['major_brand', 'minor_version', 'compatible_brands', 'encoder', 'ENCODER'].includes(key)) found.add('container tags');
  for (const s of info.streams) if (s.codec_type !== 'video' && s.codec_type !== 'audio') found.add(`${s.codec_type ?? 'unknown'} stream`);
  if (info.chapters.length > 0) found.add('chapters');
  return [...found];
}

/** The original's displayed geometry, read the same way as the pipeline reads it; undefined if unreadable. */
async function before(file: string, deps: LoadedPipelineDeps): Promise<Geometry | undefined> {
  try {
    const { size } = await stat(file);
    const sniffed = await sniff({ id: 'qa', inputPath: file, inputBytes: size, workDir: path.dirname(file) });
    if (sniffed.kind.family === 'image') {
      const info = await readImageInfo(await readFile(file), deps.maxInputPixels);
      return { width: info.width, height: info.height, orientation: info.orientation };
    }
    const video = mainVideo(await probe(deps.ffmpeg, file, sniffed.kind.demuxer));
    return video ? { width: video.width, height: video.height, rotation: rotationOf(video) } : undefined;
  } catch {
    return undefined;
  }
}

async function runLocal(config: Config, deps: LoadedPipelineDeps, file: string): Promise<Observed> {
  const started = performance.now();
  const ms = (): number => Math.round(performance.now() - started);
  const geometry = await before(file, deps);
  try {
    return await withWorkDir(config, file, async (received) => {
      const clean = await cleanFile(received, 'standard', deps);
      const elapsed = ms();
      const [dirty, preview] = await Promise.all([dirtyParts(clean, deps), makeThumbnail(clean, deps.ffmpeg, deps.maxInputPixels).catch(() => undefined)]);
      return {
        outcome: 'clean',
        mime: clean.mime,
        removed: clean.removed,
        before: geometry,
        after: geometryOf(clean.fingerprint),
        fingerprint: clean.fingerprint as unknown as Record<string, unknown>,
        dirty,
        ms: elapsed,
        preview: preview ? `data:image/jpeg;base64,${preview.toString('base64')}` : undefined,
      };
    });
  } catch (err) {
    const error = asScrubError(err);
    return { outcome: error.isRejection ? 'reject' : 'error', code: error.code, message: error.publicMessage, before: geometry, ms: ms() };
  }
}

async function runRemote(url: URL, token: string, file: string): Promise<Observed> {
  const started = performance.now();
  const auth = { authorization: `Bearer ${token}` };
  const form = new FormData();
  form.append('file', await openAsBlob(file), 'upload');
  const res = await fetch(new URL('/v1/uploads', url), { method: 'POST', body: form, headers: auth });
  const body = (await res.json().catch(() => ({}))) as { files?: Array<{ id: string; mime: string; removed: Record<string, number>; fingerprint: Fingerprint }>; error?: { code: string; message: string } };
  const ms = Math.round(performance.now() - started);
  const uploaded = body.files?.[0];
  if (res.status !== 201 || !uploaded) {
    const refused = [413, 415, 422].includes(res.status);
    return { outcome: refused ? 'reject' : 'error', code: body.error?.code ?? `http_${res.status}`, message: body.error?.message, ms };
  }
  const thumb = await fetch(new URL(`/v1/files/${uploaded.id}/thumbnail`, url), { headers: auth });
  const preview = thumb.ok ? `data:image/jpeg;base64,${Buffer.from(await thumb.arrayBuffer()).toString('base64')}` : undefined;
  return {
    outcome: 'clean',
    mime: uploaded.mime,
    removed: uploaded.removed,
    after: geometryOf(uploaded.fingerprint),
    fingerprint: uploaded.fingerprint as unknown as Record<string, unknown>,
    ms,
    preview,
  };
}

export async function runSuite(suite: Suite, target: Target, onResult: (result: FileResult, done: number) => void): Promise<FileResult[]> {
  const config = target.kind === 'local' ? target.config : undefined;
  // QA probes and thumbnails what it runs, images as well as video: ffmpeg is needed up front,
  // and its absence stops the run with loadFfmpeg's own message (what to install or set).
  const deps: LoadedPipelineDeps | undefined = config && { ...(await localDeps(config, true)), ffmpeg: await loadFfmpeg(config) };
  const results: FileResult[] = [];
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < suite.files.length) {
      const entry = suite.files[next++]!;
      const file = path.resolve(suite.dir, entry.file);
      const seen = target.kind === 'local' ? await runLocal(target.config, deps!, file) : await runRemote(target.url, target.token, file);
      const result = { ...entry, seen, ...judge(entry.expect, seen) };
      results.push(result);
      onResult(result, results.length);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, availableParallelism()) }, worker));
  // The report lists files in suite order, whatever order they finished in.
  const order = new Map(suite.files.map((f, i) => [f.file, i]));
  return results.sort((a, b) => order.get(a.file)! - order.get(b.file)!);
}
