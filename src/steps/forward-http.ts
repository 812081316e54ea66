/**
 * Forwarding to the render service: one multipart/form-data POST per upload, streamed from disk
 * (fs.openAsBlob reads lazily, so no file is held in memory), the same text fields, each file
 * named `<id>.<ext>`, and a `scrubline` JSON field describing them. One Idempotency-Key per
 * upload lets the render service recognise a retried delivery.
 */
import { openAsBlob } from 'node:fs';
import type { CleanFile } from '../pipeline.js';
import { ScrubError } from '../errors.js';
import { forwardedManifest, type ForwardResult, type Forwarder, type UploadFields } from './forward.js';

export class HttpForwarder implements Forwarder {
  constructor(
    private readonly url: URL,
    private readonly timeoutMs: number,
  ) {}

  async forward(files: readonly CleanFile[], fields: UploadFields, uploadId: string): Promise<ForwardResult> {
    const form = new FormData();
    if (fields.jobId !== undefined) form.append('jobId', fields.jobId);
    form.append('retention', fields.retention);
    form.append('scrubline', forwardedManifest(files));
    for (const file of files) {
      form.append('file', await openAsBlob(file.path, { type: file.mime }), `${file.id}.${file.ext}`);
    }
    let response: Response;
    try {
      response = await fetch(this.url, {
        method: 'POST',
        body: form,
        headers: { 'idempotency-key': uploadId },
        signal: AbortSignal.timeout(this.timeoutMs),
        redirect: 'error',
      });
    } catch (err) {
      if (err instanceof Error && (err.name === 'TimeoutError' || err.name === 'AbortError')) {
        throw new ScrubError('upstream_timeout', `The render service did not answer within ${this.timeoutMs} ms. Nothing was kept; retry the upload later.`, { cause: err });
      }
      throw new ScrubError('upstream_unreachable', 'The render service could not be reached. Nothing was kept; retry the upload later.', { cause: err });
    }
    // Drain the body so the connection can be reused; its content is the render service's business.
    await response.arrayBuffer().catch(() => undefined);
    if (!response.ok) {
      throw new ScrubError('upstream_rejected', `The render service refused the files with HTTP ${response.status}. Nothing was kept.`, {
        details: { upstreamStatus: response.status },
      });
    }
    return { status: response.status, destination: 'upstream' };
  }
}
