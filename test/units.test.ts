/** Fast unit tests: config, pure ffmpeg argument builders, the pattern scanner, the middleware factory. */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, it } from 'node:test';
import { ConfigError, loadConfig } from '../src/config.js';
import { scrubline } from '../src/middleware.js';
import { planStreams } from '../src/steps/strip-video.js';
import { rotationOf } from '../src/tools/ffmpeg.js';
import { expiresAt } from '../src/steps/tag-expiry.js';
import { allowedDecoders, probeArgs, remuxArgs } from '../src/tools/ffmpeg-args.js';
import type { ProbeResult } from '../src/tools/ffmpeg.js';
import { collectImageValues } from '../src/verify/input-values.js';
import { findSignatures, maxPatternBytes, PatternSet } from '../src/verify/scan.js';
import { scanExtent, type JpegFrame, type ScanHeader } from '../src/formats/jpeg-scan.js';
import { ValueCollector } from '../src/verify/values.js';
import { hashThreadRunning, hmacFile } from '../src/hash-thread.js';
import { findPlanted, removeDir, tempDir } from './helpers.js';

describe('config', () => {
  it('uses defaults and reads SCRUBLINE_* variables once into typed values', () => {
    const config = loadConfig({ SCRUBLINE_PORT: '9000', SCRUBLINE_UPSTREAM_URL: 'http://render:9000/jobs' });
    assert.equal(config.port, 9000);
    assert.equal(config.upstreamUrl?.host, 'render:9000');
    assert.equal(config.maxFiles, 10);
    assert.equal(loadConfig({}).upstreamUrl, undefined);
  });

  it('lists every bad variable by name and what it expects', () => {
    assert.throws(
      () => loadConfig({ SCRUBLINE_PORT: 'eighty', SCRUBLINE_UPSTREAM_URL: 'ftp://x', SCRUBLINE_LOG_LEVEL: 'loud', SCRUBLINE_FINGERPRINT_KEY: 'short' }),
      (err: unknown) => {
        assert.ok(err instanceof ConfigError);
        assert.equal(err.problems.length, 4);
        for (const name of ['SCRUBLINE_PORT', 'SCRUBLINE_UPSTREAM_URL', 'SCRUBLINE_LOG_LEVEL', 'SCRUBLINE_FINGERPRINT_KEY']) assert.match(err.message, new RegExp(name));
        return true;
      },
    );
  });
});

describe('ffmpeg arguments', () => {
  it('locks every input down: forced demuxer, file protocol only, listed decoders, file: prefix', () => {
    const args = probeArgs('/tmp/a b.mp4', 'mov');
    assert.deepEqual(args.slice(3, 9), ['-protocol_whitelist', 'file', '-format_whitelist', 'mov', '-codec_whitelist', allowedDecoders.join(',')]);
    assert.deepEqual(args.slice(9, 13), ['-f', 'mov', '-i', 'file:/tmp/a b.mp4']);
    assert.ok(!allowedDecoders.includes('ffv1') && allowedDecoders.includes('h264'));
    assert.throws(() => probeArgs('relative.mp4', 'mov'), /absolute/);
  });

  it('remuxes by stream copy with no metadata, no chapters and output-side bitexact', () => {
    const args = remuxArgs({ input: '/in.mov', demuxer: 'mov', output: '/out.mov', muxer: 'mov', streams: [0, 2], legacyRotateDegrees: undefined });
    const after = args.slice(args.indexOf('-i') + 2);
    assert.deepEqual(after.slice(0, 4), ['-map', '0:0', '-map', '0:2']);
    for (const pair of [['-c', 'copy'], ['-map_metadata', '-1'], ['-map_chapters', '-1'], ['-fflags', '+bitexact']]) {
      assert.equal(after[after.indexOf(pair[0]!) + 1], pair[1]);
    }
    assert.ok(args.includes('-nostdin'));
    assert.deepEqual(args.slice(-4), ['-f', 'mov', '-y', 'file:/out.mov']);
    const legacy = remuxArgs({ input: '/in.mov', demuxer: 'mov', output: '/o.mov', muxer: 'mov', streams: [0], legacyRotateDegrees: 90 });
    assert.ok(legacy.join(' ').includes('-metadata:s:v:0 rotate=90'));
    assert.ok(!args.includes('-xerror') && !args.includes('null'));
  });

  it('decodes the audio in the remux run when asked: -xerror, and a second output that discards', () => {
    const args = remuxArgs({ input: '/in.mp4', demuxer: 'mov', output: '/out.mp4', muxer: 'mp4', streams: 'usual', legacyRotateDegrees: undefined, decodeAudio: true });
    assert.ok(args.indexOf('-xerror') < args.indexOf('-i'));
    const second = args.slice(args.indexOf('file:/out.mp4') + 1);
    assert.deepEqual(second, ['-map', '0:V:0?', '-c:v', 'copy', '-map', '0:a?', '-f', 'null', '-']);
  });

  // Frozen from ffprobe on a GoPro clip with GPMF telemetry, a timecode track and cover art.
  const goPro: ProbeResult = {
    streams: [
      { index: 0, codec_type: 'video', codec_name: 'h264', disposition: { default: 1 }, tags: { handler_name: 'GoPro AVC  ', language: 'und' }, side_data_list: [{ rotation: -90 }] },
      { index: 1, codec_type: 'audio', codec_name: 'aac', tags: { handler_name: 'GoPro AAC  ' } },
      { index: 2, codec_type: 'data', codec_name: 'none', tags: { handler_name: 'GoPro TCD  ' } },
      { index: 3, codec_type: 'data', codec_name: 'bin_data', tags: { handler_name: 'GoPro MET  ' } },
      { index: 4, codec_type: 'video', codec_name: 'mjpeg', disposition: { attached_pic: 1 } },
    ],
    format: { tags: { major_brand: 'mp41', firmware: 'HD7.01.01.90.00', location: '+51.5072-000.1276/' } },
    chapters: [{ tags: { title: 'x' } }],
  };

  it('keeps the main video and audio and counts every other stream and tag it drops', () => {
    const plan = planStreams(goPro);
    assert.deepEqual(plan.streams, [0, 1]);
    assert.deepEqual(plan.removed, { streamTags: 2, dataStream: 2, coverArt: 1, containerTags: 1, gps: 1, chapters: 1 });
    assert.equal(rotationOf(plan.video), 90);
  });
});

