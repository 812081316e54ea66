/** Shared test plumbing: temp dirs, the fixture manifest, real tools, a recording upstream. */
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import request from 'supertest';
import { buildApp, type AppDeps } from '../src/http/app.js';
import { Ledger } from '../src/storage/ledger.js';
import { createLogger } from '../src/log.js';
import { cleanFile, type CleanFile, type LoadedPipelineDeps } from '../src/pipeline.js';
import { StoreSink } from '../src/steps/forward-store.js';
import { keepingStore, storesFor, type ObjectStore } from '../src/storage/objects.js';
import { Keyring } from '../src/storage/envelope.js';
import type { HeifDecoder } from '../src/tools/heif.js';
import type { Previews } from '../src/http/previews.js';
import { loadFfmpeg, type Ffmpeg } from '../src/tools/ffmpeg.js';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const fixturesDir = path.join(root, 'fixtures');

export interface FixtureEntry {
  file: string;
  format: string;
  carries: string[];
  expect: { outcome: 'clean'; width: number; height: number; orientation?: number } | { outcome: 'reject'; code: string };
}

export const manifest = JSON.parse(await readFile(path.join(fixturesDir, 'manifest.json'), 'utf8')) as {
  planted: Record<string, string | number>;
  files: FixtureEntry[];
};
export const fixture = (name: string): string => path.join(fixturesDir, name);
export const cleanFixtures = manifest.files.filter((f) => f.expect.outcome === 'clean');
export const rejectFixtures = manifest.files.filter((f) => f.expect.outcome === 'reject');

/** Every planted string, and the planted coordinates in the decimal forms text metadata uses. */
export const plantedNeedles: string[] = [
  ...Object.entries(manifest.planted)
    .filter(([key]) => key !== 'latitude' && key !== 'longitude')
    .map(([, value]) => String(value)),
  '51.5072',
  '0.1275',
  '0.1276',
];

/**
 * The planted date with any punctuation between its fields: EXIF's "2021:07:14 09:26:53", XMP's
 * "2021-07-14T09:26:53", a QuickTime "2021-07-14 09:26:53" and "20210714092653" all match.
 */
const plantedDate = new RegExp(
  String(manifest.planted.dateTime)
    .split(/\D+/)
    .join('[^0-9]{0,3}'),
);

/** Planted values found in some bytes (searched as UTF-8, UTF-16LE and, for dates, any punctuation). */
export function findPlanted(bytes: Buffer): string[] {
  const found = plantedNeedles.filter((needle) => bytes.includes(Buffer.from(needle, 'utf8')) || bytes.includes(Buffer.from(needle, 'utf16le')));
  const date = String(manifest.planted.dateTime);
  if (!found.includes(date) && (plantedDate.test(bytes.toString('latin1')) || plantedDate.test(bytes.toString('utf16le')) || plantedDate.test(bytes.subarray(1).toString('utf16le')))) found.push(date);
  return found;
}

/** A supertest request whose body arrives as a Buffer, whatever its type (it would try to parse an image). */
export function binaryBody<T extends request.Test>(req: T): T {
  return req.buffer(true).parse((r, done) => {
    const chunks: Buffer[] = [];
    r.on('data', (c: Buffer) => chunks.push(c));
    r.on('end', () => done(null, Buffer.concat(chunks)));
  }) as T;
}

/** A PNG chunk with its CRC, for tests that build PNGs by hand (written apart from strip-png's). */
export function pngChunk(type: string, data: Buffer): Buffer {
  const chunk = Buffer.alloc(12 + data.length);
  chunk.writeUInt32BE(data.length, 0);
  chunk.write(type, 4, 'latin1');
  data.copy(chunk, 8);
  chunk.writeUInt32BE(crc32(chunk.subarray(4, 8 + data.length)), 8 + data.length);
  return chunk;
}

export async function tempDir(prefix = 'scrubline-test-'): Promise<string> {
  return mkdtemp(path.join(tmpdir(), prefix));
}

export async function removeDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}

/** Everything left under a directory, recursively (files only). */
export async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true }).catch(() => []);
  return entries.filter((e) => e.isFile()).map((e) => path.join(e.parentPath, e.name));
}

let tools: Promise<Ffmpeg> | undefined;
export function ffmpegTools(): Promise<Ffmpeg> {
  tools ??= loadFfmpeg({ ffmpegPath: process.env.SCRUBLINE_FFMPEG_PATH, ffprobePath: process.env.SCRUBLINE_FFPROBE_PATH, ffmpegTimeoutMs: 60_000 });
  return tools;
}

export const testKey = Buffer.alloc(32, 7);
/** The storage keyring test services encrypt at rest with. */
export const testStorage = new Keyring([Buffer.alloc(32, 9)]);
/** The API token test services require (SCRUBLINE_API_TOKEN's role). */
export const testToken = 'planted-secret-token-0123456789abcdef';

export async function pipelineDeps(): Promise<LoadedPipelineDeps> {
  return { ffmpeg: await ffmpegTools(), fingerprintKey: testKey, maxInputPixels: 100_000_000, clock: () => new Date('2026-01-02T03:04:05.000Z') };
}

/**
 * Runs `bytes` through the whole pipeline in a fresh folder under `work`: the cleaned file's
 * record and its bytes (throws what the pipeline throws).
 */
