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
import { lstat, readdir, realpath, rm } from 'node:fs/promises';
import path from 'node:path';
import type { ArtefactKind, ArtefactRecord, Ledger } from '../storage/ledger.js';

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
  /** Ids of rows skipped as bad (a path outside the data dir, through a link, or not a file). */
  skipped: string[];
  orphans: number;
}

/** A ledger row whose paths scrubline will not delete: skipped and reported, never followed. */
export class BadLedgerRow extends Error {}

/**
 * Deletes an artefact's files. A path outside the data dir, one whose folder is a link that leads
 * out of it (checked on the real path, not the text: THREATS 42), or one that is not a file is a
 * bad row: BadLedgerRow, nothing deleted for it.
 */
export async function removeArtefactFiles(dataDir: string, record: ArtefactRecord): Promise<void> {
  const root = await realpath(dataDir);
  const inside = (p: string): boolean => p.startsWith(root + path.sep);
  for (const relative of record.paths) {
    const full = path.resolve(root, relative);
    if (!inside(full)) throw new BadLedgerRow('a path outside the data dir');
    const folder = await realpath(path.dirname(full)).catch(() => undefined);
    if (folder === undefined) continue; // its folder is gone, and the file with it
    if (folder !== root && !inside(folder)) throw new BadLedgerRow('a path through a link that leads out of the data dir');
    const info = await lstat(full).catch(() => undefined);
    if (!info) continue;
    if (!info.isFile() && !info.isSymbolicLink()) throw new BadLedgerRow('a path that is not a file');
    await rm(full, { force: true });
  }
}

/**
 * Removes each record's files and marks it purged, one record at a time (files first: a run
 * killed in between is finished by the next). A bad row is skipped and its id returned; the rest
 * go on (one bad row used to stop every later purge).
 */
export async function purgeRecords(
  ledger: Ledger,
  dataDir: string,
  records: ArtefactRecord[],
  at: string,
  onDeleted?: (id: string) => void,
): Promise<{ purged: ArtefactRecord[]; skipped: string[] }> {
  const purged: ArtefactRecord[] = [];
  const skipped: string[] = [];
  for (const record of records) {
    try {
      await removeArtefactFiles(dataDir, record);
    } catch (err) {
      if (!(err instanceof BadLedgerRow)) throw err;
      skipped.push(record.id);
      continue;
    }
    onDeleted?.(record.id);
    ledger.markPurged([record.id], at);
    purged.push(record);
  }
  return { purged, skipped };
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
  const { purged, skipped } = dryRun ? { purged: expired, skipped: [] as string[] } : await purgeRecords(ledger, dataDir, expired, at, options.onDeleted);

  // Orphans: a crash between writing a file and recording it, or a row purged by hand. A stored
  // folder that is a link is not read (its files are not ours to judge).
  const live = ledger.livePaths();
  const grace = options.orphanGraceMs ?? defaultOrphanGraceMs;
  let orphans = 0;
  for (const dir of storedDirs) {
    const folder = await lstat(path.join(dataDir, dir)).catch(() => undefined);
    if (!folder?.isDirectory()) continue;
    const entries = await readdir(path.join(dataDir, dir)).catch(() => [] as string[]);
    for (const name of entries) {
      const relative = `${dir}/${name}`;
      if (live.has(relative)) continue;
      const full = path.join(dataDir, relative);
      const info = await lstat(full).catch(() => undefined);
      if (!info?.isFile() || options.at.getTime() - info.mtimeMs < grace) continue;
      orphans++;
      if (!dryRun) await rm(full, { force: true });
    }
  }
  return { at, dryRun, purged: countByKind(purged), ids: purged.map((r) => r.id), skipped, orphans };
}
