/**
 * Issue 26, video: in-stream metadata is removed instead of refused, and proven gone. Each hostile
 * stream is built here with the real encoders (libx264, libx265, ffmpeg's MJPEG) and units written
 * by hand; FFmpeg's own `trace_headers` filter is the independent oracle of what a cleaned stream
 * holds, and its decode (frame MD5s) shows the pictures are the input's.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, open, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import sharp from 'sharp';
import type { Removed } from '../src/context.js';
import { ScrubError } from '../src/errors.js';
import { canonicalAv1C, canonicalAvcC, canonicalHvcC } from '../src/formats/codec-config.js';
import { canonicalEsds, holdsUserData, withoutUserData } from '../src/formats/mpeg-headers.js';
import { checkParameterSet, ParameterSetContext, ParameterSetError } from '../src/formats/parameter-sets.js';
import { droppedCategories, keepUnitsFilter, UnitSplitter } from '../src/formats/units.js';
import type { CleanFile } from '../src/pipeline.js';
import { blockBytesFor, configProblems, MjpegWalker, proveNoUserData, provePictureStream } from '../src/verify/picture-stream.js';
import { sampleLayout, unownedBytesProblems } from '../src/verify/isobmff-samples.js';
import { sniff } from '../src/steps/sniff.js';
import { strip } from '../src/steps/strip.js';
import { verify } from '../src/steps/verify.js';
import { cleanBytes, ffmpegTools, findPlanted, manifest, pipelineDeps, removeDir, tempDir } from './helpers.js';

const run = promisify(execFile);
const planted = manifest.planted as Record<string, string>;
let work: string;
before(async () => (work = await tempDir()));
after(() => removeDir(work));

const clean = async (file: string): Promise<{ out: CleanFile; bytes: Buffer }> => cleanBytes(work, await readFile(file));

/** What FFmpeg's trace_headers reads in a file's video stream: unit type names, extradata apart. */
async function traced(file: string): Promise<{ extradata: string[]; packets: string[] }> {
  const tools = await ffmpegTools();
  const { stderr } = await run(tools.ffmpeg.path, ['-v', 'debug', '-i', file, '-map', '0:V:0', '-c', 'copy', '-bsf:v', 'trace_headers', '-f', 'null', '-'], { maxBuffer: 256 * 1024 * 1024 });
  const extradata: string[] = [];
  const packets: string[] = [];
  let into = packets;
  for (const line of stderr.split('\n')) {
    if (!line.includes('[trace_headers')) continue;
    if (/\] Extradata/.test(line)) into = extradata;
    else if (/\] Packet:/.test(line)) into = packets;
    const unit = /\] (?:nal_unit_type|obu_type): (\d+)/.exec(line);
    if (unit) into.push(unit[1]!);
  }
  return { extradata: [...new Set(extradata)].sort(), packets: [...new Set(packets)].sort((a, b) => Number(a) - Number(b)) };
}

async function pictureMd5s(file: string): Promise<string> {
  const tools = await ffmpegTools();
  const { stdout } = await run(tools.ffmpeg.path, ['-v', 'error', '-i', file, '-map', '0:V:0', '-f', 'framemd5', '-'], { maxBuffer: 64 * 1024 * 1024 });
  return stdout.split('\n').filter((l) => l && !l.startsWith('#')).map((l) => l.split(',').at(-1)!.trim()).join(' ');
}

/** Strips `file` for real, lets `tamper` change the cleaned file, then verifies it: 'verified' or the refusal. */
async function verifyTampered(file: string, tamper: (cleaned: string) => Promise<void>): Promise<string> {
  const workDir = await tempDir();
  try {
    const inputPath = path.join(workDir, 'original');
    await writeFile(inputPath, await readFile(file));
    const deps = await pipelineDeps();
    const stripped = await strip(await sniff({ id: 'test', inputPath, inputBytes: (await stat(inputPath)).size, workDir }), deps);
    await tamper(stripped.cleanPath);
    await verify(stripped, deps);
    return 'verified';
  } catch (err) {
    return err instanceof ScrubError ? `${err.code}: ${err.message}` : String(err);
  } finally {
    await removeDir(workDir);
  }
}

/** Splits Annex B bytes at start codes into NAL units (no start code). */
function annexBUnits(raw: Buffer): Buffer[] {
  const starts: number[] = [];
  for (let i = 0; i + 3 <= raw.length; i++) {
    if (raw[i] === 0 && raw[i + 1] === 0 && raw[i + 2] === 1) {
      starts.push(i + 3);
      i += 2;
    }
  }
  return starts.map((s, k) => {
    let end = k + 1 < starts.length ? starts[k + 1]! - 3 : raw.length;
    while (end > s && raw[end - 1] === 0) end--; // the zero byte of a 4-byte start code
    return raw.subarray(s, end);
  });
}

