/**
 * Forwarding to the render service: one multipart/form-data POST per upload, streamed from disk
 * (no file is held in memory), the same text fields, each file named `<id>.<ext>`, and a
 * `scrubline` JSON field describing them. A 5xx or a refused connection is retried a bounded
 * number of times with backoff, always with the upload's one Idempotency-Key, so the render
 * service can make sure it starts exactly one job.
 *
 * The client is Node's own node:http/node:https, not undici (issue 30): undici's fetch, FormData
 * and WASM HTTP parser were ~2.8 MiB of the idle heap, and under `npm run load` the photo-phase
 * peak RSS was 155-157 MiB with node:http against 161-164 with undici (three runs each, in turns),
 * photos/s the same. The body is written by us: a few part headers around the files' bytes, with
 * its Content-Length announced, as FormData's was.
 */
import { randomBytes } from 'node:crypto';
import { open, stat } from 'node:fs/promises';
import type { ClientRequest, Agent as HttpAgent, IncomingMessage } from 'node:http';
import tls from 'node:tls';
import { setTimeout as delay } from 'node:timers/promises';
import type { CleanFile } from '../pipeline.js';
import { ScrubError } from '../errors.js';
import { http, https } from '../http/node-http.js';
import { forwardedManifest, type ForwardResult, type Forwarder, type UploadFields } from './forward.js';

/** Statuses worth another try: the service was there but could not take the job just now. */
const retryable = new Set([500, 502, 503, 504, 429]);

export interface UpstreamEvents {
  /** One per HTTP attempt: ok, retried (a 5xx or connection failure that will be retried), rejected, unreachable, timeout. */
  onAttempt?: (outcome: 'ok' | 'retried' | 'rejected' | 'unreachable' | 'timeout') => void;
  /**
   * Extra CA certificates (PEM) an https:// upstream is verified against, beside the system's.
   * Certificates are always verified; there is no switch to turn that off.
   */
  ca?: string | undefined;
  /** An Authorization header value for the render service (never logged, never in the URL). */
  authorization?: string | undefined;
}

/** node:http or node:https, and the connections it keeps. */
type Transport = { client: typeof http | typeof https; agent: HttpAgent };

/** A multipart body: our own bytes (boundaries, part headers, text fields) and files read from disk. */
type Piece = Buffer | { path: string };

/**
 * The multipart/form-data body (RFC 7578) of an upload's fields and files, and its length. Every
 * name and file name in a part header is ours (field names, `<id>.<ext>`), never the client's.
 */
async function multipartBody(files: readonly CleanFile[], fields: UploadFields, boundary: string): Promise<{ pieces: Piece[]; length: number }> {
  const pieces: Piece[] = [];
  let length = 0;
  const add = (text: string): void => {
    const bytes = Buffer.from(text, 'utf8');
    pieces.push(bytes);
    length += bytes.length;
  };
  const field = (name: string, value: string): void => add(`--${boundary}\r\nContent-Disposition: form-data; name="${name}"\r\n\r\n${value}\r\n`);
  if (fields.jobId !== undefined) field('jobId', fields.jobId);
  field('retention', fields.retention);
  field('scrubline', forwardedManifest(files));
  for (const file of files) {
    add(`--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="${file.id}.${file.ext}"\r\nContent-Type: ${file.mime}\r\n\r\n`);
    pieces.push({ path: file.path });
    length += (await stat(file.path)).size;
    add('\r\n');
  }
  add(`--${boundary}--\r\n`);
  return { pieces, length };
}

/** How much of a file is read, and written to the request, at a time. */
const sendBytes = 256 * 1024;

/**
 * One write, settled once the request has handed it on (so the buffer may be filled again), or
 * failed, or closed: a request torn down mid-body may never call a write back.
 */
function written(request: ClientRequest, chunk: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const closed = (): void => reject(new Error('the request closed before its body was sent'));
    request.once('close', closed);
    request.write(chunk, (err) => {
      request.off('close', closed);
      if (err) reject(err);
      else resolve();
    });
  });
}

/**
 * Sends the body's pieces, each file read into one buffer used again for every read, written
 * when the last write is through. A stream would allocate each chunk afresh and hold it until the
 * socket took it, long enough for V8 to move it to the old generation, where it waits for a full
 * collection: at 14 photos/s that was ~70 MB/s of garbage (issue 30).
 */
