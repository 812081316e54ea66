/**
 * The ledger: every artefact scrubline keeps or hands on (cleaned files, thumbnails, fingerprints,
 * crash records), which job it belongs to, and when it must be gone. One interface, two backends
 * through Kysely (typed SQL with a dialect per engine, so the queries are written once):
 *
 *   - SQLite in the data dir (better-sqlite3; WAL, so readers never block the writer): the
 *     embedded default, for one process;
 *   - PostgreSQL when `SCRUBLINE_DATABASE_URL` is set (the `pg` driver): several replicas share
 *     one ledger, so a job finished on one replica starts the clock of its files on every replica.
 *
 * Rows hold ids, types, sizes, fingerprints, times and store-relative names built from ids; never
 * a client file name or a metadata value.
 *
 * Times are ISO 8601 UTC strings with milliseconds ("2026-05-01T00:00:00.000Z") on both engines:
 * they sort as text, so "expired at T" is a plain string comparison.
 */
import { chmodSync, closeSync, mkdirSync, openSync } from 'node:fs';
import path from 'node:path';
import { Kysely, PostgresDialect, SqliteDialect, sql, type Generated, type PostgresPool, type PostgresPoolClient, type Selectable, type Transaction } from 'kysely';
import type { Retention } from '../context.js';
import { jobDeleted, ledgerUnavailable } from '../errors.js';
import { openSqlite } from './sqlite.js';
import { optionalPeer } from './peers.js';

interface ArtefactsTable {
  id: string;
  kind: string;
  parent_id: string | null;
  job_id: string | null;
  mime: string;
  /** bigint on PostgreSQL, which its driver returns as a string. */
  bytes: number | string;
  fingerprint_id: string;
  destination: string;
  retention: string;
  created_at: string;
  expires_at: string;
  job_finished_at: string | null;
  purged_at: string | null;
  paths: string;
  body: string | null;
}

interface Schema {
  artefacts: ArtefactsTable;
  jobs: { job_id: string; finished_at: string };
  deletions: { id: Generated<number>; job_id: string; requested_at: string; counts: string; artefact_ids: string };
  deleted_jobs: { job_id: string; deleted_at: string };
  partial_uploads: PartialUploadsTable;
  partial_pieces: { upload_id: string; start: number | string; length: number | string; name: string; destination: string };
}

interface PartialUploadsTable {
  id: string;
  job_id: string | null;
  retention: string;
  /** bigint on PostgreSQL, which its driver returns as a string. */
  size: number | string;
  received: number | string;
  created_at: string;
  expires_at: string;
}

type Db = Kysely<Schema> | Transaction<Schema>;
// Migrations build tables the typed schema does not know yet: they take the untyped builder.
type Migration = (db: Kysely<any>, engine: Engine) => Promise<void>;

export type Engine = 'sqlite' | 'postgres';

