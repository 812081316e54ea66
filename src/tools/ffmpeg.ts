/**
 * The one module that starts ffmpeg and ffprobe. Arguments always come as arrays from the pure
 * builders in ffmpeg-args.ts; nothing here goes through a shell.
 *
 * Each child runs in its own process group so a timeout kills everything it started
 * (THREATS 23), and `stopAll()` lets the server kill whatever is in flight on shutdown. On Linux
 * each child also gets a parent-death signal (util-linux `setpriv --pdeathsig`), so a service
 * killed with SIGKILL takes its tools with it instead of leaving them reading originals, and a
 * decoder gets an address-space limit (`prlimit --as`), so a decode bomb fails in the child
 * rather than taking the machine's memory (THREATS 49).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, chmodSync, constants, existsSync } from 'node:fs';
import { open, readdir, readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { diskFull, ScrubError } from '../errors.js';
import { probeArgs, type Demuxer } from './ffmpeg-args.js';

export interface Binary {
  path: string;
  /** Where the path came from, for /readyz and `scrubline --version`. */
  source: 'config' | 'PATH' | 'npm';
}

export interface ToolRunResult {
  code: number;
  stdout: string;
  stderr: string;
}

const require = createRequire(import.meta.url);
const running = new Set<ChildProcess>();

