/**
 * A `scrubline strip` worker thread: takes one StripJob at a time from the main thread and
 * answers with its StripOutcome. Config comes from the same environment as the main thread.
 */
import { parentPort } from 'node:worker_threads';
import { loadConfig } from './config.js';
import { pipelineDeps, stripOne, type StripJob } from './cli-strip.js';

const port = parentPort;
if (!port) throw new Error('cli-worker runs only as a worker thread');
const config = loadConfig();
const deps = await pipelineDeps(config);
port.on('message', (job: StripJob) => {
  void stripOne(config, deps, job).then((outcome) => port.postMessage(outcome));
});
