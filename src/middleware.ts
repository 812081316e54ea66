/**
 * The Express middleware the render service mounts in its own app:
 *
 *   app.post('/render', scrubline({ tmpDir, fingerprintKey }), async (req, res) => {
 *     const upload = req.scrubline!;   // cleaned, verified, fingerprinted, tagged
 *     for (const file of upload.files) … // copy or move file.path now
 *     await upload.release();
 *     res.status(202).json(…);
 *   });
 *   app.use(errorHandler());
 *
 * Like helmet's factories, `scrubline(options)` validates its options when called (unknown names,
 * bad values and an unwritable tmpDir throw at start, saying how to fix them), does the work that
 * depends only on options once, and returns a named function. Rejections reach `next(err)` as a
 * ScrubError; mount `errorHandler()` or map `err.status` and `err.toJSON()` yourself.
 *
 * The contract with the route after it (README, "Middleware"): the originals and every
 * intermediate are deleted before the route runs; the cleaned files live until `release()` or
 * until the response closes, whichever comes first.
 */
import { accessSync, chmodSync, constants, mkdirSync, mkdtempSync, rmdirSync, statSync } from 'node:fs';
import { chmod, lstat, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import { defaults } from './config.js';
import type { Retention, Stripped } from './context.js';
import type { Forwarder } from './steps/forward.js';
import { asScrubError, clientClosed, ScrubError } from './errors.js';
import { randomId } from './ids.js';
import { cleanFile, type CleanFile, type PipelineDeps } from './pipeline.js';
import { emptyTempDir, receiver, removeUploadDir, type FieldRule, type ReceivedUpload } from './steps/receive.js';
import { jobExpiry, systemClock, type Clock } from './steps/tag-expiry.js';
import { ffmpegOnDemand } from './tools/ffmpeg.js';

export type { FieldRule } from './steps/receive.js';

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
  jobFinishedAt?: (jobId: string) => string | undefined | Promise<string | undefined>;
  unfinishedJobCapHours?: number;
  /** Told how long each pipeline stage took for each file (e.g. for metrics). */
  observe?: PipelineDeps['observe'];
  /**
   * Whether each cleaned image comes with its `preview`. Default true. With false, a JPEG (whose
   * proof is the verifier's walk of every scan, not a decode) has `makePreview()` instead, which
   * makes the same preview from what that walk read when called; the service calls it after its
   * answer. Other images are decoded either way, and keep theirs.
   */
  previews?: boolean;
  /**
   * Text fields the route accepts beside jobId and retention, by name, each with its limits
   * (default at most 256 characters). They reach the route in `req.body` as strings; any other
   * field is refused with a 400. The client's file name is never passed on.
   */
  fields?: Record<string, FieldRule>;
  /**
   * Mode of the cleaned files handed to the route. Default 0o600 (only this process's user). A
   * render worker running as another user of the same group needs 0o640; the upload's
   * directories then get the matching search bit (never read: nobody can list them).
   */
  fileMode?: number;
}

/** What the route handler after the middleware finds on `req.scrubline`. */
export interface ScrublineUpload {
  uploadId: string;
  jobId: string | undefined;
  retention: Retention;
  /** The cleaned files, in the order of the upload's file parts (the index errors name). */
  files: CleanFile[];
  /**
   * Deletes the cleaned files of this upload now (the originals are already gone). Idempotent;
   * it also runs by itself when the response closes. Await it before answering when nothing of
   * the upload may be on disk once the client hears back, e.g. after copying the files away.
   */
  release(): Promise<void>;
}

/**
 * `req.scrubline` on every Express Request. Declared on the global `Express.Request`, as multer
 * declares `req.file`, so that it reaches the app's own copy of Express's types however scrubline
 * was installed (a module augmentation of 'express-serve-static-core' lands on whichever copy
 * resolves from scrubline's folder, which for `npm i ../scrubline` is not the app's).
 */
declare global {
  // eslint-disable-next-line @typescript-eslint/no-namespace
  namespace Express {
    interface Request {
      /** Set by scrubline's middleware on the routes it is mounted on. */
      scrubline?: ScrublineUpload;
    }
  }
}

/** A request that went through the middleware: `req.scrubline` is set. */
export type ScrublineRequest = Request & { scrubline: ScrublineUpload };

/** The option names scrubline() knows; anything else is a mistake (`maxFileSize`) reported at start. */
const knownOptions: ReadonlySet<string> = new Set([
  'tmpDir',
  'fingerprintKey',
  'maxUploadBytes',
  'maxFiles',
  'maxInputPixels',
  'ffmpegPath',
  'ffprobePath',
  'ffmpegTimeoutMs',
  'bodyIdleTimeoutMs',
  'emptyTmpDirOnStart',
  'abandonedSweepIntervalMs',
  'clock',
  'jobFinishedAt',
  'unfinishedJobCapHours',
  'observe',
  'previews',
  'fields',
  'fileMode',
] satisfies Array<keyof ScrublineOptions>);

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

/** The search bits a directory needs so that whoever may read `fileMode` files can reach them. */
function dirModeFor(fileMode: number): number {
  return 0o700 | (fileMode & 0o040 ? 0o010 : 0) | (fileMode & 0o004 ? 0o001 : 0);
}

