/**
 * One process per data dir. A second process on the same data dir would empty the temp dir at
 * its start, under the first one's live uploads (a rolling update with a persistent volume does
 * exactly that), so a running service holds `<dataDir>/scrubline.lock`: its host, its pid, and a
 * heartbeat in the file's modification time. At start a lock is taken over only when it is
 * provably stale: written on this host by a process that no longer runs (or by an earlier life
 * of this very pid, as in a restarted container), or not refreshed for `staleAfterMs` (another
 * host's process, which cannot be asked). Otherwise the start is refused, saying why.
 */
import { closeSync, mkdirSync, openSync, readFileSync, rmSync, statSync, utimesSync, writeSync } from 'node:fs';
import { hostname } from 'node:os';
import path from 'node:path';

export const lockFileIn = (dataDir: string): string => path.join(dataDir, 'scrubline.lock');

/** How often the holder refreshes the lock, and after how long without that it is stale. */
export const heartbeatMs = 5_000;
export const staleAfterMs = 30_000;

export class DataDirLocked extends Error {
  constructor(dataDir: string, holder: string) {
    super(
      `Another scrubline process (${holder}) is using the data dir ${dataDir}. Stop it first, or give this one a data dir of its own (SCRUBLINE_DATA_DIR); ` +
        `replicas never share a data dir. A lock left by a process that is gone is taken over by itself (at once on the same host, after ${staleAfterMs / 1000} s elsewhere).`,
    );
    this.name = 'DataDirLocked';
  }
}

interface Holder {
  host: string;
  pid: number;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it runs, as another user.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function readHolder(file: string): { holder: Holder | undefined; ageMs: number } | undefined {
  let ageMs: number;
  try {
    ageMs = Date.now() - statSync(file).mtimeMs;
  } catch {
    return undefined;
  }
  // Unreadable or half-written: judged by its age alone.
  let holder: Holder | undefined;
  try {
    const parsed = JSON.parse(readFileSync(file, 'utf8')) as Partial<Holder>;
    if (typeof parsed.host === 'string' && Number.isSafeInteger(parsed.pid)) holder = { host: parsed.host, pid: parsed.pid! };
  } catch {
    holder = undefined;
  }
  return { holder, ageMs };
}

function isStale(found: { holder: Holder | undefined; ageMs: number }): boolean {
  const { holder, ageMs } = found;
  if (holder?.host === hostname() && (holder.pid === process.pid || !alive(holder.pid))) return true;
  return ageMs > staleAfterMs;
}

export interface DataDirLock {
  release(): void;
}

/** Takes the data dir's lock, or throws DataDirLocked naming the holder. */
export function lockDataDir(dataDir: string): DataDirLock {
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const file = lockFileIn(dataDir);
  const me: Holder = { host: hostname(), pid: process.pid };
  /** Creates the lock file; false when one is there already. Any other failure is thrown as it is. */
  const take = (): boolean => {
    try {
      const fd = openSync(file, 'wx', 0o600);
      writeSync(fd, JSON.stringify(me));
      closeSync(fd);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw err;
    }
  };
  const holderOf = (found: ReturnType<typeof readHolder>): string => (found?.holder ? `pid ${found.holder.pid} on ${found.holder.host}` : 'unknown');
  if (!take()) {
    const found = readHolder(file);
    if (found && !isStale(found)) throw new DataDirLocked(dataDir, holderOf(found));
    rmSync(file, { force: true });
    // Another process starting at the same moment may have taken it over first: then it holds it.
    if (!take()) throw new DataDirLocked(dataDir, holderOf(readHolder(file)));
  }
  const beat = setInterval(() => {
    const now = new Date();
    try {
      utimesSync(file, now, now);
    } catch {
      // Removed under us: the next start judges by what is there.
    }
  }, heartbeatMs);
  beat.unref();
  return {
    release() {
      clearInterval(beat);
      // Only our own lock: never one a successor took over.
      const found = readHolder(file);
      if (found?.holder?.host === me.host && found.holder.pid === me.pid) rmSync(file, { force: true });
    },
  };
}