async function send(request: ClientRequest, pieces: readonly Piece[]): Promise<void> {
  const buffer = Buffer.allocUnsafe(sendBytes);
  for (const piece of pieces) {
    if (Buffer.isBuffer(piece)) {
      await written(request, piece);
      continue;
    }
    const file = await open(piece.path, 'r');
    try {
      for (;;) {
        const { bytesRead } = await file.read(buffer, 0, buffer.length, null);
        if (bytesRead === 0) break;
        await written(request, buffer.subarray(0, bytesRead));
      }
    } finally {
      await file.close();
    }
  }
  request.end();
}

export class HttpForwarder implements Forwarder {
  constructor(
    private readonly url: URL,
    private readonly timeoutMs: number,
    /** Further attempts after a 5xx or a refused connection, all with the same Idempotency-Key. */
    private readonly retries = 2,
    private readonly backoffMs = 250,
    private readonly events: UpstreamEvents = {},
  ) {}

  /** The client for the URL's scheme, and its connections kept open between uploads (over https, verified against the system's CAs and `ca`). */
  private transport: Transport | undefined;
  private connect(): Transport {
    const ca = this.events.ca;
    this.transport ??=
      this.url.protocol === 'https:'
        ? { client: https, agent: new https.Agent({ keepAlive: true, ...(ca !== undefined && { ca: [...tls.rootCertificates, ca] }) }) }
        : { client: http, agent: new http.Agent({ keepAlive: true }) };
    return this.transport;
  }

  /** One POST; its status once the render service's answer has been read to the end. */
  private async post(files: readonly CleanFile[], fields: UploadFields, uploadId: string): Promise<number> {
    const boundary = `scrubline-${randomBytes(16).toString('hex')}`;
    const { pieces, length } = await multipartBody(files, fields, boundary);
    const { client, agent } = this.connect();
    // The time limit covers the whole exchange, the answer's last byte included.
    const signal = AbortSignal.timeout(this.timeoutMs);
    return new Promise<number>((resolve, settleWithError) => {
      // Whatever broke once the time was up, the cause is the timeout (a TimeoutError).
      const reject = (err: unknown): void => settleWithError(signal.aborted ? signal.reason : err);
      const request = client.request(
        this.url,
        {
          method: 'POST',
          agent,
          signal,
          headers: {
            'content-type': `multipart/form-data; boundary=${boundary}`,
            'content-length': length,
            'idempotency-key': uploadId,
            ...(this.events.authorization === undefined ? {} : { authorization: this.events.authorization }),
          },
        },
        (response: IncomingMessage) => {
          // Read to the end so the connection can be reused; its content is the render service's business.
          response.resume();
          response.on('end', () => resolve(response.statusCode!));
          response.on('error', reject);
        },
      );
      request.on('error', reject);
      // A file that cannot be read, or a request that broke, ends the request; the first error counts.
      send(request, pieces).catch((err: unknown) => {
        request.destroy(err as Error);
        reject(err);
      });
    });
  }

  async forward(files: readonly CleanFile[], fields: UploadFields, uploadId: string): Promise<ForwardResult> {
    for (let attempt = 0; ; attempt++) {
      const last = attempt >= this.retries;
      let status: number;
      try {
        status = await this.post(files, fields, uploadId);
      } catch (err) {
        // A timeout is not retried: the service may still be working on the job.
        if (err instanceof Error && (err.name === 'TimeoutError' || err.name === 'AbortError')) {
          this.events.onAttempt?.('timeout');
          throw new ScrubError('upstream_timeout', `The render service did not answer within ${this.timeoutMs} ms. Nothing was kept; retry the upload later.`, { cause: err });
        }
        this.events.onAttempt?.(last ? 'unreachable' : 'retried');
        if (!last) {
          await delay(this.backoffMs * 2 ** attempt);
          continue;
        }
        throw new ScrubError('upstream_unreachable', 'The render service could not be reached. Nothing was kept; retry the upload later.', { cause: err });
      }
      if (status >= 200 && status < 300) {
        this.events.onAttempt?.('ok');
        return { status, destination: 'upstream' };
      }
      if (retryable.has(status) && !last) {
        this.events.onAttempt?.('retried');
        await delay(this.backoffMs * 2 ** attempt);
        continue;
      }
      this.events.onAttempt?.('rejected');
      throw new ScrubError('upstream_rejected', `The render service refused the files with HTTP ${status}. Nothing was kept.`, {
        details: { upstreamStatus: status },
      });
    }
  }
}