function checkFileMode(mode: number | undefined): number {
  if (mode === undefined) return 0o600;
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o777 || (mode & 0o600) !== 0o600 || (mode & 0o133) !== 0) {
    throw new TypeError(
      `scrubline: option fileMode must give the owner read and write and nobody execute or write, e.g. 0o600 (default) or 0o640; received 0o${Number(mode).toString(8)}`,
    );
  }
  return mode;
}

/** Creates tmpDir if missing and proves it writable now, not at the first upload. */
function checkTmpDir(tmpDir: string, mode: number): void {
  try {
    mkdirSync(tmpDir, { recursive: true, mode });
    rmdirSync(mkdtempSync(path.join(tmpDir, '.probe-')));
  } catch (err) {
    const code = (err as { code?: string }).code ?? 'error';
    throw new TypeError(`scrubline: option tmpDir "${tmpDir}" is not a directory this process can write (${code}); create it writable or choose another`, {
      cause: err,
    });
  }
}

/** An ffmpeg or ffprobe path that was given must be an executable file: a typo is found at start. */
function checkBinary(name: string, file: string | undefined): void {
  if (file === undefined) return;
  let ok = false;
  try {
    accessSync(file, constants.X_OK);
    ok = statSync(file).isFile();
  } catch {
    ok = false;
  }
  if (!ok) throw new TypeError(`scrubline: option ${name} "${file}" is not an executable file; fix the path or leave it unset to use the one on PATH`);
}

/** The same refusal, saying which file of a multi-file upload it was about. */
function aboutFile(err: ScrubError, index: number, count: number): ScrubError {
  const message = count > 1 ? `File ${index + 1} of ${count} (index ${index}): ${err.publicMessage}` : err.publicMessage;
  return new ScrubError(err.code, message, { cause: err.cause, internal: err.message, details: { ...err.details, fileIndex: index } });
}

/**
 * Deletes the originals and intermediates: what the route gets is the cleaned files alone (and
 * `staged`, the forwarder's sealed copies of them).
 */
async function keepOnlyCleaned(files: Array<{ inputPath: string; workDir: string }>, cleaned: CleanFile[], staged: string[]): Promise<void> {
  const keep = new Set([...cleaned.map((f) => f.path), ...staged]);
  await Promise.all(
    files.map(async (f) => {
      await rm(f.inputPath, { force: true });
      for (const entry of await readdir(f.workDir)) {
        const file = path.join(f.workDir, entry);
        if (!keep.has(file)) await rm(file, { recursive: true, force: true });
      }
    }),
  );
}

export function scrubline(options: ScrublineOptions): RequestHandler {
  return scrublineParts(options).middleware;
}

/**
 * What the middleware is made of, for the service's other door to the same pipeline (the
 * resumable endpoint, whose file arrives in pieces rather than in a multipart body).
 */
export interface ScrublineParts {
  middleware: RequestHandler;
  tmpDir: string;
  /** The mode of an upload's directories. */
  dirMode: number;
  /**
   * Registers an upload directory (named `uploadId` in tmpDir) as in use, so the abandoned-upload
   * sweep leaves it; the returned function ends that.
   */
  hold(uploadId: string): () => void;
  /** Steps 2–6 for every file of a received upload; the originals and intermediates are deleted after. */
  cleanUpload(upload: ReceivedUpload): Promise<CleanFile[]>;
}

/** What only the service gives the parts: not options of the public middleware. */
export interface ServiceHooks {
  /** The forwarder's work that may start before a file's verdict (Forwarder.stage). */
  stage?: Forwarder['stage'];
}

