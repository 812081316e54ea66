/**
 * The pipeline, in order. Every upload goes through exactly these steps:
 *
 *   1. receive      steps/receive.ts      multer, streamed to a 0600 temp file, limits on
 *   2. sniff        steps/sniff.ts        the real type from the bytes, against the allowlist
 *   3. strip        steps/strip.ts        lossless rebuild (images) or remux (video)
 *   4. verify       steps/verify.ts       independent proof of clean, or fail closed (422)
 *   5. fingerprint  steps/fingerprint.ts  technical properties + keyed hash
 *   6. tag expiry   steps/tag-expiry.ts   retention and expiresAt
 *   7. forward      steps/forward.ts      render service, or the embedded local sink
 *
 * Steps 2–6 run per file in `cleanFile` below; receive wraps them (middleware.ts) and forward
 * follows them (http/app.ts). No step does face detection, saliency crops or perceptual hashing.
 */
import { giveBack } from './buffers.js';
import { rm } from 'node:fs/promises';
import type { Received, Removed, Retention, Sniffed, Stripped } from './context.js';
import { ScrubError } from './errors.js';
import type { StagedObject } from './steps/forward.js';
import type { MediaKind } from './media.js';
import type { Fingerprint } from './steps/fingerprint.js';
import { fingerprint } from './steps/fingerprint.js';
import { hmacFile, startHashThread } from './hash-thread.js';
import { sniff } from './steps/sniff.js';
import { strip } from './steps/strip.js';
import { tagExpiry, type Clock, type Expiry } from './steps/tag-expiry.js';
import { readInputEarly, scanWalkReason, verify } from './steps/verify.js';
import type { Ffmpeg } from './tools/ffmpeg.js';

export interface PipelineDeps {
  /** The tools, or how to load them: called for video only, so images never need ffmpeg. */
  ffmpeg: Ffmpeg | (() => Promise<Ffmpeg>);
  fingerprintKey: Buffer;
  maxInputPixels: number;
  /**
   * A cleaned image's preview (thumbnails, QA reports): made before the answer (true, the
   * default), not at all (false), or, where it needs no decode of its own (a JPEG, from what the
   * walk of its scans read), left to make on request ('later', CleanFile.makePreview).
   */
  previews?: boolean | 'later' | undefined;
  clock: Clock;
  /** When a file must be gone; default: upload time + retention. The service passes the job clock. */
  expiry?: Expiry | undefined;
  /** Told how long each stage took (metrics); receive is timed by the middleware, per request. */
  observe?: ((stage: TimedStage, seconds: number) => void) | undefined;
  /** The forwarder's work that may start before the verdict (`Forwarder.stage`), per stripped file. */
  stage?: ((file: Stripped) => Promise<StagedObject> | undefined) | undefined;
}

/** The stages timed for the metrics, in order (forward is timed by the route, per upload). */
export type TimedStage = 'receive' | 'sniff' | 'strip' | 'verify' | 'fingerprint';

/** Deps whose tools are already loaded (the CLI's, QA's): usable by the video steps directly. */
export type LoadedPipelineDeps = PipelineDeps & { ffmpeg: Ffmpeg };

/** A cleaned, verified file, as the route handler after the middleware sees it. */
export interface CleanFile {
  id: string;
  mime: string;
  /** Extension for the cleaned file's name (from the sniffed type). */
  ext: string;
  /** The sniffed type, for what comes after the pipeline (forwarding, thumbnails). */
  kind: MediaKind;
  bytes: number;
  /** Path of the cleaned file; removed when the response ends (move or copy it before then). */
  path: string;
  removed: Removed;
  fingerprint: Fingerprint;
  retention: Retention;
  expiresAt: string;
  /**
   * A <= 320 px JPEG of a cleaned image, made by the verifier's decode of its pixels, or for a
   * JPEG from the picture at 1/8 scale its walk read (no metadata, sRGB); undefined for video (its
   * preview is a frame, made later), for HEIC, and with previews 'later'.
   */
  preview?: Buffer | undefined;
  /** With previews 'later': makes a JPEG's preview, as `preview` would have been, on request. */
  makePreview?: (() => Promise<Buffer>) | undefined;
  /** What the forwarder staged of the file beside its verification, for it alone to use. */
  staged?: Promise<StagedObject> | undefined;
}

/** The tools a sniffed file's steps need: ffmpeg, loaded (or its absence reported) for video only. */
export async function toolsFor(sniffed: Sniffed, deps: Pick<PipelineDeps, 'ffmpeg'>): Promise<Ffmpeg | undefined> {
  if (sniffed.kind.family !== 'video') return undefined;
  return typeof deps.ffmpeg === 'function' ? deps.ffmpeg() : deps.ffmpeg;
}

