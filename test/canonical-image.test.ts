/**
 * Issue 26, images: every kept structure is written from its parsed fields, so free bytes inside
 * one do not ride along (THREATS 47), and what the reported files held between or inside their
 * structures no longer refuses them. Each hostile file is built here from a real encoder's output
 * (sharp) with bytes set by hand; each verifier rule is also given a dirty output directly.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { deflateSync, inflateSync } from 'node:zlib';
import sharp from 'sharp';
import { cleanFile, type CleanFile } from '../src/pipeline.js';
import { codedDigests, provenCoded, verify } from '../src/steps/verify.js';
import { sniff } from '../src/steps/sniff.js';
import { strip } from '../src/steps/strip.js';
import { heifItems } from '../src/verify/heif.js';
import { checkImageStructure } from '../src/verify/structure-image.js';
import { ScrubError } from '../src/errors.js';
import { cleanBytes, fixture, manifest, pipelineDeps, pngChunk, removeDir, tempDir } from './helpers.js';

const execFileP = promisify(execFile);
const planted = manifest.planted as Record<string, string>;
const secret = Buffer.from(`GPS 51.50721 -0.12758 ${planted.serial} ${planted.owner}`, 'latin1');
let work: string;
before(async () => (work = await tempDir()));
after(() => removeDir(work));

const clean = (bytes: Buffer): Promise<{ out: CleanFile; bytes: Buffer }> => cleanBytes(work, bytes);

/** Raw pixels, to show a rebuild changed no pixel. */
const pixels = (image: Buffer): Promise<Buffer> => sharp(image, { pages: 1 }).ensureAlpha().raw().toBuffer();

// --- JPEG ------------------------------------------------------------------------------------------

interface Segment {
  marker: number;
  payload: Buffer;
}

/** A JPEG's segments up to SOS, the SOS, and the rest (scan data and EOI). */
function jpegSegments(jpeg: Buffer): { segments: Segment[]; rest: Buffer } {
  const segments: Segment[] = [];
  let pos = 2;
  for (;;) {
    const marker = jpeg[pos + 1]!;
    const length = jpeg.readUInt16BE(pos + 2);
    segments.push({ marker, payload: jpeg.subarray(pos + 4, pos + 2 + length) });
    pos += 2 + length;
    if (marker === 0xda) return { segments, rest: jpeg.subarray(pos) };
  }
}

function jpegOf(segments: Segment[], rest: Buffer, between: Map<number, Buffer> = new Map()): Buffer {
  const parts: Buffer[] = [Buffer.from([0xff, 0xd8])];
  segments.forEach((s, i) => {
    const head = Buffer.alloc(4);
    head.writeUInt16BE(0xff00 | s.marker, 0);
    head.writeUInt16BE(s.payload.length + 2, 2);
    parts.push(head, s.payload);
    const stray = between.get(i);
    if (stray) parts.push(stray);
  });
  return Buffer.concat([...parts, rest]);
}

const photo = (): Promise<Buffer> =>
  sharp({ create: { width: 96, height: 64, channels: 3, background: '#456', noise: { type: 'gaussian', mean: 120, sigma: 30 } } }).jpeg({ quality: 85 }).toBuffer();

describe('issue 26: JPEG coding segments are written from their fields', () => {
  it('an unused Huffman table whose symbols are text, and an unused quantisation table of text, are gone; pixels unchanged', async () => {
    const jpeg = await photo();
    const { segments, rest } = jpegSegments(jpeg);
    // An AC table of id 3 no scan names, its 16 counts adding up to the text's length.
    const symbols = secret.subarray(0, 16);
    const unused = Buffer.concat([Buffer.from([0x13]), Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 16]), symbols]);
    const dht = segments.findIndex((s) => s.marker === 0xc4);
    const dqt = segments.findIndex((s) => s.marker === 0xdb);
    const hostile = [...segments];
    hostile.splice(dht, 0, { marker: 0xc4, payload: unused });
    // A whole quantisation table of id 3, which no component names: 64 bytes of text.
    const text = Buffer.concat([secret, Buffer.alloc(64)]).subarray(0, 64);
    hostile[dqt] = { marker: 0xdb, payload: Buffer.concat([segments[dqt]!.payload, Buffer.from([0x03]), text]) };
    const input = jpegOf(hostile, rest);
    assert.ok(input.includes(symbols) && input.includes(text));
    const { out, bytes } = await clean(input);
    assert.ok(!bytes.includes(symbols), 'the unused Huffman table went');
    assert.ok(!bytes.includes(secret.subarray(0, 20)), 'the unused quantisation table went');
    assert.ok((out.removed.other ?? 0) >= 2, JSON.stringify(out.removed));
    assert.ok((await pixels(bytes)).equals(await pixels(input)));
  });

  it('bytes between segments (a trail camera\'s 2, an editor\'s 14) are dropped, not refused', async () => {
    const jpeg = await photo();
    const { segments, rest } = jpegSegments(jpeg);
    const input = jpegOf(segments, rest, new Map([[0, Buffer.from([0x00, 0x00])], [1, Buffer.from('fourteen bytes')]]));
    const { out, bytes } = await clean(input);
    assert.equal(out.removed.other, 1);
    assert.ok(!bytes.includes(Buffer.from('fourteen bytes')));
    assert.ok((await pixels(bytes)).equals(await pixels(jpeg)));
  });

  it('the verifier refuses a coding segment longer than its fields, an unused table and bytes between segments', async () => {
    const jpeg = await photo();
    const { segments, rest } = jpegSegments(jpeg);
    const dqt = segments.findIndex((s) => s.marker === 0xdb);
    const longer = [...segments];
    longer[dqt] = { marker: 0xdb, payload: Buffer.concat([segments[dqt]!.payload, Buffer.from('x')]) };
    assert.ok(checkImageStructure('jpeg', jpegOf(longer, rest)).problems.includes('jpeg: a coding segment holds more than its fields'));
    const unused = [{ marker: 0xc4, payload: Buffer.concat([Buffer.from([0x13]), Buffer.alloc(15), Buffer.from([1, 0x41])]) }, ...segments];
    assert.ok(checkImageStructure('jpeg', jpegOf(unused, rest)).problems.includes('jpeg: a table no scan uses'));
    const unusedQuant = [{ marker: 0xdb, payload: Buffer.concat([Buffer.from([0x03]), Buffer.alloc(64, 1)]) }, ...segments];
    assert.ok(checkImageStructure('jpeg', jpegOf(unusedQuant, rest)).problems.includes('jpeg: a table no scan uses'));
    assert.ok(checkImageStructure('jpeg', jpegOf(segments, rest, new Map([[0, Buffer.from('ab')]]))).problems.includes('jpeg: bytes between segments'));
    assert.deepEqual(checkImageStructure('jpeg', jpeg).problems, []);
  });

  it('a value of the input that is also a run of its own scan data (C2PA ingredient thumbnails, FLIR raw copies) is not a leak there', async () => {
    const jpeg = await photo();
    const { segments, rest } = jpegSegments(jpeg);
    // An APP11 (JUMBF) segment that carries 64 bytes of the picture's own entropy-coded data.
    const run = rest.subarray(100, 164);
    const input = jpegOf([{ marker: 0xeb, payload: Buffer.concat([Buffer.from('JP\0\x01'), run]) }, ...segments], rest);
    const { out, bytes } = await clean(input);
    assert.equal(out.removed.jumbf, 1);
    assert.ok(bytes.includes(run), 'the run is still there, in the scan');
  });

  it('coded data counts as proven only when every piece is the input\'s, in order', async () => {
    const a = await photo();
    const b = await sharp({ create: { width: 96, height: 64, channels: 3, background: '#a52' } }).jpeg({ quality: 85 }).toBuffer(); // other scan bytes
    const structures = checkImageStructure('jpeg', b).structures;
    assert.deepEqual(provenCoded('jpeg', b, structures, codedDigests('jpeg', a)), []);
    assert.equal(provenCoded('jpeg', a, checkImageStructure('jpeg', a).structures, codedDigests('jpeg', a)).length, 1);
  });
});