describe('pattern scanner', () => {
  it('finds patterns across chunk boundaries, and only real matches', () => {
    const set = new PatternSet([Buffer.from('Planted Artist'), Buffer.from('51.5072')]);
    const scanner = set.scanner();
    const text = Buffer.from('xxxx Plant' + 'ed Artist yyyy 51.507 51.5072');
    const matches = [...scanner.feed(text.subarray(0, 10)), ...scanner.feed(text.subarray(10))];
    assert.deepEqual(matches.map((m) => m.start), [5, 32]);
    assert.deepEqual(new PatternSet([]).scanner().feed(text), []);
  });

  it('agrees with a naive indexOf search on random data, whatever the chunking', () => {
    let seed = 42;
    const random = (n: number): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    for (let round = 0; round < 200; round++) {
      const patterns = Array.from({ length: 1 + random(12) }, () => Buffer.from(Array.from({ length: 3 + random(20) }, () => random(4) + 97)));
      const data = Buffer.from(Array.from({ length: 2000 }, () => random(5) + 97)); // a tiny alphabet: many partial matches
      for (const p of patterns) if (random(2)) p.copy(data, random(data.length - p.length));
      const expected = new Set<string>();
      patterns.forEach((p) => {
        for (let at = data.indexOf(p); at >= 0; at = data.indexOf(p, at + 1)) expected.add(`${p.toString()}@${at}`);
      });
      const set = new PatternSet(patterns);
      const scanner = set.scanner();
      const found = new Set<string>();
      for (let at = 0; at < data.length; ) {
        const size = 1 + random(300);
        for (const m of scanner.feed(data.subarray(at, at + size))) found.add(`${patterns[m.pattern]!.toString()}@${m.start}`);
        at += size;
      }
      assert.deepEqual([...found].sort(), [...expected].sort(), `round ${round}`);
    }
  });

  it('finds a few signatures, overlapping ones and ones sharing a first byte included, in file order', () => {
    const data = Buffer.from('..<x:xmpmeta <rdf:RDF>!\xfe!\xfe\xfeExif\0\0II <x:xmp', 'latin1');
    const signatures = ['<x:xmpmeta', '<rdf:RDF', '\x21\xfe', 'Exif\0\0', '\xfe'].map((s) => Buffer.from(s, 'latin1'));
    const expected = signatures
      .flatMap((sig, pattern) => {
        const hits = [];
        for (let at = data.indexOf(sig); at >= 0; at = data.indexOf(sig, at + 1)) hits.push({ pattern, start: at });
        return hits;
      })
      .sort((a, b) => a.start - b.start || a.pattern - b.pattern);
    const found = findSignatures(data, signatures).sort((a, b) => a.start - b.start || a.pattern - b.pattern);
    assert.deepEqual(found, expected);
    assert.equal(found.filter((m) => m.pattern === 0).length, 1, 'a truncated signature at the end is no match');
  });
});

