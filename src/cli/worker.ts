/**
 * A `scrubline strip` worker thread: gets the shared dependencies, then one StripJob at a time
 * from the main thread, and answers each with its StripOutcome. Config comes from the same
 * environment as the main thread.
 */
import { parentPort } from 'node:worker_threads';
import { loadConfig } from '../config.js';
import { pipelineDeps, stripOne } from './strip.js';
import type { ToWorker } from './pool.js';
import type { PipelineDeps } from '../pipeline.js';

const port = parentPort;
if (!port) throw new Error('cli/worker.ts runs only as a worker thread');
const config = loadConfig();
let deps: PipelineDeps | undefined;
port.on('message', (message: ToWorker) => {
  if (message.kind === 'init') deps = pipelineDeps(config, message.shared);
  else void stripOne(config, deps!, message.job).then((outcome) => port.postMessage(outcome));
});
