/**
 * `npm run corpus -- <dir> [--json <report.json>]`
 *
 * Runs every file under <dir> through `scrubline strip` (the real CLI, one process per file, as
 * many at once as there are cores) and re-checks each output with tools scrubline does not use
 * for its own verdict:
 *   - exiftool (when installed) reads the output; any tag in a metadata group is a leak;
 *   - every text value exiftool read from the *input's* metadata (≥ 6 characters, and GPS as
 *     4-decimal numbers) is searched for in the output's bytes; a hit is a leak;
 *   - images sharp can decode must decode to the same pixels (upright) as the input;
 *   - video streams must be packet-identical (ffmpeg's streamhash) to an input stream.
 * Prints a table cleaned / rejected / leaked / changed by format, then the rejection reasons.
 * Exit status 1 when anything leaked or changed. Values are never printed, only tag names.
 */
import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { copyFile, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { scriptArgs } from './script-args.js';
import sharp from 'sharp';

const run = promisify(execFile);
const root = path.resolve(import.meta.dirname, '..');
const cli = path.join(root, 'bin', 'scrubline.js');

interface Outcome {
  file: string;
  format: string;
  verdict: 'cleaned' | 'rejected' | 'leaked' | 'changed' | 'error';
  reason?: string;
  /** Tag names (never values) or check names that failed. */
  findings?: string[];
}

async function* walk(dir: string): AsyncGenerator<string> {
  for (const entry of (await readdir(dir, { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name))) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) yield* walk(full);
    else if (entry.isFile()) yield full;
  }
}

async function has(tool: string, args: string[]): Promise<boolean> {
  try {
    await run(tool, args);
    return true;
  } catch {
    return false;
  }
}

// -------------------------------------------------------------------------------------------
// exiftool's view

type Tags = Record<string, unknown>;

async function exiftool(...files: string[]): Promise<Tags[]> {
  const { stdout } = await run('exiftool', ['-j', '-a', '-G1', '-n', '-ee', '-api', 'largefilesupport=1', ...files], { maxBuffer: 256 * 1024 * 1024 }).catch(
    (err: { stdout?: string }) => ({ stdout: err.stdout ?? '[]' }),
  );
  try {
    return JSON.parse(stdout) as Tags[];
  } catch {
    return files.map(() => ({}));
  }
}

/** Groups whose every tag is metadata. (-G1 family names.) */
const metadataGroup = /^(XMP|IPTC|Photoshop|MakerNotes|GPS|ExifIFD|InteropIFD|IFD1|SubIFD|MPF|Keys|ItemList|UserData|JUMBF|C2PA|CBOR|Apple|Samsung|GoPro|DJI|FLIR|Sony|Canon|Nikon|Olympus|Panasonic|Pentax|FujiFilm|Ricoh|Leica|Sigma|Kodak|Casio|Microsoft|Google|Doc\d+|CameraIFD|Parrot|Insta360|Vorbis|ID3|APE|MIE)/;
/** Tags that name, date, locate or describe, in groups that also hold technical tags. */
const metadataTag = /^(Make|Model|Software|Artist|Copyright|Author|Creator|Title|Comment|Description|ImageDescription|UserComment|Keywords|Subject|Location|GPS.*|DateTime|ModifyDate|CreateDate|CreationDate|DateTimeOriginal|DateUTC|HostComputer|DocumentName|PageName|SerialNumber|.*Serial.*|OwnerName|ContentIdentifier|WritingApp|Encoder|TagName|TagString|AttachedFile.*|Chapter.*|TextualData|HandlerDescription)$/;
/** Technical values ffmpeg/libheif write for every file: not a leak. */
const harmlessValue = /^(Lavf[\d.]*|VideoHandler|SoundHandler|DataHandler|0000:00:00 00:00:00|)$/;
/** exiftool groups describing the file itself or what we keep on purpose. */
const ignoredGroup = /^(ExifTool|System|File|Composite|ICC.*|JFIF|PNG-pHYs)$/;

function metadataTags(tags: Tags): string[] {
  const found: string[] = [];
  for (const [key, value] of Object.entries(tags)) {
    const [group = '', name = ''] = key.split(':');
    if (ignoredGroup.test(group) || key === 'SourceFile') continue;
    if (harmlessValue.test(String(value))) continue;
    // IFD0 Orientation alone is how JPEG and WebP keep the way up.
    if ((metadataGroup.test(group) || metadataTag.test(name)) && key !== 'IFD0:Orientation') found.push(key);
  }
  return found;
}

