/**
 * Whole-file reads of images, into buffers that are used again by the next upload.
 *
 * An image is read whole twice, a few megabytes each: the original for the rebuild and the
 * verifier's reading of the input, then the cleaned file for the rest of verify and the keyed
 * hash (the original's buffer is given back first and usually serves that second read). Each
 * lives for a good part of the upload: long enough to outlive the young generation, so V8 frees
 * them only in a full collection, which it starts itself whenever a few tens of megabytes of such
 * memory have piled up. Under load that was a third of the main thread's busy time (`npm run
 * load`, profiled). Buffers given back by a clean upload are kept (a few, of bounded size) and
 * lent again, so the steady state allocates nothing.
 *
 * A buffer comes back zeroed where it was used: the next upload's view never reaches past its own
 * length, and no byte of one upload stays in memory for the next to hold.
 *
 * Every buffer read here is backed by a SharedArrayBuffer, pooled or not: the verifier's structure
 * thread (verify/structure-thread.ts) checks the cleaned file in this very memory, posted to it
 * without a copy, instead of reading the file again into a buffer of its own (issue 30: ~5 MiB
 * per thread held for good, and a read per photo).
 */
import { open } from 'node:fs/promises';

/** Buffers kept between uploads, and the most bytes they may take together. */
const keepAtMost = 4;
const keptBytesAtMost = 48 * 1024 * 1024;
/** Files larger than this are read into a buffer of their own, as before. */
const largestPooled = 24 * 1024 * 1024;
/** Capacities are whole mebibytes, so a buffer fits the next photo of about the same size. */
const granule = 1024 * 1024;

const free: Buffer[] = [];
/** The view handed out → the buffer behind it. */
const lent = new WeakMap<Buffer, Buffer>();
let held = 0;
/** When a buffer was last lent or given back (performance.now()). */
let lastUse = 0;
const collected = new FinalizationRegistry<number>((bytes) => (held -= bytes));

/** Bytes the pool holds, lent or free (external memory that is not garbage). */
export const pooledBytes = (): number => held;

/** Milliseconds since a buffer was last lent or given back. */
export const poolIdleMs = (): number => performance.now() - lastUse;

/** A buffer another thread can be handed without a copy (zeroed, as a SharedArrayBuffer starts). */
const shared = (bytes: number): Buffer => Buffer.from(new SharedArrayBuffer(bytes));

function take(size: number): Buffer {
  lastUse = performance.now();
  let best = -1;
  for (let i = 0; i < free.length; i++) if (free[i]!.length >= size && (best < 0 || free[i]!.length < free[best]!.length)) best = i;
  if (best >= 0) return free.splice(best, 1)[0]!;
  const buffer = shared(Math.max(1, Math.ceil(size / granule)) * granule);
  held += buffer.length;
  return buffer;
}

/** The whole file, as fs.readFile reads it; give it back with `giveBack` once nothing uses it. */
export async function readWhole(file: string): Promise<Buffer> {
  const handle = await open(file, 'r');
  try {
    const { size } = await handle.stat();
    const pooled = size <= largestPooled;
    const backing = pooled ? take(size) : shared(size);
    let done = 0;
    try {
      while (done < size) {
        const { bytesRead } = await handle.read(backing, done, size - done, done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
    } catch (err) {
      if (pooled) release(backing, done);
      throw err;
    }
    const view = backing.subarray(0, done);
    if (pooled) {
      lent.set(view, backing);
      collected.register(view, backing.length, view);
    }
    return view;
  } finally {
    await handle.close();
  }
}

/**
 * Zeros from here are copied over a buffer given back. V8's own fill of a SharedArrayBuffer stores
 * one byte at a time (each a relaxed atomic store): 0.8 ms for a 5 MB photo on Node 26, 1.5 ms on
 * 22, two per photo. Node's copy moves bytes in bulk: 0.13-0.2 ms for the same.
 */
const zeros = Buffer.alloc(64 * 1024);

/** Sets `bytes` of a pooled buffer to zero. */
function zero(backing: Buffer, bytes: number): void {
  for (let at = 0; at < bytes; at += zeros.length) zeros.copy(backing, at, 0, Math.min(zeros.length, bytes - at));
}

function release(backing: Buffer, used: number): void {
  lastUse = performance.now();
  zero(backing, used);
  free.push(backing);
  // Over the bounds, the largest go: they are the rarest fit and the most memory.
  free.sort((a, b) => a.length - b.length);
  while (free.length > keepAtMost || free.reduce((sum, b) => sum + b.length, 0) > keptBytesAtMost) held -= free.pop()!.length;
}

/**
 * Returns a buffer `readWhole` lent (anything else is ignored), once no reader holds it. A failed
 * upload's work may still be settling, so its buffers are not given back: the garbage collector
 * takes them, and the pool stops counting them then.
 */
export function giveBack(view: Buffer | undefined): void {
  const backing = view === undefined ? undefined : lent.get(view);
  if (backing === undefined) return;
  lent.delete(view!);
  collected.unregister(view!);
  release(backing, view!.length);
}

/**
 * Drops the buffers kept for the next upload (lent ones are untouched) and says how many bytes
 * that frees once collected. A service gone quiet, or busy with a video that needs none of them,
 * should not hold a few photos' worth of zeros.
 */
export function trimPool(): number {
  const bytes = free.reduce((sum, b) => sum + b.length, 0);
  free.length = 0;
  held -= bytes;
  return bytes;
}
