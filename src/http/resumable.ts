/**
 * /v1/resumable: the tus 1.0 endpoint (creation, resume by Upload-Offset, termination,
 * expiration) on @tus/server, for large videos from phones on bad links (issue 29). The file
 * arrives in pieces, each sealed into the store as it comes (storage/partials.ts); when its last
 * byte arrives, the finishing request assembles it in the temp dir and runs the same pipeline as
 * POST /v1/uploads, and answers with the same JSON or the same error. The pieces go whatever
 * the verdict.
 *
 * Upload-Metadata may carry `jobId` and `retention`, checked as the multipart fields are. Any
 * other key (tus clients send `filename` and `filetype`) is read by nobody, never stored, logged
 * or echoed.
 */
import { mkdir } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import path from 'node:path';
import { finished } from 'node:stream';
import type { Server as TusServer } from '@tus/server';
import type { Upload } from '@tus/utils';
import type { Request as ExpressRequest, RequestHandler } from 'express';
import type { Logger } from 'pino';
import type { Retention } from '../context.js';
import { asScrubError, retryableCodes, ScrubError, type ErrorCode } from '../errors.js';
import { collectAll } from '../gc.js';
import { isJobId, jobIdRule, randomId } from '../ids.js';
import type { ScrublineParts, ScrublineUpload } from '../middleware.js';
import { removeUploadDir } from '../steps/receive.js';
import type { Ledger } from '../storage/ledger.js';
import type { PartialFields, PartialStore } from '../storage/partials.js';
import { logOutcome, retryAfterSeconds } from './errors.js';
import type { Metrics } from './metrics.js';
import { tempBytesFor, type TempSpace } from './temp-space.js';

export const resumablePath = '/v1/resumable';

export interface ResumableDeps {
  parts: ScrublineParts;
  partials: PartialStore;
  ledger: Ledger;
  tempSpace: TempSpace;
  metrics: Metrics;
  maxUploadBytes: number;
  maxOpen: number;
  maxBytes: number;
  /** Longest a PATCH body may make no progress before its connection is closed (what came is kept). */
  bodyIdleTimeoutMs: number;
  /** Forward, record and answer, as POST /v1/uploads does after the middleware. */
  deliver(upload: ScrublineUpload, log: Logger): Promise<{ body: unknown; after: () => void }>;
  now(): Date;
}

/** A tus library error ({status_code, body}) as one of ours: the same JSON every route answers. */
const tusCodes: Record<number, [ErrorCode, string]> = {
  400: ['bad_request', 'The tus request is malformed'],
  403: ['bad_request', 'The tus request lacks a required header (Upload-Offset, or Content-Type: application/offset+octet-stream)'],
  404: ['not_found', 'No such resumable upload: it finished, was terminated, or never existed. Start a new one with POST /v1/resumable'],
  409: ['offset_mismatch', 'Upload-Offset is not where the upload stands. Ask with HEAD and resume from the offset it gives'],
  410: ['gone', 'The resumable upload expired and its pieces were removed. Start a new one with POST /v1/resumable'],
  412: ['bad_request', 'Send Tus-Resumable: 1.0.0'],
  413: ['too_large', 'The upload is larger than the configured limit'],
  501: ['bad_request', 'That tus extension is not supported here (creation-defer-length and concatenation are not)'],
};

/** Thrown inside tus hooks: tus answers with this status and body. */
interface TusAnswer {
  status_code: number;
  body: string;
}

const asTusAnswer = (error: ScrubError): TusAnswer => ({ status_code: error.status, body: JSON.stringify(error.toJSON()) });

function fromTus(err: Error | TusAnswer): ScrubError {
  if (!('status_code' in err)) return asScrubError(err);
  const known = tusCodes[err.status_code];
  if (known === undefined) return new ScrubError('internal', 'Internal error in the resumable upload. Retry; if it persists, report the request id.', { internal: `tus ${err.status_code}` });
  return new ScrubError(known[0], `${known[1]}.`, { internal: `tus ${err.status_code}` });
}

/** jobId and retention from tus metadata, checked as the multipart fields are. */
function readFields(metadata: Record<string, string | null> | undefined): PartialFields {
  const jobId = metadata?.jobId ?? undefined;
  const retention = metadata?.retention ?? 'standard';
  if (jobId !== undefined && !isJobId(jobId)) throw new ScrubError('bad_request', `Upload-Metadata jobId: ${jobIdRule}`);
  if (retention !== 'standard' && retention !== 'extended') throw new ScrubError('bad_request', 'Upload-Metadata retention must be "standard" (24 h) or "extended" (72 h).');
  return { jobId, retention: retention as Retention };
}

/**
 * Closes a PATCH whose body stalls, as receive does for multipart bodies: the bytes that came are
 * kept (the store seals them when the body ends), and the concurrency slot is freed.
 */