function isExecutable(file: string): boolean {
  try {
    accessSync(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

export function onPath(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (dir === '') continue;
    const candidate = path.join(dir, name);
    if (isExecutable(candidate)) return candidate;
  }
  return undefined;
}

function fromNpmPackage(pkg: string): string | undefined {
  let file: string;
  try {
    file = (require(pkg) as { path: string }).path;
  } catch {
    return undefined;
  }
  if (!existsSync(file)) return undefined;
  // npm 11 skips install scripts it was not told to allow, and these packages only `chmod u+x`
  // in theirs; restore the bit ourselves rather than fail on a fresh install.
  if (!isExecutable(file)) {
    try {
      chmodSync(file, 0o755);
    } catch {
      return undefined;
    }
  }
  return file;
}

/** Configured path, else the tool on PATH, else the binary shipped by the npm installer package. */
export function resolveBinary(tool: 'ffmpeg' | 'ffprobe', configured: string | undefined): Binary | undefined {
  if (configured !== undefined) return { path: configured, source: 'config' };
  const system = onPath(tool);
  if (system !== undefined) return { path: system, source: 'PATH' };
  const shipped = fromNpmPackage(tool === 'ffmpeg' ? '@ffmpeg-installer/ffmpeg' : '@ffprobe-installer/ffprobe');
  return shipped === undefined ? undefined : { path: shipped, source: 'npm' };
}

const maxStdoutBytes = 16 * 1024 * 1024;
const maxStderrBytes = 64 * 1024;

export interface RunOptions {
  /** Working directory and extra environment variables of the child. */
  cwd?: string | undefined;
  env?: Record<string, string> | undefined;
  /**
   * For a child started ahead of its work (see probeAhead): the time limit counts from when this
   * settles, and until then the child may wait at most `waitLimitMs`.
   */
  startsWork?: Promise<unknown> | undefined;
  waitLimitMs?: number | undefined;
  /** Kills the child and its group when aborted. */
  signal?: AbortSignal | undefined;
  /** An address-space limit for the child (decoders), where prlimit is there to set it. */
  memoryLimitBytes?: number | undefined;
}

/**
 * util-linux's wrappers, where present (Linux): each sets one thing on itself and then execs the
 * tool in place (same pid, same process group), so nothing else about the run changes.
 */
const wrappers = process.platform === 'linux' ? { setpriv: onPath('setpriv'), prlimit: onPath('prlimit') } : {};

/** The command line that runs `binary args` with the parent-death signal and the memory limit. Pure. */
export function wrappedCommand(binary: string, args: string[], memoryLimitBytes: number | undefined, tools: { setpriv?: string | undefined; prlimit?: string | undefined } = wrappers): [string, string[]] {
  let command: [string, string[]] = [binary, args];
  if (memoryLimitBytes !== undefined && tools.prlimit) command = [tools.prlimit, [`--as=${Math.trunc(memoryLimitBytes)}`, '--', command[0], ...command[1]]];
  if (tools.setpriv) command = [tools.setpriv, ['--pdeathsig', 'KILL', '--', command[0], ...command[1]]];
  return command;
}

const unavailable = (cause: unknown): ScrubError =>
  new ScrubError('tool_unavailable', 'The media tool needed for this file is not available on the server. Try again later.', { cause });

/**
 * Starts a tool with an argument array and a wall-clock limit that kills its whole process group;
 * `stdout` is the caller's to read. Settles with the exit code and stderr once the process is gone.
 */
function launch(binary: string, args: string[], timeoutMs: number, options: RunOptions): { child: ChildProcess | undefined; result: Promise<Omit<ToolRunResult, 'stdout'>>; overflow: () => void } {
  // Under an address-space limit, glibc's per-thread malloc arenas (64 MiB of address space each,
  // reserved up front) would count against it and fail a multi-threaded decode that fits: two.
  const limited = options.memoryLimitBytes !== undefined ? { MALLOC_ARENA_MAX: process.env.MALLOC_ARENA_MAX ?? '2' } : undefined;
  const env = options.env || limited ? { ...process.env, ...limited, ...options.env } : undefined;
  // A wrapper would report a missing tool as its own exit code: say it as spawn would.
  if (!(binary.includes('/') ? isExecutable(binary) : onPath(binary) !== undefined)) {
    const err = Object.assign(new Error(`spawn ${path.basename(binary)} ENOENT`), { code: 'ENOENT' });
    return { child: undefined, result: Promise.reject(unavailable(err)), overflow: () => undefined };
  }
  const [command, commandArgs] = wrappedCommand(binary, args, options.memoryLimitBytes);
  const child = spawn(command, commandArgs, { stdio: ['ignore', 'pipe', 'pipe'], detached: true, cwd: options.cwd, env });
  running.add(child);
  let timedOut = false;
  let overflowed = false;
  const result = new Promise<Omit<ToolRunResult, 'stdout'>>((resolve, reject) => {
    const stderr: Buffer[] = [];
    let stderrBytes = 0;
    // Killed, a child's output is of no use: its pipe is closed too, or a reader that paused it
    // would keep the process from ever being reported gone.
    const expire = (): void => {
      timedOut = true;
      killGroup(child);
      child.stdout?.destroy();
    };
    let timer = setTimeout(expire, options.startsWork ? (options.waitLimitMs ?? timeoutMs) : timeoutMs);
    options.startsWork?.finally(() => {
      clearTimeout(timer);
      if (child.exitCode === null && child.signalCode === null) timer = setTimeout(expire, timeoutMs);
    });
    const abort = (): void => {
      killGroup(child);
      child.stdout?.destroy();
    };
    options.signal?.addEventListener('abort', abort, { once: true });
    if (options.signal?.aborted) abort();
    child.stderr!.on('data', (chunk: Buffer) => {
      if (stderrBytes >= maxStderrBytes) return;
      stderrBytes += chunk.length;
      stderr.push(chunk);
    });
    child.on('error', (err) => {
      clearTimeout(timer);
      running.delete(child);
      options.signal?.removeEventListener('abort', abort);
      reject(unavailable(err));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      running.delete(child);
      options.signal?.removeEventListener('abort', abort);
      if (timedOut) {
        reject(new ScrubError('processing_timeout', 'Processing the file took longer than the configured limit; it was not forwarded. Send a smaller or simpler file.'));
        return;
      }
      if (overflowed) {
        reject(new ScrubError('unsupported_structure', 'The file describes more structure than scrubline will read; it was not forwarded.'));
        return;
      }
      const errorText = Buffer.concat(stderr).toString('utf8');
      // Said as such rather than as a "damaged file".
      if (code !== 0 && /No space left on device|Disk quota exceeded/.test(errorText)) {
        reject(diskFull({ internal: 'tool: ENOSPC' }));
        return;
      }
      resolve({ code: code ?? (signal ? 128 : 1), stderr: errorText });
    });
  });
  const overflow = (): void => {
    overflowed = true;
    killGroup(child);
  };
  return { child, result, overflow };
}

/** Runs a tool with an argument array and a wall-clock limit that kills its whole process group. */
export async function runTool(binary: string, args: string[], timeoutMs: number, options: RunOptions = {}): Promise<ToolRunResult> {
  const { child, result, overflow } = launch(binary, args, timeoutMs, options);
  const stdout: Buffer[] = [];
  let stdoutBytes = 0;
  child?.stdout!.on('data', (chunk: Buffer) => {
    stdoutBytes += chunk.length;
    if (stdoutBytes > maxStdoutBytes) return overflow();
    stdout.push(chunk);
  });
  const { code, stderr } = await result;
  return { code, stderr, stdout: Buffer.concat(stdout).toString('utf8') };
}

/**
 * Runs a tool whose output is read as it comes, however large (a video's packets): the caller
 * iterates `stdout`, and the pipe's backpressure holds the tool while the caller works. A caller
 * that stops early aborts `signal`, which kills the tool. `done` settles when the process is gone.
 */
export function streamTool(binary: string, args: string[], timeoutMs: number, options: RunOptions = {}): { stdout: AsyncIterable<Buffer>; done: Promise<Omit<ToolRunResult, 'stdout'>> } {
  const { child, result } = launch(binary, args, timeoutMs, options);
  result.catch(() => undefined); // the caller awaits done; marked handled in case it fails first
  if (!child) return { stdout: (async function* (): AsyncGenerator<Buffer> {})(), done: result };
  return { stdout: queued(child.stdout!), done: result };
}

/**
 * A stream's chunks as an async iterable whose reader is attached at once: Node resumes, and so
 * discards, the unread output of a child that exits before anyone reads it (a short dump often
 * does), and an async generator attaches nothing until first asked. A few chunks are queued, then
 * the stream is paused, so the pipe holds the tool back (backpressure). A reader that stops early
 * destroys the stream.
 */
function queued(stream: Readable): AsyncIterable<Buffer> {
  const queue: Buffer[] = [];
  let ended = false;
  let failure: unknown;
  let wake: (() => void) | undefined;
  stream.on('data', (chunk: Buffer) => {
    queue.push(chunk);
    if (queue.length >= 8) stream.pause();
    wake?.();
  });
  const finish = (): void => {
    ended = true;
    wake?.();
  };
  stream.on('end', finish);
  stream.on('close', finish);
  stream.on('error', (err) => {
    failure = err;
    wake?.();
  });
  return {
    async *[Symbol.asyncIterator]() {
      try {
        for (;;) {
          const chunk = queue.shift();
          if (chunk) {
            if (queue.length < 2) stream.resume();
            yield chunk;
            continue;
          }
          if (failure !== undefined) throw failure;
          if (ended) return;
          await new Promise<void>((resolve) => (wake = resolve));
          wake = undefined;
        }
      } finally {
        if (!ended) stream.destroy();
      }
    },
  };
}

function killGroup(child: ChildProcess): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, 'SIGKILL');
  } catch {
    child.kill('SIGKILL');
  }
}

