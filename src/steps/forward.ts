/**
 * Step 7, forward: hand the verified files to where they go next. Two implementations behind one
 * seam: the render service over HTTP (forward-http.ts), or a store scrubline keeps itself, the
 * data dir or a bucket (forward-store.ts).
 */
import type { Stripped } from '../context.js';
import type { CleanFile } from '../pipeline.js';
import type { Destination } from '../storage/ledger.js';

export interface UploadFields {
  jobId: string | undefined;
  retention: 'standard' | 'extended';
}

export interface ForwardResult {
  /** The upstream's HTTP status; 201 for a store. */
  status: number;
  destination: Destination;
  /** File id → the names of what it occupies in the store, for the ledger and the sweeper. */
  stored?: Record<string, string[]>;
}

/** What a forwarder wrote of a cleaned file before its verdict: sealed under `name`, at `path`. */
export interface StagedObject {
  name: string;
  path: string;
}

export interface Forwarder {
  forward(files: readonly CleanFile[], fields: UploadFields, uploadId: string): Promise<ForwardResult>;
  /**
   * Called once a file is stripped, beside its verification: starts writing what `forward` will
   * need of it into the file's own work dir (which goes with the request, whatever happens), or
   * returns undefined. Only `forward`, after the verdict, may move it out of there.
   */
  stage?(file: Stripped, jobId: string | undefined): Promise<StagedObject> | undefined;
}

/** What the upstream receives about each file in the `scrubline` field: no values, no names. */
export function forwardedManifest(files: readonly CleanFile[]): string {
  return JSON.stringify(
    files.map((f) => ({ id: f.id, mime: f.mime, fingerprint: f.fingerprint, retention: f.retention, expiresAt: f.expiresAt })),
  );
}