export async function cleanBytes(work: string, bytes: Buffer): Promise<{ out: CleanFile; bytes: Buffer }> {
  const workDir = path.join(work, Math.random().toString(36).slice(2));
  await mkdir(workDir);
  const inputPath = path.join(workDir, 'original');
  await writeFile(inputPath, bytes);
  const out = await cleanFile({ id: 'test', inputPath, inputBytes: bytes.length, workDir }, 'standard', await pipelineDeps());
  return { out, bytes: await readFile(out.path) };
}

/** Captures pino output in memory so tests can grep the logs. */
export class LogCapture extends Writable {
  readonly chunks: string[] = [];
  override _write(chunk: Buffer, _enc: BufferEncoding, done: () => void): void {
    this.chunks.push(chunk.toString('utf8'));
    done();
  }
  get text(): string {
    return this.chunks.join('');
  }
}

export interface RecordedRequest {
  headers: IncomingMessage['headers'];
  body: Buffer;
}

/** A real HTTP server on loopback standing in for the render service. */
export async function startUpstream(
  handler: (req: IncomingMessage, res: ServerResponse, body: Buffer) => void = (_req, res) => {
    res.writeHead(202, { 'content-type': 'application/json' }).end('{"accepted":true}');
  },
  /** Leave each body unread this long first, as a busy render service would: the sender's writes wait. */
  readAfterMs = 0,
): Promise<{ url: string; requests: RecordedRequest[]; server: Server; close(): Promise<void> }> {
  const requests: RecordedRequest[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    setTimeout(() => req.on('data', (c: Buffer) => chunks.push(c)), readAfterMs);
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      requests.push({ headers: req.headers, body });
      handler(req, res, body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  return {
    url: `http://127.0.0.1:${port}/jobs`,
    requests,
    server,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** Splits a recorded multipart body into its parts (enough for assertions, not a general parser). */
export function multipartParts(body: Buffer, contentType: string): Array<{ name: string; filename: string | undefined; type: string | undefined; data: Buffer }> {
  const boundary = /boundary=(?:"([^"]+)"|([^;]+))/.exec(contentType);
  const marker = Buffer.from(`--${boundary?.[1] ?? boundary?.[2]}`);
  const parts: Array<{ name: string; filename: string | undefined; type: string | undefined; data: Buffer }> = [];
  let pos = body.indexOf(marker);
  while (pos >= 0) {
    const start = pos + marker.length + 2;
    const next = body.indexOf(marker, start);
    if (next < 0) break;
    const part = body.subarray(start, next - 2);
    const split = part.indexOf('\r\n\r\n');
    const head = part.subarray(0, split).toString('utf8');
    parts.push({
      name: /name="([^"]*)"/.exec(head)?.[1] ?? '',
      filename: /filename="([^"]*)"/.exec(head)?.[1],
      type: /content-type:\s*(\S+)/i.exec(head)?.[1],
      data: part.subarray(split + 4),
    });
    pos = next;
  }
  return parts;
}

/**
 * The HTTP service built with real parts on a temp data dir and the local sink (or a bucket), with an agent
 * that carries the API token. `clock.now` can be moved by the test.
 */
export async function testService(options: { logs?: LogCapture; now?: Date; recordRetentionDays?: number; heifDecoder?: HeifDecoder; bucket?: ObjectStore; apiTokens?: string[]; app?: Partial<AppDeps> } = {}) {
  const dataDir = await tempDir();
  const ledger = await Ledger.open(dataDir);
  const stores = storesFor(dataDir, options.bucket);
  const clock = { now: options.now ?? new Date('2026-06-01T08:00:00.000Z') };
  const tools = await ffmpegTools();
  const app = buildApp({
    logger: createLogger('info', options.logs ?? new LogCapture()),
    dataDir,
    forwarder: new StoreSink(keepingStore(stores), testStorage),
    ledger,
    stores,
    tools,
    storage: testStorage,
    heifDecoder: options.heifDecoder,
    apiTokens: options.apiTokens ?? [testToken],
    unfinishedJobCapHours: 168,
    recordRetentionDays: options.recordRetentionDays ?? 30,
    scrubline: { tmpDir: path.join(dataDir, 'tmp'), fingerprintKey: testKey, ffmpegPath: tools.ffmpeg.path, ffprobePath: tools.ffprobe.path, clock: () => clock.now },
    ...options.app,
  });
  const api = request.agent(app).set('authorization', `Bearer ${testToken}`);
  return {
    app,
    api,
    dataDir,
    ledger,
    clock,
    /** Resolves when every preview started after an answer is made (or failed). */
    previewsSettled: (): Promise<void> => (app.locals.previews as Previews).settled(),
    close: async (): Promise<void> => {
      await (app.locals.previews as Previews).settled();
      await ledger.close();
      await removeDir(dataDir);
    },
  };
}

/**
 * A `scrubline serve` child's output, kept as it comes, and the URL its "scrubline listening" log
 * line gives; rejects with the output if the child exits first.
 */
export function watchServe(child: import('node:child_process').ChildProcess): { output: () => string; exited: Promise<number | null>; url: Promise<string> } {
  let output = '';
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  const url = new Promise<string>((resolve, reject) => {
    child.stdout?.on('data', (chunk: Buffer) => {
      output += chunk.toString();
      const line = output.split('\n').find((l) => l.includes('"scrubline listening"'));
      if (line) resolve((JSON.parse(line) as { url: string }).url);
    });
    child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
    void exited.then((code) => reject(new Error(`scrubline exited ${code} before it listened: ${output}`)));
  });
  url.catch(() => undefined);
  return { output: () => output, exited, url };
}
