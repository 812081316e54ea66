/**
 * The worker pool of `scrubline strip`: a batch spread over one worker thread per core.
 *
 * Why workers: rebuilding, the value scan and the keyed hash are JavaScript, so one Node thread
 * uses one core however many files are in flight. This module loads none of the pipeline, so a
 * batch's main thread starts its workers at once and they load it while the key is read.
 */
import { setFlagsFromString } from 'node:v8';
import { Worker } from 'node:worker_threads';
import type { StripJob, StripOutcome } from './strip.js';
import type { Config } from '../config.js';
import { loadFingerprintKey } from '../storage/keys.js';

/** Below this many files a batch runs on the main thread: starting workers costs more. */
export const minFilesForWorkers = 4;

/**
 * Files in flight on each worker. With two, a worker still idled ~15% of the time (a profile of
 * 100 photos); with three, a batch of 100 took 3.4–3.5 s instead of 3.5–3.6 (in turns, 2 cores);
 * four gained nothing more, and a third worker lost (4.0 s).
 */
const inFlightPerWorker = 3;

/** Initial old-generation size of each worker's heap (see stripInWorkers). */
const workerInitialOldSpaceMiB = 64;

/**
 * What a worker needs from the main thread: found once there, not once per worker. (ffmpeg is
 * not: each thread looks it up when it first meets a video, see strip.ts pipelineDeps, so a
 * batch of photos never runs it.)
 */
export interface SharedDeps {
  fingerprintKey: Uint8Array;
}

export async function sharedDeps(config: Config): Promise<SharedDeps> {
  return { fingerprintKey: loadFingerprintKey(config.dataDir, config.fingerprintKey) };
}

/** What the main thread posts to a worker: the shared dependencies once, then jobs. */
export type ToWorker = { kind: 'init'; shared: SharedDeps } | { kind: 'job'; job: StripJob };

/**
 * Spreads jobs over `size` worker threads, `inFlightPerWorker` at a time on each, so that one
 * file's reads, writes and libvips header reads overlap the others' CPU work; `onOutcome` is
 * called on the main thread as each job ends. The workers are started before `shared` settles;
 * if it fails they are stopped and its error is thrown.
 */
export async function stripInWorkers(
  jobs: StripJob[],
  size: number,
  shared: Promise<SharedDeps>,
  onOutcome: (outcome: StripOutcome) => void,
): Promise<void> {
  // A worker's heap stays ~10 MiB, so V8's old-generation limit sits just above it and every photo
  // or two (each promotes a little while its multi-megabyte buffers trigger scavenges) costs a
  // full mark-compact. Started at 64 MiB, the workers collect far less often: 100 photos took
  // 1.8 s instead of 2.4-2.8 s here (2 cores), sys time halved. V8 reads the flag when an isolate
  // is created, so it applies to the workers made below and not to this thread.
  setFlagsFromString(`--initial-old-space-size=${workerInitialOldSpaceMiB}`);
  // Under tsx (tests, scripts) this module is a .ts file and so is its worker.
  const entry = new URL(import.meta.url.endsWith('.ts') ? './worker.ts' : './worker.js', import.meta.url);
  const workers = Array.from({ length: Math.min(size, jobs.length) }, () => new Worker(entry));
  let ready: SharedDeps;
  try {
    ready = await shared;
  } catch (err) {
    await Promise.all(workers.map((worker) => worker.terminate()));
    throw err;
  }
  let next = 0;
  const drain = (worker: Worker): Promise<void> =>
    new Promise((resolve, reject) => {
      let inFlight = 0;
      const post = (message: ToWorker): void => worker.postMessage(message);
      const feed = (): void => {
        const left = jobs.length - next;
        if (left === 0) {
          if (inFlight === 0) void worker.terminate().then(() => resolve());
          return;
        }
        // The last few go one to a worker that has none left, not three deep to whichever worker
        // asks first: queued behind two others on one core, a batch's last file kept it busy
        // while the other core idled (~130 ms of a 100-photo batch's end, in a profile).
        if (inFlight < (left >= workers.length * inFlightPerWorker ? inFlightPerWorker : 1)) {
          inFlight++;
          post({ kind: 'job', job: jobs[next++]! });
        }
      };
      worker.on('message', (outcome: StripOutcome) => {
        inFlight--;
        onOutcome(outcome);
        feed();
      });
      worker.once('error', reject);
      // Queued until the worker has loaded the pipeline and listens.
      post({ kind: 'init', shared: ready });
      // (Once a feed finds no job and nothing in flight, it has ended the worker: no more.)
      for (let i = 0; i < inFlightPerWorker && (i === 0 || inFlight > 0); i++) feed();
    });
  await Promise.all(workers.map(drain));
}
