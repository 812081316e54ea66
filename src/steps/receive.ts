/**
 * Step 1, receive: multipart uploads streamed to disk by multer, never buffered in memory.
 * Each upload gets its own temp directory; every file is created 0600 under a random name (the
 * client's file name never decides a path, a type or a log line: THREATS 11). multer removes
 * what it stored when a request fails; the caller removes the directory when the request ends.
 */
import { createWriteStream, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Request, Response } from 'express';
import multer from 'multer';
import type { Received, Retention } from '../context.js';
import { ScrubError, clientClosed } from '../errors.js';
import { isJobId, jobIdRule, randomId } from '../ids.js';

export interface ReceiveOptions {
  tmpDir: string;
  maxUploadBytes: number;
  maxFiles: number;
  /** Longest the body may make no progress before the upload is dropped with a 408. */
  bodyIdleTimeoutMs: number;
  /** Text fields accepted beside jobId and retention (the route's own, e.g. a render preset). */
  fields: Record<string, FieldRule>;
  /** Mode of the upload's directories (0700 unless cleaned files are shared with a group). */
  dirMode: number;
}

/** Limits of one extra text field. */
export interface FieldRule {
  /** Longest value in characters. Default 256, at most 65,536. */
  maxLength?: number;
  /** A pattern the whole value must match, e.g. /^(720p|1080p|4k)$/. */
  pattern?: RegExp;
  /** Refuse an upload without it. Default false. */
  required?: boolean;
}

export interface ReceivedUpload {
  files: Received[];
  jobId: string | undefined;
  retention: Retention;
  /** Every text field the upload sent (jobId and retention included), each checked: plain strings. */
  fields: Record<string, string>;
}

/** Field names the route may add: short, plain, and not one of scrubline's own. */
const fieldNamePattern = /^[A-Za-z][A-Za-z0-9_.-]{0,31}$/;
const ownFields = new Set(['file', 'jobId', 'retention']);
const defaultFieldLength = 256;
const maxFieldLength = 65_536;

/** Checks the route's field rules once, when the middleware is made. */
function checkFieldRules(fields: Record<string, FieldRule>): Map<string, Required<Pick<FieldRule, 'maxLength' | 'required'>> & FieldRule> {
  if (fields === null || typeof fields !== 'object') throw new TypeError('scrubline: option fields must be an object of field name → { maxLength, pattern, required }');
  const rules = new Map<string, Required<Pick<FieldRule, 'maxLength' | 'required'>> & FieldRule>();
  for (const [name, rule] of Object.entries(fields)) {
    if (!fieldNamePattern.test(name) || ownFields.has(name)) {
      throw new TypeError(`scrubline: option fields: "${name}" is not a usable field name (1–32 letters, digits, "_", "." or "-", starting with a letter; not file, jobId or retention)`);
    }
    const maxLength = rule?.maxLength ?? defaultFieldLength;
    if (!Number.isSafeInteger(maxLength) || maxLength < 1 || maxLength > maxFieldLength) {
      throw new TypeError(`scrubline: option fields.${name}.maxLength must be a whole number from 1 to ${maxFieldLength}`);
    }
    if (rule?.pattern !== undefined && !(rule.pattern instanceof RegExp)) throw new TypeError(`scrubline: option fields.${name}.pattern must be a RegExp`);
    rules.set(name, { ...rule, maxLength, required: rule?.required === true });
  }
  return rules;
}

/**
 * Removes an upload's directory. A writer that is still finishing (multer's file stream, an
 * ffmpeg being stopped) can add an entry while it is being emptied, so rmdir may meet ENOTEMPTY:
 * Node retries that; the caller removes again once the writer is known to be done.
 */
export function removeUploadDir(dir: string): Promise<void> {
  return rm(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 20 });
}

/**
 * Empties the temp dir (creating it 0700 if missing) and says how many entries it removed: what
 * a crashed process left there are originals. Synchronous, for start-up, before any request.
 */
export function emptyTempDir(tmpDir: string): number {
  mkdirSync(tmpDir, { recursive: true, mode: 0o700 });
  const entries = readdirSync(tmpDir);
  for (const entry of entries) rmSync(path.join(tmpDir, entry), { recursive: true, force: true });
  return entries.length;
}

const uploadDirKey = Symbol('scrubline.uploadDir');
type WithUploadDir = Request & { [uploadDirKey]?: string };

/** multer storage engine: 0600 files with random names in the upload's own directory. */
const tempStorage: multer.StorageEngine = {
  _handleFile(req, file, callback) {
    const dir = (req as WithUploadDir)[uploadDirKey]!;
    const target = path.join(dir, `${randomId()}.original`);
    const out = createWriteStream(target, { flags: 'wx', mode: 0o600 });
    pipeline(file.stream, out).then(
      () => callback(null, { path: target, size: out.bytesWritten }),
      (err: unknown) => {
        rm(target, { force: true }).catch(() => undefined);
        callback(err as Error);
      },
    );
  },
  _removeFile(_req, file, callback) {
    rm(file.path, { force: true }).then(() => callback(null), callback);
  },
};