describe('a scan\'s extent, as the JPEG stripper finds it (formats/jpeg-scan.ts scanExtent)', () => {
  // One 8x8 greyscale block per MCU, 16 MCUs; bytes end in a 1 bit unless a case says otherwise.
  const frame: JpegFrame = { coding: 'sequential', precision: 8, width: 128, height: 8, components: [{ id: 1, h: 1, v: 1 }], hMax: 1, vMax: 1 };
  const scan: ScanHeader = { components: [{ index: 0, dc: 0, ac: 0 }], ss: 0, se: 63, ah: 0, al: 0 };
  const extent = (hex: string, restartInterval = 0) => scanExtent(Buffer.from(`0000${hex}`, 'hex'), 2, frame, scan, restartInterval);

  it('ends at the marker after the scan, over stuffed bytes and restarts, before fill bytes', () => {
    assert.deepEqual(extent('1133ff00ffd9'), { end: 6, canonical: true });
    assert.deepEqual(extent('11ffd033ffd9', 8), { end: 6, canonical: true });
    // Fill bytes before the marker after the scan are the writer's: not copied, and no sign of data.
    assert.deepEqual(extent('1133ffffffd9'), { end: 4, canonical: true });
    assert.throws(() => extent('1133ff00'), /truncated/);
    assert.throws(() => extent('1133ffff'), /truncated/);
  });

  it('tells a scan with signs of data past its MCUs, and still finds its end', () => {
    assert.deepEqual(extent('1132ffd9'), { end: 4, canonical: false }, 'a last byte ending in a 0 bit');
    assert.deepEqual(extent('11ffff00ffd9'), { end: 6, canonical: false }, 'fill bytes inside the scan');
    assert.deepEqual(extent('11ffffd033ffd9', 8), { end: 7, canonical: false }, 'fill bytes before a restart');
    assert.deepEqual(extent('11ffd133ffd9', 8), { end: 6, canonical: false }, 'a restart out of order');
    assert.deepEqual(extent('11ffd0ffd133ffd9', 8), { end: 8, canonical: false }, 'an empty interval, and more restarts than intervals');
    assert.deepEqual(extent('1133ffd9', 8), { end: 4, canonical: false }, 'fewer restarts than intervals');
  });
});

describe('expiry', () => {
  it('is 24 h for standard and 72 h for extended retention', () => {
    const now = new Date('2026-05-01T00:00:00.000Z');
    assert.equal(expiresAt('standard', now), '2026-05-02T00:00:00.000Z');
    assert.equal(expiresAt('extended', now), '2026-05-04T00:00:00.000Z');
  });
});

describe('scrubline(options)', () => {
  it('validates its options when called, saying how to fix them, and returns a named middleware', () => {
    assert.throws(() => scrubline({ tmpDir: '', fingerprintKey: 'k'.repeat(32) }), /option tmpDir must be/);
    assert.throws(() => scrubline({ tmpDir: '/tmp/x', fingerprintKey: 'short' }), /fingerprintKey must be/);
    assert.throws(() => scrubline({ tmpDir: '/tmp/x', fingerprintKey: 'k'.repeat(32), maxFiles: 0 }), /maxFiles must be a positive whole number/);
    assert.equal(scrubline({ tmpDir: '/tmp/x', fingerprintKey: 'k'.repeat(32) }).name, 'scrublineMiddleware');
  });
});