// --- JPEG scans ------------------------------------------------------------------------------------

const segment = (marker: number, payload: Buffer | number[]): Buffer => {
  const head = Buffer.from([0xff, marker, 0, 0]);
  head.writeUInt16BE(Buffer.from(payload).length + 2, 2);
  return Buffer.concat([head, Buffer.from(payload)]);
};

/**
 * A grey JPEG written by hand, so every bit of its scans is known: Huffman tables of one code each
 * ("0"), a DC difference of 0 and an end-of-block, so a block is two bits ("00") of a baseline
 * scan; `scans` gives each scan's header and coded bytes.
 */
function handJpeg(options: { width: number; height: number; sof?: number; precision?: number; restart?: number; acSymbol?: number; scans: Array<{ sos: number[]; data: Buffer | number[] }> }): Buffer {
  const { width, height } = options;
  const sof = [options.precision ?? 8, height >> 8, height & 255, width >> 8, width & 255, 1, 1, 0x11, 0];
  const oneCode = (tableClass: number, symbol: number): number[] => [tableClass << 4, 1, ...Array<number>(15).fill(0), symbol];
  return Buffer.concat([
    Buffer.from([0xff, 0xd8]),
    segment(0xdb, [0, ...Array<number>(64).fill(1)]),
    segment(options.sof ?? 0xc0, sof),
    segment(0xc4, [...oneCode(0, 0), ...oneCode(1, options.acSymbol ?? 0)]),
    ...(options.restart ? [segment(0xdd, [0, options.restart])] : []),
    ...options.scans.flatMap((scan) => [segment(0xda, scan.sos), Buffer.from(scan.data)]),
    Buffer.from([0xff, 0xd9]),
  ]);
}

/** A baseline scan of the hand-made JPEG's one component. */
const baselineScan = [1, 1, 0x00, 0, 63, 0];
const problemsOf = (jpeg: Buffer): string[] => checkImageStructure('jpeg', jpeg).problems;

