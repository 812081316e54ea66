/**
 * `npm run fuzz -- [--iterations N] [--seed S] [--timeout-ms T] [--keep-failures DIR]`
 *
 * Mutates the fixtures (bit flips, truncation, duplicated chunks/boxes/segments, corrupted length
 * fields) and feeds each mutant to the strip pipeline in process. Every result must be either a
 * verified-clean output in which no planted value survives, or a clean rejection (a ScrubError
 * that is a refusal). An internal error is a crash, no answer within the time limit is a hang,
 * a planted value in an output is dirty: any of them makes the exit status 1, and the mutant is
 * kept for reproduction when --keep-failures is given. Deterministic for a seed.
 */
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import path from 'node:path';
import { scriptArgs } from './script-args.js';
import { ScrubError } from '../src/errors.js';
import { cleanFile, type PipelineDeps } from '../src/pipeline.js';
import { systemClock } from '../src/steps/tag-expiry.js';
import { loadFfmpeg } from '../src/tools/ffmpeg.js';
import { loadConfig } from '../src/config.js';

const root = path.resolve(import.meta.dirname, '..');
const { values } = scriptArgs(
  `usage: npm run fuzz -- [--iterations N] [--seed N] [--timeout-ms N] [--keep-failures DIR]
  Mutates the fixtures and runs each mutant through the pipeline: every one must come out clean
  or be refused, never crash, hang or leak. The same seed gives the same mutants.`,
  {
    iterations: { type: 'string', default: '1000' },
    seed: { type: 'string', default: String(Date.now() % 1_000_000) },
    'timeout-ms': { type: 'string', default: '60000' },
    'keep-failures': { type: 'string' },
  },
);
const iterations = Number(values.iterations);
const seed = Number(values.seed);
const timeoutMs = Number(values['timeout-ms']);