/** Kills every ffmpeg/ffprobe still running (server shutdown). */
export function stopAll(): void {
  for (const child of running) killGroup(child);
}

/**
 * After a crash (kill -9) the tools a previous process started live on in their own process
 * groups, still reading originals in the temp dir. At startup, before the temp dir is swept,
 * every process whose command line names a path under it is killed with its group. Linux only
 * (/proc); elsewhere a no-op. Returns how many were killed.
 */
export async function killOrphans(tmpDir: string): Promise<number> {
  const prefix = `${path.resolve(tmpDir)}${path.sep}`;
  const pids = await readdir('/proc').catch(() => [] as string[]);
  let killed = 0;
  for (const pid of pids.filter((p) => /^\d+$/.test(p) && Number(p) !== process.pid)) {
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (!cmdline.split('\0').some((arg) => arg.includes(prefix))) continue;
    try {
      process.kill(-Number(pid), 'SIGKILL');
    } catch {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {
        continue;
      }
    }
    killed++;
  }
  return killed;
}

export interface ProbeStream {
  index: number;
  codec_type?: string;
  codec_name?: string;
  codec_tag_string?: string;
  profile?: string;
  level?: number;
  width?: number;
  height?: number;
  pix_fmt?: string;
  bits_per_raw_sample?: string;
  color_range?: string;
  color_space?: string;
  color_transfer?: string;
  color_primaries?: string;
  field_order?: string;
  r_frame_rate?: string;
  avg_frame_rate?: string;
  nb_frames?: string;
  duration?: string;
  sample_rate?: string;
  channels?: number;
  channel_layout?: string;
  has_b_frames?: number;
  /** H.264 in MP4/Matroska: how many bytes each NAL unit's length takes (1, 2 or 4). */
  nal_length_size?: string;
  /** The decoder configuration's size (an MPEG-4 Part 2 stream's headers live there, or in its packets). */
  extradata_size?: number;
  disposition?: Record<string, number>;
  tags?: Record<string, string>;
  side_data_list?: Array<Record<string, unknown>>;
}

