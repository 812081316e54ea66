/**
 * Every fixture through the real pipeline (real sharp, ffmpeg, ffprobe, exifr): clean fixtures
 * come out with no planted value anywhere in their bytes, no tags for a tag reader to find, the
 * same pixels, size, orientation and colour; reject fixtures are refused with the right code.
 */
import assert from 'node:assert/strict';
import { canonicalIcc } from '../src/formats/icc.js';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { copyFile, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { deflateSync } from 'node:zlib';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import sharp from 'sharp';
import { removedCategories } from '../src/context.js';
import { keepUnitsFilter } from '../src/formats/units.js';
import { ScrubError } from '../src/errors.js';
import { cleanFile, type CleanFile } from '../src/pipeline.js';
import { sniff } from '../src/steps/sniff.js';
import { strip, writeCallBytes, writeParts } from '../src/steps/strip.js';
import { verify } from '../src/steps/verify.js';
import { probe, probeAhead, type Ffmpeg } from '../src/tools/ffmpeg.js';
import { readExifValuesStrict } from '../src/tools/exifr.js';
import { heifItems } from '../src/verify/heif.js';
import { checkImageStructure } from '../src/verify/structure-image.js';
import { cleanFixtures, ffmpegTools, findPlanted, fixture, pipelineDeps, pngChunk, rejectFixtures, removeDir, tempDir } from './helpers.js';

let work: string;
before(async () => {
  work = await tempDir();
});
after(async () => {
  await removeDir(work);
});

async function run(name: string): Promise<{ input: string; out: CleanFile; bytes: Buffer }> {
  const workDir = path.join(work, `${path.basename(name)}-${Math.random().toString(36).slice(2)}`);
  await mkdir(workDir);
  const inputPath = path.join(workDir, 'original');
  await copyFile(fixture(name), inputPath);
  const { size } = await stat(inputPath);
  const out = await cleanFile({ id: 'test', inputPath, inputBytes: size, workDir }, 'standard', await pipelineDeps());
  return { input: inputPath, out, bytes: await readFile(out.path) };
}

describe('clean fixtures', () => {
  for (const entry of cleanFixtures) {
    const expected = entry.expect as { width: number; height: number; orientation?: number };
    it(`${entry.file}: no planted value survives and the picture is intact`, async () => {
      const input = await readFile(fixture(entry.file));
      assert.ok(findPlanted(input).length > 0, 'the fixture must carry planted values, or this test proves nothing');
      const { out, bytes } = await run(entry.file);
      assert.deepEqual(findPlanted(bytes), []);
      assert.ok(Object.keys(out.removed).length > 0, 'the report names what was removed');
      for (const category of Object.keys(out.removed)) assert.ok((removedCategories as readonly string[]).includes(category), `"${category}" is not in the documented vocabulary`);
      const planned = (entry.expect as { removed?: string[] }).removed ?? [];
      for (const category of planned) assert.ok((out.removed as Record<string, number>)[category]! >= 1, `${category} reported as removed`);

      // exifr reads JPEG, PNG and TIFF; it reads no WebP or GIF and finds these HEIC and AVIF
      // fixtures' EXIF malformed, so those outputs are read by ExifTool (oracles.test.ts). A
      // reader that fails fails the test: it never reads as "nothing".
      if (out.fingerprint.family === 'image') {
        const exifrReads = ['jpeg', 'png', 'tiff'].includes(entry.format);
        if (exifrReads) assert.ok(Object.keys(await readExifValuesStrict(input)).length > 1, 'exifr reads the input\'s metadata, or its empty reading of the output proves nothing');
        const blocks = exifrReads ? await readExifValuesStrict(bytes) : {};
        for (const [block, tags] of Object.entries(blocks)) {
          if (entry.format === 'tiff' && block === 'ifd0') continue; // a TIFF's IFD0 is its image header
          assert.equal(block, 'ifd0', `exifr found a ${block} block`);
          assert.deepEqual(Object.keys(tags), ['Orientation']);
        }
        const meta = await sharp(bytes).metadata();
        assert.equal(meta.width, expected.width);
        assert.equal(meta.height, expected.height);
        assert.equal(meta.orientation ?? 1, expected.orientation ?? 1);
        const inMeta = await sharp(input).metadata();
        if (inMeta.icc) assert.ok(meta.icc?.equals(canonicalIcc(inMeta.icc, 'test').profile), 'ICC profile kept, rebuilt from its fields');
      } else {
        const tools = await ffmpegTools();
        const demuxer = entry.format === 'webm' || entry.format === 'mkv' ? 'matroska' : 'mov';
        const info = await probe(tools, out.path, demuxer);
        const leftover = Object.entries(info.format.tags ?? {}).filter(([k, v]) => !['major_brand', 'minor_version', 'compatible_brands'].includes(k) && !(k === 'encoder' && v === 'Lavf'));
        assert.deepEqual(leftover, []);
        assert.ok(info.streams.every((s) => s.codec_type === 'video' || s.codec_type === 'audio'), 'only audio and video streams');
        // Stream tags too: only what the muxer writes itself (handler names, the vendor field, the
        // language, Matroska's duration), and none of the planted values.
        const streamTags = info.streams.flatMap((s) => Object.entries(s.tags ?? {}));
        assert.deepEqual(streamTags.filter(([k]) => !['language', 'handler_name', 'vendor_id', 'DURATION'].includes(k)), [], 'stream tags the muxer did not write itself');
        assert.deepEqual(findPlanted(Buffer.from(JSON.stringify(streamTags))), []);
        assert.ok(streamTags.every(([k, v]) => k !== 'handler_name' || /^(Video|Sound)Handler$/.test(String(v))), 'handler names are the muxer\'s own');
        assert.equal(info.chapters.length, 0);
        const video = info.streams.find((s) => s.codec_type === 'video')!;
        assert.equal(video.width, expected.width);
        assert.equal(video.height, expected.height);
      }
    });
  }

  it('lossless formats decode to exactly the same pixels', async () => {
    const names = ['media/jpeg-gps-exif-xmp-iptc.jpg', 'media/png-text-exif-xmp.png', 'media/webp-exif-xmp.webp', 'media/gif-comment-xmp.gif', 'media/avif-exif-xmp-gps.avif', 'media/tiff-gps-exif.tif'];
    for (const name of names) {
      const { input, bytes } = await run(name);
      const [a, b] = await Promise.all([sharp(input).raw().toBuffer(), sharp(bytes).raw().toBuffer()]);
      assert.ok(a.equals(b), `${name}: pixels differ`);
    }
  });

  it('keeps the JPEG entropy-coded data byte for byte', async () => {
    const input = await readFile(fixture('media/jpeg-orientation-6.jpg'));
    const { bytes } = await run('media/jpeg-orientation-6.jpg');
    const scan = (b: Buffer): Buffer => b.subarray(b.indexOf(Buffer.from([0xff, 0xda])), b.lastIndexOf(Buffer.from([0xff, 0xd9])) + 2);
    assert.ok(scan(input).equals(scan(bytes)));
  });

  it('rebuilds HEIC around the coded image byte for byte, without Exif, XMP or thumbnail', async () => {
    const input = await readFile(fixture('media/heic-exif-xmp-thumbnail.heic'));
    const { out, bytes } = await run('media/heic-exif-xmp-thumbnail.heic');
    assert.deepEqual(out.removed, { exif: 1, gps: 1, xmp: 1, thumbnail: 1 });
    const items = heifItems(bytes);
    assert.deepEqual(items.map((i) => i.type).sort(), ['grid', 'hvc1']);
    for (const item of items) assert.ok(item.data.length > 0 && input.includes(item.data), `${item.type} item copied unchanged`);
    assert.deepEqual(checkImageStructure('heif', bytes).problems, []);
    assert.notDeepEqual(checkImageStructure('heif', input).problems, [], 'the verifier refuses the original');
  });

  it('drops a motion-photo box and trailer from AVIF and keeps its colour profile', async () => {
    const { out, bytes } = await run('media/avif-exif-xmp-gps.avif');
    assert.equal(out.removed.motionPhoto, 1);
    assert.equal(out.removed.trailer, 1);
    const [a, b] = await Promise.all([sharp(fixture('media/avif-exif-xmp-gps.avif')).metadata(), sharp(bytes).metadata()]);
    assert.ok(a.icc && b.icc?.equals(canonicalIcc(a.icc, 'test').profile));
  });

  it('the HEIF verifier refuses item data nothing references', async () => {
    const { bytes } = await run('media/heic-exif-xmp-thumbnail.heic');
    // Grow mdat by 8 bytes of "hidden" data at its end; no iloc extent covers them.
    const at = bytes.indexOf('mdat') - 4;
    const grown = Buffer.concat([bytes, Buffer.from('HIDDEN!!')]);
    grown.writeUInt32BE(bytes.readUInt32BE(at) + 8, at);
    assert.ok(checkImageStructure('heif', grown).problems.includes('heif: mdat holds bytes no kept item uses'));
  });

  it('packets are the input\'s: audio bit for bit, video but for its non-picture units (issue 26), and the pictures decode the same', async () => {
    const tools = await ffmpegTools();
    for (const name of ['media/mp4-location.mp4', 'media/mov-location.mov', 'media/webm-tags.webm', 'media/mkv-attachment-chapters.mkv']) {
      const { input, out } = await run(name);
      // The input as it would be with only its coded pictures and parameter sets: FFmpeg's own filter, given the kept types.
      const codec = (await probe(tools, input, name.endsWith('.mp4') || name.endsWith('.mov') ? 'mov' : 'matroska')).streams.find((s) => s.codec_type === 'video')?.codec_name;
      const filtered = path.join(path.dirname(out.path), `filtered${path.extname(name)}`);
      const filter = codec === 'h264' || codec === 'hevc' || codec === 'av1' ? ['-bsf:v', keepUnitsFilter(codec)] : [];
      await promisify(execFile)(tools.ffmpeg.path, ['-v', 'error', '-i', input, '-map', '0', '-c', 'copy', ...filter, '-y', filtered]);
      const [before, after] = await Promise.all([packetHashes(tools.ffprobe.path, filtered), packetHashes(tools.ffprobe.path, out.path)]);
      assert.ok(after.size > 0 && after.size <= before.size);
      for (const [stream, hashes] of after) {
        const match = [...before.values()].some((h) => h.length === hashes.length && h.every((x, i) => x === hashes[i]));
        assert.ok(match, `${name}: output stream ${stream} has no packet-identical input stream`);
      }
      const pictures = async (file: string) => (await promisify(execFile)(tools.ffmpeg.path, ['-v', 'error', '-i', file, '-map', '0:V:0', '-f', 'framemd5', '-'])).stdout.split('\n').filter((l) => l && !l.startsWith('#')).map((l) => l.split(',').at(-1));
      assert.deepEqual(await pictures(out.path), await pictures(input), `${name}: the pictures decode the same`);
    }
  });

  it('keeps video rotation and copies packets without re-encoding', async () => {
    const { input, out } = await run('media/mp4-location.mp4');
    const tools = await ffmpegTools();
    const [before, after] = await Promise.all([probe(tools, input, 'mov'), probe(tools, out.path, 'mov')]);
    const rotation = (info: typeof before): unknown => info.streams[0]?.side_data_list?.find((d) => 'rotation' in d)?.rotation ?? info.streams[0]?.tags?.rotate;
    assert.ok(rotation(before) !== undefined, 'fixture carries a rotation');
    assert.equal(rotation(after), rotation(before));
    assert.equal(after.streams[0]?.nb_frames, before.streams[0]?.nb_frames);
    assert.equal(out.fingerprint.family === 'video' && out.fingerprint.streams[0]?.rotation, 90);
  });

  it('drops subtitle tracks, attachments and container tags from video', async () => {
    const mov = await run('media/mov-location.mov');
    assert.equal(mov.out.removed.subtitleStream, 1);
    assert.ok((mov.out.removed.gps ?? 0) >= 1);
    const mkv = await run('media/mkv-attachment-chapters.mkv');
    assert.equal(mkv.out.removed.attachment, 1);
  });
});

describe('writing the cleaned copy', () => {
  it('writes every slice in order across calls, and only to a new 0600 file', async () => {
    const bytes = (n: number, seed: number): Buffer => Buffer.from(Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff));
    // A slice longer than two calls, empty slices, and more slices than one vectored write takes.
    const parts = [bytes(3, 1), Buffer.alloc(0), bytes(2 * writeCallBytes + 777, 2), ...Array.from({ length: 2500 }, (_, i) => bytes(1 + (i % 5), i)), Buffer.alloc(0), bytes(writeCallBytes, 3)];
    const file = path.join(work, 'parts-out');
    await writeParts(file, parts);
    assert.ok((await readFile(file)).equals(Buffer.concat(parts)));
    assert.equal((await stat(file)).mode & 0o777, 0o600);
    await assert.rejects(writeParts(file, [bytes(10, 4)]), { code: 'EEXIST' });
    assert.ok((await readFile(file)).equals(Buffer.concat(parts)), 'the existing file is untouched');
  });
});