function watchIdle(req: IncomingMessage, idleMs: number): () => void {
  let last = req.socket.bytesRead;
  let progress = performance.now();
  const timer = setInterval(() => {
    if (req.socket.bytesRead !== last) {
      last = req.socket.bytesRead;
      progress = performance.now();
    } else if (performance.now() - progress >= idleMs) {
      clearInterval(timer);
      req.socket.destroy();
    }
  }, Math.min(1000, Math.max(25, idleMs / 4)));
  timer.unref();
  return () => clearInterval(timer);
}

/**
 * The request body as the web stream tus reads. `Readable.toWeb` copies every chunk, to free it
 * from Buffer's shared pool; a request's chunks are the HTTP parser's own copies, in no pool
 * (checked on Node 22 and 26), and are passed on as they are. The copy was about a quarter of the
 * buffer memory a PATCH allocated: 2.0 bytes per byte received without it, 2.7 with (issue 30).
 * A connection that drops errors the stream with an AbortError, as `toWeb` does: tus keeps what
 * came.
 */
function bodyOf(req: IncomingMessage): ReadableStream<Uint8Array> {
  return new ReadableStream<Uint8Array>(
    {
      start(controller) {
        req.on('data', (chunk: Buffer) => {
          controller.enqueue(chunk);
          if ((controller.desiredSize ?? 0) <= 0) req.pause();
        });
        finished(req, (err) => {
          if (err === undefined || err === null) controller.close();
          else controller.error((err as NodeJS.ErrnoException).code === 'ERR_STREAM_PREMATURE_CLOSE' ? new DOMException('The request body ended early', 'AbortError') : err);
        });
      },
      pull() {
        req.resume();
      },
      cancel(reason) {
        req.destroy(reason instanceof Error ? reason : undefined);
      },
    },
    new ByteLengthQueuingStrategy({ highWaterMark: req.readableHighWaterMark }),
  );
}