/** mulberry32: small, fast, and the same sequence for the same seed everywhere. */
function rng(s: number): () => number {
  let a = s >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Mutation = (input: Buffer, random: () => number) => Buffer;
const int = (random: () => number, n: number): number => Math.floor(random() * n);

/** Offsets where a structure starts: ISOBMFF/RIFF/PNG chunk headers, JPEG markers. */
function structureOffsets(b: Buffer): number[] {
  const offsets: number[] = [];
  if (b.toString('latin1', 4, 8) === 'ftyp') {
    for (let pos = 0; pos + 8 <= b.length && offsets.length < 10_000; ) {
      offsets.push(pos);
      const size = b.readUInt32BE(pos);
      if (size < 8) break;
      pos += size;
    }
  } else if (b.subarray(0, 8).equals(Buffer.from('89504e470d0a1a0a', 'hex'))) {
    for (let pos = 8; pos + 12 <= b.length; pos += 12 + b.readUInt32BE(pos)) offsets.push(pos);
  } else if (b[0] === 0xff && b[1] === 0xd8) {
    for (let pos = b.indexOf(0xff, 2); pos >= 0 && offsets.length < 10_000; pos = b.indexOf(0xff, pos + 2)) if (b[pos + 1]! >= 0xc0 && b[pos + 1]! !== 0xff) offsets.push(pos);
  } else if (b.toString('latin1', 0, 4) === 'RIFF') {
    for (let pos = 12; pos + 8 <= b.length; pos += 8 + b.readUInt32LE(pos + 4) + (b.readUInt32LE(pos + 4) % 2)) offsets.push(pos);
  }
  return offsets.length > 0 ? offsets : [0];
}

const mutations: Record<string, Mutation> = {
  bitflip: (b, random) => {
    const out = Buffer.from(b);
    for (let i = 0, n = 1 + int(random, 8); i < n && out.length > 0; i++) out[int(random, out.length)]! ^= 1 << int(random, 8);
    return out;
  },
  truncate: (b, random) => b.subarray(0, int(random, b.length)),
  duplicate: (b, random) => {
    const offsets = structureOffsets(b);
    const start = offsets[int(random, offsets.length)]!;
    const next = offsets.find((o) => o > start) ?? Math.min(b.length, start + 1 + int(random, 4096));
    const piece = b.subarray(start, next);
    return Buffer.concat([b.subarray(0, next), piece, b.subarray(next)]);
  },
  length: (b, random) => {
    const out = Buffer.from(b);
    const offsets = structureOffsets(b);
    const at = Math.min(out.length - 4, offsets[int(random, offsets.length)]! + (b[0] === 0xff ? 2 : b.toString('latin1', 0, 4) === 'RIFF' ? 4 : 0));
    if (at < 0) return out;
    const value = [0, 1, 7, 0xffff, 0x7fffffff, 0xffffffff, int(random, 1 << 20)][int(random, 7)]!;
    if (b[0] === 0xff) out.writeUInt16BE(value & 0xffff, at);
    else if (b.toString('latin1', 0, 4) === 'RIFF') out.writeUInt32LE(value >>> 0, at);
    else out.writeUInt32BE(value >>> 0, at);
    return out;
  },
};

async function main(): Promise<number> {
  const manifest = JSON.parse(await readFile(path.join(root, 'fixtures', 'manifest.json'), 'utf8')) as { planted: Record<string, unknown>; files: Array<{ file: string }> };
  const needles = Object.values(manifest.planted).filter((v): v is string => typeof v === 'string' && v.length >= 6).map((v) => Buffer.from(v));
  const corpus = await Promise.all(manifest.files.map(async (f) => ({ name: f.file, bytes: await readFile(path.join(root, 'fixtures', f.file)) })));
  const seeds = corpus.filter((c) => c.bytes.length > 16);

  const config = loadConfig({ ...process.env, SCRUBLINE_DATA_DIR: await mkdtemp(path.join(tmpdir(), 'scrubline-fuzz-data-')) });
  const deps: PipelineDeps = { ffmpeg: await loadFfmpeg(config), fingerprintKey: Buffer.alloc(32, 9), maxInputPixels: 50_000_000, clock: systemClock };
  const work = await mkdtemp(path.join(tmpdir(), 'scrubline-fuzz-'));
  const random = rng(seed);
  const counts = { clean: 0, rejected: 0, crash: 0, hang: 0, dirty: 0 };
  const reasons = new Map<string, number>();
  const failures: string[] = [];
  const plans = Array.from({ length: iterations }, (_, i) => {
    const source = seeds[int(random, seeds.length)]!;
    const names = Object.keys(mutations);
    const applied = Array.from({ length: 1 + int(random, 3) }, () => names[int(random, names.length)]!);
    let bytes: Buffer = source.bytes;
    for (const m of applied) bytes = mutations[m]!(bytes, random);
    return { i, source: source.name, applied, bytes };
  });

  const started = Date.now();
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < plans.length) {
      const plan = plans[next++]!;
      const dir = path.join(work, `i${plan.i}`);
      await mkdir(path.join(dir, 'w'), { recursive: true });
      const input = path.join(dir, 'input');
      await writeFile(input, plan.bytes);
      let verdict: keyof typeof counts;
      let reason = '';
      let timer: NodeJS.Timeout | undefined;
      try {
        const hang = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error('hang')), timeoutMs)));
        const out = await Promise.race([cleanFile({ id: `f${plan.i}`, inputPath: input, inputBytes: plan.bytes.length, workDir: path.join(dir, 'w') }, 'standard', deps), hang]);
        const cleaned = await readFile(out.path);
        verdict = needles.some((n) => cleaned.includes(n)) ? 'dirty' : 'clean';
      } catch (err) {
        if (err instanceof Error && err.message === 'hang') verdict = 'hang';
        else if (err instanceof ScrubError && err.isRejection) {
          verdict = 'rejected';
          reason = err.code;
        } else {
          verdict = 'crash';
          reason = err instanceof ScrubError ? err.code : err instanceof Error ? err.name : 'thrown';
        }
      } finally {
        clearTimeout(timer);
      }
      counts[verdict]++;
      if (reason) reasons.set(`${verdict}: ${reason}`, (reasons.get(`${verdict}: ${reason}`) ?? 0) + 1);
      if (verdict === 'crash' || verdict === 'hang' || verdict === 'dirty') {
        failures.push(`#${plan.i} ${verdict}${reason ? ` (${reason})` : ''}: ${plan.source} + ${plan.applied.join(', ')}`);
        if (values['keep-failures']) {
          await mkdir(values['keep-failures'], { recursive: true });
          await writeFile(path.join(values['keep-failures'], `${plan.i}-${verdict}-${path.basename(plan.source)}`), plan.bytes);
        }
      }
      // A hang leaves its tools running until their own timeout; their files go with the dir.
      await rm(dir, { recursive: true, force: true });
      const done = counts.clean + counts.rejected + counts.crash + counts.hang + counts.dirty;
      if (process.stderr.isTTY && done % 10 === 0) process.stderr.write(`\r${done}/${iterations}`);
    }
  };
  await Promise.all(Array.from({ length: availableParallelism() }, worker));
  if (process.stderr.isTTY) process.stderr.write('\n');
  const leftovers = await readdir(work);
  await rm(work, { recursive: true, force: true });
  await rm(config.dataDir, { recursive: true, force: true });

  console.log(`scrubline fuzz: ${iterations} mutants of ${seeds.length} fixtures, seed ${seed}, ${((Date.now() - started) / 1000).toFixed(1)} s`);
  console.log(`  clean ${counts.clean}  rejected ${counts.rejected}  crash ${counts.crash}  hang ${counts.hang}  dirty ${counts.dirty}  work dirs left ${leftovers.length}`);
  for (const [r, n] of [...reasons].sort((a, b) => b[1] - a[1])) console.log(`  ${String(n).padStart(6)}  ${r}`);
  for (const f of failures) console.log(`FAIL ${f}`);
  return counts.crash + counts.hang + counts.dirty + leftovers.length > 0 ? 1 : 0;
}

process.exitCode = await main();
