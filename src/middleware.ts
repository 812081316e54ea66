/**
 * The Express middleware the render service mounts in its own app:
 *
 *   app.post('/render', scrubline({ tmpDir, fingerprintKey }), (req, res) => {
 *     for (const file of req.scrubline.files) … // cleaned, verified, fingerprinted, tagged
 *   });
 *
 * Like helmet's factories, `scrubline(options)` validates its options when called (errors say
 * how to fix them), does the work that depends only on options once, and returns a named
 * function. Rejections reach `next(err)` as a ScrubError; mount `errorHandler()` or map
 * `err.status` and `err.toJSON()` yourself.
 */
import { lstat, readdir } from 'node:fs/promises';
import path from 'node:path';
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import { defaults } from './config.js';
import type { Retention } from './context.js';
import { asScrubError, clientClosed } from './errors.js';
import { randomId } from './ids.js';
import { cleanFile, type CleanFile, type PipelineDeps } from './pipeline.js';
import { emptyTempDir, receiver, removeUploadDir } from './steps/receive.js';
import { jobExpiry, systemClock, type Clock } from './steps/tag-expiry.js';
import { loadFfmpeg, type Ffmpeg } from './tools/ffmpeg.js';

export interface ScrublineOptions {
  /** Directory for uploads in flight (created if missing). Originals never outlive their request. */
  tmpDir: string;
  /** HMAC key for fingerprints: a Buffer of 32+ bytes, or a string of 32+ characters. */
  fingerprintKey: Buffer | string;
  /** Largest accepted file in bytes. Default 2 GiB. */
  maxUploadBytes?: number;
  /** Most files in one request. Default 10. */
  maxFiles?: number;
  /** Largest accepted image, width x height. Default 268,402,689. */
  maxInputPixels?: number;
  /** ffmpeg and ffprobe: explicit paths, else PATH, else the npm-installed builds. */
  ffmpegPath?: string;
  ffprobePath?: string;
  /** Wall-clock limit for one ffmpeg/ffprobe run. Default 120,000 ms. */
  ffmpegTimeoutMs?: number;
  /** Longest the body may make no progress before the upload is dropped with a 408. Default 30,000 ms. */
  bodyIdleTimeoutMs?: number;
  /**
   * Empty `tmpDir` when the middleware is created: what a crashed process left there are
   * originals. Only where this middleware alone uses the directory. Default false.
   */
  emptyTmpDirOnStart?: boolean;
  /**
   * Every this many ms, remove upload directories in `tmpDir` that no request of this middleware
   * owns and that are older than a minute (defence in depth: nothing should ever be left). 0 =
   * off (default); only where this middleware alone uses the directory. The service turns it on.
   */
  abandonedSweepIntervalMs?: number;
  /** Time source for expiry. Default: the system clock. */
  clock?: Clock;
  /**
   * The job-finished clock: when given, a file of a job that has not finished expires after
   * `unfinishedJobCapHours` (default 168) and one of a finished job 24/72 h after the finish.
   * Without it, every file expires 24/72 h after its upload.
   */
  jobFinishedAt?: (jobId: string) => string | undefined;
  unfinishedJobCapHours?: number;
  /** Told how long each pipeline stage took for each file (e.g. for metrics). */
  observe?: PipelineDeps['observe'];
}

/** What the route handler after the middleware finds on `req.scrubline`. */
export interface ScrublineUpload {
  uploadId: string;
  jobId: string | undefined;
  retention: Retention;
  files: CleanFile[];
  /**
   * Deletes the originals and the cleaned files of this upload now. Idempotent; it also runs by
   * itself when the response closes, but awaiting it before answering guarantees nothing of the
   * upload is still on disk when the caller hears back.
   */
  release(): Promise<void>;
}

declare module 'express-serve-static-core' {
  interface Request {
    scrubline?: ScrublineUpload;
  }
}

/** How old an upload directory no request owns must be before the abandoned sweep removes it. */
const abandonedGraceMs = 60_000;

/** Removes entries of `dir` that are not live and were last changed more than `graceMs` ago. */
export async function removeAbandoned(dir: string, live: ReadonlySet<string>, graceMs: number): Promise<number> {
  let removed = 0;
  for (const entry of await readdir(dir).catch(() => [] as string[])) {
    if (live.has(entry)) continue;
    const info = await lstat(path.join(dir, entry)).catch(() => undefined);
    if (!info || Date.now() - info.mtimeMs < graceMs) continue;
    await removeUploadDir(path.join(dir, entry));
    removed++;
  }
  return removed;
}

function positiveInteger(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new TypeError(`scrubline: option ${name} must be a positive whole number, received ${String(value)}`);
  }
  return value;
}

