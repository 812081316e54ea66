/**
 * A structure thread (verify/structure-thread.ts): reads each cleaned image it is posted and
 * answers the verifier's structure report of it. Blocking reads are fine on a thread that does
 * nothing else. One buffer is reused for files up to `reusedAtMost` and zeroed after each, so no
 * byte of one upload stays for the next.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { ScrubError } from '../errors.js';
import { checkImageStructure } from './structure-image.js';
import type { StructureAnswer, StructureJob } from './structure-thread.js';

const port = parentPort;
if (!port) throw new Error('verify/structure-worker.ts runs only as a worker thread');

const reusedAtMost = 24 * 1024 * 1024;
let reused = Buffer.alloc(0);

function readAll(path: string): Buffer {
  const fd = openSync(path, 'r');
  try {
    const { size } = fstatSync(fd);
    if (size <= reusedAtMost && reused.length < size) reused = Buffer.alloc(Math.ceil(size / (1024 * 1024)) * 1024 * 1024);
    const buffer = size <= reusedAtMost ? reused : Buffer.allocUnsafe(size);
    let done = 0;
    for (let n; done < size && (n = readSync(fd, buffer, done, size - done, done)) > 0; ) done += n;
    return buffer.subarray(0, done);
  } finally {
    closeSync(fd);
  }
}

port.on('message', ({ id, format, path, dc }: StructureJob) => {
  let bytes: Buffer | undefined;
  let answer: StructureAnswer;
  try {
    bytes = readAll(path);
    answer = { id, report: checkImageStructure(format, bytes, { dc }) };
  } catch (err) {
    answer =
      err instanceof ScrubError
        ? { id, refused: { code: err.code, publicMessage: err.publicMessage, reason: err.reason, message: err.message } }
        : { id, failed: { code: (err as NodeJS.ErrnoException).code, message: err instanceof Error ? err.message : String(err) } };
  } finally {
    if (bytes?.buffer === reused.buffer) bytes.fill(0);
  }
  port.postMessage(answer);
});
