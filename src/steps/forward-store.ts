/**
 * The store sink: scrubline keeps the cleaned files itself, in the data dir (the embedded default:
 * a bare `npm start` does the whole job with nothing else running) or in an S3-compatible bucket
 * (`SCRUBLINE_UPSTREAM_URL=s3://bucket/prefix`, shared by replicas). Each file goes next to its
 * JSON report (the fields the HTTP upstream receives), both encrypted at rest
 * (storage/envelope.ts). Only verified files ever arrive here; the render service reads them back
 * with `GET /v1/files/:id/content`.
 */
import { createWriteStream } from 'node:fs';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Stripped } from '../context.js';
import { publicReport, type CleanFile } from '../pipeline.js';
import { seal, sealedFile, type Keyring } from '../storage/envelope.js';
import type { ObjectStore } from '../storage/objects.js';
import type { ForwardResult, Forwarder, StagedObject, UploadFields } from './forward.js';

/** A failed adoption: false when the staged copy lies on another file system (seal afresh), else the error. */
const unlessCrossDevice = (err: NodeJS.ErrnoException): false => {
  if (err.code === 'EXDEV') return false;
  throw err;
};

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
        written.push(names.file);
        // Sealed beside verify when the store can adopt a local file (stage below); else now, as
        // when the work dir turns out to be on another file system (a rename cannot cross).
        const staged = await file.staged?.catch(() => undefined);
        let adopted = false;
        if (staged?.name === names.file && this.store.adopt) adopted = await this.store.adopt(names.file, staged.path).then(() => true, unlessCrossDevice);
        if (!adopted) {
          const sealed = await sealedFile(this.keys, names.file, file.path);
          await this.store.put(names.file, sealed.body, sealed.length, info);
        }
      }
    } catch (err) {
      // Nothing half-kept: what this upload stored goes with the failure.
      await Promise.allSettled(written.map((name) => this.store.delete(name)));
      throw err;
    }
    return { status: 201, destination: this.store.destination, stored };
  }

  /**
   * An image's sealed copy, written while it is verified (issue 30: its upload's answer no longer
   * waits for the encryption and the write after the verdict), into its work dir, where it is
   * neither stored nor readable, and goes with the request. `forward` moves it into the store
   * once the file is proven clean. Only a store on this file system can adopt it (the data dir,
   * whose tmp/ holds the work dirs); a video's copy would be a third copy in the temp dir.
   */
  stage(file: Stripped, jobId: string | undefined): Promise<StagedObject> | undefined {
    if (!this.store.adopt || file.kind.family !== 'image') return undefined;
    const name = this.store.nameFor('file', file.id, file.kind.ext, jobId);
    const staged = path.join(file.workDir, 'sealed.enc');
    return sealedFile(this.keys, name, file.cleanPath)
      .then((sealed) => pipeline(sealed.body, createWriteStream(staged, { mode: 0o600, flags: 'wx', flush: true })))
      .then(() => ({ name, path: staged }));
  }
}