export interface ProbeResult {
  streams: ProbeStream[];
  format: {
    format_name?: string;
    duration?: string;
    size?: string;
    nb_streams?: number;
    tags?: Record<string, string>;
  };
  chapters: Array<{ tags?: Record<string, string> }>;
}

/** Display rotation in degrees clockwise, 0–359, from display-matrix side data or a legacy tag. */
export function rotationOf(stream: ProbeStream | undefined): number {
  if (!stream) return 0;
  const side = stream.side_data_list?.find((d) => typeof d.rotation === 'number');
  // ffprobe's display-matrix rotation is counter-clockwise; the legacy tag is clockwise.
  const degrees = side ? -(side.rotation as number) : Number(stream.tags?.rotate ?? 0);
  return ((Math.round(degrees) % 360) + 360) % 360;
}

export interface Ffmpeg {
  ffmpeg: Binary;
  ffprobe: Binary;
  timeoutMs: number;
  /** ffmpeg's version string, for /readyz and `scrubline --version`. */
  ffmpegVersion: string;
  /**
   * libavformat before 59 (ffmpeg 4 and older, like the 2018 npm build) keeps rotation only as a
   * `rotate` tag, which `-map_metadata -1` drops; newer ones keep display-matrix side data.
   */
  legacyRotateTag: boolean;
}

/** Runs ffprobe on a file with the demuxer forced; an unreadable file is a 415. */
export async function probe(tools: Ffmpeg, file: string, demuxer: Demuxer): Promise<ProbeResult> {
  return probeResult(await runTool(tools.ffprobe.path, probeArgs(file, demuxer), tools.timeoutMs));
}

/** A probe of a file that does not exist yet: started now, reading the file once `open` is called. */
export interface ProbeAhead {
  /** The file is complete: probe it. */
  open(): Promise<ProbeResult>;
  /** The file will not come: stop the waiting ffprobe. Resolves once it has exited. */
  cancel(): Promise<void>;
}

const gateName = 'probe-gate';

/**
 * Starts ffprobe for a file another tool is still writing. Debian's ffprobe spends ~70 ms of CPU
 * starting up (resolving the symbols of ~200 shared libraries) before it reads a byte, longer
 * than the probe of a 70 MB MP4 itself; started ahead, that start-up runs while the stripper
 * writes, and the probe proper starts the moment the file is complete.
 *
 * The gate is a FIFO named as ffprobe's report file (FFREPORT): ffprobe opens its report before
 * its input, and opening a FIFO to write blocks until it has a reader. `open()` becomes that
 * reader (non-blocking, so a dead ffprobe cannot hang it). The report ffprobe then leaves in the
 * pipe proves it waited; without it (a wrapper that drops FFREPORT, say) the file is probed again
 * the plain way, as it is from the start when mkfifo is missing.
 */
export async function probeAhead(tools: Ffmpeg, file: string, demuxer: Demuxer, workDir: string): Promise<ProbeAhead> {
  const plain: ProbeAhead = { open: () => probe(tools, file, demuxer), cancel: async () => {} };
  const gate = path.join(workDir, gateName);
  const made = await runTool('mkfifo', ['-m', '600', gate], tools.timeoutMs).catch(() => undefined);
  if (made?.code !== 0) return plain;

  let startWork!: () => void;
  const working = new Promise<void>((resolve) => (startWork = resolve));
  const stop = new AbortController();
  const run = runTool(tools.ffprobe.path, probeArgs(file, demuxer), tools.timeoutMs, {
    // Relative to the work dir, so no path needs escaping in FFREPORT's key=value syntax.
    cwd: workDir,
    env: { FFREPORT: `file=${gateName}:level=-8` },
    startsWork: working,
    // It waits for a strip that has a time limit of its own.
    waitLimitMs: 2 * tools.timeoutMs,
    signal: stop.signal,
  });
  run.catch(() => undefined); // awaited by open() or cancel()
  return {
    open: async () => {
      const reader = await open(gate, constants.O_RDONLY | constants.O_NONBLOCK);
      startWork();
      try {
        const result = await run;
        const { bytesRead } = await reader.read(Buffer.alloc(1), 0, 1, null).catch(() => ({ bytesRead: 0 }));
        return bytesRead === 1 ? probeResult(result) : await probe(tools, file, demuxer);
      } finally {
        await reader.close();
      }
    },
    cancel: async () => {
      stop.abort();
      startWork();
      await run.catch(() => undefined);
    },
  };
}