/** Each entry upgrades the schema by one version. Append, never edit. */
const migrations: Migration[] = [
  async (db, engine) => {
    await db.schema
      .createTable('artefacts')
      .addColumn('id', 'text', (c) => c.primaryKey())
      .addColumn('kind', 'text', (c) => c.notNull())
      .addColumn('job_id', 'text')
      .addColumn('mime', 'text', (c) => c.notNull())
      // A file may be 2 GiB: one byte more than a 32-bit integer holds.
      .addColumn('bytes', engine === 'postgres' ? 'bigint' : 'integer', (c) => c.notNull())
      .addColumn('fingerprint_id', 'text', (c) => c.notNull())
      .addColumn('destination', 'text', (c) => c.notNull())
      .addColumn('retention', 'text', (c) => c.notNull().check(sql`retention IN ('standard', 'extended')`))
      .addColumn('created_at', 'text', (c) => c.notNull())
      .addColumn('expires_at', 'text', (c) => c.notNull())
      .addColumn('purged_at', 'text')
      .execute();
    await db.schema.createIndex('artefacts_expires_at').on('artefacts').column('expires_at').where(sql.ref('purged_at'), 'is', null).execute();
    await db.schema.createIndex('artefacts_job_id').on('artefacts').column('job_id').execute();
  },
  // v2, the job-finished clock: thumbnails hang off their file, files record where they lie,
  // jobs record when they finished, and deletion requests leave an audit row.
  async (db, engine) => {
    await db.schema.alterTable('artefacts').addColumn('parent_id', 'text').execute();
    await db.schema.alterTable('artefacts').addColumn('job_finished_at', 'text').execute();
    await db.schema.alterTable('artefacts').addColumn('paths', 'text', (c) => c.notNull().defaultTo('[]')).execute();
    await db.schema.createIndex('artefacts_parent_id').on('artefacts').column('parent_id').execute();
    await db.schema
      .createTable('jobs')
      .addColumn('job_id', 'text', (c) => c.primaryKey())
      .addColumn('finished_at', 'text', (c) => c.notNull())
      .execute();
    await db.schema
      .createTable('deletions')
      .addColumn('id', engine === 'postgres' ? 'bigserial' : 'integer', (c) => (engine === 'postgres' ? c.primaryKey() : c.primaryKey().autoIncrement()))
      .addColumn('job_id', 'text', (c) => c.notNull())
      .addColumn('requested_at', 'text', (c) => c.notNull())
      .addColumn('counts', 'text', (c) => c.notNull())
      .addColumn('artefact_ids', 'text', (c) => c.notNull())
      .execute();
  },
  // v3, crash diagnostics: fingerprints and crash records keep their JSON here; purging clears it.
  async (db) => {
    await db.schema.alterTable('artefacts').addColumn('body', 'text').execute();
    await db.schema.createIndex('artefacts_fingerprint_id').on('artefacts').columns(['fingerprint_id', 'kind']).execute();
  },
  // v4, deletion is final: a deleted job id is remembered (id and time only), so that an upload
  // still in flight when the job was deleted, or a later one to the same id, is not kept.
  async (db) => {
    await db.schema
      .createTable('deleted_jobs')
      .addColumn('job_id', 'text', (c) => c.primaryKey())
      .addColumn('deleted_at', 'text', (c) => c.notNull())
      .execute();
  },
  // v5, resumable uploads (issue 29): an upload in progress and the encrypted pieces it has so
  // far, shared by every replica so that a resume may land on any of them.
  async (db, engine) => {
    const bigint = engine === 'postgres' ? 'bigint' : 'integer';
    await db.schema
      .createTable('partial_uploads')
      .addColumn('id', 'text', (c) => c.primaryKey())
      .addColumn('job_id', 'text')
      .addColumn('retention', 'text', (c) => c.notNull().check(sql`retention IN ('standard', 'extended')`))
      .addColumn('size', bigint, (c) => c.notNull())
      .addColumn('received', bigint, (c) => c.notNull())
      .addColumn('created_at', 'text', (c) => c.notNull())
      .addColumn('expires_at', 'text', (c) => c.notNull())
      .execute();
    await db.schema.createIndex('partial_uploads_job_id').on('partial_uploads').column('job_id').execute();
    await db.schema
      .createTable('partial_pieces')
      .addColumn('upload_id', 'text', (c) => c.notNull())
      .addColumn('start', bigint, (c) => c.notNull())
      .addColumn('length', bigint, (c) => c.notNull())
      .addColumn('name', 'text', (c) => c.notNull())
      .addColumn('destination', 'text', (c) => c.notNull())
      .addPrimaryKeyConstraint('partial_pieces_pk', ['upload_id', 'start'])
      .execute();
  },
];

export type ArtefactKind = 'file' | 'thumbnail' | 'fingerprint' | 'crash';

/** Where an artefact's bytes are: handed to the render service, or held by scrubline in the data dir or the bucket. */
export type Destination = 'upstream' | 'local' | 'bucket';

