/**
 * The ledger: every artefact scrubline keeps or hands on (cleaned files, thumbnails, fingerprints,
 * crash records), which job it belongs to, and when it must be gone. SQLite in the data dir
 * through better-sqlite3 (synchronous, so a record is on disk before the response goes out; WAL,
 * so readers never block the writer; the most used and best kept SQLite binding for Node).
 * Rows hold ids, types, sizes, fingerprints, times and data-dir-relative paths built from ids;
 * never a client file name or a metadata value.
 *
 * Times are ISO 8601 UTC strings with milliseconds ("2026-05-01T00:00:00.000Z"): they sort as
 * text, so "expired at T" is a plain string comparison in SQL.
 */
import type Database from 'better-sqlite3';
import { chmodSync, closeSync, mkdirSync, openSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import type { Retention } from '../context.js';
import { jobDeleted } from '../errors.js';

const require = createRequire(import.meta.url);

/**
 * better-sqlite3 is an optional peer dependency, loaded when a ledger is opened: an app that only
 * mounts the middleware never compiles it (issue 19). The service and the CLI's sweep need it.
 */
function sqlite(): typeof Database {
  try {
    return require('better-sqlite3') as typeof Database;
  } catch (err) {
    throw new Error('The ledger needs better-sqlite3, an optional peer dependency of scrubline: run `npm i better-sqlite3` next to it.', { cause: err });
  }
}

/** Each entry upgrades the schema by one version (PRAGMA user_version). Append, never edit. */
const migrations: string[] = [
  `CREATE TABLE artefacts (
     id TEXT PRIMARY KEY,
     kind TEXT NOT NULL,
     job_id TEXT,
     mime TEXT NOT NULL,
     bytes INTEGER NOT NULL,
     fingerprint_id TEXT NOT NULL,
     destination TEXT NOT NULL,
     retention TEXT NOT NULL CHECK (retention IN ('standard', 'extended')),
     created_at TEXT NOT NULL,
     expires_at TEXT NOT NULL,
     purged_at TEXT
   );
   CREATE INDEX artefacts_expires_at ON artefacts (expires_at) WHERE purged_at IS NULL;
   CREATE INDEX artefacts_job_id ON artefacts (job_id);`,
  // v2, the job-finished clock: thumbnails hang off their file, files record where they lie on
  // disk, jobs record when they finished, and deletion requests leave an audit row.
  `ALTER TABLE artefacts ADD COLUMN parent_id TEXT;
   ALTER TABLE artefacts ADD COLUMN job_finished_at TEXT;
   ALTER TABLE artefacts ADD COLUMN paths TEXT NOT NULL DEFAULT '[]';
   CREATE INDEX artefacts_parent_id ON artefacts (parent_id);
   CREATE TABLE jobs (
     job_id TEXT PRIMARY KEY,
     finished_at TEXT NOT NULL
   );
   CREATE TABLE deletions (
     id INTEGER PRIMARY KEY AUTOINCREMENT,
     job_id TEXT NOT NULL,
     requested_at TEXT NOT NULL,
     counts TEXT NOT NULL,
     artefact_ids TEXT NOT NULL
   );`,
  // v3, crash diagnostics: fingerprints and crash records keep their JSON here; purging clears it.
  `ALTER TABLE artefacts ADD COLUMN body TEXT;
   CREATE INDEX artefacts_fingerprint_id ON artefacts (fingerprint_id, kind);`,
  // v4, deletion is final: a deleted job id is remembered (id and time only), so that an upload
  // still in flight when the job was deleted, or a later one to the same id, is not kept.
  `CREATE TABLE deleted_jobs (
     job_id TEXT PRIMARY KEY,
     deleted_at TEXT NOT NULL
   );`,
];

export type ArtefactKind = 'file' | 'thumbnail' | 'fingerprint' | 'crash';

export interface ArtefactRecord {
  id: string;
  kind: ArtefactKind;
  /** The file a thumbnail was made from. */
  parentId?: string | undefined;
  jobId: string | undefined;
  mime: string;
  bytes: number;
  fingerprintId: string;
  destination: 'upstream' | 'local';
  retention: Retention;
  createdAt: string;
  expiresAt: string;
  jobFinishedAt?: string | undefined;
  purgedAt?: string | undefined;
  /** What this artefact occupies on disk, relative to the data dir ([] when held upstream). */
  paths: string[];
  /** JSON of a fingerprint or crash record (never of a file); gone once purged. */
  body?: string | undefined;
}

type Row = Record<string, string | number | null>;

const optional = (value: string | number | null | undefined): string | undefined => (value === null || value === undefined ? undefined : String(value));

function fromRow(row: Row): ArtefactRecord {
  return {
    id: String(row.id),
    kind: row.kind as ArtefactKind,
    parentId: optional(row.parent_id),
    jobId: optional(row.job_id),
    mime: String(row.mime),
    bytes: Number(row.bytes),
    fingerprintId: String(row.fingerprint_id),
    destination: row.destination as ArtefactRecord['destination'],
    retention: row.retention as Retention,
    createdAt: String(row.created_at),
    expiresAt: String(row.expires_at),
    jobFinishedAt: optional(row.job_finished_at),
    purgedAt: optional(row.purged_at),
    paths: JSON.parse(String(row.paths ?? '[]')) as string[],
    body: optional(row.body),
  };
}

export class Ledger {
  private constructor(private readonly db: Database.Database) {}

  static open(dataDir: string): Ledger {
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    const file = path.join(dataDir, 'ledger.sqlite3');
    // Ids, job ids and crash reports are ours alone: the file is made 0600 before SQLite opens it
    // (SQLite would create it 0644; an older ledger may be), and SQLite gives its -wal and -shm
    // files the database's mode when it creates them.
    closeSync(openSync(file, 'a', 0o600));
    chmodSync(file, 0o600);
    const db = new (sqlite())(file);
    db.pragma('journal_mode = WAL');
    db.pragma('busy_timeout = 5000');
    const current = db.pragma('user_version', { simple: true }) as number;
    db.transaction(() => {
      for (let version = current; version < migrations.length; version++) {
        db.exec(migrations[version]!);
        db.pragma(`user_version = ${version + 1}`);
      }
    })();
    return new Ledger(db);
  }

  get schemaVersion(): number {
    return this.db.pragma('user_version', { simple: true }) as number;
  }

  /**
   * Records artefacts in one transaction; refuses (410 job_deleted, nothing recorded) when any of
   * them belongs to a job deleted meanwhile, so an upload racing its job's deletion is not kept.
   */
  record(records: ArtefactRecord[]): void {
    const insert = this.db.prepare(
      `INSERT INTO artefacts (id, kind, parent_id, job_id, mime, bytes, fingerprint_id, destination, retention, created_at, expires_at, job_finished_at, paths, body)
       VALUES (@id, @kind, @parentId, @jobId, @mime, @bytes, @fingerprintId, @destination, @retention, @createdAt, @expiresAt, @jobFinishedAt, @paths, @body)`,
    );
    this.db.transaction(() => {
      for (const jobId of new Set(records.map((r) => r.jobId))) if (jobId !== undefined && this.jobDeletedAt(jobId)) throw jobDeleted();
      for (const r of records) {
        insert.run({ ...r, parentId: r.parentId ?? null, jobId: r.jobId ?? null, jobFinishedAt: r.jobFinishedAt ?? null, paths: JSON.stringify(r.paths), body: r.body ?? null });
      }
    })();
  }

  get(id: string): ArtefactRecord | undefined {
    const row = this.db.prepare('SELECT * FROM artefacts WHERE id = ?').get(id) as Row | undefined;
    return row ? fromRow(row) : undefined;
  }

  /** The thumbnail made from a file, if one exists and is not purged. */
  thumbnailOf(fileId: string): ArtefactRecord | undefined {
    const row = this.db.prepare("SELECT * FROM artefacts WHERE parent_id = ? AND kind = 'thumbnail' AND purged_at IS NULL").get(fileId) as Row | undefined;
    return row ? fromRow(row) : undefined;
  }

  /** The live fingerprint record kept for one file (none for an id that is not a file's). */
  fingerprintOf(fileId: string): ArtefactRecord | undefined {
    const row = this.db.prepare("SELECT * FROM artefacts WHERE parent_id = ? AND kind = 'fingerprint' AND purged_at IS NULL").get(fileId) as Row | undefined;
    return row ? fromRow(row) : undefined;
  }

  /** The newest live fingerprint record with this fingerprint id. */
  fingerprint(fingerprintId: string): ArtefactRecord | undefined {
    const row = this.db
      .prepare("SELECT * FROM artefacts WHERE fingerprint_id = ? AND kind = 'fingerprint' AND purged_at IS NULL ORDER BY created_at DESC LIMIT 1")
      .get(fingerprintId) as Row | undefined;
    return row ? fromRow(row) : undefined;
  }

  /** When the job was deleted on request, if it was. */
  jobDeletedAt(jobId: string): string | undefined {
    const row = this.db.prepare('SELECT deleted_at FROM deleted_jobs WHERE job_id = ?').get(jobId) as Row | undefined;
    return optional(row?.deleted_at);
  }

  /**
   * Marks a job deleted (the first time counts) and returns its live artefacts, in one
   * transaction: an upload recorded before this is in the list, one after it is refused.
   */
  deleteJob(jobId: string, at: string): ArtefactRecord[] {
    return this.db.transaction(() => {
      this.db.prepare('INSERT OR IGNORE INTO deleted_jobs (job_id, deleted_at) VALUES (?, ?)').run(jobId, at);
      return this.ofJob(jobId);
    })();
  }

  jobFinishedAt(jobId: string): string | undefined {
    const row = this.db.prepare('SELECT finished_at FROM jobs WHERE job_id = ?').get(jobId) as Row | undefined;
    return optional(row?.finished_at);
  }

  /**
   * Records that a job finished (the first report wins: a repeated report never extends a
   * deadline) and re-dates its live files and thumbnails: finish time + their retention.
   */
  finishJob(jobId: string, at: string, expiry: (retention: Retention, finishedAt: string) => string): { finishedAt: string; firstReport: boolean; artefacts: number } {
    return this.db.transaction(() => {
      const inserted = this.db.prepare('INSERT OR IGNORE INTO jobs (job_id, finished_at) VALUES (?, ?)').run(jobId, at);
      const finishedAt = this.jobFinishedAt(jobId)!;
      let artefacts = 0;
      for (const retention of ['standard', 'extended'] as const) {
        artefacts += this.db
          .prepare(
            `UPDATE artefacts SET job_finished_at = ?, expires_at = ?
             WHERE job_id = ? AND retention = ? AND kind IN ('file', 'thumbnail') AND purged_at IS NULL`,
          )
          .run(finishedAt, expiry(retention, finishedAt), jobId, retention).changes;
      }
      return { finishedAt, firstReport: inserted.changes === 1, artefacts };
    })();
  }

  /** Live (not purged) artefacts of a job. */
  ofJob(jobId: string): ArtefactRecord[] {
    return (this.db.prepare('SELECT * FROM artefacts WHERE job_id = ? AND purged_at IS NULL ORDER BY created_at, id').all(jobId) as Row[]).map(fromRow);
  }

  /** Live artefacts whose expiry is at or before `at`. */
  expired(at: string): ArtefactRecord[] {
    return (this.db.prepare('SELECT * FROM artefacts WHERE purged_at IS NULL AND expires_at <= ? ORDER BY expires_at, id').all(at) as Row[]).map(fromRow);
  }

  /** Every data-dir-relative path a live artefact occupies (the sweeper's "known" set). */
  livePaths(): Set<string> {
    const rows = this.db.prepare("SELECT paths FROM artefacts WHERE purged_at IS NULL AND paths != '[]'").all() as Row[];
    return new Set(rows.flatMap((row) => JSON.parse(String(row.paths)) as string[]));
  }

  markPurged(ids: string[], at: string): void {
    // Purging a record also drops its JSON: nothing of it stays but ids and times.
    const update = this.db.prepare('UPDATE artefacts SET purged_at = ?, body = NULL WHERE id = ? AND purged_at IS NULL');
    this.db.transaction(() => {
      for (const id of ids) update.run(at, id);
    })();
  }

  /** The audit row of a deletion request: ids, time and counts, nothing else. */
  recordDeletion(jobId: string, at: string, counts: Record<string, number>, ids: string[]): void {
    this.db.prepare('INSERT INTO deletions (job_id, requested_at, counts, artefact_ids) VALUES (?, ?, ?, ?)').run(jobId, at, JSON.stringify(counts), JSON.stringify(ids));
  }

  deletions(jobId: string): Array<{ requestedAt: string; counts: Record<string, number>; ids: string[] }> {
    return (this.db.prepare('SELECT * FROM deletions WHERE job_id = ? ORDER BY id').all(jobId) as Row[]).map((row) => ({
      requestedAt: String(row.requested_at),
      counts: JSON.parse(String(row.counts)) as Record<string, number>,
      ids: JSON.parse(String(row.artefact_ids)) as string[],
    }));
  }

  close(): void {
    this.db.close();
  }
}
