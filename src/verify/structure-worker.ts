/**
 * A structure thread (verify/structure-thread.ts): checks each cleaned image it is posted, in the
 * verifier's own buffer (shared, not copied), and answers the verifier's structure report of it.
 * The report's picture is handed over rather than copied, so no second copy of it waits here for
 * a collection.
 */
import { parentPort } from 'node:worker_threads';
import { ScrubError } from '../errors.js';
import { collectYoung } from '../gc.js';
import { checkImageStructure } from './structure-image.js';
import type { StructureAnswer, StructureJob } from './structure-thread.js';

const port = parentPort;
if (!port) throw new Error('verify/structure-worker.ts runs only as a worker thread');

port.on('message', ({ id, format, bytes, dc }: StructureJob) => {
  let answer: StructureAnswer;
  try {
    const out = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    answer = { id, report: checkImageStructure(format, out, { dc }) };
  } catch (err) {
    answer =
      err instanceof ScrubError
        ? { id, refused: { code: err.code, publicMessage: err.publicMessage, reason: err.reason, message: err.message } }
        : { id, failed: { code: (err as NodeJS.ErrnoException).code, message: err instanceof Error ? err.message : String(err) } };
  }
  // Only an ArrayBuffer the picture owns whole is handed over: a shared one in the transfer list
  // would make postMessage throw, and the job would go unanswered.
  const pixels = answer.report?.dcPicture?.pixels;
  const own = pixels && !(pixels.buffer instanceof SharedArrayBuffer) && pixels.byteOffset === 0 && pixels.byteLength === pixels.buffer.byteLength;
  port.postMessage(answer, own ? [pixels.buffer as ArrayBuffer] : []);
  // The check's tables and planes, a megabyte or so, are dead: freed now (gc.ts; on every thread
  // when the process runs with --expose-gc) rather than when the thread next allocates enough to
  // need a collection (`npm run load`: peak RSS a few MiB lower).
  collectYoung();
});