export function scrubline(options: ScrublineOptions): RequestHandler {
  if (options === null || typeof options !== 'object') throw new TypeError('scrubline: expected an options object, e.g. scrubline({ tmpDir, fingerprintKey })');
  if (typeof options.tmpDir !== 'string' || options.tmpDir === '') {
    throw new TypeError('scrubline: option tmpDir must be a directory path for uploads in flight, e.g. "/var/lib/scrubline/tmp"');
  }
  const key = typeof options.fingerprintKey === 'string' ? Buffer.from(options.fingerprintKey, 'utf8') : options.fingerprintKey;
  if (!Buffer.isBuffer(key) || key.length < 32) {
    throw new TypeError('scrubline: option fingerprintKey must be a Buffer or string of at least 32 bytes (e.g. crypto.randomBytes(32))');
  }
  const limits = {
    tmpDir: options.tmpDir,
    maxUploadBytes: positiveInteger('maxUploadBytes', options.maxUploadBytes, defaults.maxUploadBytes),
    maxFiles: positiveInteger('maxFiles', options.maxFiles, defaults.maxFiles),
    bodyIdleTimeoutMs: positiveInteger('bodyIdleTimeoutMs', options.bodyIdleTimeoutMs, defaults.bodyIdleTimeoutMs),
  };
  const maxInputPixels = positiveInteger('maxInputPixels', options.maxInputPixels, defaults.maxInputPixels);
  const ffmpegTimeoutMs = positiveInteger('ffmpegTimeoutMs', options.ffmpegTimeoutMs, defaults.ffmpegTimeoutMs);
  const receive = receiver(limits);
  if (options.emptyTmpDirOnStart) emptyTempDir(options.tmpDir);
  // Upload directories of requests in progress; anything else in tmpDir is abandoned.
  const live = new Set<string>();
  if (options.abandonedSweepIntervalMs) {
    const every = positiveInteger('abandonedSweepIntervalMs', options.abandonedSweepIntervalMs, 60_000);
    setInterval(() => void removeAbandoned(options.tmpDir, live, abandonedGraceMs).catch(() => undefined), every).unref();
  }
  const clock = options.clock ?? systemClock;
  const unfinishedJobCapHours = positiveInteger('unfinishedJobCapHours', options.unfinishedJobCapHours, defaults.unfinishedJobCapHours);
  // ffmpeg's version is read once, on first use; a failure is retried on the next request.
  let ffmpeg: Promise<Ffmpeg> | undefined;
  const tools = (): Promise<Ffmpeg> => {
    ffmpeg ??= loadFfmpeg({ ffmpegPath: options.ffmpegPath, ffprobePath: options.ffprobePath, ffmpegTimeoutMs }).catch((err: unknown) => {
      ffmpeg = undefined;
      throw err;
    });
    return ffmpeg;
  };

  return async function scrublineMiddleware(req: Request, res: Response, next: NextFunction): Promise<void> {
    // The upload's directory is named before a byte is received, so that a client going away at
    // any moment (even before receive has made the directory) removes whatever is in it (issue
    // 19: a close before receive returned cached a no-op and left the original behind).
    const uploadId = randomId();
    const uploadDir = path.join(options.tmpDir, uploadId);
    live.add(uploadId);
    // Each call removes afresh: something may have written into the directory since an earlier one.
    const release = (): Promise<void> => removeUploadDir(uploadDir);
    let closed = false;
    // Whatever happens, the originals and intermediates go when the response is done. Nobody
    // awaits this one, so a failure must not become an unhandled rejection: the paths below
    // remove again, and the abandoned-upload sweep covers what even that misses.
    res.once('close', () => {
      closed = true;
      void release()
        .catch(() => undefined)
        .finally(() => live.delete(uploadId));
    });
    /** The client went away: nothing to answer; everything of the upload goes, whatever is still writing. */
    const dropClosed = async (): Promise<void> => {
      await release();
      next(clientClosed());
    };
    try {
      const upload = await receive(req, res, uploadDir);
      if (closed || res.writableEnded) return await dropClosed();
      const expiry = options.jobFinishedAt ? jobExpiry(upload.jobId, options.jobFinishedAt, unfinishedJobCapHours) : undefined;
      const deps: PipelineDeps = { ffmpeg: await tools(), fingerprintKey: key, maxInputPixels, clock, expiry, observe: options.observe };
      const files: CleanFile[] = [];
      // One file at a time: the concurrency that matters is across requests.
      for (const file of upload.files) files.push(await cleanFile(file, upload.retention, deps));
      if (closed) return await dropClosed();
      req.scrubline = { uploadId, jobId: upload.jobId, retention: upload.retention, files, release };
      next();
    } catch (err) {
      await release();
      next(closed ? clientClosed(err) : asScrubError(err));
    }
  };
}