describe('reject fixtures', () => {
  for (const entry of rejectFixtures) {
    const { code } = entry.expect as { code: string };
    it(`${entry.file}: refused with ${code}`, async () => {
      await assert.rejects(run(entry.file), (err: unknown) => {
        assert.ok(err instanceof ScrubError, String(err));
        assert.equal(err.code, code);
        assert.equal(err.status, code === 'verification_failed' ? 422 : 415);
        return true;
      });
    });
  }

  it('refuses a decompression bomb before decoding it', async () => {
    const bomb = path.join(work, 'bomb.png');
    // A valid PNG header declaring 100000 x 100000 pixels, in 60 bytes.
    await writeFile(bomb, pngDeclaring(100_000, 100_000));
    const workDir = path.join(work, 'bomb');
    await mkdir(workDir);
    const deps = { ...(await pipelineDeps()), maxInputPixels: 10_000_000 };
    await assert.rejects(cleanFile({ id: 'b', inputPath: bomb, inputBytes: (await stat(bomb)).size, workDir }, 'standard', deps), (err: unknown) => {
      assert.ok(err instanceof ScrubError);
      assert.equal(err.code, 'too_many_pixels');
      assert.equal(err.status, 413);
      return true;
    });
  });
});

function pngDeclaring(width: number, height: number): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 0; // greyscale
  return Buffer.concat([Buffer.from('89504e470d0a1a0a', 'hex'), pngChunk('IHDR', ihdr), pngChunk('IDAT', deflateSync(Buffer.alloc(16))), pngChunk('IEND', Buffer.alloc(0))]);
}

