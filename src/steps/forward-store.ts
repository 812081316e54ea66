/**
 * The store sink: scrubline keeps the cleaned files itself, in the data dir (the embedded default:
 * a bare `npm start` does the whole job with nothing else running) or in an S3-compatible bucket
 * (`SCRUBLINE_UPSTREAM_URL=s3://bucket/prefix`, shared by replicas). Each file goes next to its
 * JSON report (the fields the HTTP upstream receives), both encrypted at rest
 * (storage/envelope.ts). Only verified files ever arrive here; the render service reads them back
 * with `GET /v1/files/:id/content`.
 */
import { publicReport, type CleanFile } from '../pipeline.js';
import { seal, sealedFile, type Keyring } from '../storage/envelope.js';
import type { ObjectStore } from '../storage/objects.js';
import type { ForwardResult, Forwarder, UploadFields } from './forward.js';

export class StoreSink implements Forwarder {
  constructor(
    readonly store: ObjectStore,
    private readonly keys: Keyring,
  ) {}

  async forward(files: readonly CleanFile[], fields: UploadFields): Promise<ForwardResult> {
    const written: string[] = [];
    const stored: Record<string, string[]> = {};
    try {
      for (const file of files) {
        // Each object is sealed under its name in the store, which it must be read back under.
        const names = { file: this.store.nameFor('file', file.id, file.ext, fields.jobId), report: this.store.nameFor('report', file.id, 'json', fields.jobId) };
        stored[file.id] = [names.file, names.report];
        const info = { retention: file.retention };
        // The report first and the file last: a reader that finds the file finds its report.
        const report = seal(this.keys, names.report, Buffer.from(JSON.stringify({ ...publicReport(file), jobId: fields.jobId }, null, 2)));
        written.push(names.report);
        await this.store.put(names.report, report, report.length, info);
        const sealed = await sealedFile(this.keys, names.file, file.path);
        written.push(names.file);
        await this.store.put(names.file, sealed.body, sealed.length, info);
      }
    } catch (err) {
      // Nothing half-kept: what this upload stored goes with the failure.
      await Promise.allSettled(written.map((name) => this.store.delete(name)));
      throw err;
    }
    return { status: 201, destination: this.store.destination, stored };
  }
}
