/**
 * The ledger: what scrubline accepted, for whom, and when it must be gone. SQLite in the data
 * dir through better-sqlite3 (synchronous, so a record is on disk before the response goes out;
 * WAL, so readers never block the writer; the most used and best kept SQLite binding for Node).
 * Rows hold ids, types, sizes, fingerprints and times; never a file name or a metadata value.
 */
import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import type { Retention } from './context.js';

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
];

export interface ArtefactRecord {
  id: string;
  kind: 'file';
  jobId: string | undefined;
  mime: string;
  bytes: number;
  fingerprintId: string;
  destination: 'upstream' | 'local';
  retention: Retention;
  createdAt: string;
  expiresAt: string;
}

export class Ledger {
  private constructor(private readonly db: Database.Database) {}

  static open(dataDir: string): Ledger {
    mkdirSync(dataDir, { recursive: true });
    const db = new Database(path.join(dataDir, 'ledger.sqlite3'));
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

  record(records: ArtefactRecord[]): void {
    const insert = this.db.prepare(
      `INSERT INTO artefacts (id, kind, job_id, mime, bytes, fingerprint_id, destination, retention, created_at, expires_at)
       VALUES (@id, @kind, @jobId, @mime, @bytes, @fingerprintId, @destination, @retention, @createdAt, @expiresAt)`,
    );
    this.db.transaction(() => {
      for (const r of records) insert.run({ ...r, jobId: r.jobId ?? null });
    })();
  }

  get(id: string): ArtefactRecord | undefined {
    const row = this.db.prepare('SELECT * FROM artefacts WHERE id = ?').get(id) as Record<string, string | number | null> | undefined;
    if (!row) return undefined;
    return {
      id: String(row.id),
      kind: 'file',
      jobId: row.job_id === null ? undefined : String(row.job_id),
      mime: String(row.mime),
      bytes: Number(row.bytes),
      fingerprintId: String(row.fingerprint_id),
      destination: row.destination as ArtefactRecord['destination'],
      retention: row.retention as Retention,
      createdAt: String(row.created_at),
      expiresAt: String(row.expires_at),
    };
  }

  close(): void {
    this.db.close();
  }
}