/** The input's metadata values worth searching the output for, as byte patterns. */
function searchableValues(tags: Tags): Buffer[] {
  const kept = new Set<string>();
  for (const [key, value] of Object.entries(tags)) if (/^ICC/.test(key)) kept.add(String(value));
  const values = new Set<string>();
  for (const [key, value] of Object.entries(tags)) {
    const [group = '', name = ''] = key.split(':');
    if (ignoredGroup.test(group) || key === 'SourceFile') continue;
    if (!(metadataGroup.test(group) || metadataTag.test(name))) continue;
    if (/^GPS(Latitude|Longitude)$/.test(name) && typeof value === 'number' && value !== 0) values.add(Math.abs(value).toFixed(4));
    for (const v of Array.isArray(value) ? value : [value]) {
      if (typeof v !== 'string') continue;
      const text = v.trim();
      if (text.length < 6 || !/[A-Za-z]{3}/.test(text) || text.startsWith('(Binary') || harmlessValue.test(text) || kept.has(text)) continue;
      values.add(text.slice(0, 64));
    }
  }
  return [...values].map((v) => Buffer.from(v, 'utf8'));
}

// -------------------------------------------------------------------------------------------
// Pixels and packets

async function pixels(file: string, heifConvert: boolean): Promise<Buffer | undefined> {
  try {
    const heif = heifConvert && /\.(heic|heif)$/i.test(file);
    if (heif) {
      // sharp's libvips cannot decode HEVC; libheif's own converter can (Debian libheif-examples).
      const png = `${file}.png`;
      await run('heif-convert', [file, png]);
      file = png;
    }
    // heif-convert has applied the HEIF transforms (irot/imir), which govern a HEIF's display, but
    // copies an input's Exif Orientation into its PNG: turning by that again would rotate the
    // original twice and the cleaned file (no Exif) once.
    const image = sharp(file, { failOn: 'none', limitInputPixels: 100_000_000 });
    return await (heif ? image : image.autoOrient()).ensureAlpha().raw().toBuffer();
  } catch {
    return undefined;
  }
}

/**
 * A video's audio packets (a hash per stream: copied, they must be identical) and the first video
 * stream's decoded pictures (a hash of their frame MD5s: since issue 26 its packets lose their
 * non-picture units, and what must be identical is the pictures they decode to).
 */
async function streamHashes(file: string): Promise<{ audio: string[]; pictures: string } | undefined> {
  try {
    const [audio, pictures] = await Promise.all([
      run('ffmpeg', ['-v', 'error', '-i', file, '-map', '0:a?', '-c', 'copy', '-f', 'streamhash', '-hash', 'sha256', '-'], { maxBuffer: 16 * 1024 * 1024 }),
      run('ffmpeg', ['-v', 'error', '-i', file, '-map', '0:V:0?', '-f', 'framemd5', '-'], { maxBuffer: 256 * 1024 * 1024 }),
    ]);
    const frames = pictures.stdout.split('\n').filter((l) => l && !l.startsWith('#')).map((l) => l.split(',').at(-1)!.trim());
    return {
      audio: audio.stdout.trim().split('\n').filter(Boolean).map((line) => line.split(',').slice(2).join(',')),
      pictures: createHash('sha256').update(frames.join()).digest('hex'),
    };
  } catch {
    return undefined;
  }
}

// -------------------------------------------------------------------------------------------

async function checkOne(file: string, work: string, tools: { exiftool: boolean; streamhash: boolean; heifConvert: boolean }): Promise<Outcome> {
  const outDir = await mkdtemp(path.join(work, 'f-'));
  try {
    let stdout: string;
    let code = 0;
    try {
      ({ stdout } = await run(process.execPath, [cli, 'strip', file, '--out-dir', outDir, '--json'], { maxBuffer: 16 * 1024 * 1024 }));
    } catch (err) {
      const e = err as { stdout?: string; code?: number };
      stdout = e.stdout ?? '';
      code = e.code ?? 1;
    }
    const result = JSON.parse(stdout.trim().split('\n').at(-1) || '{}') as {
      output?: string;
      mime?: string;
      error?: { code: string };
    };
    if (code !== 0 || !result.output) {
      const format = tools.exiftool ? String((await exiftool(file))[0]?.['File:FileType'] ?? 'unknown') : path.extname(file).slice(1) || 'none';
      return { file, format: format.toLowerCase(), verdict: code === 2 ? 'rejected' : 'error', reason: result.error?.code ?? `exit ${code}` };
    }
    const format = (result.mime ?? 'unknown').split('/')[1]!;
    const findings: string[] = [];
    if (tools.exiftool) {
      const [before = {}, after = {}] = await exiftool(file, result.output);
      findings.push(...metadataTags(after));
      const bytes = await readFile(result.output);
      const hits = searchableValues(before).filter((v) => bytes.includes(v)).length;
      if (hits > 0) findings.push(`value scan: ${hits} input value(s)`);
    }
    if (findings.length > 0) return { file, format, verdict: 'leaked', findings };

    const changed: string[] = [];
    if (result.mime?.startsWith('image/')) {
      const original = path.join(outDir, `original${path.extname(result.output)}`);
      await copyFile(file, original);
      const [a, b] = await Promise.all([pixels(original, tools.heifConvert), pixels(result.output, tools.heifConvert)]);
      if (a && b && !a.equals(b)) changed.push('pixels differ');
      if (a && !b) changed.push('output does not decode');
    } else if (tools.streamhash) {
      const [a, b] = await Promise.all([streamHashes(file), streamHashes(result.output)]);
      if (!a || !b || b.audio.some((hash) => !a.audio.includes(hash))) changed.push('audio packets differ');
      if (!a || !b || a.pictures !== b.pictures) changed.push('pictures differ');
    }
    return changed.length > 0 ? { file, format, verdict: 'changed', findings: changed } : { file, format, verdict: 'cleaned' };
  } finally {
    await rm(outDir, { recursive: true, force: true });
  }
}