const multerMessages: Record<string, [ScrubError['code'], string]> = {
  LIMIT_FILE_SIZE: ['too_large', 'A file is larger than the configured limit of {maxUploadBytes} bytes. Send a smaller file.'],
  LIMIT_FILE_COUNT: ['too_many_files', 'Too many files in one upload (at most {maxFiles}). Split the upload.'],
  LIMIT_PART_COUNT: ['too_many_files', 'The upload has too many parts. Send at most {maxFiles} files and the text fields {fields}.'],
  LIMIT_FIELD_COUNT: ['bad_request', 'The upload has too many text fields. Only {fields} are accepted.'],
  LIMIT_FIELD_KEY: ['bad_request', 'A field name is too long. Only file, {fields} are accepted.'],
  LIMIT_FIELD_VALUE: ['bad_request', 'A text field is too long. jobId is at most 128 characters.'],
  LIMIT_UNEXPECTED_FILE: ['bad_request', 'Files must be sent in the field named "file".'],
  LIMIT_FIELD_NESTING: ['bad_request', 'Nested field names are not accepted. Use file, {fields}.'],
  LIMIT_FIELD_ARRAY_INDEX: ['bad_request', 'Array field names are not accepted. Use file, {fields}.'],
  MISSING_FIELD_NAME: ['bad_request', 'A multipart part has no field name. Name file parts "file".'],
  INVALID_FIELD_NAME: ['bad_request', 'A multipart part has an invalid field name. Use file, {fields}.'],
};

/** The text fields an upload may carry, as error messages list them. */
const fieldList = (options: Pick<ReceiveOptions, 'fields'>): string => ['jobId', 'retention', ...Object.keys(options.fields)].join(', ');

/** multer/busboy/fs errors → ScrubError. multer errors carry the client's file name: never passed on. */
export function receiveError(err: unknown, options: ReceiveOptions): ScrubError {
  if (err instanceof ScrubError) return err;
  const code = (err as { code?: string }).code;
  if (err instanceof multer.MulterError && code !== undefined && multerMessages[code]) {
    const [scrubCode, message] = multerMessages[code];
    const filled = message.replace('{maxUploadBytes}', String(options.maxUploadBytes)).replace('{maxFiles}', String(options.maxFiles)).replace('{fields}', fieldList(options));
    return new ScrubError(scrubCode, filled, { internal: `multer ${code}` });
  }
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new ScrubError('insufficient_storage', 'The server has no space left to receive the upload. Nothing was kept; retry later.', { internal: code });
  }
  const message = err instanceof Error ? err.message : '';
  if (/Request (aborted|closed)/.test(message)) {
    return clientClosed(err);
  }
  if (/Unexpected end of form|Malformed|Boundary|Unexpected end of multipart|Part terminated/i.test(message)) {
    return new ScrubError('bad_request', 'The multipart body is malformed or truncated. Send a complete multipart/form-data request.', { internal: 'busboy: malformed body' });
  }
  return new ScrubError('internal', 'Internal error while receiving the upload. Nothing was kept; retry later.', { cause: err });
}

/** Checks the text fields against scrubline's own rules and the route's. Values are never echoed. */
function readFields(
  body: Record<string, unknown>,
  rules: ReturnType<typeof checkFieldRules>,
  options: Pick<ReceiveOptions, 'fields'>,
): { jobId: string | undefined; retention: Retention; fields: Record<string, string> } {
  const fields: Record<string, string> = {};
  for (const [key, value] of Object.entries(body)) {
    if (!ownFields.has(key) && !rules.has(key)) {
      throw new ScrubError('bad_request', `Unknown text field in the upload. Only ${fieldList(options)} are accepted.`);
    }
    // A repeated field arrives as an array: one value per name.
    if (typeof value !== 'string') throw new ScrubError('bad_request', `The text field ${key} was sent more than once. Send it once.`);
    fields[key] = value;
  }
  for (const [name, rule] of rules) {
    const value = fields[name];
    if (value === undefined) {
      if (rule.required) throw new ScrubError('bad_request', `The text field ${name} is required.`);
      continue;
    }
    if (value.length > rule.maxLength) throw new ScrubError('bad_request', `The text field ${name} is longer than ${rule.maxLength} characters.`);
    if (rule.pattern && !matchesWhole(rule.pattern, value)) throw new ScrubError('bad_request', `The text field ${name} does not have an accepted value.`);
  }
  const { jobId, retention } = fields;
  if (jobId !== undefined && !isJobId(jobId)) throw new ScrubError('bad_request', jobIdRule);
  if (retention !== undefined && retention !== 'standard' && retention !== 'extended') {
    throw new ScrubError('bad_request', 'retention must be "standard" (24 h) or "extended" (72 h).');
  }
  return { jobId, retention: retention ?? 'standard', fields };
}

/**
 * The pattern matches the whole value (a route's /1080p/ must not pass "x1080py"): anchored,
 * without the flags that would make it stateful (g, y) or anchor at line breaks (m).
 */
function matchesWhole(pattern: RegExp, value: string): boolean {
  return new RegExp(`^(?:${pattern.source})$`, pattern.flags.replace(/[gym]/g, '')).test(value);
}

