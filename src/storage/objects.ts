/**
 * Where scrubline keeps the objects it stores itself (cleaned files and their reports in the
 * local sink, thumbnails): the data dir, or an S3-compatible bucket (storage/bucket.ts) that
 * every replica reads. Either way an object is an envelope (storage/envelope.ts), sealed under
 * its name in the store, so the store's operator holds only ciphertext.
 *
 * Names are built from ids by scrubline, and a store refuses any other: a ledger row is never
 * trusted to name a path or key of its choosing (THREATS 42).
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { lstat, mkdir, readdir, realpath, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Retention } from '../context.js';
import type { Destination } from './ledger.js';

/** What an object is, for the names a store gives it and the tags it carries. */
export type ObjectRole = 'file' | 'report' | 'thumbnail' | 'partial';

export interface ObjectInfo {
  /** Its retention class, which a bucket tags the object with (a lifecycle rule's backstop). */
  retention: Retention;
}

/** A name a store will not touch: not one scrubline builds. Reported, never followed. */
export class ForeignName extends Error {}

/** The object is not (or no longer) in the store. */
export class MissingObject extends Error {}

export interface ObjectStore {
  /** How the ledger records what lies here. */
  readonly destination: Extract<Destination, 'local' | 'bucket'>;
  /** The name of an object of `role` for file `id` (of job `jobId`, with extension `ext`). */
  nameFor(role: ObjectRole, id: string, ext: string, jobId: string | undefined): string;
  /** Stores `length` bytes under `name`, whole or not at all (a reader never sees half). */
  put(name: string, body: Readable | Buffer, length: number, info: ObjectInfo): Promise<void>;
  /** The object's bytes. Throws MissingObject when it is not there. */
  get(name: string): Promise<AsyncIterable<Uint8Array>>;
  /** Removes an object; one already gone is no error. Throws ForeignName for a name not ours. */
  delete(name: string): Promise<void>;
  /** Every object name in the store with its age, for the orphan sweep. */
  list(): AsyncIterable<{ name: string; modifiedMs: number }>;
  /**
   * A local store: moves `staged`, a complete object already sealed under `name` on the same file
   * system (an upload's work dir), into place, whole or not at all as `put` is.
   */
  adopt?(name: string, staged: string): Promise<void>;
  /** A cheap request that fails when the store cannot be reached (for /readyz); a local store has none. */
  ping?(): Promise<void>;
  /** A bucket: aborts multipart uploads older than the grace period (parts of a write that died); how many. */
  abortStaleUploads?(at: Date, graceMs: number): Promise<number>;
}

/** The stores artefacts can lie in: the data dir always, a bucket when one is configured. */
export interface Stores {
  local: ObjectStore;
  bucket?: ObjectStore | undefined;
}

export const storesFor = (dataDir: string, bucket?: ObjectStore): Stores => ({ local: new LocalStore(dataDir), bucket });

/** Where scrubline writes what it keeps itself (files without an upstream, thumbnails): the bucket when there is one. */
export const keepingStore = (stores: Stores): ObjectStore => stores.bucket ?? stores.local;

/** The store a ledger row's bytes lie in; none for what went to the render service, or a store not configured here. */
export function storeOf(stores: Stores, destination: Destination): ObjectStore | undefined {
  return destination === 'local' ? stores.local : destination === 'bucket' ? stores.bucket : undefined;
}

/**
 * The data-dir folders a local store writes. Every plain file in them is the store's: an object,
 * or what a crash left half written (`*.partial`), which the orphan sweep removes.
 */
export const storedDirs = ['clean', 'reports', 'thumbnails', 'partials'];
const localName = new RegExp(`^(?:${storedDirs.join('|')})/[A-Za-z0-9_-][A-Za-z0-9._-]*$`);

/**
 * Objects as files in the data dir: `clean/<id>.<ext>.enc`, `reports/<id>.json.enc`,
 * `thumbnails/<id>.jpg.enc`, and a resumable upload's pieces, `partials/<upload>_<start>.part.enc`.
 */
export class LocalStore implements ObjectStore {
  readonly destination = 'local';

  constructor(readonly dataDir: string) {}

  nameFor(role: ObjectRole, id: string, ext: string): string {
    if (role === 'file') return `clean/${id}.${ext}.enc`;
    if (role === 'report') return `reports/${id}.json.enc`;
    if (role === 'partial') return `partials/${id}.part.enc`;
    return `thumbnails/${id}.jpg.enc`;
  }

  /**
   * A name's path, only for a name of ours whose folder is really inside the data dir (checked on
   * the real path, not the text: a folder that is a link leading out is refused, THREATS 42).
   */
  private async pathOf(name: string): Promise<string> {
    if (!localName.test(name)) throw new ForeignName('a name outside the data dir stored folders');
    const folder = name.split('/')[0]!;
    const root = await realpath(this.dataDir);
    const real = await realpath(path.join(root, folder)).catch(() => undefined);
    if (real !== undefined && real !== path.join(root, folder)) throw new ForeignName('a path through a link that leads out of the data dir');
    return path.join(root, name);
  }

  async put(name: string, body: Readable | Buffer, _length: number, _info: ObjectInfo): Promise<void> {
    const target = await this.pathOf(name);
    await mkdir(path.dirname(target), { recursive: true, mode: 0o700 });
    // Written under a temporary name and renamed into place, so a crash never leaves a
    // half-written object that looks complete.
    const partial = `${target}.partial`;
    try {
      const out = createWriteStream(partial, { mode: 0o600, flags: 'wx', flush: true });
      await pipeline(Buffer.isBuffer(body) ? [body] : body, out);
      await rename(partial, target);
    } catch (err) {
      await rm(partial, { force: true });
      throw err;
    }
  }

  async adopt(name: string, staged: string): Promise<void> {
    const target = await this.pathOf(name);
    await mkdir(path.dirname(target), { recursive: true, mode: 0o700 });
    await rename(staged, target);
  }

  async get(name: string): Promise<AsyncIterable<Uint8Array>> {
    const file = await this.pathOf(name);
    const info = await lstat(file).catch(() => undefined);
    if (!info?.isFile()) throw new MissingObject('not stored');
    return createReadStream(file, { highWaterMark: 256 * 1024 });
  }

  async delete(name: string): Promise<void> {
    const file = await this.pathOf(name);
    const info = await lstat(file).catch(() => undefined);
    if (!info) return;
    if (!info.isFile() && !info.isSymbolicLink()) throw new ForeignName('a path that is not a file');
    await rm(file, { force: true });
  }

  /** A stored folder that is a link is not read: its files are not ours to judge. */
  async *list(): AsyncIterable<{ name: string; modifiedMs: number }> {
    for (const dir of storedDirs) {
      const folder = await lstat(path.join(this.dataDir, dir)).catch(() => undefined);
      if (!folder?.isDirectory()) continue;
      for (const entry of await readdir(path.join(this.dataDir, dir)).catch(() => [] as string[])) {
        const info = await lstat(path.join(this.dataDir, dir, entry)).catch(() => undefined);
        if (info?.isFile()) yield { name: `${dir}/${entry}`, modifiedMs: info.mtimeMs };
      }
    }
  }
}
