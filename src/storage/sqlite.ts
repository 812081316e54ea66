/**
 * The SQLite ledger's driver: Node's built-in `node:sqlite` (Node ≥ 22.16), behind the interface
 * Kysely's SQLite dialect takes. Built in, it needs no native addon, so no compiler and no build
 * per Node line: the same install runs on 22, 24 and 26, in the image's final stage as on a
 * laptop. (better-sqlite3 12 stops at Node 24, where it crashes on a statement's finaliser; 13
 * would still be a native build per Node line.)
 */
import type { SqliteDatabase } from 'kysely';
import type { SQLInputValue } from 'node:sqlite';

type NodeSqlite = typeof import('node:sqlite');

/** Opens (creating) the database file, in WAL mode, waiting up to 5 s for another writer's lock. */
export function openSqlite(file: string): SqliteDatabase {
  const { DatabaseSync } = process.getBuiltinModule('node:sqlite') as NodeSqlite;
  const db = new DatabaseSync(file);
  db.exec('PRAGMA journal_mode = WAL');
  db.exec('PRAGMA busy_timeout = 5000');
  return {
    close: () => db.close(),
    prepare(sql) {
      const statement = db.prepare(sql);
      // Kysely binds what SQLite takes: numbers, strings, bigints, bytes and null.
      const values = (parameters: ReadonlyArray<unknown>): SQLInputValue[] => parameters as SQLInputValue[];
      return {
        // A statement that yields columns is read with all(); one that does not, with run().
        reader: statement.columns().length > 0,
        all: (parameters) => statement.all(...values(parameters)),
        run: (parameters) => statement.run(...values(parameters)),
        iterate: (parameters) => statement.iterate(...values(parameters)),
      };
    },
  };
}