/** Steps 2–6 for one received file. Throws a ScrubError for anything that is not clean. */
export async function cleanFile(received: Received, retention: Retention, deps: PipelineDeps): Promise<CleanFile> {
  const timed = async <T>(stage: Exclude<TimedStage, 'receive'>, work: () => Promise<T>): Promise<T> => {
    const started = performance.now();
    try {
      return await work();
    } finally {
      deps.observe?.(stage, (performance.now() - started) / 1000);
    }
  };
  const sniffed = await timed('sniff', () => sniff(received));
  const stepDeps = { ...deps, ffmpeg: await toolsFor(sniffed, deps) };
  // A JPEG's scans are copied as they are, unwalked: the verifier walks every one. Only if its walk
  // finds data past a scan's last MCU, or a scan that does not decode, and nothing else wrong, is
  // the file stripped again with every scan walked (strip-jpeg.ts scanParts), which cuts the one
  // and refuses the other as corrupt (415); the first try's output goes first.
  const jpegScans = sniffed.kind.family === 'image' && sniffed.kind.format === 'jpeg' ? 'copy' : undefined;
  // For video, the verifier reads the original and starts its ffprobe of the output while the
  // stripper remuxes; a failed strip stops that and waits for it to end, so nothing still reads
  // the work dir once it is removed. The strip is called first, so its remux is the first process
  // spawned (a spawn holds this thread for a few ms or more).
  const stripping = timed('strip', () => strip(sniffed, { ...stepDeps, jpegScans }));
  const early = readInputEarly(sniffed, stepDeps);
  if (sniffed.kind.family === 'video') startHashThread();
  const stripped = await stripping.catch(async (err: unknown) => {
    await early?.abandon();
    throw err;
  });
  // A video's keyed hash reads the cleaned file on its own thread while verify scans it and waits
  // on ffprobe; it is only used once verify has passed, and is settled before a failure propagates
  // (no read of a removed file). An image's is made by verify, while it waits for its structure
  // check (VerifyDeps.hashKey).
  const contentHmac = stripped.kind.family === 'video' ? hmacFile(stripped.cleanPath, deps.fingerprintKey) : undefined;
  contentHmac?.catch(() => undefined); // awaited by fingerprint; marked handled in case it fails first
  const proven = async (file: Stripped) => {
    // The forwarder's sealed copy is written into the work dir beside verify, and used only after
    // the verdict (Forwarder.stage). A failure waits for it and removes it, so nothing writes
    // there once the work dir goes, and a second try stages its own.
    const staged = deps.stage?.(file);
    staged?.catch(() => undefined); // awaited by the forwarder; marked handled in case it is never
    try {
      const verified = await timed('verify', () => verify(file, { ...stepDeps, hashKey: deps.fingerprintKey }, early)).catch(async (err: unknown) => {
        await Promise.allSettled([contentHmac, early?.abandon()]);
        throw err;
      });
      const fingerprinted = await timed('fingerprint', () => fingerprint(verified, deps.fingerprintKey, contentHmac));
      return { verified, fingerprinted, staged };
    } catch (err) {
      const written = await staged?.catch(() => undefined);
      if (written) await rm(written.path, { force: true });
      throw err;
    }
  };
  const { verified, fingerprinted, staged } = await proven(stripped).catch(async (err: unknown) => {
    if (jpegScans === undefined || !(err instanceof ScrubError) || err.reason !== scanWalkReason) throw err;
    await rm(stripped.cleanPath, { force: true });
    return proven(await timed('strip', () => strip(sniffed, { ...stepDeps, jpegScans: 'all' })));
  });
  // Every reader of the cleaned image's bytes is done: its buffer serves the next upload (verify
  // handed the original's back before reading the output).
  giveBack(verified.facts.bytes);
  const tagged = tagExpiry(fingerprinted, retention, deps.clock, deps.expiry);
  return {
    id: tagged.id,
    mime: tagged.kind.mime,
    ext: tagged.kind.ext,
    kind: tagged.kind,
    bytes: tagged.cleanBytes,
    path: tagged.cleanPath,
    removed: tagged.removed,
    fingerprint: tagged.fingerprint,
    retention: tagged.retention,
    expiresAt: tagged.expiresAt,
    preview: verified.facts.preview,
    makePreview: verified.facts.makePreview,
    staged,
  };
}

/** The per-file report callers see: categories and counts, never a value or a file name. */
export function publicReport(file: CleanFile): Omit<CleanFile, 'path' | 'ext' | 'kind' | 'preview' | 'makePreview' | 'staged'> {
  return {
    id: file.id,
    mime: file.mime,
    bytes: file.bytes,
    removed: file.removed,
    fingerprint: file.fingerprint,
    retention: file.retention,
    expiresAt: file.expiresAt,
  };
}