function probeResult(result: ToolRunResult): ProbeResult {
  if (result.code !== 0 && /not on whitelist/.test(result.stderr)) {
    throw new ScrubError(
      'unsupported_structure',
      'A stream in the video is in a codec scrubline does not open. Send the video with common codecs only (e.g. H.264, HEVC, VP9 or AV1 video; AAC, Opus or MP3 audio).',
      { internal: 'ffprobe: decoder not on the allowlist' },
    );
  }
  if (result.code !== 0) {
    throw new ScrubError('corrupt_media', 'The video could not be read (the container is damaged or not what its header says). Send an intact file.', {
      internal: `ffprobe exited ${result.code}`,
    });
  }
  try {
    const parsed = JSON.parse(result.stdout) as Partial<ProbeResult>;
    return { streams: parsed.streams ?? [], format: parsed.format ?? {}, chapters: parsed.chapters ?? [] };
  } catch (err) {
    throw new ScrubError('corrupt_media', 'The video could not be read. Send an intact file.', { cause: err });
  }
}

export interface VersionInfo {
  version: string;
  libavformatMajor: number | undefined;
}

/** Runs `<tool> -version`: the version string and libavformat's major version. */
export async function versionOf(binary: Binary, timeoutMs: number): Promise<VersionInfo> {
  const result = await runTool(binary.path, ['-hide_banner', '-version'], timeoutMs);
  if (result.code !== 0) throw new Error(`${binary.path} -version exited ${result.code}`);
  const first = result.stdout.split('\n', 1)[0] ?? '';
  const lavf = /libavformat\s+(\d+)\./.exec(result.stdout);
  return { version: /version (\S+)/.exec(first)?.[1] ?? 'unknown', libavformatMajor: lavf ? Number(lavf[1]) : undefined };
}

/** The tools a video step was given; their absence is a wiring fault (cleanFile loads them for video). */
export function videoTools(deps: { ffmpeg: Ffmpeg | undefined }): Ffmpeg {
  if (!deps.ffmpeg) throw new Error('a video step ran without ffmpeg');
  return deps.ffmpeg;
}

/** Where the tools are (or are looked for) and how long one run may take. */
export interface FfmpegConfig {
  ffmpegPath?: string | undefined;
  ffprobePath?: string | undefined;
  ffmpegTimeoutMs: number;
}

/** Resolves both binaries and reads ffmpeg's version once; throws a clear error when missing. */
export async function loadFfmpeg(config: FfmpegConfig): Promise<Ffmpeg> {
  const ffmpeg = resolveBinary('ffmpeg', config.ffmpegPath);
  const ffprobe = resolveBinary('ffprobe', config.ffprobePath);
  if (ffmpeg === undefined || ffprobe === undefined) {
    throw new Error(
      'ffmpeg/ffprobe not found: set SCRUBLINE_FFMPEG_PATH and SCRUBLINE_FFPROBE_PATH, install ffmpeg (e.g. apt-get install ffmpeg), or add the optional npm packages @ffmpeg-installer/ffmpeg and @ffprobe-installer/ffprobe',
    );
  }
  const info = await versionOf(ffmpeg, config.ffmpegTimeoutMs);
  return {
    ffmpeg,
    ffprobe,
    timeoutMs: config.ffmpegTimeoutMs,
    ffmpegVersion: info.version,
    legacyRotateTag: info.libavformatMajor !== undefined && info.libavformatMajor < 59,
  };
}

/**
 * ffmpeg looked up on first use (`PipelineDeps.ffmpeg`): only video needs it, so a machine
 * without it still cleans images, and an image never waits for `ffmpeg -version` (~100 ms of
 * CPU). Kept once found; a failure (not found, or `-version` did not run) is thrown as
 * `whenMissing(cause)`, and the tools are looked up again on the next call.
 */
export function ffmpegOnDemand(config: FfmpegConfig, whenMissing: (cause: unknown) => ScrubError): () => Promise<Ffmpeg> {
  let found: Promise<Ffmpeg> | undefined;
  return () =>
    (found ??= loadFfmpeg(config).catch((err: unknown) => {
      found = undefined;
      throw whenMissing(err);
    }));
}
