/**
 * The verifier's structure check of a cleaned image (verify/structure-image.ts) on threads of its
 * own. For a JPEG that check walks every scan's coded data, about as costly as libjpeg's decode
 * (~45 ms for a 5 MB, 12 MP photo): on the main thread it was the longest step of an upload,
 * with the tag readers, the value scan's patterns and the keyed hash waiting behind it. On its
 * own thread it runs beside them, so an upload on two cores takes the longer, not the sum.
 *
 * The same code runs either way, on the same bytes: the thread is handed the verifier's own read
 * of the cleaned file, a buffer backed by a SharedArrayBuffer (buffers.ts), without a copy, and
 * answers the same report. Nothing writes that buffer until the report is in (the verifier gives
 * it back to the pool only after, and a failed upload's never). A batch worker of `scrubline
 * strip` already has a core of its own and runs the check in line, as does a buffer that is not
 * shared. Threads start on first use, one per core but one (at least one), never keep the
 * process alive, and end after `idleEndMs` without work: a thread's heap alone is ~9 MiB, which a
 * service busy with videos, or quiet, has no use for. A new one starts with the next image:
 * ~50-70 ms of CPU to load its modules (measured from dist/), beside the rest of verify.
 */
import { availableParallelism } from 'node:os';
import { isMainThread, Worker } from 'node:worker_threads';
import { ScrubError, type ErrorCode } from '../errors.js';
import type { ImageFormat } from '../media.js';
import type { StructureReport } from './structure-image.js';

/** What a thread is posted, and what it answers (structured clones: a Buffer arrives as a Uint8Array). */
export interface StructureJob {
  id: number;
  format: ImageFormat;
  /** The cleaned file's bytes, over a SharedArrayBuffer: the thread reads them where they are. */
  bytes: Uint8Array;
  /** Whether a JPEG's picture at 1/8 scale is wanted too (StructureReport.dcPicture). */
  dc: boolean;
}

export type StructureAnswer =
  | { id: number; report: StructureReport; refused?: undefined; failed?: undefined }
  | { id: number; refused: { code: ErrorCode; publicMessage: string; reason: string | undefined; message: string }; report?: undefined; failed?: undefined }
  | { id: number; failed: { code?: string | undefined; message: string }; report?: undefined; refused?: undefined };

interface Thread {
  worker: Worker;
  jobs: Map<number, { resolve(report: StructureReport): void; reject(err: Error): void }>;
  /** Ends the thread once it has had no work for `idleEndMs`; refreshed by each answer. */
  idle: NodeJS.Timeout;
}

const idleEndMs = 5000;

const threads: Thread[] = [];
let nextId = 0;
const size = Math.max(1, availableParallelism() - 1);

function startThread(): Thread {
  // Under tsx (tests, scripts) this module is a .ts file and so is the thread's; the thread
  // inherits the loader with the parent's flags.
  const entry = new URL(import.meta.url.endsWith('.ts') ? './structure-worker.ts' : './structure-worker.js', import.meta.url);
  // A small young generation, as the service's own (bin/serve.sh): the garbage of a check is a
  // few small objects, and its megabytes are buffers outside the heap.
  const worker = new Worker(entry, { resourceLimits: { maxYoungGenerationSizeMb: 2 } });
  const idle = setTimeout(() => {
    if (thread.jobs.size > 0) return;
    // Out of the list first: no job is posted to a thread that is ending.
    const at = threads.indexOf(thread);
    if (at >= 0) threads.splice(at, 1);
    void worker.terminate();
  }, idleEndMs).unref();
  const thread: Thread = { worker, jobs: new Map(), idle };
  thread.worker.on('message', (answer: StructureAnswer) => {
    const job = thread.jobs.get(answer.id);
    thread.jobs.delete(answer.id);
    if (thread.jobs.size === 0) {
      thread.worker.unref();
      thread.idle.refresh();
    }
    if (!job) return;
    if (answer.report) job.resolve(received(answer.report));
    else if (answer.refused) job.reject(new ScrubError(answer.refused.code, answer.refused.publicMessage, { reason: answer.refused.reason, internal: answer.refused.message }));
    else job.reject(Object.assign(new Error(answer.failed.message), { code: answer.failed.code }));
  });
  // A thread that dies fails what it held (fail closed: the uploads are refused with a 500); the
  // next check starts a new one.
  const fail = (err: Error): void => {
    clearTimeout(thread.idle);
    const at = threads.indexOf(thread);
    if (at >= 0) threads.splice(at, 1);
    for (const job of thread.jobs.values()) job.reject(err);
    thread.jobs.clear();
  };
  thread.worker.on('error', fail);
  thread.worker.on('exit', (code) => fail(new Error(`structure thread exited with code ${code}`)));
  // After the listeners: adding a 'message' listener refs the thread again.
  thread.worker.unref();
  threads.push(thread);
  return thread;
}

/** Threads running now (for tests: they end when idle). */
export const structureThreads = (): number => threads.length;

/** The report as the check made it: its byte signatures, picture and colour profile as Buffers again. */
function received(report: StructureReport): StructureReport {
  const buffer = (bytes: Uint8Array): Buffer => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const picture = report.dcPicture;
  return {
    ...report,
    forbidden: report.forbidden.map((f) => ({ ...f, bytes: buffer(f.bytes) })),
    ...(picture && { dcPicture: { ...picture, pixels: buffer(picture.pixels), icc: picture.icc && buffer(picture.icc) } }),
  };
}

/**
 * The structure report of the cleaned image `bytes`, made on a thread; undefined on a worker
 * thread already (a batch worker), or for bytes not over a SharedArrayBuffer (a thread would get a
 * copy), where the caller checks in line with `checkImageStructure`. The caller must not write
 * `bytes` until the promise settles.
 */
export function structureOnThread(format: ImageFormat, bytes: Buffer, { dc = false } = {}): Promise<StructureReport> | undefined {
  if (!isMainThread || !(bytes.buffer instanceof SharedArrayBuffer)) return undefined;
  // The least busy thread, or a new one while there are fewer than `size`.
  let thread = threads.reduce<Thread | undefined>((best, t) => (best && best.jobs.size <= t.jobs.size ? best : t), undefined);
  if (!thread || (thread.jobs.size > 0 && threads.length < size)) thread = startThread();
  const id = nextId++;
  const chosen = thread;
  return new Promise<StructureReport>((resolve, reject) => {
    chosen.jobs.set(id, { resolve, reject });
    chosen.worker.ref();
    chosen.worker.postMessage({ id, format, bytes, dc } satisfies StructureJob);
  });
}
