/**
 * The embedded sink: with no upstream configured, cleaned files go to `<dataDir>/clean/<id>.<ext>`
 * with their JSON report in `<dataDir>/reports/<id>.json`. Only verified files ever arrive here.
 */
import { copyFile, mkdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { publicReport, type CleanFile } from '../pipeline.js';
import type { ForwardResult, Forwarder, UploadFields } from './forward.js';

/** Moves a file into place atomically; copies first only when the temp dir is on another device. */
async function moveInto(source: string, target: string): Promise<void> {
  try {
    await rename(source, target);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
    await copyFile(source, `${target}.partial`);
    await rename(`${target}.partial`, target);
  }
}

export class LocalSink implements Forwarder {
  readonly cleanDir: string;
  readonly reportDir: string;

  constructor(dataDir: string) {
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
        const target = path.join(this.cleanDir, `${file.id}.${file.ext}`);
        const report = path.join(this.reportDir, `${file.id}.json`);
        stored[file.id] = [`clean/${file.id}.${file.ext}`, `reports/${file.id}.json`];
        // Write the report first and the file last, each atomically, so a crash never leaves a
        // half-written file that looks complete.
        await writeFile(`${report}.partial`, JSON.stringify({ ...publicReport(file), jobId: fields.jobId }, null, 2), { mode: 0o600 });
        await rename(`${report}.partial`, report);
        written.push(report);
        await moveInto(file.path, target);
        written.push(target);
      }
    } catch (err) {
      await Promise.all(written.map((f) => rm(f, { force: true })));
      throw err;
    }
    return { status: 201, destination: 'local', stored };
  }
}