async function main(): Promise<number> {
  const { positionals, values } = scriptArgs(
    `usage: npm run corpus -- <dir> [--json report.json]
  Runs every file under <dir> through \`scrubline strip\` and checks each output with ExifTool,
  with the values its input carried, and by pixels or packets. Prints a table by format.`,
    { json: { type: 'string' } },
    true,
  );
  const dir = positionals[0];
  if (!dir || !(await stat(dir).catch(() => undefined))?.isDirectory()) {
    process.stderr.write('usage: npm run corpus -- <dir> [--json report.json]\n');
    return 2;
  }
  const tools = {
    exiftool: await has('exiftool', ['-ver']),
    heifConvert: await has('heif-convert', ['--list-decoders']),
    streamhash: await has('ffmpeg', ['-v', 'error', '-h', 'muxer=streamhash']).then(async (ok) => ok && (await run('ffmpeg', ['-v', 'error', '-h', 'muxer=streamhash'])).stdout.includes('streamhash')),
  };
  if (!tools.heifConvert) process.stderr.write('note: heif-convert not installed; HEIC pixels are not compared (apt-get install libheif-examples)\n');
  if (!tools.exiftool) process.stderr.write('note: exiftool not installed; the leak check is reduced to pixels and packets (apt-get install libimage-exiftool-perl)\n');
  if (!tools.streamhash) process.stderr.write('note: this ffmpeg has no streamhash muxer; video packets are not compared\n');

  const files: string[] = [];
  for await (const f of walk(dir)) files.push(f);
  const work = await mkdtemp(path.join(tmpdir(), 'scrubline-corpus-'));
  const outcomes: Outcome[] = [];
  let next = 0;
  const started = Date.now();
  await Promise.all(
    Array.from({ length: availableParallelism() }, async () => {
      while (next < files.length) {
        const file = files[next++]!;
        outcomes.push(await checkOne(file, work, tools).catch((err: Error) => ({ file, format: '?', verdict: 'error' as const, reason: err.message.split('\n')[0] })));
        if (process.stderr.isTTY) process.stderr.write(`\r${outcomes.length}/${files.length}`);
      }
    }),
  );
  await rm(work, { recursive: true, force: true });
  if (process.stderr.isTTY) process.stderr.write('\n');

  const formats = [...new Set(outcomes.map((o) => o.format))].sort();
  const verdicts = ['cleaned', 'rejected', 'leaked', 'changed', 'error'] as const;
  const rows = formats.map((format) => [format, ...verdicts.map((v) => String(outcomes.filter((o) => o.format === format && o.verdict === v).length))]);
  rows.push(['total', ...verdicts.map((v) => String(outcomes.filter((o) => o.verdict === v).length))]);
  const header = ['format', ...verdicts];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]): string => `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ')} |`;
  console.log(`scrubline corpus: ${files.length} files from ${dir} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  console.log(line(header));
  console.log(`|${widths.map((w, i) => (i === 0 ? '-'.repeat(w + 2) : `${'-'.repeat(w + 1)}:`)).join('|')}|`);
  for (const row of rows) console.log(line(row));

  const reasons = new Map<string, number>();
  for (const o of outcomes) if (o.verdict === 'rejected' || o.verdict === 'error') reasons.set(`${o.verdict}: ${o.reason}`, (reasons.get(`${o.verdict}: ${o.reason}`) ?? 0) + 1);
  if (reasons.size > 0) {
    console.log('\nreasons:');
    for (const [reason, n] of [...reasons].sort((a, b) => b[1] - a[1])) console.log(`  ${String(n).padStart(4)}  ${reason}`);
  }
  const bad = outcomes.filter((o) => o.verdict === 'leaked' || o.verdict === 'changed' || o.verdict === 'error');
  for (const o of bad) console.log(`${o.verdict.toUpperCase()}: ${path.relative(dir, o.file)} (${o.findings?.join(', ') ?? o.reason})`);
  if (values.json) await writeFile(values.json, `${JSON.stringify(outcomes, null, 2)}\n`);
  return outcomes.some((o) => o.verdict === 'leaked' || o.verdict === 'changed') ? 1 : 0;
}

process.exitCode = await main();