const sei = (codec: 'h264' | 'hevc', type: number, payload: Buffer): Buffer =>
  Buffer.concat([codec === 'h264' ? Buffer.from([0x06]) : Buffer.from([39 << 1, 0x01]), Buffer.from([type, payload.length]), payload, Buffer.from([0x80])]);
/** A registered ITU-T T.35 payload: the United States' country code, a provider, then free text. */
const t35 = (text: string): Buffer => Buffer.concat([Buffer.from([0xb5, 0x00, 0x31]), Buffer.from(text, 'latin1')]);
/** User data unregistered: Sony's MDPM UUID, then text a camcorder would fill with date, place and model. */
const mdpm = (text: string): Buffer => Buffer.concat([Buffer.from('17ee8c60f84d11d98cd60800200c9a66', 'hex'), Buffer.from(`MDPM${text}`, 'latin1')]);

/** A real encoder's parameter sets (SPS, PPS and, for HEVC, VPS), in the order it writes them. */
async function encodedParameterSets(codec: 'h264' | 'hevc'): Promise<Buffer[]> {
  const tools = await ffmpegTools();
  const encoder = codec === 'h264' ? ['-c:v', 'libx264', '-x264-params', 'log-level=error'] : ['-c:v', 'libx265', '-x265-params', 'log-level=error'];
  const { stdout } = await run(tools.ffmpeg.path, ['-v', 'error', '-f', 'lavfi', '-i', 'testsrc=size=64x48:rate=10:duration=0.1', ...encoder, '-f', codec, '-'], { encoding: 'buffer', maxBuffer: 16 * 1024 * 1024 });
  const types = codec === 'h264' ? [7, 8] : [32, 33, 34];
  return annexBUnits(stdout).filter((nal) => types.includes(codec === 'h264' ? nal[0]! & 0x1f : (nal[0]! >> 1) & 0x3f));
}

/** libaom's sequence header OBU for a small clip, as it writes it. */
async function av1SequenceHeader(): Promise<Buffer> {
  const tools = await ffmpegTools();
  const { stdout } = await run(tools.ffmpeg.path, ['-v', 'error', '-f', 'lavfi', '-i', 'testsrc=size=64x48:rate=10:duration=0.1', '-frames:v', '1', '-c:v', 'libaom-av1', '-cpu-used', '8', '-f', 'obu', '-'], { encoding: 'buffer', maxBuffer: 16 * 1024 * 1024 });
  const units = new UnitSplitter('av1').push(stdout);
  return Buffer.from(units.find((u) => u.type === 1)!.bytes);
}

/**
 * A parameter set with `text` written after its last field, before its stop bit: where a decoder,
 * done with the fields it knows, never looks.
 */
function textAfterFields(nal: Buffer, headerBytes: number, text: Buffer): Buffer {
  const rbsp: number[] = [];
  for (let i = headerBytes, zeros = 0; i < nal.length; i++) {
    if (zeros >= 2 && nal[i] === 3) {
      zeros = 0;
      continue;
    }
    zeros = nal[i] === 0 ? zeros + 1 : 0;
    rbsp.push(nal[i]!);
  }
  const bits = rbsp.flatMap((byte) => [7, 6, 5, 4, 3, 2, 1, 0].map((k) => (byte >> k) & 1));
  const stop = bits.lastIndexOf(1);
  const written = [...bits.slice(0, stop), ...[...text].flatMap((byte) => [7, 6, 5, 4, 3, 2, 1, 0].map((k) => (byte >> k) & 1)), 1];
  while (written.length % 8) written.push(0);
  const out: number[] = [...nal.subarray(0, headerBytes)];
  for (let i = 0, zeros = 0; i < written.length; i += 8) {
    const byte = written.slice(i, i + 8).reduce((a, b) => a * 2 + b, 0);
    if (zeros >= 2 && byte <= 3) {
      out.push(3);
      zeros = 0;
    }
    zeros = byte === 0 ? zeros + 1 : 0;
    out.push(byte);
  }
  return Buffer.from(out);
}

/**
 * A 1 s clip encoded by libx264/libx265, with `extra(unitType)` NAL units inserted before each
 * coded slice of a keyframe (and, for HEVC, after the parameter sets, where the muxer's record
 * picks them up), muxed by ffmpeg into `format`.
 */