describe('issue 26: a JPEG scan ends where its last MCU does (THREATS 37)', () => {
  it('one block is two bits: the canonical byte is 0x3F, and the verifier knows it', async () => {
    const canonical = handJpeg({ width: 8, height: 8, scans: [{ sos: baselineScan, data: [0x3f] }] });
    assert.deepEqual(problemsOf(canonical), []);
    const decoded = await sharp(canonical, { failOn: 'warning' }).greyscale().raw().toBuffer({ resolveWithObject: true });
    assert.equal(decoded.info.width * decoded.info.height, 64, 'a real decoder reads it without a warning');
    // Padding bits of 0 instead of 1, and text after the block: both refused by the verifier.
    assert.ok(problemsOf(handJpeg({ width: 8, height: 8, scans: [{ sos: baselineScan, data: [0x00] }] })).includes('jpeg: scan data runs past its last MCU'));
    assert.ok(problemsOf(handJpeg({ width: 8, height: 8, scans: [{ sos: baselineScan, data: Buffer.concat([Buffer.from([0x3f]), secret]) }] })).includes('jpeg: scan data runs past its last MCU'));
  });

  it('text after the last MCU and unset padding bits are cut by the stripper, in every restart interval', async () => {
    // Three 8x8 blocks, a restart after each: "00" then padding, RST0, "00", RST1, "00".
    const expected = handJpeg({ width: 24, height: 8, restart: 1, scans: [{ sos: baselineScan, data: [0x3f, 0xff, 0xd0, 0x3f, 0xff, 0xd1, 0x3f] }] });
    const data = Buffer.concat([Buffer.from([0x00]), secret, Buffer.from([0xff, 0xd0, 0x3f, 0xff, 0xff, 0xd1, 0x3f]), secret]);
    const hostile = handJpeg({ width: 24, height: 8, restart: 1, scans: [{ sos: baselineScan, data }] });
    assert.ok(problemsOf(hostile).includes('jpeg: scan data runs past its last MCU'));
    const { out, bytes } = await clean(hostile);
    assert.ok(bytes.equals(expected), 'the cleaned file is the canonical one, byte for byte');
    assert.equal(out.removed.other, 1);
  });

  it('a scan that stops before its last MCU, a restart marker out of order and an undefined code are corrupt', () => {
    const corrupt = (jpeg: Buffer): boolean => problemsOf(jpeg).some((p) => /before its last MCU|restart marker|does not define/.test(p));
    assert.ok(corrupt(handJpeg({ width: 64, height: 64, scans: [{ sos: baselineScan, data: [0x3f] }] })), '64 blocks need 128 bits');
    assert.ok(corrupt(handJpeg({ width: 24, height: 8, restart: 1, scans: [{ sos: baselineScan, data: [0x3f, 0xff, 0xd3, 0x3f, 0xff, 0xd1, 0x3f] }] })));
    assert.ok(corrupt(handJpeg({ width: 8, height: 8, scans: [{ sos: baselineScan, data: [0xff, 0x00] }] })), 'only code 0 is defined');
  });

  it('text appended inside a real baseline and a real progressive scan is cut; pixels are unchanged', async () => {
    for (const progressive of [false, true]) {
      const jpeg = await sharp({ create: { width: 96, height: 64, channels: 3, background: '#456', noise: { type: 'gaussian', mean: 120, sigma: 30 } } })
        .jpeg({ quality: 85, progressive })
        .toBuffer();
      const hostile = Buffer.concat([jpeg.subarray(0, -2), secret, jpeg.subarray(-2)]);
      assert.ok(problemsOf(hostile).includes('jpeg: scan data runs past its last MCU'));
      const { out, bytes } = await clean(hostile);
      assert.ok(!bytes.includes(secret.subarray(0, 12)), `progressive ${progressive}: the text went`);
      assert.equal(out.removed.other, 1);
      assert.ok((await pixels(bytes)).equals(await pixels(jpeg)));
      assert.deepEqual(problemsOf(jpeg), [], 'sharp\'s own scans are canonical');
    }
  });

  it('the walk takes several codes a step and still finds the exact end, whether blocks end on an end of block or on their 64th coefficient', async () => {
    // Noise at quality 100 fills most blocks to their last coefficient (no end-of-block code);
    // flat colour at 50 ends every block at once; the 4:2:0 and 4:4:4 frames interleave differently.
    const images = [
      { background: '#3a7', noise: 60, quality: 100, subsampling: '4:4:4' },
      { background: '#3a7', noise: 60, quality: 100, subsampling: '4:2:0' },
      { background: '#3a7', noise: 8, quality: 90, subsampling: '4:2:0' },
      { background: '#b52', noise: 0, quality: 50, subsampling: '4:2:0' },
    ] as const;
    for (const { background, noise, quality, subsampling } of images) {
      const create = { width: 200, height: 120, channels: 3 as const, background, ...(noise ? { noise: { type: 'gaussian' as const, mean: 128, sigma: noise } } : {}) };
      const jpeg = await sharp({ create }).jpeg({ quality, chromaSubsampling: subsampling }).toBuffer();
      const what = `${subsampling} q${quality} noise ${noise}`;
      const report = checkImageStructure('jpeg', jpeg);
      assert.deepEqual(report.problems, [], what);
      assert.equal(report.codedDataProven, true, what);
      // One byte more, and the data runs past the last MCU; one less, and it stops before it.
      const longer = Buffer.concat([jpeg.subarray(0, -2), Buffer.from([0x00]), jpeg.subarray(-2)]);
      assert.ok(problemsOf(longer).includes('jpeg: scan data runs past its last MCU'), what);
      const shorter = Buffer.concat([jpeg.subarray(0, -3), jpeg.subarray(-2)]);
      assert.ok(problemsOf(shorter).some((p) => /before its last MCU/.test(p)), what);
    }
  });

  it('text the stripper\'s hint would miss (it ends in a 1 bit) is found by the verifier\'s walk and cut by a second strip, with or without a preview', async () => {
    const jpeg = await photo();
    const hostile = Buffer.concat([jpeg.subarray(0, -2), secret, Buffer.from('u'), jpeg.subarray(-2)]);
    for (const previews of [true, false]) {
      const workDir = await tempDir();
      try {
        await writeFile(path.join(workDir, 'original'), hostile);
        const received = { id: 'test', inputPath: path.join(workDir, 'original'), inputBytes: hostile.length, workDir };
        const out = await cleanFile(received, 'standard', { ...(await pipelineDeps()), previews });
        const bytes = await readFile(out.path);
        assert.ok(!bytes.includes(secret.subarray(0, 12)), 'the text went');
        assert.equal(out.removed.other, 1);
        assert.ok((await pixels(bytes)).equals(await pixels(jpeg)));
      } finally {
        await removeDir(workDir);
      }
    }
  });

  it('with no preview wanted, the walk is the proof: a scan of text is still refused, a real photo still cleaned', async () => {
    const { segments } = jpegSegments(await photo());
    const text = jpegOf(segments, Buffer.concat([Buffer.from('<html><script>alert(1)</script></html>'.repeat(20)), Buffer.from([0xff, 0xd9])]));
    for (const [bytes, refusal] of [[text, 'corrupt_media'], [await photo(), undefined]] as const) {
      const workDir = await tempDir();
      try {
        await writeFile(path.join(workDir, 'original'), bytes);
        const received = { id: 'test', inputPath: path.join(workDir, 'original'), inputBytes: bytes.length, workDir };
        const result = cleanFile(received, 'standard', { ...(await pipelineDeps()), previews: false });
        if (!refusal) assert.equal((await result).preview, undefined);
        else await assert.rejects(result, (err: unknown) => err instanceof ScrubError && err.code === refusal);
      } finally {
        await removeDir(workDir);
      }
    }
    // A 12-bit frame: the walk reads it, but only a decode proves it, and libvips cannot decode
    // it. The stripper refuses one (the test below); the verifier does not count on that. Given
    // one as the cleaned file of an 8-bit input of the same picture, it decodes, and refuses.
    const eightBit = handJpeg({ width: 8, height: 8, scans: [{ sos: baselineScan, data: [0x3f] }] });
    const twelveBit = handJpeg({ width: 8, height: 8, sof: 0xc1, precision: 12, scans: [{ sos: baselineScan, data: [0x3f] }] });
    const workDir = await tempDir();
    try {
      const inputPath = path.join(workDir, 'original');
      await writeFile(inputPath, eightBit);
      const deps = { ...(await pipelineDeps()), previews: false };
      const stripped = await strip(await sniff({ id: 'test', inputPath, inputBytes: eightBit.length, workDir }), deps);
      await writeFile(stripped.cleanPath, twelveBit, { mode: 0o600 });
      await assert.rejects(verify({ ...stripped, original: undefined }, deps), (err: unknown) => err instanceof ScrubError && err.code === 'corrupt_media');
    } finally {
      await removeDir(workDir);
    }
  });

  it('a restart-marker JPEG from cjpeg keeps its scan byte for byte; an arithmetic-coded one is refused', async () => {
    const restart = await readFile(fixture('media/jpeg-restart-intervals.jpg'));
    const sos = (jpeg: Buffer): Buffer => jpeg.subarray(jpeg.indexOf(Buffer.from([0xff, 0xda])));
    const { out, bytes } = await clean(restart);
    assert.ok(sos(restart).includes(Buffer.from([0xff, 0xd7])), 'restart markers all the way round');
    assert.ok(sos(bytes).equals(sos(restart)));
    assert.ok(out.removed.gps);
    await assert.rejects(clean(await readFile(fixture('reject/jpeg-arithmetic.jpg'))), (err: unknown) => err instanceof ScrubError && err.code === 'unsupported_structure');
  });

  it('a lossless or 12-bit JPEG is refused up front as a structure no decoder here reads, not as a failed verification', async () => {
    // No decoder in the stack reads them (sharp's libjpeg is mozjpeg, 8-bit DCT only), so their
    // pixels cannot be proven: the refusal must say so, not blame the file or the verifier.
    const lossless = path.join(work, 'lossless.jpg');
    await execFileP('ffmpeg', ['-v', 'error', '-f', 'lavfi', '-i', 'testsrc2=size=64x48', '-frames:v', '1', '-c:v', 'ljpeg', '-pix_fmt', 'yuvj420p', '-strict', '-1', '-y', lossless]);
    const twelveBit = Buffer.from(await readFile(fixture('media/jpeg-restart-intervals.jpg')));
    const sof = twelveBit.indexOf(Buffer.from([0xff, 0xc0]));
    twelveBit[sof + 4] = 12;
    for (const [bytes, why] of [[await readFile(lossless), /lossless \(SOF3\) coding/], [twelveBit, /12-bit samples/]] as const) {
      await assert.rejects(clean(bytes), (err: unknown) => err instanceof ScrubError && err.code === 'unsupported_structure' && why.test(err.publicMessage));
    }
  });

  it('a progressive file of many scans that each walk every block is refused by its work budget, not walked', async () => {
    // 1024x1024 grey: 16,384 blocks. Each refinement scan of coefficients 1-63 is one code, an
    // end-of-band run of 2^14 blocks ("0" + fourteen 0 bits): 63 steps a block for two bytes.
    const refine = { sos: [1, 1, 0x00, 1, 63, 0x10], data: [0x00, 0x01] };
    const bomb = handJpeg({ width: 1024, height: 1024, sof: 0xc2, acSymbol: 0xe0, scans: Array.from({ length: 40 }, () => refine) });
    assert.ok(bomb.length < 2000);
    await assert.rejects(clean(bomb), (err: unknown) => err instanceof ScrubError && err.code === 'unsupported_structure' && /steps to read/.test(err.publicMessage));
    const few = handJpeg({ width: 1024, height: 1024, sof: 0xc2, acSymbol: 0xe0, scans: Array.from({ length: 4 }, () => refine) });
    assert.ok(!problemsOf(few).some((p) => /steps/.test(p)), 'a few such scans are within the budget');
  });
});

