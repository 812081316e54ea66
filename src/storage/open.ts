/**
 * The service's storage as its configuration names it, for the server and the CLI alike: the
 * ledger (SQLite in the data dir, or PostgreSQL at SCRUBLINE_DATABASE_URL) and the stores (the
 * data dir, plus the bucket of an s3:// SCRUBLINE_UPSTREAM_URL).
 */
import { existsSync } from 'node:fs';
import type { Config } from '../config.js';
import { BucketStore, parseBucketUrl, type BucketOperation } from './bucket.js';
import { Ledger, sqliteFileIn } from './ledger.js';
import { storesFor, type Stores } from './objects.js';

export interface Storage {
  ledger: Ledger;
  stores: Stores;
  bucket: BucketStore | undefined;
  close(): Promise<void>;
}

export const isBucketUrl = (url: URL | undefined): url is URL => url?.protocol === 's3:';

/**
 * Whether there is a ledger to read: a PostgreSQL URL, or a SQLite file already in the data dir
 * (the CLI's sweep and repro would otherwise make an empty one where the service keeps none).
 */
export const ledgerExists = (config: Config): boolean => config.databaseUrl !== undefined || existsSync(sqliteFileIn(config.dataDir));

/** The ledger the configuration names. */
export async function openLedger(config: Config, onOutage?: StorageErrors['ledger']): Promise<Ledger> {
  try {
    return await Ledger.open(config.databaseUrl === undefined ? { dataDir: config.dataDir } : { databaseUrl: config.databaseUrl, dataDir: config.dataDir, onOutage });
  } catch (err) {
    // The URL may hold a password: the message names the variable, never its value.
    if (config.databaseUrl === undefined) throw err;
    throw new Error(`the PostgreSQL ledger (SCRUBLINE_DATABASE_URL) could not be opened: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
}

/** Told of each failed request to the ledger's database or the bucket (the service counts them). */
export interface StorageErrors {
  ledger?: (operation: 'connect' | 'query') => void;
  bucket?: (operation: BucketOperation) => void;
}

export async function openStorage(config: Config, errors: StorageErrors = {}): Promise<Storage> {
  const bucket = isBucketUrl(config.upstreamUrl)
    ? new BucketStore({ ...parseBucketUrl(config.upstreamUrl), sse: config.s3Sse, kmsKeyId: config.s3KmsKeyId, forcePathStyle: config.s3ForcePathStyle, onError: errors.bucket })
    : undefined;
  const ledger = await openLedger(config, errors.ledger).catch((err: unknown) => {
    bucket?.close();
    throw err;
  });
  return {
    ledger,
    bucket,
    stores: storesFor(config.dataDir, bucket),
    close: async () => {
      await ledger.close();
      bucket?.close();
    },
  };
}