async function clipWithUnits(codec: 'h264' | 'hevc', format: 'mp4' | 'matroska', extra: (isKey: boolean) => Buffer[], source = 'testsrc', edit: (nal: Buffer) => Buffer = (nal) => nal): Promise<string> {
  const tools = await ffmpegTools();
  const raw = path.join(work, `${Math.random().toString(36).slice(2)}.${codec}`);
  const encoder = codec === 'h264' ? ['-c:v', 'libx264', '-x264-params', 'log-level=error'] : ['-c:v', 'libx265', '-x265-params', 'log-level=error'];
  await run(tools.ffmpeg.path, ['-v', 'error', '-f', 'lavfi', '-i', `${source}=size=64x48:rate=10:duration=1`, ...encoder, '-g', '5', '-f', codec, raw]);
  const isKey = (nal: Buffer): boolean => (codec === 'h264' ? (nal[0]! & 0x1f) === 5 : ((nal[0]! >> 1) & 0x3f) >= 16 && ((nal[0]! >> 1) & 0x3f) <= 21);
  const out: Buffer[] = [];
  for (const nal of annexBUnits(await readFile(raw))) {
    if (isKey(nal)) for (const unit of extra(true)) out.push(Buffer.from([0, 0, 0, 1]), unit);
    out.push(Buffer.from([0, 0, 0, 1]), edit(nal));
  }
  const hostile = `${raw}.hostile`;
  await writeFile(hostile, Buffer.concat(out));
  const mp4 = `${raw}.mp4`;
  await run(tools.ffmpeg.path, ['-v', 'error', '-f', codec, '-r', '10', '-i', hostile, '-c', 'copy', '-f', 'mp4', mp4]);
  if (format === 'mp4') return mp4;
  // Raw streams carry no timestamps Matroska accepts: through MP4, whose record it then copies.
  const mkv = `${raw}.mkv`;
  await run(tools.ffmpeg.path, ['-v', 'error', '-i', mp4, '-c', 'copy', '-f', 'matroska', mkv]);
  return mkv;
}

const lengthPrefixed = (units: Buffer[], size: 1 | 2 | 4): Buffer =>
  Buffer.concat(units.flatMap((u) => [Buffer.from(u.length.toString(16).padStart(size * 2, '0'), 'hex'), u]));