export function resumableHandler(deps: ResumableDeps): RequestHandler {
  /** The Express request behind each web Request handed to tus (for its logger). */
  const origin = new WeakMap<Request, ExpressRequest>();
  /** The upload a request finished, to forget once it is answered. */
  const finishedBy = new WeakMap<Request, string>();
  const logOf = (req: Request): Logger => origin.get(req)!.log;

  /** Counted and logged as the service's error handler does for every other route: faults as errors, refusals as facts. */
  const refusal = (req: Request, error: ScrubError): TusAnswer => {
    deps.metrics.rejections.inc({ reason: error.code });
    logOutcome(logOf(req), error, { failed: 'resumable upload failed', refused: 'resumable upload refused' });
    return asTusAnswer(error);
  };

  async function onUploadCreate(req: Request, upload: Upload): Promise<{ metadata: Record<string, string> }> {
    try {
      const fields = readFields(upload.metadata);
      if (upload.size === 0) throw new ScrubError('no_file', 'The upload is empty (Upload-Length: 0). Send the file itself.');
      const size = upload.size ?? 0;
      const totals = await deps.ledger.partialTotals(deps.now().toISOString());
      if (totals.open >= deps.maxOpen || totals.bytes + size > deps.maxBytes) {
        throw new ScrubError('overloaded', `scrubline holds as many resumable uploads as it takes (${deps.maxOpen} at once, ${deps.maxBytes} bytes in all). Retry after ${retryAfterSeconds} seconds.`);
      }
      // The finish will need the room: refuse now, not after the client sent it all.
      const release = await deps.tempSpace.reserve(tempBytesFor(size));
      release();
      deps.partials.creating.set(upload.id, fields);
      // Nothing the client sent is kept beyond the checked fields.
      return { metadata: {} };
    } catch (err) {
      throw refusal(req, asScrubError(err));
    }
  }

  /**
   * The last byte is in: assemble, remove the pieces, then the pipeline, as POST /v1/uploads. The
   * answer is the same JSON, or the same error (returned, not thrown, so it keeps its JSON type).
   */
  async function onUploadFinish(req: Request, upload: Upload): Promise<{ status_code: number; body: string; headers: Record<string, string> }> {
    deps.partials.finishing.set(upload.id, upload.size ?? 0);
    finishedBy.set(req, upload.id);
    const uploadId = randomId();
    const uploadDir = path.join(deps.parts.tmpDir, uploadId);
    const unhold = deps.parts.hold(uploadId);
    let release: (() => void) | undefined;
    const log = logOf(req);
    // The last byte is in: what the upload's PATCHes left (their piece buffers, request chunks) is
    // dead, and old, so it would wait for a full collection. One now (gc.ts: tens of ms, against
    // seconds of assembly, remux and proof) frees it before they add their own: `npm run load`'s
    // resumable phase after its photos peaked at 143-149 MiB against 149-155 (issue 30).
    collectAll();
    try {
      const partial = await deps.partials.live(upload.id).catch((err: Error | TusAnswer) => Promise.reject(fromTus(err)));
      try {
        release = await deps.tempSpace.reserve(tempBytesFor(partial.size));
        await mkdir(uploadDir, { recursive: true, mode: deps.parts.dirMode });
        const base = randomId();
        const inputPath = path.join(uploadDir, `${base}.original`);
        await deps.partials.assemble(partial, inputPath).catch((err: unknown) => {
          throw err instanceof ScrubError ? err : new ScrubError('internal', 'The stored pieces of this upload could not be read back. Nothing was kept; send the file again.', { cause: err });
        });
        const workDir = path.join(uploadDir, base);
        await mkdir(workDir, { mode: deps.parts.dirMode });
        const files = [{ id: randomId(), inputPath, inputBytes: partial.size, workDir }];
        // The original leaves the store before the verdict: it is in the temp dir alone from here.
        await deps.partials.remove(partial.id);
        const cleaned = await deps.parts.cleanUpload({ files, jobId: partial.jobId, retention: partial.retention, fields: {} });
        const { body, after } = await deps.deliver({ uploadId, jobId: partial.jobId, retention: partial.retention, files: cleaned, release: () => removeUploadDir(uploadDir) }, log);
        after();
        return { status_code: 201, body: JSON.stringify(body), headers: { 'Content-Type': 'application/json; charset=utf-8' } };
      } finally {
        // Whatever the outcome, the pieces go (a no-op once removed above).
        await deps.partials.remove(partial.id).catch(() => undefined);
      }
    } catch (err) {
      const error = asScrubError(err);
      deps.metrics.uploads.inc({ outcome: error.isRejection ? 'rejected' : 'failed', family: 'unknown' });
      const answer = refusal(req, error);
      const headers: Record<string, string> = { 'Content-Type': 'application/json; charset=utf-8' };
      if (retryableCodes.has(error.code)) headers['Retry-After'] = String(retryAfterSeconds);
      return { status_code: answer.status_code, body: answer.body, headers };
    } finally {
      release?.();
      await removeUploadDir(uploadDir);
      unhold();
    }
  }

  const options: ConstructorParameters<typeof TusServer>[0] = {
    path: resumablePath,
    datastore: deps.partials,
    // Ids are ours: 96 random bits, as every other id.
    namingFunction: () => randomId(),
    // Relative: a Host header never decides where the client sends its bytes.
    relativeLocation: true,
    maxSize: deps.maxUploadBytes,
    onUploadCreate,
    onUploadFinish,
    // The library's own refusals (404, 409, 410, 413, …) in the JSON every route answers.
    // A hook's own refusal is already ours (JSON): passed on as it is.
    onResponseError: (req, err) => ('status_code' in err && err.body.startsWith('{') ? err : refusal(req, fromTus(err))),
  };

  // Loaded with the first resumable request: @tus/server imports node:http as an ES module, which
  // loads Node's bundled undici (see node-http.ts), and a service that takes only multipart
  // uploads has no use for either.
  let tus: Promise<TusServer> | undefined;
  function tusServer(): Promise<TusServer> {
    if (!tus) {
      tus = import('@tus/server').then(({ Server }) => new Server(options));
      // A failed load is tried again by the next request.
      tus.catch(() => (tus = undefined));
    }
    return tus;
  }

  return async function resumable(req, res, next) {
    const stopWatch = req.method === 'PATCH' || req.method === 'POST' ? watchIdle(req, deps.bodyIdleTimeoutMs) : () => undefined;
    try {
      const url = new URL(req.originalUrl, 'http://scrubline.invalid');
      const hasBody = req.method === 'PATCH' || req.method === 'POST';
      const web = new Request(url, {
        method: req.method,
        headers: Object.entries(req.headers).flatMap(([name, value]) => (value === undefined ? [] : (Array.isArray(value) ? value : [value]).map((v): [string, string] => [name, v]))),
        body: hasBody ? bodyOf(req) : undefined,
        duplex: 'half',
      } as RequestInit & { duplex: 'half' });
      origin.set(web, req);
      try {
        await send(await (await tusServer()).handleWeb(web), res);
      } finally {
        const finished = finishedBy.get(web);
        if (finished !== undefined) deps.partials.finishing.delete(finished);
      }
    } catch (err) {
      next(err);
    } finally {
      stopWatch();
    }
  };
}

/**
 * Writes a web Response to Node's response. An error in our JSON gets its type (tus answers its
 * bodies as text) and, for a code the client should retry, Retry-After.
 */
async function send(answer: Response, res: ServerResponse): Promise<void> {
  if (res.headersSent || res.destroyed) return;
  const body = Buffer.from(await answer.arrayBuffer());
  res.statusCode = answer.status;
  answer.headers.forEach((value, name) => res.setHeader(name, value));
  if (answer.status >= 400 && body[0] === 0x7b) {
    const code = (JSON.parse(body.toString('utf8')) as { error?: { code?: ErrorCode } }).error?.code;
    if (code !== undefined) res.setHeader('Content-Type', 'application/json; charset=utf-8');
    if (code !== undefined && retryableCodes.has(code)) res.setHeader('Retry-After', String(retryAfterSeconds));
  }
  res.end(body);
}
