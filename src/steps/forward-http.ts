/**
 * Forwarding to the render service: one multipart/form-data POST per upload, streamed from disk
 * (fs.openAsBlob reads lazily, so no file is held in memory), the same text fields, each file
 * named `<id>.<ext>`, and a `scrubline` JSON field describing them. A 5xx or a refused connection
 * is retried a bounded number of times with backoff, always with the upload's one Idempotency-Key,
 * so the render service can make sure it starts exactly one job.
 */
import { openAsBlob } from 'node:fs';
import tls from 'node:tls';
import { Agent, fetch, FormData, type Response } from 'undici';
import { setTimeout as delay } from 'node:timers/promises';
import type { CleanFile } from '../pipeline.js';
import { ScrubError } from '../errors.js';
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

export class HttpForwarder implements Forwarder {
  constructor(
    private readonly url: URL,
    private readonly timeoutMs: number,
    /** Further attempts after a 5xx or a refused connection, all with the same Idempotency-Key. */
    private readonly retries = 2,
    private readonly backoffMs = 250,
    private readonly events: UpstreamEvents = {},
  ) {}

  /**
   * The HTTP client: undici's own fetch, FormData and Agent, which carries a private CA (Node's
   * built-in fetch has no option for one). All three from the one package: Node's fetch bundles
   * an undici of its own version, which refuses another version's Agent (Node 26 does).
   */
  private dispatcher: Agent | undefined;
  private agent(): Agent | undefined {
    const ca = this.events.ca;
    if (ca !== undefined) this.dispatcher ??= new Agent({ connect: { ca: [...tls.rootCertificates, ca] } });
    return this.dispatcher;
  }

  private async form(files: readonly CleanFile[], fields: UploadFields): Promise<FormData> {
    const form = new FormData();
    if (fields.jobId !== undefined) form.append('jobId', fields.jobId);
    form.append('retention', fields.retention);
    form.append('scrubline', forwardedManifest(files));
    for (const file of files) {
      form.append('file', await openAsBlob(file.path, { type: file.mime }), `${file.id}.${file.ext}`);
    }
    return form;
  }

  async forward(files: readonly CleanFile[], fields: UploadFields, uploadId: string): Promise<ForwardResult> {
    for (let attempt = 0; ; attempt++) {
      const last = attempt >= this.retries;
      let response: Response;
      const dispatcher = this.agent();
      try {
        response = await fetch(this.url, {
          method: 'POST',
          body: await this.form(files, fields),
          headers: { 'idempotency-key': uploadId, ...(this.events.authorization === undefined ? {} : { authorization: this.events.authorization }) },
          signal: AbortSignal.timeout(this.timeoutMs),
          redirect: 'error',
          ...(dispatcher ? { dispatcher } : {}),
        });
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
      // Drain the body so the connection can be reused; its content is the render service's business.
      await response.arrayBuffer().catch(() => undefined);
      if (response.ok) {
        this.events.onAttempt?.('ok');
        return { status: response.status, destination: 'upstream' };
      }
      if (retryable.has(response.status) && !last) {
        this.events.onAttempt?.('retried');
        await delay(this.backoffMs * 2 ** attempt);
        continue;
      }
      this.events.onAttempt?.('rejected');
      throw new ScrubError('upstream_rejected', `The render service refused the files with HTTP ${response.status}. Nothing was kept.`, {
        details: { upstreamStatus: response.status },
      });
    }
  }
}