/** Per stream, the SHA-256 of every packet's payload in order (ffprobe's own hashing). */
async function packetHashes(ffprobe: string, file: string): Promise<Map<number, string[]>> {
  const { stdout } = await promisify(execFile)(ffprobe, ['-v', 'error', '-show_packets', '-show_data_hash', 'sha256', '-show_entries', 'packet=stream_index,data_hash', '-of', 'csv=p=0', file], {
    maxBuffer: 64 * 1024 * 1024,
  });
  const streams = new Map<number, string[]>();
  for (const line of stdout.trim().split('\n')) {
    const [index, hash] = line.split(',');
    const list = streams.get(Number(index)) ?? [];
    list.push(hash!);
    streams.set(Number(index), list);
  }
  return streams;
}

describe('ffprobe started ahead of its file', () => {
  // The verifier starts its ffprobe of a video's output while the remux writes it (probeAhead).
  const mp4 = 'media/mp4-location.mp4';
  /** Runs `work` with the ffmpeg tools, a fresh work dir and the not-yet-written output's path in it. */
  const inWorkDir = async (work: (tools: Ffmpeg, dir: string, target: string) => Promise<void>): Promise<void> => {
    const tools = await ffmpegTools();
    const dir = await tempDir();
    try {
      await work(tools, dir, path.join(dir, 'clean.mp4'));
    } finally {
      await removeDir(dir);
    }
  };

  it('waits at its gate until the file is complete, then reads it', () =>
    inWorkDir(async (tools, dir, target) => {
      const ahead = await probeAhead(tools, target, 'mov', dir);
      // Long enough for an ungated ffprobe to have failed on the missing file; this one waits.
      await new Promise((resolve) => setTimeout(resolve, 400));
      const { stdout } = await promisify(execFile)('ps', ['-eo', 'args']);
      assert.ok(stdout.includes(target), 'ffprobe is waiting at the gate');
      await copyFile(fixture(mp4), target);
      const info = await ahead.open();
      assert.deepEqual(info.streams.map((s) => s.codec_type), ['video', 'audio']);
      assert.deepEqual(info, await probe(tools, target, 'mov'));
    }));

  it('is stopped when the file will not come, and leaves no process behind', () =>
    inWorkDir(async (tools, dir, target) => {
      await probeAhead(tools, target, 'mov', dir).then((ahead) => ahead.cancel());
      const { stdout } = await promisify(execFile)('ps', ['-eo', 'args']);
      assert.ok(!stdout.includes(target), 'the waiting ffprobe is gone');
    }));

  it('probes the plain way when the ffprobe it runs ignores the gate', () =>
    inWorkDir(async (tools, dir, target) => {
      // A wrapper that drops FFREPORT: its ffprobe runs at once and fails on the missing file.
      const wrapper = path.join(dir, 'ffprobe-no-report');
      await writeFile(wrapper, `#!/bin/sh\nunset FFREPORT\nexec '${tools.ffprobe.path}' "$@"\n`, { mode: 0o755 });
      const ahead = await probeAhead({ ...tools, ffprobe: { path: wrapper, source: 'config' } }, target, 'mov', dir);
      await new Promise((resolve) => setTimeout(resolve, 400));
      await copyFile(fixture(mp4), target);
      const info = await ahead.open();
      assert.deepEqual(info.streams.map((s) => s.codec_type), ['video', 'audio']);
    }));
});

