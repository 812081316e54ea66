/**
 * Resumable uploads in progress (issue 29), as @tus/server's DataStore. A partial upload is an
 * original: it carries GPS until it is cleaned. So it is stored as any object scrubline keeps:
 *
 *   - in pieces of at most `pieceBytes`, each sealed in its own envelope (storage/envelope.ts)
 *     under its own name, in the keeping store: the bucket when there is one (every replica reads
 *     it, so a resume may land anywhere), else the data dir. No plaintext byte reaches a disk;
 *   - with its offset and pieces in the ledger, shared by replicas. A piece is stored first and
 *     recorded second, and only if the offset is still where the piece starts (two requests
 *     appending at once, on two replicas, cannot both land: the loser's piece is removed);
 *   - until it expires (`ttlMs` after creation, the tus expiration extension) or ends: finished
 *     (assembled into the temp dir for the pipeline, then removed whatever the verdict),
 *     terminated by the client, or removed with its job.
 *
 * What a dropped connection delivered is kept: the bytes held when the request body ends or
 * fails are sealed as a piece, so the client resumes from the last byte that arrived.
 */
import { open } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { DataStore, ERRORS, Upload } from '@tus/utils';
import type { Retention } from '../context.js';
import { sealedBytes, sealInto, segmentsOf, type Keyring } from './envelope.js';
import { OffsetConflict, type Ledger, type PartialUpload } from './ledger.js';
import { storeOf, type ObjectStore, type Stores } from './objects.js';
import { collectYoung } from '../gc.js';

/**
 * The most of a partial upload held in memory per request, and the size of each stored piece.
 * Small, because what a request leaves behind is garbage until the next full collection. A 1 GiB
 * upload through bin/serve.sh in 64 MiB PATCHes peaked at 225 MiB RSS with 8 MiB pieces, 205
 * with 4, 175 with 2 and 161–170 with 1 (a multipart POST of the same file: 151). A 1 GiB upload
 * is 1024 objects. Each request holds two buffers, used again piece after piece: the piece as it
 * arrives, and the piece sealed (`sealInto`). Sealing into a fresh buffer per segment, held
 * across the write, made ~1 MiB of old-generation garbage per piece: the upload's malloc heap
 * stood at 43–56 MiB instead of 20–28 (issue 30, `npm run load`, sampled every 100 ms).
 */
export const pieceBytes = 1024 * 1024;

/** What the assembly gathers before each write to the assembled file. */
const assembleBytes = 1024 * 1024;

export interface PartialStoreOptions {
  ledger: Ledger;
  stores: Stores;
  /** Where pieces are written: the bucket when there is one, else the data dir. */
  store: ObjectStore;
  storage: Keyring;
  /** How long a partial upload may live from its creation. */
  ttlMs: number;
  now?: () => Date;
}

/** What the client's Upload-Metadata said, once checked (by the endpoint, before `create`). */
export interface PartialFields {
  jobId: string | undefined;
  retention: Retention;
}

export class PartialStore extends DataStore {
  /** Checked fields of uploads being created, by id: set by the endpoint's creation hook. */
  readonly creating = new Map<string, PartialFields>();
  /**
   * Uploads whose last byte arrived and whose request is still being answered, by id, with their
   * length: complete, though their row and pieces are gone. The tus library reads the upload back
   * after a creation request that carried the whole file; it finds it complete, not missing.
   */
  readonly finishing = new Map<string, number>();

  constructor(private readonly options: PartialStoreOptions) {
    super();
    // No creation-defer-length: the length is known up front, so the limits count it at creation.
    this.extensions = ['creation', 'creation-with-upload', 'termination', 'expiration'];
  }

  private now(): Date {
    return this.options.now?.() ?? new Date();
  }

  override async create(upload: Upload): Promise<Upload> {
    const fields = this.creating.get(upload.id);
    this.creating.delete(upload.id);
    if (fields === undefined || upload.size === undefined) throw ERRORS.INVALID_LENGTH;
    const created = this.now();
    await this.options.ledger.openPartial({
      id: upload.id,
      jobId: fields.jobId,
      retention: fields.retention,
      size: upload.size,
      createdAt: created.toISOString(),
      expiresAt: new Date(created.getTime() + this.options.ttlMs).toISOString(),
    });
    // Returned as given. A POST that carried the whole file is finished before the library reads
    // the upload back, and finds it complete (`finishing`).
    return upload;
  }

  /** The upload as the ledger has it, live; 404 when unknown or already ended, 410 when expired. */
  async live(id: string): Promise<PartialUpload> {
    const partial = await this.options.ledger.partial(id);
    if (partial === undefined) throw ERRORS.FILE_NOT_FOUND;
    if (partial.expiresAt <= this.now().toISOString()) throw ERRORS.FILE_NO_LONGER_EXISTS;
    return partial;
  }

  override async getUpload(id: string): Promise<Upload> {
    const finished = this.finishing.get(id);
    if (finished !== undefined) return new Upload({ id, size: finished, offset: finished });
    const partial = await this.live(id);
    // tus measures an upload's age against the system clock; given here is the creation date with
    // the age the upload has on ours (the same date, unless a clock was injected).
    const age = this.now().getTime() - Date.parse(partial.createdAt);
    // No metadata: a HEAD never echoes what the client sent.
    return new Upload({ id, size: partial.size, offset: partial.received, creation_date: new Date(Date.now() - age).toISOString() });
  }