// --- PNG -------------------------------------------------------------------------------------------

/** A PNG whose chunks are `before` IDAT, with the given chunk types replaced. */
async function pngWith(edit: (type: string, data: Buffer) => Buffer[] | undefined, extra: Buffer[] = []): Promise<Buffer> {
  const base = await sharp({ create: { width: 8, height: 8, channels: 3, background: '#369' } }).png().withIccProfile('srgb').toBuffer();
  const out: Buffer[] = [base.subarray(0, 8)];
  for (let pos = 8; pos < base.length; ) {
    const length = base.readUInt32BE(pos);
    const type = base.toString('latin1', pos + 4, pos + 8);
    const data = base.subarray(pos + 8, pos + 8 + length);
    if (type === 'IDAT') out.push(...extra);
    const replaced = edit(type, data);
    out.push(...(replaced ?? [base.subarray(pos, pos + 12 + length)]));
    pos += 12 + length;
  }
  return Buffer.concat(out);
}

describe('issue 26: PNG chunks are written from their fields', () => {
  it('text after a valid pHYs, and an iCCP keyword that is text, are gone; the profile and pixels stay', async () => {
    const input = await pngWith(
      (type, data) => {
        if (type === 'iCCP') return [pngChunk('iCCP', Buffer.concat([Buffer.from(`${planted.owner}\0`, 'latin1'), data.subarray(data.indexOf(0) + 1)]))];
        return undefined;
      },
      [pngChunk('pHYs', Buffer.concat([Buffer.from([0, 0, 0x0b, 0x13, 0, 0, 0x0b, 0x13, 1]), secret]))],
    );
    assert.ok(input.includes(secret) && input.includes(Buffer.from(planted.owner!)));
    const { out, bytes } = await clean(input);
    assert.ok(!bytes.includes(secret) && !bytes.includes(Buffer.from(planted.owner!)));
    assert.ok((out.removed.other ?? 0) >= 1);
    assert.ok((await sharp(bytes).metadata()).icc, 'the colour profile survives');
    assert.ok((await pixels(bytes)).equals(await pixels(input)));
  });

  it('the verifier refuses a fixed-length chunk of another length and an iCCP under any other keyword', async () => {
    const longPhys = await pngWith(() => undefined, [pngChunk('pHYs', Buffer.alloc(12))]);
    assert.ok(checkImageStructure('png', longPhys).problems.includes('png: pHYs is not its fixed length'));
    const named = await pngWith(() => undefined);
    assert.ok(checkImageStructure('png', named).problems.includes('png: iCCP keyword is not the fixed one'), 'sharp names its profile otherwise');
    const { bytes } = await clean(named);
    assert.deepEqual(checkImageStructure('png', bytes).problems, []);
  });
});