export function scrublineParts(options: ScrublineOptions, hooks: ServiceHooks = {}): ScrublineParts {
  if (options === null || typeof options !== 'object') throw new TypeError('scrubline: expected an options object, e.g. scrubline({ tmpDir, fingerprintKey })');
  const unknown = Object.keys(options).filter((name) => !knownOptions.has(name));
  if (unknown.length > 0) {
    throw new TypeError(`scrubline: unknown option${unknown.length > 1 ? 's' : ''} ${unknown.join(', ')}. Known options: ${[...knownOptions].join(', ')}`);
  }
  if (typeof options.tmpDir !== 'string' || options.tmpDir === '') {
    throw new TypeError('scrubline: option tmpDir must be a directory path for uploads in flight, e.g. "/var/lib/scrubline/tmp"');
  }
  const key = typeof options.fingerprintKey === 'string' ? Buffer.from(options.fingerprintKey, 'utf8') : options.fingerprintKey;
  if (!Buffer.isBuffer(key) || key.length < 32) {
    throw new TypeError('scrubline: option fingerprintKey must be a Buffer or string of at least 32 bytes (e.g. crypto.randomBytes(32))');
  }
  const fileMode = checkFileMode(options.fileMode);
  const dirMode = dirModeFor(fileMode);
  const receive = receiver({
    tmpDir: options.tmpDir,
    maxUploadBytes: positiveInteger('maxUploadBytes', options.maxUploadBytes, defaults.maxUploadBytes),
    maxFiles: positiveInteger('maxFiles', options.maxFiles, defaults.maxFiles),
    bodyIdleTimeoutMs: positiveInteger('bodyIdleTimeoutMs', options.bodyIdleTimeoutMs, defaults.bodyIdleTimeoutMs),
    fields: options.fields ?? {},
    dirMode,
  });
  const maxInputPixels = positiveInteger('maxInputPixels', options.maxInputPixels, defaults.maxInputPixels);
  const ffmpegTimeoutMs = positiveInteger('ffmpegTimeoutMs', options.ffmpegTimeoutMs, defaults.ffmpegTimeoutMs);
  const unfinishedJobCapHours = positiveInteger('unfinishedJobCapHours', options.unfinishedJobCapHours, defaults.unfinishedJobCapHours);
  const sweepEvery = options.abandonedSweepIntervalMs ? positiveInteger('abandonedSweepIntervalMs', options.abandonedSweepIntervalMs, 60_000) : 0;
  checkBinary('ffmpegPath', options.ffmpegPath);
  checkBinary('ffprobePath', options.ffprobePath);
  checkTmpDir(options.tmpDir, dirMode);
  if (options.emptyTmpDirOnStart) emptyTempDir(options.tmpDir);
  if (dirMode !== 0o700) chmodSync(options.tmpDir, dirMode);

  // Upload directories of requests in progress; anything else in tmpDir is abandoned.
  const live = new Set<string>();
  if (sweepEvery > 0) setInterval(() => void removeAbandoned(options.tmpDir, live, abandonedGraceMs).catch(() => undefined), sweepEvery).unref();
  const clock = options.clock ?? systemClock;
  const tools = ffmpegOnDemand(
    { ffmpegPath: options.ffmpegPath, ffprobePath: options.ffprobePath, ffmpegTimeoutMs },
    (cause) => new ScrubError('tool_unavailable', 'Video cannot be processed right now: ffmpeg is not available on this server. Images are unaffected; retry later.', { cause }),
  );

  async function cleanUpload(upload: ReceivedUpload): Promise<CleanFile[]> {
    const finishedAt = options.jobFinishedAt && upload.jobId !== undefined ? await options.jobFinishedAt(upload.jobId) : undefined;
    const expiry = options.jobFinishedAt ? jobExpiry(upload.jobId, finishedAt, unfinishedJobCapHours) : undefined;
    const stage = hooks.stage && ((file: Stripped) => hooks.stage!(file, upload.jobId));
    const deps: PipelineDeps = { ffmpeg: tools, fingerprintKey: key, maxInputPixels, clock, expiry, observe: options.observe, previews: options.previews === false ? 'later' : true, stage };
    const files: CleanFile[] = [];
    // What the forwarder stages is written into the work dirs: all of it is done before they are
    // emptied or removed, whatever happens.
    const stagedPaths = async (): Promise<string[]> => (await Promise.all(files.map((f) => f.staged?.catch(() => undefined)))).flatMap((s) => (s ? [s.path] : []));
    // One file at a time: the concurrency that matters is across requests.
    for (const [index, file] of upload.files.entries()) {
      const cleaned = await cleanFile(file, upload.retention, deps).catch(async (err: unknown) => {
        await stagedPaths();
        throw aboutFile(asScrubError(err), index, upload.files.length);
      });
      files.push(cleaned);
    }
    await keepOnlyCleaned(upload.files, files, await stagedPaths());
    if (fileMode !== 0o600) await Promise.all(files.map((f) => chmod(f.path, fileMode)));
    return files;
  }

  const hold = (uploadId: string): (() => void) => {
    live.add(uploadId);
    return () => void live.delete(uploadId);
  };

  const middleware = async function scrublineMiddleware(req: Request, res: Response, next: NextFunction): Promise<void> {
    // The upload's directory is named before a byte is received, so that a client going away at
    // any moment (even before receive has made the directory) removes whatever is in it (issue
    // 19: a close before receive returned cached a no-op and left the original behind).
    const uploadId = randomId();
    const uploadDir = path.join(options.tmpDir, uploadId);
    live.add(uploadId);
    // Each call removes afresh: something may have written into the directory since an earlier one.
    const release = (): Promise<void> => removeUploadDir(uploadDir);
    let closed = false;
    // Whatever happens, the upload's directory goes when the response is done. Nobody awaits this
    // one, so a failure must not become an unhandled rejection: the paths below remove again,
    // and the abandoned-upload sweep covers what even that misses.
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
      const receiving = performance.now();
      const upload = await receive(req, res, uploadDir);
      options.observe?.('receive', (performance.now() - receiving) / 1000);
      if (closed || res.writableEnded) return await dropClosed();
      const files = await cleanUpload(upload);
      if (closed) return await dropClosed();
      req.body = upload.fields;
      req.scrubline = { uploadId, jobId: upload.jobId, retention: upload.retention, files, release };
      next();
    } catch (err) {
      await release();
      next(closed ? clientClosed(err) : asScrubError(err));
    }
  };
  return { middleware, tmpDir: options.tmpDir, dirMode, hold, cleanUpload };
}