  override async write(body: Readable, id: string, offset: number): Promise<number> {
    const partial = await this.live(id);
    if (partial.received !== offset) throw ERRORS.INVALID_OFFSET;
    let at = offset;
    // Two buffers per request, filled and emptied piece after piece: the piece, and the piece sealed.
    const held = Buffer.allocUnsafe(pieceBytes);
    const sealed = Buffer.allocUnsafe(sealedBytes(pieceBytes));
    let heldBytes = 0;
    const storeHeld = async (): Promise<void> => {
      await this.storePiece(partial, at, held.subarray(0, heldBytes), sealed);
      at += heldBytes;
      heldBytes = 0;
      // The piece's request chunks and cipher output are dead, and young (see assemble).
      collectYoung();
    };
    let failure: unknown;
    try {
      for await (const chunk of body) {
        let bytes = chunk as Buffer;
        while (bytes.length > 0) {
          const taken = bytes.copy(held, heldBytes);
          heldBytes += taken;
          bytes = bytes.subarray(taken);
          if (heldBytes === pieceBytes) await storeHeld();
        }
      }
    } catch (err) {
      failure = err;
    }
    // What arrived before the connection dropped is kept: the client resumes after it.
    if (heldBytes > 0) await storeHeld();
    if (failure !== undefined) throw failure;
    return at;
  }

  /**
   * Seals one piece into `out` and stores it, then records it; a piece that lost the race for its
   * offset is removed.
   */
  private async storePiece(partial: PartialUpload, start: number, bytes: Buffer, out: Buffer): Promise<void> {
    const { store, storage, ledger } = this.options;
    const name = store.nameFor('partial', `${partial.id}_${start}`, 'part', undefined);
    const length = sealInto(storage, name, bytes, out);
    await store.put(name, out.subarray(0, length), length, { retention: partial.retention });
    try {
      await ledger.appendPiece(partial.id, { start, length: bytes.length, name, destination: store.destination });
    } catch (err) {
      await store.delete(name).catch(() => undefined);
      throw err instanceof OffsetConflict ? ERRORS.INVALID_OFFSET : err;
    }
  }

  /**
   * Decrypts the whole upload into `target` (a 0600 file in the upload's temp dir), proving each
   * piece and that they cover 0…size without a gap. Throws when anything is missing or altered.
   */
  async assemble(partial: PartialUpload, target: string): Promise<void> {
    const pieces = await this.options.ledger.piecesOf(partial.id);
    let expected = 0;
    for (const piece of pieces) {
      if (piece.start !== expected) throw new Error('the upload\'s pieces do not follow each other');
      expected += piece.length;
    }
    if (expected !== partial.size) throw new Error('the upload\'s pieces do not add up to its length');
    const { stores, storage } = this.options;
    // Each decrypted segment is copied into one buffer as it comes, and the buffer written when
    // full: no segment is held across a write, and so none outlives the young generation.
    const gathered = Buffer.allocUnsafe(assembleBytes);
    let filled = 0;
    const out = await open(target, 'wx', 0o600);
    try {
      for (const piece of pieces) {
        const store = storeOf(stores, piece.destination);
        if (store === undefined) throw new Error('a piece lies in a store not configured here');
        let length = 0;
        for await (const segment of segmentsOf(storage, piece.name, await store.get(piece.name))) {
          length += segment.length;
          if (filled + segment.length > gathered.length) {
            await out.writeFile(gathered.subarray(0, filled));
            filled = 0;
          }
          filled += segment.copy(gathered, filled);
        }
        if (length !== piece.length) throw new Error('a piece is not the length recorded');
        // A piece's read chunks and decrypted segments are dead now, and young: freed here, they
        // leave the heap as small as it was. Left to V8's schedule, 30-40 MiB of them stood at
        // a time through the assembly of a 1 GiB upload, and the process kept the heap they grew
        // (issue 30: the resumable phase's RSS 131-136 MiB during assembly, 109-117 with this).
        collectYoung();
      }
      await out.writeFile(gathered.subarray(0, filled));
    } finally {
      await out.close();
    }
  }

  /** Forgets an upload and removes its pieces (termination, finish). */
  override async remove(id: string): Promise<void> {
    await removePartials(this.options.ledger, this.options.stores, [id]);
  }

  /** Removes every expired partial upload; the number removed. */
  override async deleteExpired(): Promise<number> {
    return removePartials(this.options.ledger, this.options.stores, await this.options.ledger.partialIds({ expiredAt: this.now().toISOString() }));
  }

  override getExpiration(): number {
    return this.options.ttlMs;
  }
}

/**
 * Forgets partial uploads and removes their pieces: by the endpoint, the sweeper (expired ones)
 * and a job's deletion. The rows go first, so a request still appending finds its upload gone and
 * removes its own piece; a piece whose removal fails is an orphan, which the orphan sweep takes.
 */
export async function removePartials(ledger: Ledger, stores: Stores, ids: readonly string[]): Promise<number> {
  for (const id of ids) {
    const pieces = await ledger.closePartial(id);
    for (const piece of pieces) await storeOf(stores, piece.destination)?.delete(piece.name);
  }
  return ids.length;
}