/** A PNG's chunks, as [type, data] pairs in order. */
function pngChunks(png: Buffer): Array<[string, Buffer]> {
  const chunks: Array<[string, Buffer]> = [];
  for (let pos = 8; pos + 12 <= png.length; pos += 12 + png.readUInt32BE(pos)) chunks.push([png.toString('latin1', pos + 4, pos + 8), png.subarray(pos + 8, pos + 8 + png.readUInt32BE(pos))]);
  return chunks;
}

const pngOf = (chunks: Array<[string, Buffer]>): Buffer => Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), ...chunks.map(([type, data]) => pngChunk(type, data))]);

describe('issue 26: PNG image data ends where its zlib stream and its rows do', () => {
  const noisy = (): Promise<Buffer> =>
    sharp({ create: { width: 48, height: 32, channels: 3, background: '#246', noise: { type: 'gaussian', mean: 100, sigma: 40 } } }).png({ compressionLevel: 6 }).toBuffer();

  it('text after the stream, in its last IDAT or in an IDAT of its own, is cut; pixels unchanged', async () => {
    const base = await noisy();
    const chunks = pngChunks(base);
    const idat = chunks.findIndex(([type]) => type === 'IDAT');
    const inLast = [...chunks];
    inLast[idat] = ['IDAT', Buffer.concat([chunks[idat]![1], secret])];
    const ownChunk = [...chunks];
    ownChunk.splice(idat + 1, 0, ['IDAT', secret]);
    for (const input of [pngOf(inLast), pngOf(ownChunk)]) {
      assert.ok((await pixels(input)).equals(await pixels(base)), 'decoders never see the text');
      const { out, bytes } = await clean(input);
      assert.ok(!bytes.includes(secret));
      assert.ok((out.removed.other ?? 0) >= 1);
      assert.ok((await pixels(bytes)).equals(await pixels(base)));
    }
  });

  it('rows the picture does not have are refused; the verifier refuses both, given dirty outputs', async () => {
    const base = await noisy();
    const chunks = pngChunks(base);
    const idat = chunks.findIndex(([type]) => type === 'IDAT');
    // The stream, inflated, with text as a further "row", deflated again: libpng stops at row 32.
    const rows = inflateSync(chunks[idat]![1]);
    const extraRows = [...chunks];
    extraRows[idat] = ['IDAT', deflateSync(Buffer.concat([rows, secret]))];
    const input = pngOf(extraRows);
    assert.ok((await pixels(input)).equals(await pixels(base)), 'decoders never see the extra row');
    await assert.rejects(clean(input), (err: unknown) => err instanceof ScrubError && err.code === 'corrupt_media' && /more than the picture/.test(err.publicMessage));
    assert.ok(checkImageStructure('png', input).problems.includes("png: image data holds more than the picture's rows"));
    const trailing = [...chunks];
    trailing[idat] = ['IDAT', Buffer.concat([chunks[idat]![1], secret])];
    assert.ok(checkImageStructure('png', pngOf(trailing)).problems.includes('png: image data runs past its zlib stream'));
    assert.deepEqual(checkImageStructure('png', base).problems.filter((p) => /image data/.test(p)), []);
  });

  it('an APNG frame\'s fdAT data is cut at its stream too, keeping the frame numbering', async () => {
    const apng = path.join(work, 'anim.png');
    await execFileP('ffmpeg', ['-v', 'error', '-f', 'lavfi', '-i', 'testsrc=size=24x16:rate=4', '-frames:v', '3', '-plays', '0', '-f', 'apng', '-y', apng]);
    const base = await readFile(apng);
    const chunks = pngChunks(base);
    const fdat = chunks.findIndex(([type]) => type === 'fdAT');
    assert.ok(fdat > 0, 'ffmpeg writes fdAT frames');
    const hostile = [...chunks];
    hostile[fdat] = ['fdAT', Buffer.concat([chunks[fdat]![1], secret])];
    const input = pngOf(hostile);
    const { bytes } = await clean(input);
    assert.ok(!bytes.includes(secret));
    const sequence = (png: Buffer): number[] => pngChunks(png).filter(([type]) => type === 'fcTL' || type === 'fdAT').map(([, data]) => data.readUInt32BE(0));
    assert.deepEqual(sequence(bytes), sequence(base));
    assert.ok(checkImageStructure('png', input).problems.includes('png: image data runs past its zlib stream'));
    const frames = async (png: Buffer): Promise<Buffer> => sharp(png, { pages: -1 }).raw().toBuffer();
    assert.ok((await frames(bytes)).equals(await frames(base)));
  });
});

