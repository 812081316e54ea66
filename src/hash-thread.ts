/**
 * HMAC-SHA256 of a file on a thread of its own. Node hashes on the thread that calls update(),
 * and a video's keyed hash (~0.5 ms per MB with SHA-NI) would share the main thread with the
 * value scan of the same file, which runs at the same time: on two cores, side by side they take
 * the longer of the two instead of the sum. One thread per process (or per batch worker), started
 * on first use or by `startHashThread`, never keeping the process alive, and ended after
 * `idleEndMs` without work (a thread's heap and buffer are ~10 MiB that photos have no use for).
 */
import { Worker } from 'node:worker_threads';

/** What the thread is posted, and what it answers (its source below is untyped JavaScript). */
interface HashJob {
  id: number;
  path: string;
  key: Uint8Array;
}

type HashAnswer = { id: number; hex: string; error?: undefined } | { id: number; error: { code?: string | undefined; message: string } };

interface Pending {
  resolve(hex: string): void;
  reject(err: Error): void;
}

/**
 * The thread's whole program. Plain JavaScript run with `eval`, so it starts the same under tsx
 * (tests, scripts) and from dist, with no loader to set up. Blocking reads are fine on a thread
 * that does nothing else; one reused buffer makes no garbage per megabyte.
 */
const threadSource = `
const { createHmac } = require('node:crypto');
const { closeSync, openSync, readSync } = require('node:fs');
const { parentPort } = require('node:worker_threads');
const buffer = Buffer.allocUnsafe(1024 * 1024);
parentPort.on('message', ({ id, path, key }) => {
  try {
    const hmac = createHmac('sha256', key);
    const fd = openSync(path, 'r');
    try {
      for (let n; (n = readSync(fd, buffer, 0, buffer.length, null)) > 0; ) hmac.update(buffer.subarray(0, n));
    } finally {
      closeSync(fd);
    }
    parentPort.postMessage({ id, hex: hmac.digest('hex') });
  } catch (err) {
    parentPort.postMessage({ id, error: { code: err.code, message: err.message } });
  }
});
`;

const idleEndMs = 5000;

let worker: Worker | undefined;
const pending = new Map<number, Pending>();
let nextId = 0;

/** Starts the thread now, so its start-up overlaps other work (a remux) rather than a hash. */
export function startHashThread(): void {
  if (worker) return;
  // No inherited node flags: `--input-type=module` would make the source above an ES module.
  const started = new Worker(threadSource, { eval: true, execArgv: [] });
  const idle = setTimeout(() => {
    if (pending.size > 0 || worker !== started) return;
    // Forgotten first: the next hash starts a new thread rather than post to this one.
    worker = undefined;
    void started.terminate();
  }, idleEndMs).unref();
  started.on('message', (answer: HashAnswer) => {
    const job = pending.get(answer.id);
    pending.delete(answer.id);
    if (pending.size === 0) {
      started.unref();
      idle.refresh();
    }
    if (answer.error) job?.reject(Object.assign(new Error(answer.error.message), { code: answer.error.code }));
    else job?.resolve(answer.hex);
  });
  // A thread that dies fails what it held; the next hash starts a new one. (One already replaced,
  // ended when idle, held nothing: the jobs pending now are its successor's.)
  const fail = (err: Error): void => {
    if (worker !== started) return;
    worker = undefined;
    clearTimeout(idle);
    for (const job of pending.values()) job.reject(err);
    pending.clear();
  };
  started.on('error', fail);
  started.on('exit', (code) => fail(new Error(`hash thread exited with code ${code}`)));
  // After the listeners: adding a 'message' listener refs the thread again.
  started.unref();
  worker = started;
}

/** Whether the thread is running now (for tests: it ends when idle). */
export const hashThreadRunning = (): boolean => worker !== undefined;

/** HMAC-SHA256 of the file at `path`, in hex. Rejects with the file system's error (code kept). */
export function hmacFile(path: string, key: Uint8Array): Promise<string> {
  startHashThread();
  const thread = worker!;
  const id = nextId++;
  return new Promise<string>((resolve, reject) => {
    pending.set(id, { resolve, reject });
    thread.ref();
    thread.postMessage({ id, path, key } satisfies HashJob);
  });
}