describe('the hash thread', () => {
  const key = Buffer.alloc(32, 9);
  const expected = (bytes: Buffer): string => createHmac('sha256', key).update(bytes).digest('hex');

  it('gives the HMAC-SHA256 of each file, several at once, across its 1 MiB reads', async () => {
    const dir = await tempDir();
    try {
      const contents = [Buffer.alloc(0), randomBytes(1024 * 1024), randomBytes(1024 * 1024 + 1), randomBytes(3 * 1024 * 1024 + 17)];
      const files = await Promise.all(contents.map(async (bytes, i) => {
        const file = path.join(dir, `f${i}`);
        await writeFile(file, bytes);
        return file;
      }));
      assert.deepEqual(await Promise.all(files.map((f) => hmacFile(f, key))), contents.map(expected));
    } finally {
      await removeDir(dir);
    }
  });

  it('rejects with the file system error code, and keeps working after', async () => {
    await assert.rejects(hmacFile('/nonexistent/scrubline-hash', key), (err: NodeJS.ErrnoException) => err.code === 'ENOENT');
    await assert.rejects(hmacFile('/', key), (err: NodeJS.ErrnoException) => err.code === 'EISDIR');
    assert.equal(await hmacFile(process.execPath, key).then((h) => h.length), 64);
  });

  it('does not keep a process alive, started and idle or once its hashes are done', async () => {
    // Were the thread left referenced, the child would never exit and the call would time out.
    const module = JSON.stringify(new URL('../src/hash-thread.ts', import.meta.url).href);
    const run = (script: string) => promisify(execFile)(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { timeout: 20_000 });
    const { stdout } = await run(`import { hmacFile } from ${module}; console.log(await hmacFile(process.execPath, Buffer.alloc(32)));`);
    assert.match(stdout.trim(), /^[0-9a-f]{64}$/);
    await run(`import { startHashThread } from ${module}; startHashThread();`);
  });

  it('ends its thread once idle (its memory is given back), and a new one serves the next hash', async () => {
    const file = path.join(await tempDir(), 'idle');
    try {
      await writeFile(file, 'after a pause');
      const first = await hmacFile(file, key);
      assert.ok(hashThreadRunning(), 'the thread runs while it has work and just after');
      for (const deadline = Date.now() + 30_000; hashThreadRunning(); await sleep(100)) assert.ok(Date.now() < deadline, 'an idle hash thread ended');
      assert.equal(await hmacFile(file, key), first);
    } finally {
      await removeDir(path.dirname(file));
    }
  });
});

describe('what the service loads', () => {
  /** What `question` (true or false) answers in a fresh Node.js, once `script` has run. */
  const afterScript = (script: string, question: string): Promise<boolean> =>
    promisify(execFile)(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', `${script}; console.log(${question})`], { cwd: path.resolve(import.meta.dirname, '..'), timeout: 30_000 }).then(({ stdout }) => {
      assert.match(stdout, /^(true|false)\n$/, 'the script printed only its answer');
      return stdout.startsWith('true');
    });
  const bundledUndici = (script: string): Promise<boolean> => afterScript(script, "process.moduleLoadList.includes('NativeModule internal/deps/undici/undici')");
  const undiciPackage = (script: string): Promise<boolean> =>
    afterScript(script, "Object.keys((await import('node:module')).createRequire(import.meta.url).cache).some((file) => file.includes('/node_modules/undici/'))");

  // Issue 30: an ES import of node:http (ours, or @tus/server's) loads Node's bundled undici, a
  // WebSocket and fetch client nobody here uses: +2.6 MiB of heap, +16 MiB of RSS on Node 26.
  it("does not load Node's bundled undici with the service's modules (the resumable endpoint loads it on first use)", async () => {
    assert.equal(await bundledUndici("await import('node:http')"), true, 'an ES import of node:http does load it, on this Node.js too: the check below can fail');
    assert.equal(await bundledUndici("await import('./src/http/server.ts'); await import('./src/cli/cli.ts')"), false);
  });

  // Issue 30: forwarding through the undici package (fetch, FormData, a WASM HTTP parser) was
  // ~2.8 MiB of the idle heap and ~6 MiB of the photo-phase peak; node:http does the same job.
  it('does not load the undici package with the service (forwarding uses node:http)', async () => {
    assert.equal(await undiciPackage("await import('undici')"), true, 'an import of undici shows in the module cache: the check below can fail');
    assert.equal(await undiciPackage("await import('./src/http/server.ts'); await import('./src/cli/cli.ts'); await import('./src/steps/forward-http.ts')"), false);
  });
});