// --- HEIF ------------------------------------------------------------------------------------------

const box = (type: string, ...body: Buffer[]): Buffer => {
  const size = Buffer.alloc(4);
  size.writeUInt32BE(8 + body.reduce((n, b) => n + b.length, 0));
  return Buffer.concat([size, Buffer.from(type, 'latin1'), ...body]);
};
const fullBox = (type: string, version: number, ...body: Buffer[]): Buffer => box(type, Buffer.from([version, 0, 0, 0]), ...body);
const u16 = (n: number): Buffer => Buffer.from([n >> 8, n & 0xff]);
const u32 = (n: number): Buffer => Buffer.from([n >>> 24, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff]);

/** A one-item HEIC: the given decoder configuration record and coded bytes, as heif-enc lays them out. */
function heicOf(hvcC: Buffer, coded: Buffer, ispe: Buffer, itemType = 'hvc1'): Buffer {
  const ftyp = box('ftyp', Buffer.from('heic\0\0\0\0mif1heic', 'latin1'));
  const meta = (offset: number): Buffer =>
    fullBox(
      'meta',
      0,
      fullBox('hdlr', 0, u32(0), Buffer.from('pict', 'latin1'), Buffer.alloc(13)),
      fullBox('pitm', 0, u16(1)),
      fullBox('iinf', 0, u16(1), fullBox('infe', 2, u16(1), u16(0), Buffer.from(`${itemType}\0`, 'latin1'))),
      itemType === 'hvc1'
        ? box('iprp', box('ipco', box('hvcC', hvcC), ispe), fullBox('ipma', 0, u32(1), u16(1), Buffer.from([2, 0x81, 0x02])))
        : box('iprp', box('ipco', ispe), fullBox('ipma', 0, u32(1), u16(1), Buffer.from([1, 0x01]))),
      fullBox('iloc', 0, Buffer.from([0x44, 0x00]), u16(1), u16(1), u16(0), u16(1), u32(offset), u32(coded.length)),
    );
  const head = ftyp.length + meta(0).length + 8;
  return Buffer.concat([ftyp, meta(head), box('mdat', coded)]);
}

/** The fixture's record, coded picture and size, as a real encoder (x265 via heif-enc) wrote them. */
async function heicParts(): Promise<{ hvcC: Buffer; coded: Buffer; ispe: Buffer }> {
  const heic = await readFile(fixture('media/heic-exif-xmp-thumbnail.heic'));
  const body = (type: string): Buffer => {
    const at = heic.indexOf(Buffer.from(type, 'latin1'));
    return heic.subarray(at - 4, at - 4 + heic.readUInt32BE(at - 4));
  };
  const hvcC = body('hvcC').subarray(8);
  const primary = heifItems(heic).find((item) => item.type === 'hvc1')!;
  return { hvcC, coded: primary.data, ispe: body('ispe') };
}

const seiNal = (text: Buffer): Buffer => Buffer.concat([Buffer.from([39 << 1, 1, 5, 16 + text.length]), Buffer.from('17ee8c60f84d11d98cd60800200c9a66', 'hex'), text, Buffer.from([0x80])]);
const lengthed = (nal: Buffer): Buffer => Buffer.concat([u32(nal.length), nal]);

