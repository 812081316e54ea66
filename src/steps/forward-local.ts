/**
 * The embedded sink: with no upstream configured, cleaned files go to
 * `<dataDir>/clean/<id>.<ext>.enc` with their JSON report in `<dataDir>/reports/<id>.json.enc`,
 * each encrypted at rest (storage/envelope.ts). Only verified files ever arrive here; the render
 * service reads them back with `GET /v1/files/:id/content`.
 */
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { publicReport, type CleanFile } from '../pipeline.js';
import { seal, sealFile, type Keyring } from '../storage/envelope.js';
import type { ForwardResult, Forwarder, UploadFields } from './forward.js';

export class LocalSink implements Forwarder {
  readonly cleanDir: string;
  readonly reportDir: string;

  constructor(
    dataDir: string,
    private readonly keys: Keyring,
  ) {
    this.cleanDir = path.join(dataDir, 'clean');
    this.reportDir = path.join(dataDir, 'reports');
  }

  async forward(files: readonly CleanFile[], fields: UploadFields): Promise<ForwardResult> {
    await mkdir(this.cleanDir, { recursive: true, mode: 0o700 });
    await mkdir(this.reportDir, { recursive: true, mode: 0o700 });
    const written: string[] = [];
    const stored: Record<string, string[]> = {};
    try {
      for (const file of files) {
        // Each object is sealed under its data-dir path, which it must be read back under.
        const names = { clean: `clean/${file.id}.${file.ext}.enc`, report: `reports/${file.id}.json.enc` };
        const target = path.join(this.cleanDir, path.basename(names.clean));
        const report = path.join(this.reportDir, path.basename(names.report));
        stored[file.id] = [names.clean, names.report];
        // Write the report first and the file last, each atomically, so a crash never leaves a
        // half-written file that looks complete.
        const reportJson = Buffer.from(JSON.stringify({ ...publicReport(file), jobId: fields.jobId }, null, 2));
        await writeFile(`${report}.partial`, seal(this.keys, names.report, reportJson), { mode: 0o600 });
        await rename(`${report}.partial`, report);
        written.push(report);
        await sealFile(this.keys, names.clean, file.path, target);
        written.push(target);
      }
    } catch (err) {
      await Promise.all(written.map((f) => rm(f, { force: true })));
      throw err;
    }
    return { status: 201, destination: 'local', stored };
  }
}