export interface ArtefactRecord {
  id: string;
  kind: ArtefactKind;
  /** The file a thumbnail or fingerprint record was made from. */
  parentId?: string | undefined;
  jobId: string | undefined;
  mime: string;
  bytes: number;
  fingerprintId: string;
  destination: Destination;
  retention: Retention;
  createdAt: string;
  expiresAt: string;
  jobFinishedAt?: string | undefined;
  purgedAt?: string | undefined;
  /** What this artefact occupies in its store: data-dir-relative paths, or object keys ([] when held upstream). */
  paths: string[];
  /** JSON of a fingerprint or crash record (never of a file); gone once purged. */
  body?: string | undefined;
}

/** A resumable upload in progress: what it is for and how far it has come. Never a name or a value. */
export interface PartialUpload {
  id: string;
  jobId: string | undefined;
  retention: Retention;
  /** The length the client declared (Upload-Length). */
  size: number;
  /** Bytes received and stored so far: the tus Upload-Offset. */
  received: number;
  createdAt: string;
  expiresAt: string;
}

/** One encrypted piece of a partial upload: bytes start…start+length, in the object `name`. */
export interface PartialPiece {
  start: number;
  length: number;
  name: string;
  destination: Destination;
}

/** Another request appended to the upload first (on this replica or another): nothing was recorded. */
export class OffsetConflict extends Error {}

const partialFromRow = (row: Selectable<PartialUploadsTable>): PartialUpload => ({
  id: row.id,
  jobId: optional(row.job_id),
  retention: row.retention as Retention,
  size: Number(row.size),
  received: Number(row.received),
  createdAt: row.created_at,
  expiresAt: row.expires_at,
});

/** A file's expiry once its job finished: finish time + its retention. */
export type JobExpiry = (retention: Retention, finishedAt: string) => string;

const optional = (value: string | null | undefined): string | undefined => value ?? undefined;

function fromRow(row: Selectable<ArtefactsTable>): ArtefactRecord {
  return {
    id: row.id,
    kind: row.kind as ArtefactKind,
    parentId: optional(row.parent_id),
    jobId: optional(row.job_id),
    mime: row.mime,
    bytes: Number(row.bytes),
    fingerprintId: row.fingerprint_id,
    destination: row.destination as Destination,
    retention: row.retention as Retention,
    createdAt: row.created_at,
    expiresAt: row.expires_at,
    jobFinishedAt: optional(row.job_finished_at),
    purgedAt: optional(row.purged_at),
    paths: JSON.parse(row.paths) as string[],
    body: optional(row.body),
  };
}

/** Where the ledger lives: SQLite in a data dir, or a PostgreSQL database shared by replicas. */
export type LedgerTarget = ({ dataDir: string; databaseUrl?: undefined } | { databaseUrl: string; dataDir?: string | undefined }) & {
  /** Told of each outage a PostgreSQL connection or query met (for the error metric). */
  onOutage?: ((operation: 'connect' | 'query') => void) | undefined;
};

/** The SQLite ledger's file in a data dir. */
export const sqliteFileIn = (dataDir: string): string => path.join(dataDir, 'ledger.sqlite3');

function sqliteDb(dataDir: string): Kysely<Schema> {
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const file = sqliteFileIn(dataDir);
  // Ids, job ids and crash reports are ours alone: the file is made 0600 before SQLite opens it
  // (SQLite would create it 0644; an older ledger may be), and SQLite gives its -wal and -shm
  // files the database's mode when it creates them.
  closeSync(openSync(file, 'a', 0o600));
  chmodSync(file, 0o600);
  return new Kysely<Schema>({ dialect: new SqliteDialect({ database: openSqlite(file) }) });
}

function postgresDb(databaseUrl: string, onOutage: LedgerTarget['onOutage']): Kysely<Schema> {
  const pg = optionalPeer<typeof import('pg')>('pg', 'The PostgreSQL ledger (SCRUBLINE_DATABASE_URL)');
  // bigint (a file's size) as a string would be parsed with Number() anyway; ten connections
  // cover the uploads one replica processes at once.
  // A connection attempt that hangs (a host failing over) fails like a refused one.
  const pool = new pg.Pool({ connectionString: databaseUrl, max: 10, connectionTimeoutMillis: 5_000 });
  return new Kysely<Schema>({ dialect: new PostgresDialect({ pool: surviving(pool, onOutage) }) });
}