describe('issue 26: HEIF coded items and their records hold pictures and parameter sets only', () => {
  it('an SEI inside the item and an SEI array in its hvcC are removed; the slices are the input\'s', async () => {
    const { hvcC, coded, ispe } = await heicParts();
    const plain = heicOf(hvcC, coded, ispe);
    assert.deepEqual(checkImageStructure('heif', plain).problems, [], 'a record and item as heif-enc writes them');
    const sei = seiNal(secret);
    // hvcC: one more array, of type 39, holding the SEI.
    const hostileRecord = Buffer.concat([hvcC.subarray(0, 22), Buffer.from([hvcC[22]! + 1]), hvcC.subarray(23), Buffer.from([39]), u16(1), u16(sei.length), sei]);
    const hostile = heicOf(hostileRecord, Buffer.concat([lengthed(sei), coded]), ispe);
    const problems = checkImageStructure('heif', hostile).problems;
    assert.ok(problems.includes('heif: a coded item holds a unit of type 39, which a cleaned picture does not keep'), problems.join());
    assert.ok(problems.includes('heif: the hvcC record holds units other than parameter sets'), problems.join());
    const { out, bytes } = await clean(hostile);
    assert.ok(!bytes.includes(secret));
    assert.equal(out.removed.cameraData, 2);
    const item = heifItems(bytes).find((i) => i.type === 'hvc1')!;
    assert.ok(item.data.equals(coded), 'the coded slices, byte for byte');
    assert.deepEqual(checkImageStructure('heif', bytes).problems, []);
  });

  it('a JPEG-coded item is cleaned as any JPEG is: its own EXIF goes, its scan stays', async () => {
    const { ispe } = await heicParts();
    const jpeg = await sharp({ create: { width: 32, height: 24, channels: 3, background: '#468' } })
      .withExif({ IFD0: { Artist: planted.artist!, Copyright: `GPS ${planted.latitude}` } })
      .jpeg()
      .toBuffer();
    const hostile = heicOf(Buffer.alloc(0), jpeg, ispe, 'jpeg');
    assert.ok(hostile.includes(Buffer.from(planted.artist!)));
    assert.ok(checkImageStructure('heif', hostile).problems.some((p) => p.startsWith('heif: a JPEG item: jpeg:')), checkImageStructure('heif', hostile).problems.join());
    const { out, bytes } = await clean(hostile);
    assert.ok(!bytes.includes(Buffer.from(planted.artist!)));
    assert.ok((out.removed.exif ?? 0) >= 1);
    const item = heifItems(bytes).find((i) => i.type === 'jpeg')!;
    assert.ok((await pixels(item.data)).equals(await pixels(jpeg)), 'the picture is the same');
  });

  it('bytes after the fields of the record\'s SPS refuse the file', async () => {
    const { hvcC, coded, ispe } = await heicParts();
    // The SPS array's first unit gets text after its stop bit (its length grows to hold it).
    let at = 23;
    for (let array = 0; array < hvcC[22]!; array++) {
      const type = hvcC[at]! & 0x3f;
      const length = hvcC.readUInt16BE(at + 3);
      if (type === 33) {
        const sps = hvcC.subarray(at + 5, at + 5 + length);
        const grown = Buffer.concat([sps, secret]);
        const record = Buffer.concat([hvcC.subarray(0, at + 3), u16(grown.length), grown, hvcC.subarray(at + 5 + length)]);
        const hostile = heicOf(record, coded, ispe);
        assert.match(checkImageStructure('heif', hostile).problems.join(), /hvcC record does not parse \(a parameter set: bytes follow its fields\)/);
        await assert.rejects(clean(hostile), (err: unknown) => err instanceof ScrubError && err.code === 'unsupported_structure' && /parameter set: bytes follow its fields/.test(err.publicMessage));
        return;
      }
      at += 3;
      for (let n = hvcC.readUInt16BE(at - 2); n > 0; n--) at += 2 + hvcC.readUInt16BE(at);
    }
    assert.fail('the record has an SPS array');
  });
});

// --- GIF -------------------------------------------------------------------------------------------

describe('issue 26: GIF extensions are written from their fields', () => {
  it('extra data sub-blocks after a graphic control extension and in the loop extension are gone', async () => {
    const frames = await sharp({ create: { width: 8, height: 16, channels: 4, background: '#f008' } }).gif().toBuffer();
    const animated = await sharp(frames).gif({ loop: 3, delay: [100] }).toBuffer();
    const gce = animated.indexOf(Buffer.from([0x21, 0xf9, 0x04]));
    assert.ok(gce > 0, 'sharp writes a graphic control extension');
    const subBlock = (text: Buffer): Buffer => Buffer.concat([Buffer.from([text.length]), text]);
    // GCE: its 4 bytes, then a text sub-block before the terminator.
    let hostile = Buffer.concat([animated.subarray(0, gce + 7), subBlock(secret), animated.subarray(gce + 7)]);
    // NETSCAPE2.0: a second sub-block after the loop count.
    const loop = hostile.indexOf(Buffer.from('NETSCAPE2.0'));
    const loopEnd = loop > 0 ? loop + 11 + 4 : -1;
    if (loop > 0) hostile = Buffer.concat([hostile.subarray(0, loopEnd), subBlock(Buffer.from(planted.owner!)), hostile.subarray(loopEnd)]);
    assert.ok(hostile.includes(secret));
    const { out, bytes } = await clean(hostile);
    assert.ok(!bytes.includes(secret) && !bytes.includes(Buffer.from(planted.owner!)));
    assert.ok((out.removed.other ?? 0) >= 1);
    assert.deepEqual(checkImageStructure('gif', bytes).problems, []);
    assert.ok(checkImageStructure('gif', hostile).problems.includes('gif: graphic control extension not in its fixed form'));
  });

  it('a sub-block of text after the LZW end code is cut, and the verifier refuses one left there', async () => {
    const gif = await sharp({ create: { width: 24, height: 16, channels: 3, background: '#2a7', noise: { type: 'gaussian', mean: 128, sigma: 40 } } }).gif().toBuffer();
    // The image's data ends with the 0 terminator just before the trailer (0x3B).
    assert.equal(gif[gif.length - 1], 0x3b);
    const terminator = gif.length - 2;
    assert.equal(gif[terminator], 0);
    const hostile = Buffer.concat([gif.subarray(0, terminator), Buffer.from([secret.length]), secret, gif.subarray(terminator)]);
    assert.ok(checkImageStructure('gif', hostile).problems.includes('gif: image data runs past its end code'));
    assert.ok((await pixels(hostile)).equals(await pixels(gif)), 'no decoder reads it: the pixels are the same');
    const { out, bytes } = await clean(hostile);
    assert.ok(!bytes.includes(secret.subarray(0, 12)), 'the text went');
    assert.equal(out.removed.other, 1);
    assert.ok((await pixels(bytes)).equals(await pixels(gif)));
    assert.deepEqual(checkImageStructure('gif', bytes).problems, []);
  });
});