describe('issue 26: the units of a picture stream', () => {
  it('the remux keeps coded slices and parameter sets only, per codec', () => {
    assert.equal(keepUnitsFilter('h264'), 'filter_units=pass_types=1-5|7-8');
    assert.equal(keepUnitsFilter('hevc'), 'filter_units=pass_types=0-9|16-21|32-34');
    assert.equal(keepUnitsFilter('av1'), 'filter_units=pass_types=1-4|6-8');
  });

  it('units are split behind lengths of 1, 2 or 4 bytes, across any chunking', () => {
    const units = [sei('h264', 5, mdpm('X')), Buffer.from([0x65, 0x88, 0x84, 0x00, 0x03, 0x01]), Buffer.from([0x67, 0x42])];
    for (const size of [1, 2, 4] as const) {
      const stream = lengthPrefixed(units, size);
      for (const chunk of [1, 3, 7, stream.length]) {
        const splitter = new UnitSplitter('h264', size);
        const found = [];
        for (let i = 0; i < stream.length; i += chunk) found.push(...splitter.push(stream.subarray(i, i + chunk)));
        assert.ok(splitter.end());
        assert.deepEqual(found.map((u) => u.type), [6, 5, 7], `length ${size}, chunks of ${chunk}`);
        assert.ok(found[1]!.bytes.equals(units[1]!));
      }
    }
    const cut = new UnitSplitter('h264', 4);
    cut.push(lengthPrefixed(units, 4).subarray(0, 10));
    assert.equal(cut.end(), false, 'a stream that ends inside a unit');
  });

  it('what a dropped unit was is named by category, never by value', () => {
    const seen: string[] = [];
    const count = (c: string): void => void seen.push(c);
    droppedCategories('h264', 6, sei('h264', 4, t35('text')), count);
    droppedCategories('hevc', 39, sei('hevc', 4, Buffer.from([0xb5, 0x00, 0x3c, 0x00, 0x01, 0x04, 0x01])), count);
    droppedCategories('h264', 6, sei('h264', 5, mdpm('X')), count);
    droppedCategories('hevc', 39, sei('hevc', 137, Buffer.alloc(24)), count);
    droppedCategories('hevc', 62, Buffer.from([0x7c, 0x01, 0x08]), count);
    droppedCategories('h264', 12, Buffer.from([0x0c, 0xff, 0x80]), count);
    droppedCategories('av1', 5, Buffer.from([0x2a, 0x02, 0x01, 0x00]), count);
    assert.deepEqual(seen, ['cameraData', 'hdr10plus', 'cameraData', 'hdrMetadata', 'dolbyVision', 'streamMetadata', 'hdrMetadata']);
  });

  it('configuration records are rebuilt from their fields: SEI arrays, metadata OBUs and trailing bytes go', async () => {
    const [sps, pps] = (await encodedParameterSets('h264')) as [Buffer, Buffer];
    const avcC = Buffer.concat([Buffer.from([1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, sps.length]), sps, Buffer.from([1, 0, pps.length]), pps, Buffer.from([0xfd, 0xf8, 0xf8, 0]), Buffer.from('Planted trailer')]);
    const avc = canonicalAvcC(avcC);
    assert.deepEqual(avc.removed, { streamMetadata: 1 });
    assert.ok(avc.bytes.equals(avcC.subarray(0, avcC.length - 'Planted trailer'.length)));
    assert.ok(canonicalAvcC(avc.bytes).bytes.equals(avc.bytes), 'a fixed point');

    const array = (type: number, ...nals: Buffer[]): Buffer => Buffer.concat([Buffer.from([0x80 | type, 0, nals.length]), ...nals.flatMap((n) => [Buffer.from([0, n.length]), n])]);
    const header = Buffer.concat([Buffer.from([1, 0x01, 0x60, 0, 0, 0, 0x90, 0, 0, 0, 0, 0, 0x5d, 0xf0, 0, 0xfc, 0xfd, 0xf8, 0xf8, 0, 0, 0x0f])]);
    const hostileSei = sei('hevc', 5, mdpm(planted.serial ?? 'SN'));
    const [vps, hevcSps, hevcPps] = (await encodedParameterSets('hevc')) as [Buffer, Buffer, Buffer];
    const hvcC = Buffer.concat([header, Buffer.from([4]), array(32, vps), array(33, hevcSps), array(34, hevcPps), array(39, hostileSei)]);
    const hevc = canonicalHvcC(hvcC);
    assert.deepEqual(hevc.removed, { cameraData: 1 });
    assert.equal(hevc.bytes[22], 3, 'three arrays kept');
    assert.ok(!hevc.bytes.includes(hostileSei));
    assert.ok(canonicalHvcC(hevc.bytes).bytes.equals(hevc.bytes));
    // The verifier's check of an output's record: parameter sets only, in canonical form.
    assert.deepEqual(configProblems('hevc', hevc.bytes), []);
    assert.deepEqual(configProblems('hevc', hvcC), ['video: the hvcC record holds units other than parameter sets']);
    assert.deepEqual(configProblems('h264', avcC), ['video: the avcC record holds units other than parameter sets'], 'trailing bytes');
    const reservedClear = Buffer.from(avc.bytes);
    reservedClear[4] = 0x03; // lengthSizeMinusOne without its six reserved one-bits
    assert.deepEqual(configProblems('h264', reservedClear), ['video: the avcC record is not in its canonical form']);
    assert.deepEqual(configProblems('h264', avc.bytes), []);

    const sequenceHeader = await av1SequenceHeader();
    const metadata = Buffer.from([0x2a, 0x05, 0x04, 0xb5, 0x00, 0x31, 0x41]);
    const av1 = canonicalAv1C(Buffer.concat([Buffer.from([0x81, 0x00, 0x0c, 0x00]), sequenceHeader, metadata]));
    assert.deepEqual(av1.removed, { cameraData: 1 });
    assert.ok(av1.bytes.equals(Buffer.concat([Buffer.from([0x81, 0x00, 0x0c, 0x00]), sequenceHeader])));
  });

  it('an AV1 sequence header with bytes after its trailing bits is not a record\'s', async () => {
    const sequenceHeader = await av1SequenceHeader();
    assert.doesNotThrow(() => checkParameterSet('av1', sequenceHeader, new ParameterSetContext()));
    // The same OBU with text after its payload's trailing bits, its size field grown to cover it.
    const text = Buffer.from(`GPS ${planted.latitude}`, 'latin1');
    const payload = Buffer.concat([sequenceHeader.subarray(2), text]);
    assert.ok(sequenceHeader[1]! < 0x80 && payload.length < 0x80, 'a one-byte size field');
    const grown = Buffer.concat([Buffer.from([sequenceHeader[0]!, payload.length]), payload]);
    assert.throws(() => checkParameterSet('av1', grown, new ParameterSetContext()), /bytes follow its fields/);
    assert.throws(() => canonicalAv1C(Buffer.concat([Buffer.from([0x81, 0x00, 0x0c, 0x00]), grown])), /a sequence header: bytes follow its fields/);
  });

  it('a parameter set with bytes after its fields is not a record\'s', async () => {
    const text = Buffer.from(`GPS ${planted.latitude} ${planted.serial}`, 'latin1');
    const [sps, pps] = (await encodedParameterSets('h264')) as [Buffer, Buffer];
    const avcC = (first: Buffer, second: Buffer): Buffer => Buffer.concat([Buffer.from([1, first[1]!, first[2]!, first[3]!, 0xff, 0xe1, 0, first.length]), first, Buffer.from([1, 0, second.length]), second]);
    assert.deepEqual(configProblems('h264', avcC(sps, pps)), []);
    const cases = [
      [avcC(textAfterFields(sps, 1, text), pps), 'before the SPS\'s stop bit'],
      [avcC(sps, textAfterFields(pps, 1, text)), 'before the PPS\'s stop bit'],
      [avcC(Buffer.concat([sps, text]), pps), 'after the SPS\'s stop bit'],
    ] as const;
    for (const [hostile, which] of cases) {
      assert.throws(() => canonicalAvcC(hostile), /a parameter set: bytes follow its fields/, which);
      assert.match(configProblems('h264', hostile)[0] ?? '', /does not parse \(a parameter set/, which);
    }
    const [vps, hevcSps, hevcPps] = (await encodedParameterSets('hevc')) as [Buffer, Buffer, Buffer];
    for (const unit of [vps, hevcSps, hevcPps]) {
      assert.doesNotThrow(() => checkParameterSet('hevc', unit, new ParameterSetContext()));
      assert.throws(() => checkParameterSet('hevc', textAfterFields(unit, 2, text), new ParameterSetContext()), ParameterSetError);
    }
  });

  it('MJPEG frames: APPn and COM are refused wherever a chunk boundary falls; JFIF and AVI1 pass', async () => {
    const plain = await sharp({ create: { width: 16, height: 16, channels: 3, background: '#468' } }).jpeg().toBuffer();
    const withExif = await sharp(plain).withExif({ IFD0: { Artist: planted.artist ?? 'Artist' } }).jpeg().toBuffer();
    const walk = (frames: Buffer[], chunk: number): MjpegWalker => {
      const walker = new MjpegWalker();
      const stream = Buffer.concat(frames);
      for (let i = 0; i < stream.length && !walker.problem; i += chunk) walker.push(stream.subarray(i, i + chunk));
      return walker;
    };
    for (const chunk of [1, 5, 4096]) {
      const ok = walk([plain, plain, plain], chunk);
      assert.equal(ok.problem, undefined, `chunks of ${chunk}`);
      assert.equal(ok.frames, 3);
      assert.match(walk([plain, withExif], chunk).problem ?? '', /holds an APP1 segment/);
    }
  });
});

describe('issue 30: the proof reads samples in blocks no larger than the stream needs', () => {
  const KiB = 1024;
  const MiB = 1024 * KiB;
  const ranges = (...sizes: number[]): Array<{ start: number; end: number }> => {
    let at = 4096;
    return sizes.map((size) => ({ start: at, end: (at += size) }));
  };

  it('a block holds the largest range of samples whole, rounded up to 256 KiB', () => {
    // Runs of a few hundred KB: a fifth of the 4 MiB blocks once read for any stream.
    assert.equal(blockBytesFor(ranges(180 * KiB, 40 * KiB, 700 * KiB, 9 * KiB)), 768 * KiB);
    // The load test's 1080p frames of ~1.9 MB, each a run of its own between audio: none is split.
    assert.equal(blockBytesFor(ranges(1_888_087, 2_593_201, 1_793_197)), 2560 * KiB);
    assert.equal(blockBytesFor(ranges(256 * KiB)), 256 * KiB);
    assert.equal(blockBytesFor(ranges(256 * KiB + 1)), 512 * KiB);
  });

  it('at most 4 MiB however large a range is, and a granule however small the stream', () => {
    assert.equal(blockBytesFor(ranges(12 * MiB, 100 * KiB)), 4 * MiB);
    assert.equal(blockBytesFor(ranges(4 * MiB)), 4 * MiB);
    assert.equal(blockBytesFor(ranges(10)), 256 * KiB);
    assert.equal(blockBytesFor([]), 256 * KiB);
  });

  it('a range larger than the largest block is proven piece by piece: intact it passes, one changed byte in a later piece is refused', async () => {
    // Two lossless 4K frames of noise, ~13.7 MB each and no audio between: one range, read in 4 MiB pieces.
    const tools = await ffmpegTools();
    const file = path.join(work, 'large-frames.mp4');
    await run(tools.ffmpeg.path, ['-v', 'error', '-y', '-f', 'lavfi', '-i', 'testsrc2=size=3840x2160:rate=30', '-frames:v', '2', '-vf', 'noise=alls=40:allf=t', '-c:v', 'libx264', '-preset', 'ultrafast', '-qp', '0', '-pix_fmt', 'yuv420p', file]);
    /** [size, position] of each video sample (ffprobe prints them in that order). */
    const samplesOf = async (video: string): Promise<Array<[number, number]>> => {
      const { stdout } = await run(tools.ffprobe.path, ['-v', 'error', '-select_streams', 'v', '-show_entries', 'packet=pos,size', '-of', 'csv=p=0', video]);
      return stdout.trim().split('\n').map((line) => line.split(',').map(Number) as [number, number]);
    };
    const sizes = (await samplesOf(file)).map(([size]) => size);
    assert.ok(sizes.length === 2 && sizes.every((size) => size > 8 * MiB), `frames of ${sizes.join(', ')} bytes`);
    assert.equal(await verifyTampered(file, async () => undefined), 'verified');
    // A bit of the first frame's slice, 6 MiB in: in its second piece.
    const flipping = async (cleaned: string): Promise<void> => {
      const [, at] = (await samplesOf(cleaned))[0]!;
      const handle = await open(cleaned, 'r+');
      const byte = Buffer.alloc(1);
      await handle.read(byte, 0, 1, at + 6 * MiB);
      await handle.write(Buffer.from([byte[0]! ^ 0x10]), 0, 1, at + 6 * MiB);
      await handle.close();
    };
    assert.match(await verifyTampered(file, flipping), /^verification_failed: .*not the input's coded pictures/);
  });
});

describe('issue 26 and THREATS 46: in-stream metadata is removed, and proven gone', () => {
  it('H.264 with registered T.35 text and camcorder MDPM before every keyframe → cleaned; the pictures are the input\'s', async () => {
    const file = await clipWithUnits('h264', 'mp4', () => [sei('h264', 4, t35(`GPS ${planted.latitude} ${planted.serial}`)), sei('h264', 5, mdpm(planted.artist!))]);
    assert.ok((await readFile(file)).includes(Buffer.from(planted.serial!)), 'the input carries the planted text');
    assert.deepEqual((await traced(file)).packets, ['1', '5', '6', '7', '8']);
    const { out, bytes } = await clean(file);
    assert.deepEqual(findPlanted(bytes), []);
    assert.ok((out.removed.cameraData ?? 0) >= 4, JSON.stringify(out.removed));
    const after = await traced(out.path);
    assert.deepEqual(after.packets, ['1', '5', '7', '8']);
    assert.deepEqual(after.extradata, ['7', '8']);
    assert.equal(await pictureMd5s(out.path), await pictureMd5s(file));
  });

  for (const format of ['mp4', 'matroska'] as const) {
    it(`HEVC in ${format} with SEI in its configuration record and its packets, and Dolby-Vision-style type 62 units → cleaned`, async (t) => {
      const file = await clipWithUnits('hevc', format, () => [sei('hevc', 4, t35(`owner ${planted.owner ?? planted.artist}`)), Buffer.from([62 << 1, 0x01, 0x10, 0x20, 0x30])]);
      const before = await traced(file);
      if (!before.extradata.includes('39')) t.diagnostic('the muxer put no SEI into the record of this build; the packets still carry them');
      assert.ok(before.packets.includes('39') && before.packets.includes('62'));
      const { out, bytes } = await clean(file);
      assert.deepEqual(findPlanted(bytes), []);
      assert.ok((out.removed.dolbyVision ?? 0) >= 1 && (out.removed.cameraData ?? 0) >= 1, JSON.stringify(out.removed));
      const after = await traced(out.path);
      assert.deepEqual(after.extradata, ['32', '33', '34']);
      assert.ok(after.packets.every((type) => Number(type) <= 21 || ['32', '33', '34'].includes(type)), after.packets.join());
      assert.equal(await pictureMd5s(out.path), await pictureMd5s(file));
    });
  }

  it('the proof refuses a stream that keeps a unit it should not, and one that is not the input\'s pictures', async () => {
    const tools = await ffmpegTools();
    const hostile = await clipWithUnits('h264', 'mp4', () => [sei('h264', 5, mdpm('X'))]);
    const other = (await clean(await clipWithUnits('h264', 'mp4', () => [], 'testsrc2'))).out.path;
    const side = (file: string) => ({ path: file, demuxer: 'mov' as const, map: '0:V:0', lengthSize: 4 as const });
    const kept = await provePictureStream(tools, 'h264', side(hostile), side(hostile));
    assert.match(kept.problems.join(), /a unit of type 6/);
    const { out } = await clean(hostile);
    assert.deepEqual((await provePictureStream(tools, 'h264', side(hostile), side(out.path))).problems, []);
    const foreign = await provePictureStream(tools, 'h264', side(hostile), side(other));
    assert.deepEqual(foreign.problems, ['video: the picture stream is not the input\'s coded pictures, unit for unit']);
  });

  it('text after an SPS\'s fields refuses the file; the proof refuses it in-band, where the record check does not look', async () => {
    const text = Buffer.from(`GPS ${planted.latitude} ${planted.serial}`, 'latin1');
    const junkSps = (nal: Buffer): Buffer => ((nal[0]! & 0x1f) === 7 ? textAfterFields(nal, 1, text) : nal);
    const hostile = await clipWithUnits('h264', 'mp4', () => [], 'testsrc', junkSps);
    await assert.rejects(clean(hostile), (err: unknown) => err instanceof ScrubError && err.code === 'unsupported_structure' && /parameter set: bytes follow its fields/.test(err.publicMessage));
    const tools = await ffmpegTools();
    const side = (file: string) => ({ path: file, demuxer: 'mov' as const, map: '0:V:0', lengthSize: 4 as const });
    const proof = await provePictureStream(tools, 'h264', side(hostile), side(hostile));
    assert.deepEqual(proof.problems, ['video: a parameter set in the picture stream: bytes follow its fields']);
  });
});

describe('issue 26: an MP4\'s units dropped in the written file, and the holes proven empty', () => {
  it('drops SEI from the samples in place: sizes rewritten, the holes zero, no remux filter run', async () => {
    const file = await clipWithUnits('h264', 'mp4', () => [sei('h264', 5, mdpm(planted.artist!))]);
    const { out, bytes } = await clean(file);
    assert.deepEqual((await traced(out.path)).packets, ['1', '5', '7', '8']);
    assert.equal(await pictureMd5s(out.path), await pictureMd5s(file));
    assert.deepEqual(findPlanted(bytes), []);
    // The holes where the SEI were: mdat bytes no sample owns, all zero (a remux with the filter leaves none).
    const holes = (await sampleLayout(out.path)).metadataRanges;
    assert.ok(holes.length > 0, 'the units were dropped in the written file');
    assert.deepEqual(await unownedBytesProblems(out.path), []);
  });

  it('refuses a cleaned MP4 with a byte planted where no sample looks, and passes it untouched', async () => {
    const file = await clipWithUnits('h264', 'mp4', () => [sei('h264', 5, mdpm('X'))]);
    assert.equal(await verifyTampered(file, async () => undefined), 'verified');
    const planting = async (cleaned: string): Promise<void> => {
      const hole = (await sampleLayout(cleaned)).metadataRanges[0]!;
      const handle = await open(cleaned, 'r+');
      await handle.write(Buffer.from('G'), 0, 1, hole.start);
      await handle.close();
    };
    assert.match(await verifyTampered(file, planting), /verification_failed: .*media-data bytes no sample owns are not zero/);
  });
});

describe('issue 26: MPEG-1/2/4 Part 2 headers and packets carry no user data', () => {
  const userData = Buffer.concat([Buffer.from([0, 0, 1, 0xb2]), Buffer.from(`GPS ${planted.latitude} ${planted.serial}`, 'latin1')]);
  const startCode = (code: number): Buffer => Buffer.from([0, 0, 1, code]);

  /** A 1 s clip from FFmpeg's own encoder, as an elementary stream, with `userData` put before every `before` start code. */
  async function elementary(codec: 'mpeg4' | 'mpeg2video', before?: number): Promise<Buffer> {
    const tools = await ffmpegTools();
    const { stdout } = await run(tools.ffmpeg.path, ['-v', 'error', '-f', 'lavfi', '-i', 'testsrc=size=64x48:rate=10:duration=1', '-c:v', codec, '-f', codec === 'mpeg4' ? 'm4v' : 'mpeg2video', '-'], { encoding: 'buffer', maxBuffer: 16 * 1024 * 1024 });
    if (before === undefined) return stdout;
    const parts = stdout.toString('latin1').split(startCode(before).toString('latin1'));
    return Buffer.from(parts.join(Buffer.concat([userData, startCode(before)]).toString('latin1')), 'latin1');
  }

  async function muxed(stream: Buffer, demuxer: 'm4v' | 'mpegvideo', format: 'mp4' | 'matroska', extra: string[] = []): Promise<string> {
    const tools = await ffmpegTools();
    const raw = path.join(work, `${Math.random().toString(36).slice(2)}.es`);
    await writeFile(raw, stream);
    const out = `${raw}.${format === 'mp4' ? 'mp4' : 'mkv'}`;
    await run(tools.ffmpeg.path, ['-v', 'error', '-f', demuxer, '-r', '10', '-i', raw, '-c', 'copy', ...extra, '-f', format, out]);
    return out;
  }

  it('an esds is rebuilt from its fields: the encoder\'s user data in its headers goes, a fixed point', async () => {
    const tools = await ffmpegTools();
    const mp4 = path.join(work, 'lavc-mpeg4.mp4');
    await run(tools.ffmpeg.path, ['-v', 'error', '-f', 'lavfi', '-i', 'testsrc=size=64x48:rate=10:duration=1', '-c:v', 'mpeg4', mp4]);
    const bytes = await readFile(mp4);
    const at = bytes.indexOf(Buffer.from('esds'));
    const esds = bytes.subarray(at + 4, at - 4 + bytes.readUInt32BE(at - 4));
    assert.ok(holdsUserData(esds), 'libavcodec names itself in the headers');
    const rebuilt = canonicalEsds(esds);
    assert.deepEqual(rebuilt.removed, { cameraData: 1 });
    assert.ok(!holdsUserData(rebuilt.bytes));
    assert.ok(canonicalEsds(rebuilt.bytes).bytes.equals(rebuilt.bytes));
    assert.ok(withoutUserData(Buffer.concat([startCode(0xb0), Buffer.from([1]), userData, startCode(0xb5), Buffer.from([9])])).bytes.equals(Buffer.from([0, 0, 1, 0xb0, 1, 0, 0, 1, 0xb5, 9])));
    const problems = await proveNoUserData(tools, { path: mp4, demuxer: 'mov', map: '0:V:0' }, 'isobmff');
    assert.deepEqual(problems, ['video: the esds record is not in its canonical form', 'video: user data in the decoder configuration']);
    const { out, bytes: cleaned } = await clean(mp4);
    assert.equal(out.removed.cameraData, 1);
    assert.ok(!cleaned.includes(Buffer.from('Lavc')));
    assert.equal(await pictureMd5s(out.path), await pictureMd5s(mp4));
  });

  it('MPEG-2 user data before every picture and MPEG-4 headers repeated in the packets → cleaned, pictures unchanged', async () => {
    const mpeg2 = await muxed(await elementary('mpeg2video', 0x00), 'mpegvideo', 'mp4');
    // MPEG-4 with its headers (VOL, then the encoder's user data) in the first packet as well.
    const mpeg4 = await muxed(await elementary('mpeg4'), 'm4v', 'matroska');
    for (const input of [mpeg2, mpeg4]) {
      const dump = async (file: string): Promise<Buffer> => (await run((await ffmpegTools()).ffmpeg.path, ['-v', 'error', '-i', file, '-map', '0:V:0', '-c', 'copy', '-f', 'data', '-'], { encoding: 'buffer', maxBuffer: 16 * 1024 * 1024 })).stdout;
      assert.ok(holdsUserData(await dump(input)), 'the packets carry user data');
      const { out, bytes } = await clean(input);
      assert.ok(!holdsUserData(await dump(out.path)));
      assert.ok(!bytes.includes(Buffer.from(planted.serial!)) && !bytes.includes(Buffer.from('Lavc')));
      assert.equal(await pictureMd5s(out.path), await pictureMd5s(input));
    }
  });

  it('MPEG-4 user data inside a packet, which no remux filter removes, is refused and never forwarded', async () => {
    const input = await muxed(await elementary('mpeg4', 0xb6), 'm4v', 'mp4');
    await assert.rejects(clean(input), (err: unknown) => err instanceof ScrubError && err.code === 'verification_failed' && /user data .* in the picture stream/.test(err.publicMessage));
  });
});

describe('issue 26 and THREATS 45: MJPEG frames carry no camera metadata', () => {
  /** A MOV whose MJPEG stream is `frames`, copied as they are. */
  async function mjpegMov(frames: Buffer[]): Promise<string> {
    const dir = path.join(work, Math.random().toString(36).slice(2));
    await mkdir(dir);
    await Promise.all(frames.map((f, i) => writeFile(path.join(dir, `f${String(i).padStart(3, '0')}.jpg`), f)));
    const file = path.join(dir, 'clip.mov');
    const tools = await ffmpegTools();
    await run(tools.ffmpeg.path, ['-v', 'error', '-framerate', '5', '-i', path.join(dir, 'f%03d.jpg'), '-c', 'copy', '-f', 'mov', file]);
    return file;
  }

  it('frames with their own EXIF (GPS, artist) are refused, never forwarded; frames that are pictures only are cleaned', async () => {
    const frame = (colour: string) => sharp({ create: { width: 32, height: 32, channels: 3, background: colour } }).jpeg().toBuffer();
    const frames = await Promise.all(['#123', '#456', '#789'].map(frame));
    const exif = await Promise.all(frames.map((f) => sharp(f).withExif({ IFD0: { Artist: planted.artist!, Copyright: planted.serial! } }).jpeg().toBuffer()));
    const dirty = await mjpegMov(exif);
    assert.ok((await readFile(dirty)).includes(Buffer.from(planted.artist!)));
    const err = await clean(dirty).then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof ScrubError && err.code === 'verification_failed', String(err));
    assert.match(err.publicMessage, /MJPEG frame holds an APP1 segment/);

    const { out, bytes } = await clean(await mjpegMov(frames));
    assert.equal(out.fingerprint.family, 'video');
    assert.deepEqual(findPlanted(bytes), []);
    const removed: Removed = out.removed;
    assert.equal(removed.cameraData, undefined);
  });
});