/** Builds the receive step once (limits depend only on options); call it per request. */
export function receiver(options: ReceiveOptions): (req: Request, res: Response, uploadDir: string) => Promise<ReceivedUpload> {
  const rules = checkFieldRules(options.fields);
  const textFields = 2 + rules.size;
  // In bytes: a character is at most 4 bytes of UTF-8.
  const longestField = Math.max(1024, ...[...rules.values()].map((r) => r.maxLength * 4));
  const upload = multer({
    storage: tempStorage,
    limits: {
      fileSize: options.maxUploadBytes,
      files: options.maxFiles,
      fields: textFields,
      parts: options.maxFiles + textFields,
      fieldNameSize: 32,
      fieldSize: longestField,
      headerPairs: 64,
      fieldNestingDepth: 0,
      fieldArrayIndexLimit: 0,
    },
  }).array('file', options.maxFiles);

  /**
   * `uploadDir` holds the originals and every intermediate file of the upload. It is the caller's
   * (it removes it whenever the request ends, however it ends); this creates it, and removes it
   * itself when receiving fails.
   */
  return async function receive(req, res, uploadDir) {
    await mkdir(uploadDir, { recursive: true, mode: options.dirMode });
    (req as WithUploadDir)[uploadDirKey] = uploadDir;
    const watch = watchBody(req, res, options.bodyIdleTimeoutMs);
    const parsed = new Promise<void>((resolve, reject) => upload(req, res, (err?: unknown) => (err ? reject(err) : resolve())));
    try {
      await Promise.race([parsed, watch.fired]);
    } catch (err) {
      await removeUploadDir(uploadDir);
      // A stalled or abandoned body is answered now, while multer may still be writing: its
      // partial file goes again once multer lets go. Not awaited, so a failure must not become an
      // unhandled rejection; the abandoned-upload sweep covers what this misses.
      if (watch.error) void parsed.catch(() => undefined).then(() => removeUploadDir(uploadDir)).catch(() => undefined);
      throw watch.error ?? receiveError(err, options);
    } finally {
      watch.stop();
    }
    const stored = (req.files as Express.Multer.File[] | undefined) ?? [];
    try {
      if (!req.is('multipart/form-data')) {
        throw new ScrubError('not_multipart', 'Send the upload as multipart/form-data with the file in a field named "file".');
      }
      if (stored.length === 0) throw new ScrubError('no_file', 'The upload has no file. Put the file in a multipart field named "file".');
      const fields = readFields((req.body ?? {}) as Record<string, unknown>, rules, options);
      const files = stored.map(
        (f): Received => ({ id: randomId(), inputPath: f.path, inputBytes: f.size, workDir: path.join(uploadDir, path.basename(f.path, '.original')) }),
      );
      await Promise.all(files.map((f) => mkdir(f.workDir, { mode: options.dirMode })));
      return { files, ...fields };
    } catch (err) {
      await removeUploadDir(uploadDir);
      throw err;
    }
  };
}

/**
 * Watches the body. When the client hangs up before it is complete, `fired` rejects with
 * client_closed. When no byte arrives for `idleMs`, it rejects with a 408, and the connection is
 * closed once that answer is out: a client that sends headers and a few bytes and then nothing
 * cannot hold a concurrency slot for the whole request time limit (THREATS 38). Progress is read from the socket's byte count, which needs no listener on the
 * request (a 'data' listener would start the stream flowing before multer reads it).
 */
function watchBody(req: Request, res: Response, idleMs: number): { fired: Promise<never>; error: ScrubError | undefined; stop(): void } {
  const socket = req.socket;
  let lastBytes = socket.bytesRead;
  let lastProgress = performance.now();
  let fail: (err: ScrubError) => void = () => undefined;
  const state = {
    fired: new Promise<never>((_resolve, reject) => (fail = reject)),
    error: undefined as ScrubError | undefined,
    stop: () => clearInterval(timer),
  };
  state.fired.catch(() => undefined); // raced by receive; only read when it fired
  // A client that hangs up mid-body ends the receive at once: multer does not always call back
  // after an abort (seen when the connection closes as its parse starts), which held the slot.
  const onClose = (): void => {
    if (req.complete || state.error) return;
    clearInterval(timer);
    state.error = clientClosed();
    fail(state.error);
  };
  if (req.destroyed) queueMicrotask(onClose);
  else req.once('close', onClose);
  const timer = setInterval(() => {
    if (socket.bytesRead !== lastBytes) {
      lastBytes = socket.bytesRead;
      lastProgress = performance.now();
      return;
    }
    if (performance.now() - lastProgress < idleMs) return;
    clearInterval(timer);
    state.error = new ScrubError(
      'request_timeout',
      `No byte of the upload arrived for ${Math.round(idleMs / 1000)} s, so it was dropped and nothing was kept. Send it again on a working connection.`,
    );
    res.setHeader('Connection', 'close');
    res.once('finish', () => socket.destroy());
    fail(state.error);
  }, Math.min(1000, Math.max(25, idleMs / 4)));
  timer.unref();
  return state;
}
