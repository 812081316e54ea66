/**
 * The purge: deletes what has expired from the store that holds it and marks it purged in the
 * ledger, then removes orphans (objects the ledger does not know as live). Runs in the service on
 * an interval, on every replica, and as `scrubline sweep`.
 *
 * Crash-safe and idempotent by ordering: an artefact's objects are deleted *before* its row is
 * marked purged, so a sweep killed in between leaves a row that is still expired and unpurged,
 * and the next sweep deletes again (a no-op) and marks it. Replicas sweeping one PostgreSQL
 * ledger claim disjoint batches (Ledger.claimExpired), so each artefact is purged exactly once.
 * Only rows with expires_at <= now are ever touched. Logs and reports carry counts and ids,
 * never names.
 */
import type { ArtefactKind, ArtefactRecord, Ledger } from '../storage/ledger.js';
import { removePartials } from '../storage/partials.js';
import { ForeignName, storeOf, storesFor, type ObjectStore, type Stores } from '../storage/objects.js';

/** A file younger than this may belong to an upload still being recorded: not yet an orphan. */
export const defaultOrphanGraceMs = 15 * 60_000;
/** Rows claimed at once: one transaction's worth of deletes, while uploads on SQLite wait to record. */
const batchSize = 25;

export interface SweepOptions {
  ledger: Ledger;
  dataDir: string;
  /** The bucket, when scrubline stores there. */
  bucket?: ObjectStore | undefined;
  at: Date;
  dryRun?: boolean;
  orphanGraceMs?: number;
  /** Called after each artefact's objects are gone and before its row is marked (tests kill here). */
  onDeleted?: (id: string) => void;
}

export interface SweepReport {
  at: string;
  dryRun: boolean;
  purged: Record<ArtefactKind, number>;
  /** Ids of what was (or, dry run, would be) purged. Random ids, never names. */
  ids: string[];
  /** Ids of rows skipped as bad (a name that is not one of ours, or a store not configured). */
  skipped: string[];
  orphans: number;
  /** Resumable uploads removed because they expired before their last byte came. */
  partialUploads: number;
  /** Multipart uploads to the bucket aborted because their write died (0 in a dry run). */
  staleMultipartUploads: number;
}

/**
 * Deletes an artefact's objects from the store it lies in. A name scrubline does not build, or a
 * store that is not configured here, is a bad row: ForeignName, nothing deleted for it.
 */
export async function removeArtefactObjects(stores: Stores, record: ArtefactRecord): Promise<void> {
  if (record.paths.length === 0) return;
  const store = storeOf(stores, record.destination);
  if (store === undefined) throw new ForeignName(`a row held in a ${record.destination} store that is not configured here`);
  for (const name of record.paths) await store.delete(name);
}

/** Removes a record's objects, then marks it; false (and nothing deleted) for a bad row. */
async function purgeOne(stores: Stores, record: ArtefactRecord, mark: (id: string) => Promise<unknown>, onDeleted?: (id: string) => void): Promise<boolean> {
  try {
    await removeArtefactObjects(stores, record);
  } catch (err) {
    if (!(err instanceof ForeignName)) throw err;
    return false;
  }
  onDeleted?.(record.id);
  await mark(record.id);
  return true;
}

/**
 * Purges the given records (a deleted job's), one at a time. A bad row is skipped and its id
 * returned; the rest go on (one bad row used to stop every later purge).
 */
export async function purgeRecords(ledger: Ledger, stores: Stores, records: ArtefactRecord[], at: string): Promise<{ purged: ArtefactRecord[]; skipped: string[] }> {
  const purged: ArtefactRecord[] = [];
  const skipped: string[] = [];
  for (const record of records) {
    if (await purgeOne(stores, record, (id) => ledger.markPurged([id], at))) purged.push(record);
    else skipped.push(record.id);
  }
  return { purged, skipped };
}

export const countByKind = (records: ArtefactRecord[]): Record<ArtefactKind, number> => {
  const counts: Record<ArtefactKind, number> = { file: 0, thumbnail: 0, fingerprint: 0, crash: 0 };
  for (const r of records) counts[r.kind]++;
  return counts;
};

/** Deletes, from one store, the objects no live row names that are older than the grace period. */
async function removeOrphans(ledger: Ledger, store: ObjectStore, at: Date, graceMs: number, dryRun: boolean): Promise<number> {
  const live = await ledger.livePaths(store.destination);
  let orphans = 0;
  for await (const { name, modifiedMs } of store.list()) {
    if (live.has(name) || at.getTime() - modifiedMs < graceMs) continue;
    orphans++;
    if (!dryRun) await store.delete(name).catch((err: unknown) => (err instanceof ForeignName ? undefined : Promise.reject(err)));
  }
  return orphans;
}

export async function sweep(options: SweepOptions): Promise<SweepReport> {
  const { ledger, dryRun = false } = options;
  const stores = storesFor(options.dataDir, options.bucket);
  const at = options.at.toISOString();
  const purged: ArtefactRecord[] = [];
  const skipped: string[] = [];
  if (dryRun) {
    purged.push(...(await ledger.expired(at)));
  } else {
    // Batch after batch until one comes back short; a skipped row is never claimed again.
    for (;;) {
      const claimed = await ledger.claimExpired(at, batchSize, skipped, async (records, mark) => {
        for (const record of records) {
          if (await purgeOne(stores, record, mark, options.onDeleted)) purged.push(record);
          else skipped.push(record.id);
        }
      });
      if (claimed < batchSize) break;
    }
  }

  // Resumable uploads that did not finish in time: their pieces are originals.
  const expiredPartials = await ledger.partialIds({ expiredAt: at });
  if (!dryRun) await removePartials(ledger, stores, expiredPartials);

  // Orphans: a crash between writing an object and recording it, or a row purged by hand.
  const grace = options.orphanGraceMs ?? defaultOrphanGraceMs;
  let orphans = await removeOrphans(ledger, stores.local, options.at, grace, dryRun);
  if (stores.bucket) orphans += await removeOrphans(ledger, stores.bucket, options.at, grace, dryRun);
  const staleMultipartUploads = dryRun ? 0 : ((await stores.bucket?.abortStaleUploads?.(options.at, grace)) ?? 0);
  return { at, dryRun, purged: countByKind(purged), ids: purged.map((r) => r.id), skipped, orphans, partialUploads: expiredPartials.length, staleMultipartUploads };
}
