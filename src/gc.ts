/**
 * V8's collector, for the few places that know better than its schedule when memory died. The
 * calls do nothing unless the process runs with --expose-gc (bin/serve.sh); tests and the CLI run
 * without it. The collector is looked up at each call, so that a test can stand in for it.
 */
type Collector = (options?: { type: 'major' | 'minor' }) => void;

const collector = (): Collector | undefined => (globalThis as { gc?: Collector }).gc;

/** Whether the calls below do anything. */
export const canCollect = (): boolean => collector() !== undefined;

/** A full collection. */
export function collectAll(): void {
  collector()?.();
}

/**
 * A young-generation collection (a fraction of a millisecond with bin/serve.sh's 1 MiB
 * semi-space). V8 starts one when the JavaScript objects allocated fill the young generation,
 * whatever memory the buffers behind them hold. A loop that turns a large file through buffers
 * the runtime allocates (request chunks, a cipher's output) allocates few objects for many bytes,
 * and leaves tens of MiB of dead buffers between two collections; calling this every MiB or so
 * frees them while they are young.
 */
export function collectYoung(): void {
  collector()?.({ type: 'minor' });
}