// --- WebP ------------------------------------------------------------------------------------------

const riff = (fourcc: string, data: Buffer): Buffer => {
  const head = Buffer.alloc(8);
  head.write(fourcc, 0, 'latin1');
  head.writeUInt32LE(data.length, 4);
  return Buffer.concat([head, data, Buffer.alloc(data.length % 2)]);
};

describe('issue 26: WebP frames hold image data only', () => {
  it('an EXIF sub-chunk inside an ANMF frame is gone, and the verifier refuses one that stayed', async () => {
    // Build an animated WebP by hand from one lossless frame: VP8X, ANIM, one ANMF.
    const frame = (await sharp({ create: { width: 16, height: 16, channels: 4, background: '#f80c' } }).webp({ lossless: true }).toBuffer()).subarray(12);
    const exif = riff('EXIF', Buffer.concat([Buffer.from('II*\0\x08\0\0\0', 'latin1'), secret]));
    const anmf = (inner: Buffer): Buffer => riff('ANMF', Buffer.concat([Buffer.alloc(6), Buffer.from([15, 0, 0, 15, 0, 0]), Buffer.from([100, 0, 0]), Buffer.from([0]), inner]));
    const webp = (inner: Buffer): Buffer => {
      const body = Buffer.concat([Buffer.from('WEBP'), riff('VP8X', Buffer.from([0x12, 0, 0, 0, 15, 0, 0, 15, 0, 0])), riff('ANIM', Buffer.alloc(6)), anmf(inner)]);
      const head = Buffer.alloc(8);
      head.write('RIFF', 0, 'latin1');
      head.writeUInt32LE(body.length, 4);
      return Buffer.concat([head, body]);
    };
    const hostile = webp(Buffer.concat([frame, exif]));
    assert.ok(checkImageStructure('webp', hostile).problems.includes('webp: a frame holds a chunk other than image data'));
    const { out, bytes } = await clean(hostile);
    assert.ok(!bytes.includes(secret));
    assert.equal(out.removed.exif, 1);
    assert.deepEqual(checkImageStructure('webp', bytes).problems, []);
    assert.ok(bytes.equals(webp(frame)), 'exactly the frame, rebuilt');
  });
});

// --- The verifier's structure rules, given dirty outputs directly (issue 31) --------------------

describe('the verifier names each structure rule an output breaks (issue 31)', () => {
  /** A real cleaned output of `format`, which passes, and edits of it that each break one rule. */
  const cases: Array<{ format: 'jpeg' | 'png' | 'webp' | 'gif' | 'tiff'; make: () => Promise<Buffer>; edits: Array<[string, (clean: Buffer) => Buffer]> }> = [
    {
      format: 'jpeg',
      make: () => photo(),
      edits: [
        ['jpeg: segment 0xFFE1 not allowed', (b) => Buffer.concat([b.subarray(0, 2), Buffer.from([0xff, 0xe1, 0x00, 0x08]), Buffer.from('<x:x>'), Buffer.alloc(1), b.subarray(2)])],
        ['jpeg: data after EOI', (b) => Buffer.concat([b, Buffer.from('after')])],
        ['jpeg: scan data is truncated (no end-of-image)', (b) => b.subarray(0, -2)],
      ],
    },
    {
      format: 'png',
      make: () => sharp({ create: { width: 8, height: 8, channels: 3, background: '#369' } }).png().toBuffer(),
      edits: [
        ['png: chunk not allowed', (b) => Buffer.concat([b.subarray(0, -12), pngChunk('tEXt', Buffer.from('Author\0someone')), b.subarray(-12)])],
        ['png: data after IEND', (b) => Buffer.concat([b, Buffer.from('after')])],
        ['png: no IEND', (b) => b.subarray(0, -12)],
      ],
    },
    {
      format: 'webp',
      make: () => sharp({ create: { width: 8, height: 8, channels: 3, background: '#369' } }).webp().toBuffer(),
      edits: [
        ['webp: chunk not allowed', (b) => {
          const out = Buffer.concat([b, Buffer.from('XTRA'), Buffer.from([4, 0, 0, 0]), Buffer.from('text')]);
          out.writeUInt32LE(out.length - 8, 4);
          return out;
        }],
        ['webp: RIFF size does not match the file', (b) => Buffer.concat([b, Buffer.from('xx')])],
      ],
    },
    {
      format: 'gif',
      make: () => sharp({ create: { width: 8, height: 8, channels: 3, background: '#369' } }).gif().toBuffer(),
      edits: [
        ['gif: block not allowed', (b) => Buffer.concat([b.subarray(0, -1), Buffer.from([0x21, 0xfe, 0x03]), Buffer.from('abc'), Buffer.from([0x00, 0x3b])])],
        ['gif: data after trailer', (b) => Buffer.concat([b, Buffer.from('after')])],
        ['gif: no trailer', (b) => b.subarray(0, -1)],
      ],
    },
    {
      format: 'tiff',
      make: () => sharp({ create: { width: 8, height: 8, channels: 3, background: '#369' } }).tiff({ compression: 'lzw' }).toBuffer(),
      edits: [['tiff: bytes no structure owns', (b) => Buffer.concat([b, Buffer.from('unowned text')])]],
    },
  ];

  for (const { format, make, edits } of cases) {
    it(`${format}: ${edits.map(([rule]) => rule.replace(/^\w+: /, '')).join('; ')}`, async () => {
      const { bytes } = await clean(await make());
      assert.deepEqual(checkImageStructure(format, bytes).problems, [], 'the cleaned output passes');
      for (const [rule, edit] of edits) assert.ok(checkImageStructure(format, edit(bytes)).problems.includes(rule), rule);
    });
  }
});
