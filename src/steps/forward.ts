/**
 * Step 7, forward: hand the verified files to where they go next. Two implementations behind one
 * seam: the render service over HTTP (forward-http.ts), or the embedded local sink
 * (forward-local.ts) so a bare `npm start` does the whole job with nothing else running.
 */
import type { CleanFile } from '../pipeline.js';

export interface UploadFields {
  jobId: string | undefined;
  retention: 'standard' | 'extended';
}

export interface ForwardResult {
  /** The upstream's HTTP status; 201 for the local sink. */
  status: number;
  destination: 'upstream' | 'local';
  /** File id → what it occupies in the data dir (relative paths), for the ledger and the sweeper. */
  stored?: Record<string, string[]>;
}

export interface Forwarder {
  forward(files: readonly CleanFile[], fields: UploadFields, uploadId: string): Promise<ForwardResult>;
}

/** What the upstream receives about each file in the `scrubline` field: no values, no names. */
export function forwardedManifest(files: readonly CleanFile[]): string {
  return JSON.stringify(
    files.map((f) => ({ id: f.id, mime: f.mime, fingerprint: f.fingerprint, retention: f.retention, expiresAt: f.expiresAt })),
  );
}