describe('verify that fails', () => {
  it('stops the audio decode it started and waits for it, before the work dir can go', async () => {
    const tools = await ffmpegTools();
    const dir = await tempDir();
    try {
      const inputPath = path.join(dir, 'original');
      await copyFile(fixture('media/mp4-location.mp4'), inputPath);
      const stripped = await strip(await sniff({ id: 'test', inputPath, inputBytes: (await stat(inputPath)).size, workDir: dir }), await pipelineDeps());
      // An ffmpeg that would decode the output's audio for 60 s, and an ffprobe that fails on the
      // output once that decode is running: verify throws while it runs.
      const pidFile = path.join(dir, 'decode.pid');
      const slowFfmpeg = path.join(dir, 'ffmpeg-slow');
      const failingFfprobe = path.join(dir, 'ffprobe-fails');
      await writeFile(slowFfmpeg, `#!/bin/sh\necho $$ > '${pidFile}'\nexec sleep 60\n`, { mode: 0o755 });
      await writeFile(failingFfprobe, `#!/bin/sh\nfor i in $(seq 500); do [ -s '${pidFile}' ] && exit 1; sleep 0.01; done\nexit 1\n`, { mode: 0o755 });
      const broken: Ffmpeg = { ...tools, ffmpeg: { path: slowFfmpeg, source: 'config' }, ffprobe: { path: failingFfprobe, source: 'config' } };
      // The remux's own audio check "failed", so verify decodes the output's audio itself.
      await assert.rejects(verify({ ...stripped, inputAudioDecodes: false }, { ffmpeg: broken, maxInputPixels: 100_000_000 }));
      const pid = Number(await readFile(pidFile, 'utf8'));
      assert.throws(() => process.kill(pid, 0), { code: 'ESRCH' }, 'the decode is gone when verify returns');
    } finally {
      await removeDir(dir);
    }
  });
});