/**
 * SQLSTATE classes and socket errors that mean "the database is not there just now", not "this
 * query is wrong": 08 connection exception, 57P01-57P03 admin/crash shutdown and "cannot connect
 * now" (a restart), 53300 too many connections.
 */
const outageCodes = new Set(['ECONNREFUSED', 'ECONNRESET', 'ENOENT', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', '57P01', '57P02', '57P03', '53300']);
export function isOutage(err: unknown): boolean {
  const { code, message } = (err ?? {}) as { code?: unknown; message?: unknown };
  if (typeof code === 'string' && (outageCodes.has(code) || code.startsWith('08'))) return true;
  return typeof message === 'string' && /Connection terminated|connection timeout|timeout exceeded when trying to connect|Client has encountered a connection error|Connection ended/i.test(message);
}

/**
 * The pool as Kysely sees it, made to survive its database (issue 27): `pg_ctl stop -m fast` sends
 * every pooled connection "terminating connection due to administrator command", and pg's pool
 * and clients then emit `error`, which with no listener ends the process. Here each has one: the
 * pool drops a dead idle client itself, a checked-out one is dropped when released, and the next
 * query connects anew once the database is back. While it is away, connecting and querying fail
 * with `ledger_unavailable` (503 with Retry-After) instead of an opaque 500.
 */
function surviving(pool: import('pg').Pool, onOutage: LedgerTarget['onOutage']): PostgresPool {
  const listened = new WeakSet<object>();
  const outage = (operation: 'connect' | 'query') => (err: unknown): unknown => {
    if (!isOutage(err)) return err;
    onOutage?.(operation);
    return ledgerUnavailable(err);
  };
  // A lost idle connection: pg's pool has already removed it.
  pool.on('error', () => undefined);
  return {
    async connect(): Promise<PostgresPoolClient> {
      const client = await pool.connect().catch((err: unknown) => Promise.reject(outage('connect')(err)));
      if (!listened.has(client)) {
        listened.add(client);
        // Lost while checked out: the query in flight fails (below) and the pool drops the client on release.
        client.on('error', () => undefined);
      }
      const query = ((text: unknown, parameters?: unknown) => {
        if (typeof text !== 'string') return client.query(text as never);
        return client.query(text, parameters as unknown[]).catch((err: unknown) => Promise.reject(outage('query')(err)));
      }) as PostgresPoolClient['query'];
      return { query, release: (destroy?: boolean) => client.release(destroy) };
    },
    end: () => pool.end(),
  };
}

/** A number PostgreSQL's advisory locks take for "migrating scrubline's schema" (any fixed 64-bit value). */
const migrationLock = 0x5c4b1e;

async function migrate(db: Kysely<Schema>, engine: Engine): Promise<number> {
  if (engine === 'sqlite') {
    // The SQLite ledger has counted its version in PRAGMA user_version since v1.
    return db.transaction().execute(async (trx) => {
      const { rows } = await sql<{ user_version: number }>`PRAGMA user_version`.execute(trx);
      let version = rows[0]?.user_version ?? 0;
      for (; version < migrations.length; version++) {
        await migrations[version]!(trx, engine);
        await sql.raw(`PRAGMA user_version = ${version + 1}`).execute(trx);
      }
      return version;
    });
  }
  // Replicas that start together migrate one at a time: the lock holds until the transaction ends.
  return db.transaction().execute(async (trx) => {
    await sql`SELECT pg_advisory_xact_lock(${migrationLock})`.execute(trx);
    await sql`CREATE TABLE IF NOT EXISTS scrubline_schema (version integer NOT NULL)`.execute(trx);
    const { rows } = await sql<{ version: number }>`SELECT version FROM scrubline_schema`.execute(trx);
    let version = rows[0]?.version ?? 0;
    if (rows.length === 0) await sql`INSERT INTO scrubline_schema (version) VALUES (0)`.execute(trx);
    for (; version < migrations.length; version++) {
      await migrations[version]!(trx, engine);
      await sql`UPDATE scrubline_schema SET version = ${version + 1}`.execute(trx);
    }
    return version;
  });
}

export class Ledger {
  private constructor(
    private readonly db: Kysely<Schema>,
    readonly engine: Engine,
    readonly schemaVersion: number,
  ) {}

  /** Opens (and migrates) the ledger: a data dir alone is SQLite, a database URL is PostgreSQL. */
  static async open(target: string | LedgerTarget): Promise<Ledger> {
    const where: LedgerTarget = typeof target === 'string' ? { dataDir: target } : target;
    const engine: Engine = where.databaseUrl !== undefined ? 'postgres' : 'sqlite';
    const db = where.databaseUrl !== undefined ? postgresDb(where.databaseUrl, where.onOutage) : sqliteDb(where.dataDir);
    try {
      return new Ledger(db, engine, await migrate(db, engine));
    } catch (err) {
      await db.destroy();
      throw err;
    }
  }

  /** Whether the database answers (readiness). */
  async ping(): Promise<void> {
    await sql`SELECT 1`.execute(this.db);
  }

  /**
   * Serialises the writes of one job on PostgreSQL (a finish report, a deletion and an upload's
   * record of the same job take turns) for the rest of the transaction. SQLite has one writer.
   */
  private async lockJob(trx: Transaction<Schema>, jobId: string): Promise<void> {
    if (this.engine === 'postgres') await sql`SELECT pg_advisory_xact_lock(hashtext(${jobId}))`.execute(trx);
  }

  /**
   * Records artefacts in one transaction; refuses (410 job_deleted, nothing recorded) when any of
   * them belongs to a job deleted meanwhile, so an upload racing its job's deletion is not kept.
   * Every record of a finished job carries the finish time, read here under the job's lock; a file
   * or thumbnail also takes the job's clock (`expiry`), so no file escapes the finish report that
   * raced its upload (on any replica).
   */
  async record(records: ArtefactRecord[], expiry?: JobExpiry): Promise<void> {
    if (records.length === 0) return;
    await this.db.transaction().execute(async (trx) => {
      const jobIds = [...new Set(records.map((r) => r.jobId).filter((j): j is string => j !== undefined))].sort();
      const finished = new Map<string, string>();
      for (const jobId of jobIds) {
        await this.lockJob(trx, jobId);
        if ((await this.jobDeletedAt(jobId, trx)) !== undefined) throw jobDeleted();
        const at = await this.jobFinishedAt(jobId, trx);
        if (at !== undefined) finished.set(jobId, at);
      }
      await trx
        .insertInto('artefacts')
        .values(
          records.map((r) => {
            const finishedAt = r.jobId === undefined ? undefined : finished.get(r.jobId);
            const redate = expiry !== undefined && finishedAt !== undefined && (r.kind === 'file' || r.kind === 'thumbnail');
            return {
              id: r.id,
              kind: r.kind,
              parent_id: r.parentId ?? null,
              job_id: r.jobId ?? null,
              mime: r.mime,
              bytes: r.bytes,
              fingerprint_id: r.fingerprintId,
              destination: r.destination,
              retention: r.retention,
              created_at: r.createdAt,
              expires_at: redate ? expiry(r.retention, finishedAt) : r.expiresAt,
              job_finished_at: finishedAt ?? r.jobFinishedAt ?? null,
              purged_at: null,
              paths: JSON.stringify(r.paths),
              body: r.body ?? null,
            };
          }),
        )
        .execute();
    });
  }

  async get(id: string): Promise<ArtefactRecord | undefined> {
    const row = await this.db.selectFrom('artefacts').selectAll().where('id', '=', id).executeTakeFirst();
    return row ? fromRow(row) : undefined;
  }

  /** The live artefact of `kind` made from a file (its thumbnail, or its fingerprint record). */
  private async childOf(fileId: string, kind: 'thumbnail' | 'fingerprint'): Promise<ArtefactRecord | undefined> {
    const row = await this.db.selectFrom('artefacts').selectAll().where('parent_id', '=', fileId).where('kind', '=', kind).where('purged_at', 'is', null).executeTakeFirst();
    return row ? fromRow(row) : undefined;
  }

  /** The thumbnail made from a file, if one exists and is not purged. */
  thumbnailOf(fileId: string): Promise<ArtefactRecord | undefined> {
    return this.childOf(fileId, 'thumbnail');
  }

  /** The live fingerprint record kept for one file (none for an id that is not a file's). */
  fingerprintOf(fileId: string): Promise<ArtefactRecord | undefined> {
    return this.childOf(fileId, 'fingerprint');
  }

  /** The newest live fingerprint record with this fingerprint id. */
  async fingerprint(fingerprintId: string): Promise<ArtefactRecord | undefined> {
    const row = await this.db
      .selectFrom('artefacts')
      .selectAll()
      .where('fingerprint_id', '=', fingerprintId)
      .where('kind', '=', 'fingerprint')
      .where('purged_at', 'is', null)
      .orderBy('created_at', 'desc')
      .limit(1)
      .executeTakeFirst();
    return row ? fromRow(row) : undefined;
  }

  /** When the job was deleted on request, if it was. */
  async jobDeletedAt(jobId: string, db: Db = this.db): Promise<string | undefined> {
    const row = await db.selectFrom('deleted_jobs').select('deleted_at').where('job_id', '=', jobId).executeTakeFirst();
    return row?.deleted_at;
  }

  /**
   * Marks a job deleted (the first time counts) and returns its live artefacts, in one
   * transaction: an upload recorded before this is in the list, one after it is refused.
   */
  deleteJob(jobId: string, at: string): Promise<ArtefactRecord[]> {
    return this.db.transaction().execute(async (trx) => {
      await this.lockJob(trx, jobId);
      await trx.insertInto('deleted_jobs').values({ job_id: jobId, deleted_at: at }).onConflict((oc) => oc.column('job_id').doNothing()).execute();
      return this.ofJob(jobId, trx);
    });
  }

  async jobFinishedAt(jobId: string, db: Db = this.db): Promise<string | undefined> {
    const row = await db.selectFrom('jobs').select('finished_at').where('job_id', '=', jobId).executeTakeFirst();
    return row?.finished_at;
  }

  /**
   * Records that a job finished (the first report wins, on whichever replica it arrives: a
   * repeated or concurrent report never extends a deadline) and re-dates its live files and
   * thumbnails: finish time + their retention.
   */
  finishJob(jobId: string, at: string, expiry: JobExpiry): Promise<{ finishedAt: string; firstReport: boolean; artefacts: number }> {
    return this.db.transaction().execute(async (trx) => {
      await this.lockJob(trx, jobId);
      const inserted = await trx.insertInto('jobs').values({ job_id: jobId, finished_at: at }).onConflict((oc) => oc.column('job_id').doNothing()).executeTakeFirst();
      const finishedAt = (await this.jobFinishedAt(jobId, trx))!;
      let artefacts = 0;
      for (const retention of ['standard', 'extended'] as const) {
        const updated = await trx
          .updateTable('artefacts')
          .set({ job_finished_at: finishedAt, expires_at: expiry(retention, finishedAt) })
          .where('job_id', '=', jobId)
          .where('retention', '=', retention)
          .where('kind', 'in', ['file', 'thumbnail'])
          .where('purged_at', 'is', null)
          .executeTakeFirst();
        artefacts += Number(updated.numUpdatedRows);
      }
      return { finishedAt, firstReport: Number(inserted.numInsertedOrUpdatedRows ?? 0n) === 1, artefacts };
    });
  }

  /** Live (not purged) artefacts of a job. */
  async ofJob(jobId: string, db: Db = this.db): Promise<ArtefactRecord[]> {
    const rows = await db.selectFrom('artefacts').selectAll().where('job_id', '=', jobId).where('purged_at', 'is', null).orderBy('created_at').orderBy('id').execute();
    return rows.map(fromRow);
  }

  /** Live artefacts whose expiry is at or before `at` (what a dry run lists). */
  async expired(at: string): Promise<ArtefactRecord[]> {
    const rows = await this.db.selectFrom('artefacts').selectAll().where('purged_at', 'is', null).where('expires_at', '<=', at).orderBy('expires_at').orderBy('id').execute();
    return rows.map(fromRow);
  }

  /**
   * Hands `purge` up to `limit` live artefacts expired at `at` (never one in `exclude`), with a
   * `markPurged` to call for each once its bytes are gone; resolves to how many it was handed.
   *
   * The batch is claimed in one transaction that lasts until `purge` is done, so sweepers running
   * at once (replicas on PostgreSQL, or the service and `scrubline sweep` on one SQLite file) each
   * take different rows and each artefact is purged exactly once. A sweeper killed halfway loses
   * its connection, its transaction rolls back, and the rows are free again for the next one
   * (whose deletes of what is already gone are no-ops).
   *   - PostgreSQL: `FOR UPDATE SKIP LOCKED`, so another replica takes the next rows meanwhile.
   *   - SQLite: the transaction takes the write lock first (a write that changes nothing), so a
   *     second sweeper waits for it and then finds these rows purged. Keep `limit` small: an
   *     upload recording meanwhile waits too.
   */
  async claimExpired(
    at: string,
    limit: number,
    exclude: readonly string[],
    purge: (records: ArtefactRecord[], markPurged: (id: string) => Promise<void>) => Promise<void>,
  ): Promise<number> {
    return this.db.transaction().execute(async (trx) => {
      if (this.engine === 'sqlite') await sql`UPDATE artefacts SET id = id WHERE 0 = 1`.execute(trx);
      const records = (
        await trx
          .selectFrom('artefacts')
          .selectAll()
          .where('purged_at', 'is', null)
          .where('expires_at', '<=', at)
          .$if(exclude.length > 0, (q) => q.where('id', 'not in', exclude))
          .orderBy('expires_at')
          .orderBy('id')
          .limit(limit)
          .$if(this.engine === 'postgres', (q) => q.forUpdate().skipLocked())
          .execute()
      ).map(fromRow);
      await purge(records, async (id) => void (await this.markPurged([id], at, trx)));
      return records.length;
    });
  }

  /** Every name a live artefact or a partial upload's piece occupies in this destination (the orphan sweep's "known" set). */
  async livePaths(destination: Destination = 'local'): Promise<Set<string>> {
    const rows = await this.db.selectFrom('artefacts').select('paths').where('purged_at', 'is', null).where('destination', '=', destination).where('paths', '!=', '[]').execute();
    const pieces = await this.db.selectFrom('partial_pieces').select('name').where('destination', '=', destination).execute();
    return new Set([...rows.flatMap((row) => JSON.parse(row.paths) as string[]), ...pieces.map((p) => p.name)]);
  }

  /**
   * Opens a resumable upload. Refused (410 job_deleted, nothing recorded) for a deleted job, under
   * the job's lock, as `record` refuses an upload's files.
   */
  async openPartial(upload: Omit<PartialUpload, 'received'>): Promise<void> {
    await this.db.transaction().execute(async (trx) => {
      if (upload.jobId !== undefined) {
        await this.lockJob(trx, upload.jobId);
        if ((await this.jobDeletedAt(upload.jobId, trx)) !== undefined) throw jobDeleted();
      }
      await trx
        .insertInto('partial_uploads')
        .values({ id: upload.id, job_id: upload.jobId ?? null, retention: upload.retention, size: upload.size, received: 0, created_at: upload.createdAt, expires_at: upload.expiresAt })
        .execute();
    });
  }

  async partial(id: string): Promise<PartialUpload | undefined> {
    const row = await this.db.selectFrom('partial_uploads').selectAll().where('id', '=', id).executeTakeFirst();
    return row ? partialFromRow(row) : undefined;
  }

  /**
   * Records a stored piece and moves the upload's offset past it, only if the offset is still
   * where the piece starts: two requests appending at once (on two replicas) cannot both land,
   * and the loser's piece is not recorded (OffsetConflict; its object is the caller's to remove).
   */
  async appendPiece(id: string, piece: PartialPiece): Promise<void> {
    await this.db.transaction().execute(async (trx) => {
      const moved = await trx
        .updateTable('partial_uploads')
        .set({ received: sql`received + ${piece.length}` })
        .where('id', '=', id)
        .where('received', '=', piece.start)
        .where(sql<boolean>`received + ${piece.length} <= size`)
        .executeTakeFirst();
      if (Number(moved.numUpdatedRows) !== 1) throw new OffsetConflict('the upload moved on, or is gone');
      await trx.insertInto('partial_pieces').values({ upload_id: id, start: piece.start, length: piece.length, name: piece.name, destination: piece.destination }).execute();
    });
  }

  async piecesOf(id: string): Promise<PartialPiece[]> {
    const rows = await this.db.selectFrom('partial_pieces').selectAll().where('upload_id', '=', id).orderBy('start').execute();
    return rows.map((r) => ({ start: Number(r.start), length: Number(r.length), name: r.name, destination: r.destination as Destination }));
  }

  /** Forgets a partial upload; returns the pieces whose objects the caller removes. */
  async closePartial(id: string): Promise<PartialPiece[]> {
    return this.db.transaction().execute(async (trx) => {
      const rows = await trx.selectFrom('partial_pieces').selectAll().where('upload_id', '=', id).execute();
      await trx.deleteFrom('partial_pieces').where('upload_id', '=', id).execute();
      await trx.deleteFrom('partial_uploads').where('id', '=', id).execute();
      return rows.map((r) => ({ start: Number(r.start), length: Number(r.length), name: r.name, destination: r.destination as Destination }));
    });
  }

  /** Ids of partial uploads that expired at `at`, or (with `jobId`) every one of that job. */
  async partialIds(filter: { expiredAt: string } | { jobId: string }): Promise<string[]> {
    const query = this.db.selectFrom('partial_uploads').select('id');
    const rows = await ('jobId' in filter ? query.where('job_id', '=', filter.jobId) : query.where('expires_at', '<=', filter.expiredAt)).orderBy('id').execute();
    return rows.map((r) => r.id);
  }

  /** How many partial uploads are open and how many bytes they declared: what the limits count. */
  async partialTotals(at: string): Promise<{ open: number; bytes: number }> {
    const row = await this.db
      .selectFrom('partial_uploads')
      .select((eb) => [eb.fn.countAll<number | string>().as('open'), eb.fn.sum<number | string | null>('size').as('bytes')])
      .where('expires_at', '>', at)
      .executeTakeFirst();
    return { open: Number(row?.open ?? 0), bytes: Number(row?.bytes ?? 0) };
  }

  async markPurged(ids: string[], at: string, db: Db = this.db): Promise<number> {
    if (ids.length === 0) return 0;
    // Purging a record also drops its JSON: nothing of it stays but ids and times.
    const result = await db.updateTable('artefacts').set({ purged_at: at, body: null }).where('id', 'in', ids).where('purged_at', 'is', null).executeTakeFirst();
    return Number(result.numUpdatedRows);
  }

  /** The audit row of a deletion request: ids, time and counts, nothing else. */
  async recordDeletion(jobId: string, at: string, counts: Record<string, number>, ids: string[]): Promise<void> {
    await this.db.insertInto('deletions').values({ job_id: jobId, requested_at: at, counts: JSON.stringify(counts), artefact_ids: JSON.stringify(ids) }).execute();
  }

  async deletions(jobId: string): Promise<Array<{ requestedAt: string; counts: Record<string, number>; ids: string[] }>> {
    const rows = await this.db.selectFrom('deletions').selectAll().where('job_id', '=', jobId).orderBy('id').execute();
    return rows.map((row) => ({
      requestedAt: row.requested_at,
      counts: JSON.parse(row.counts) as Record<string, number>,
      ids: JSON.parse(row.artefact_ids) as string[],
    }));
  }

  async close(): Promise<void> {
    await this.db.destroy();
  }
}