describe('the image read buffers (src/buffers.ts)', () => {
  it('read a file whole, and lend a given-back buffer again zeroed past the new view', async () => {
    const { giveBack, pooledBytes, readWhole, trimPool } = await import('../src/buffers.js');
    const dir = await tempDir();
    try {
      // Sizes no other test's upload leaves a buffer for: a 4 MiB buffer, lent twice.
      const big = Buffer.alloc(3_900_000, 0xab);
      const small = Buffer.alloc(3_200_000, 0xcd);
      await writeFile(path.join(dir, 'big'), big);
      await writeFile(path.join(dir, 'small'), small);
      const first = await readWhole(path.join(dir, 'big'));
      assert.ok(first.equals(big));
      assert.ok(pooledBytes() >= 4 * 1024 * 1024, 'a pooled buffer is counted');
      giveBack(first);
      giveBack(first); // a second give-back of the same view is ignored
      const second = await readWhole(path.join(dir, 'small'));
      assert.equal(second.buffer, first.buffer, 'the buffer is lent again');
      assert.ok(second.equals(small));
      // What the previous upload left behind the new view is gone, not just out of sight.
      const behind = Buffer.from(second.buffer, second.byteOffset + second.length, big.length - second.length);
      assert.equal(behind.indexOf(0xab), -1);
      giveBack(second);
      giveBack(Buffer.alloc(10)); // not one of ours: ignored
      const third = await readWhole(path.join(dir, 'big'));
      assert.ok(third.equals(big), 'a buffer lent for a smaller file serves a larger one again');
      // A quiet service lets the kept buffers go; what is lent stays lent, and counted.
      const lentNow = await readWhole(path.join(dir, 'small'));
      giveBack(third);
      const before = pooledBytes();
      const trimmed = trimPool();
      assert.ok(trimmed >= 4 * 1024 * 1024, 'the given-back buffer is let go');
      assert.equal(pooledBytes(), before - trimmed);
      assert.ok(pooledBytes() >= 4 * 1024 * 1024, 'the lent one is still counted');
      assert.equal(trimPool(), 0, 'nothing is left to trim');
      assert.ok(lentNow.equals(small), 'a lent buffer is not touched');
      giveBack(lentNow);
    } finally {
      await removeDir(dir);
    }
  });
});

describe('the input values the verifier collects (src/verify/values.ts)', () => {
  // verify hands the input's buffer back to the pool (zeroed, then filled with the output) before
  // it scans the output for these values: a value that were a view into it would scan for zeros.
  it('are copies that outlive the input buffer being zeroed', async () => {
    const fixtures = ['jpeg-gps-exif-xmp-iptc.jpg', 'png-text-exif-xmp.png', 'webp-exif-xmp.webp', 'tiff-gps-exif.tif', 'heic-exif-xmp-thumbnail.heic'];
    for (const name of fixtures) {
      const original = await readFile(path.join(import.meta.dirname, '..', 'fixtures', 'media', name));
      const input = Buffer.from(original);
      const values = new ValueCollector();
      const format = ({ jpg: 'jpeg', png: 'png', webp: 'webp', tif: 'tiff', heic: 'heif' } as const)[name.split('.').pop() as 'jpg' | 'png' | 'webp' | 'tif' | 'heic'];
      await collectImageValues(format, input, values);
      input.fill(0);
      assert.ok(values.values.length >= 3, `${name}: values were collected`);
      const notInOriginal = values.values.filter((v) => v.length > maxPatternBytes || !v.some((b) => b !== 0));
      assert.deepEqual(notInOriginal, [], `${name}: every value is a non-zero head of at most ${maxPatternBytes} bytes`);
      // The byte values (not text, which is re-encoded) are found in the original as they were.
      const binary = values.values.filter((v) => original.includes(v));
      assert.ok(binary.length >= 1, `${name}: values from the input's bytes survive`);
    }
  });

  it('keep only the head of a long byte value, however many point into it', () => {
    const region = randomBytes(1 << 20);
    const values = new ValueCollector();
    for (let at = 0; at < 1000; at++) values.bytes(region.subarray(at));
    region.fill(0);
    assert.equal(values.values.length, 1000);
    assert.ok(values.values.every((v) => v.length === maxPatternBytes && v.buffer !== region.buffer && v.some((b) => b !== 0)));
  });
});

describe('the tests\' own planted-value finder', () => {
  it('finds the planted date with any punctuation, in UTF-8 and UTF-16, and nothing in unrelated digits', () => {
    for (const text of ['2021:07:14 09:26:53', 'at 2021-07-14T09:26:53Z', '20210714092653']) {
      assert.deepEqual(findPlanted(Buffer.from(text, 'latin1')), ['2021:07:14 09:26:53'], text);
      assert.deepEqual(findPlanted(Buffer.from(`x${text}`, 'utf16le')), ['2021:07:14 09:26:53'], `${text} in UTF-16`);
    }
    assert.deepEqual(findPlanted(Buffer.from('2021:07:15 09:26:53 and 2021 07 14')), []);
  });
});
