/**
 * The purge: deletes what has expired and marks it purged in the ledger, then removes orphans
 * (files in the data dir the ledger does not know as live). Runs in the service on an interval
 * and as `scrubline sweep`.
 *
 * Crash-safe and idempotent by ordering: an artefact's files are deleted *before* its row is
 * marked purged, so a sweep killed in between leaves a row that is still expired and unpurged,
 * and the next sweep deletes again (a no-op) and marks it. Only rows with expires_at <= now are
 * ever touched. Logs and reports carry counts and ids, never names.
 */
import { readdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import type { ArtefactKind, ArtefactRecord, Ledger } from './ledger.js';

/** Data-dir folders whose files belong to ledger artefacts (tmp/ is the upload path's own). */
export const storedDirs = ['clean', 'reports', 'thumbnails'] as const;
/** A file younger than this may belong to an upload still being recorded: not yet an orphan. */
export const defaultOrphanGraceMs = 15 * 60_000;

export interface SweepOptions {
  ledger: Ledger;
  dataDir: string;
  at: Date;
  dryRun?: boolean;
  orphanGraceMs?: number;
  /** Called after each artefact's files are gone and before its row is marked (tests kill here). */
  onDeleted?: (id: string) => void;
}

export interface SweepReport {
  at: string;
  dryRun: boolean;
  purged: Record<ArtefactKind, number>;
  /** Ids of what was (or, dry run, would be) purged. Random ids, never names. */
  ids: string[];
  orphans: number;
}

/** Deletes an artefact's files; a path outside the data dir is refused, never followed. */
export async function removeArtefactFiles(dataDir: string, record: ArtefactRecord): Promise<void> {
  const root = path.resolve(dataDir);
  for (const relative of record.paths) {
    const full = path.resolve(root, relative);
    if (!full.startsWith(root + path.sep)) throw new Error('ledger path outside the data dir');
    await rm(full, { force: true });
  }
}

export const countByKind = (records: ArtefactRecord[]): Record<ArtefactKind, number> => {
  const counts: Record<ArtefactKind, number> = { file: 0, thumbnail: 0, fingerprint: 0, crash: 0 };
  for (const r of records) counts[r.kind]++;
  return counts;
};

export async function sweep(options: SweepOptions): Promise<SweepReport> {
  const { ledger, dataDir, dryRun = false } = options;
  const at = options.at.toISOString();
  const expired = ledger.expired(at);
  if (!dryRun) {
    for (const record of expired) {
      await removeArtefactFiles(dataDir, record);
      options.onDeleted?.(record.id);
      ledger.markPurged([record.id], at);
    }
  }

  // Orphans: a crash between writing a file and recording it, or a row purged by hand.
  const live = ledger.livePaths();
  const grace = options.orphanGraceMs ?? defaultOrphanGraceMs;
  let orphans = 0;
  for (const dir of storedDirs) {
    const entries = await readdir(path.join(dataDir, dir)).catch(() => [] as string[]);
    for (const name of entries) {
      const relative = `${dir}/${name}`;
      if (live.has(relative)) continue;
      const full = path.join(dataDir, relative);
      const info = await stat(full).catch(() => undefined);
      if (!info?.isFile() || options.at.getTime() - info.mtimeMs < grace) continue;
      orphans++;
      if (!dryRun) await rm(full, { force: true });
    }
  }
  return { at, dryRun, purged: countByKind(expired), ids: expired.map((r) => r.id), orphans };
}
