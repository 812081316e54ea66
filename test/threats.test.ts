/**
 * ../shared/THREATS.md, one test per case, against a real service on loopback (startServer with
 * a temp data dir and a recording upstream). "Baseline" = the process stays up, nothing is
 * forwarded, the upload temp dir is empty, no planted value or client file name is in the logs,
 * and the answer is a JSON error saying what was wrong.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { mkdir, readFile, rm, statfs, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import { after, before, describe, it } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { promisify } from 'node:util';
import sharp from 'sharp';
import { loadConfig } from '../src/config.js';
import { planStreams } from '../src/steps/strip-video.js';
import { startServer, type RunningServer } from '../src/http/server.js';
import { createLogger } from '../src/log.js';
import '../src/tools/sharp.js'; // the loader lock-down under test (THREATS 20)
import { filesUnder, fixture, LogCapture, manifest, removeDir, root, startUpstream, tempDir, testToken } from './helpers.js';
import { auth, baseline, multipart, planted, post, raw, service, stop, uploadHead, type Service } from './threat-helpers.js';

const run = promisify(execFile);

const jpeg = (): Promise<Buffer> => readFile(fixture('media/jpeg-gps-exif-xmp-iptc.jpg'));

describe('THREATS: multipart', () => {
  let svc: Service;
  before(async () => (svc = await service()));
  after(() => stop(svc));

  it('1 truncated closing boundary → 400', async () => {
    const res = await post(svc, [{ name: 'file', filename: 'a.jpg', data: await jpeg() }], { close: false });
    assert.equal(res.status, 400);
    assert.equal(res.json.error?.code, 'bad_request');
    await baseline(svc, 0);
  });

  it('2 empty or missing part name → 400', async () => {
    for (const raw of ['Content-Disposition: form-data; filename="a.jpg"', 'Content-Disposition: form-data; name=""; filename="a.jpg"']) {
      const res = await post(svc, [{ raw, data: await jpeg() }]);
      assert.equal(res.status, 400, res.body);
    }
    await baseline(svc, 0);
  });

  it('3 array and nested field names → 400', async () => {
    for (const name of ['a[4294967294]', 'a[b][c][d]', 'file[0]']) {
      const res = await post(svc, [{ name, data: 'x' }, { name: 'file', filename: 'a.jpg', data: await jpeg() }]);
      assert.equal(res.status, 400, `${name}: ${res.body}`);
    }
    await baseline(svc, 0);
  });

  it('4 file over the size limit → 413, partial file removed', async () => {
    const res = await post(svc, [{ name: 'file', filename: String(planted.filename), data: Buffer.alloc(3 * 1024 * 1024, 1) }]);
    assert.equal(res.status, 413);
    assert.equal(res.json.error?.code, 'too_large');
    await baseline(svc, 0);
  });

  it('5 more files than allowed → 413, no file on disk', async () => {
    const file = await jpeg();
    const res = await post(svc, Array.from({ length: 5 }, () => ({ name: 'file', filename: 'a.jpg', data: file })));
    assert.equal(res.status, 413);
    await baseline(svc, 0);
  });

  it('6 unexpected field name → 400', async () => {
    const res = await post(svc, [{ name: 'upload', filename: 'a.jpg', data: await jpeg() }]);
    assert.equal(res.status, 400);
    await baseline(svc, 0);
  });

  it('7 no boundary, or not multipart → 400/415', async () => {
    const noBoundary = await post(svc, [{ name: 'file', filename: 'a.jpg', data: await jpeg() }], { contentType: 'multipart/form-data' });
    assert.ok([400, 415].includes(noBoundary.status), noBoundary.body);
    const json = await post(svc, [], { contentType: 'application/json' });
    assert.equal(json.status, 415);
    await baseline(svc, 0);
  });

  it('8 clients aborting mid-file, many times → nothing left, file descriptors stable', async () => {
    const fds = (): number => readdirSync('/proc/self/fd').length;
    const file = Buffer.alloc(1024 * 1024, 7);
    const body = multipart('b', [{ name: 'file', filename: 'a.jpg', data: file }]);
    const pieces = [body.subarray(0, 200_000), body.subarray(200_000, 400_000), body.subarray(400_000)];
    const before = fds();
    for (let i = 0; i < 30; i++) await raw(svc.port, uploadHead(svc.port, 'b', body.length), pieces, { abortAfter: 2, gapMs: 5 });
    await delay(300);
    assert.ok(fds() - before < 5, `fds grew from ${before} to ${fds()}`);
    await baseline(svc, 0);
  });

  it('9 tens of thousands of parts → 413, process alive', async () => {
    const parts = Array.from({ length: 20_000 }, (_, i) => ({ name: `f${i}`, data: 'x' }));
    const res = await post(svc, parts);
    assert.ok([400, 413].includes(res.status), res.body);
    await baseline(svc, 0);
  });

  it('10 multipart to a route without the upload middleware → nothing written', async () => {
    const body = multipart('b', [{ name: 'file', filename: 'a.jpg', data: await jpeg() }]);
    const before = await filesUnder(svc.dataDir);
    const answers: Record<string, number> = {};
    for (const route of ['/v1/crashes', '/v1/jobs/j/finished', '/healthz']) {
      const res = await raw(svc.port, `POST ${route} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${testToken}\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`, body);
      answers[route] = res.status;
    }
    // A crash record must be JSON (400), finishing a job reads no body (it is ignored), /healthz
    // takes no POST (404); none of them stores a byte of it.
    assert.deepEqual(answers, { '/v1/crashes': 400, '/v1/jobs/j/finished': 200, '/healthz': 404 });
    assert.deepEqual(await filesUnder(svc.dataDir), before, 'nothing written anywhere in the data dir');
    await baseline(svc, 0);
  });
});

describe('THREATS: file names, types and polyglots', () => {
  let svc: Service;
  before(async () => (svc = await service()));
  after(() => stop(svc));

  it('11 hostile file names are never used for a path, a type, a header or a log line', async () => {
    const names = ['../../etc/passwd', '..\\\\..\\\\win.ini', 'a\r\nb.png', 'evil\u202Egnp.jpg', 'x'.repeat(4000), 'nul\u0000.jpg'];
    let forwarded = 0;
    for (const name of names) {
      const res = await post(svc, [{ raw: `Content-Disposition: form-data; name="file"; filename="${name.replace(/"/g, '')}"`, data: await jpeg() }]);
      if (res.status === 201) {
        forwarded++;
        const id = res.json.files![0]!.id;
        assert.match(id, /^[A-Za-z0-9_-]{16}$/);
        assert.ok(!res.headers.includes('passwd') && !res.body.includes('passwd'));
      } else assert.equal(res.status, 400, res.body); // a name busboy itself refuses
    }
    assert.ok(forwarded >= 4);
    const sent = svc.upstream.requests.map((r) => r.body.toString('latin1')).join('');
    for (const bad of ['passwd', 'win.ini', '\u202E', 'x'.repeat(100)]) assert.ok(!sent.includes(bad), `forwarded a name containing ${bad}`);
    assert.ok(!existsSync('/etc/passwd.original'));
    for (const bad of ['passwd', 'win.ini', 'x'.repeat(100)]) assert.ok(!svc.logs.text.includes(bad));
    await baseline(svc, forwarded);
  });

  it('12–14, 17 HTML/SVG/PDF/ZIP/ELF/playlists, polyglots, empty and 3-byte files → 415; ffmpeg never opens a URL', async () => {
    const forwarded = svc.upstream.requests.length;
    let canaryHits = 0;
    const canary = createServer((_req, res) => {
      canaryHits++;
      res.end('#EXTM3U\n');
    });
    await new Promise<void>((resolve) => canary.listen(0, '127.0.0.1', resolve));
    const port = (canary.address() as net.AddressInfo).port;
    const hostile: Array<[string, Buffer]> = [
      ['page.jpg', Buffer.from('<!doctype html><html><script>alert(1)</script></html>')],
      ['poly.gif', await readFile(fixture('reject/gif-polyglot.gif'))],
      ['image.svg', await readFile(fixture('reject/image.svg'))],
      ['doc.png', Buffer.from('%PDF-1.4\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n')],
      ['arch.jpg', Buffer.from('504b0304140000000000000000000000000000000000000000000000', 'hex')],
      ['prog.mp4', Buffer.concat([Buffer.from('7f454c46020101000000000000000000', 'hex'), Buffer.alloc(64)])],
      ['list.mp4', Buffer.from(`#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nhttp://127.0.0.1:${port}/canary.ts\n#EXT-X-ENDLIST\n`)],
      ['concat.mp4', Buffer.from(`ffconcat version 1.0\nfile 'http://127.0.0.1:${port}/x.mp4'\n`)],
      ['empty.jpg', Buffer.alloc(0)],
      ['three.jpg', Buffer.from([0xff, 0xd8, 0xff])],
    ];
    try {
      for (const [name, data] of hostile) {
        const res = await post(svc, [{ name: 'file', filename: name, data }]);
        assert.equal(res.status, 415, `${name}: ${res.body}`);
        assert.ok(res.json.error?.message, 'says what was wrong');
      }
      assert.equal(canaryHits, 0, 'no network URL was ever opened');
    } finally {
      canary.close();
    }
    await baseline(svc, forwarded);
  });

  it('15 JPEG with a ZIP appended, PNG with data after IEND → cleaned, trailer gone', async () => {
    const zip = Buffer.from('504b0304' + '00'.repeat(60), 'hex');
    const jpg = Buffer.concat([await readFile(fixture('media/jpeg-orientation-6.jpg')), zip]);
    const png = Buffer.concat([await readFile(fixture('media/png-text-exif-xmp.png')), zip]);
    for (const [name, data] of [['a.jpg', jpg], ['b.png', png]] as const) {
      const before = svc.upstream.requests.length;
      const res = await post(svc, [{ name: 'file', filename: name, data }]);
      assert.equal(res.status, 201, res.body);
      const body = svc.upstream.requests[before]!.body;
      assert.ok(!body.includes(zip.subarray(0, 30)), 'the appended archive is not forwarded');
    }
  });

  it('16 extension says PNG, bytes are a JPEG with GPS → treated as JPEG and cleaned', async () => {
    const res = await post(svc, [{ raw: 'Content-Disposition: form-data; name="file"; filename="photo.png"\r\nContent-Type: image/png', data: await jpeg() }]);
    assert.equal(res.status, 201);
    assert.equal(res.json.files![0]!.mime, 'image/jpeg');
  });
});

describe('THREATS: decoders', () => {
  let svc: Service;
  before(async () => (svc = await service({ SCRUBLINE_MAX_INPUT_PIXELS: '10000000' })));
  after(() => stop(svc));

  it('18 a small file declaring huge dimensions → 413 before decoding', async () => {
    const bomb = await sharp({ create: { width: 20, height: 20, channels: 3, background: '#000' } }).png().toBuffer();
    bomb.writeUInt32BE(100_000, 16); // IHDR width
    bomb.writeUInt32BE(100_000, 20); // IHDR height
    bomb.writeUInt32BE(crc32(bomb.subarray(12, 29)), 29); // and its CRC made right: refused for its size alone
    const res = await post(svc, [{ name: 'file', filename: 'bomb.png', data: bomb }]);
    assert.equal(res.status, 413, res.body);
    assert.equal(res.json.error?.code, 'too_many_pixels');
    const jpegBomb = await readFile(fixture('media/jpeg-orientation-6.jpg'));
    const sof = jpegBomb.indexOf(Buffer.from([0xff, 0xc0]));
    jpegBomb.writeUInt16BE(60_000, sof + 5);
    jpegBomb.writeUInt16BE(60_000, sof + 7);
    const res2 = await post(svc, [{ name: 'file', filename: 'bomb.jpg', data: jpegBomb }]);
    assert.equal(res2.status, 413, res2.body);
    assert.equal(res2.json.error?.code, 'too_many_pixels');
    await baseline(svc, 0);
  });

  it('19 truncated or corrupt images → 415', async () => {
    const res = await post(svc, [{ name: 'file', filename: 'half.jpg', data: await readFile(fixture('reject/jpeg-truncated.jpg')) }]);
    assert.equal(res.status, 415);
    const png = await readFile(fixture('media/png-text-exif-xmp.png'));
    png[40] = png[40]! ^ 0xff; // inside a chunk: its CRC no longer matches
    assert.equal((await post(svc, [{ name: 'file', filename: 'bad.png', data: png }])).status, 415);
    await baseline(svc, 0);
  });

  it('20 only allowlisted loaders: SVG, PDF and VIPS native never reach libvips', async () => {
    const svg = Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>');
    await assert.rejects(sharp(svg).metadata(), /blocked|not.*supported|unsupported/i);
    const vips = Buffer.concat([Buffer.from('08f2a6b6', 'hex'), Buffer.alloc(64)]);
    await assert.rejects(sharp(vips).metadata());
  });

  it('21 deeply nested boxes, looping TIFF IFDs and huge boxes → rejected, quickly, memory bounded', async () => {
    const box = (type: string, payload: Buffer): Buffer => {
      const b = Buffer.alloc(8);
      b.writeUInt32BE(8 + payload.length, 0);
      b.write(type, 4, 'latin1');
      return Buffer.concat([b, payload]);
    };
    let nested: Buffer = Buffer.alloc(0);
    for (let i = 0; i < 1000; i++) nested = box('moov', nested);
    const deep = Buffer.concat([box('ftyp', Buffer.from('isom\0\0\0\0isommp41', 'latin1')), nested]);
    const huge = Buffer.concat([box('ftyp', Buffer.from('isom\0\0\0\0isommp41', 'latin1')), Buffer.from('ffffffff6d646174', 'hex'), Buffer.alloc(100)]);
    const heif = Buffer.concat([box('ftyp', Buffer.from('heic\0\0\0\0mif1heic', 'latin1')), box('meta', Buffer.concat([Buffer.alloc(4), nested.subarray(0, 2000)]))]);
    // A TIFF whose first IFD points at itself as the next IFD: an endless chain.
    const tiff = Buffer.alloc(64);
    tiff.write('II', 0, 'latin1');
    tiff.writeUInt16LE(42, 2);
    tiff.writeUInt32LE(8, 4);
    tiff.writeUInt16LE(1, 8);
    tiff.writeUInt16LE(0x0100, 10); // ImageWidth
    tiff.writeUInt16LE(3, 12);
    tiff.writeUInt32LE(1, 14);
    tiff.writeUInt16LE(1, 18);
    tiff.writeUInt32LE(8, 22); // next IFD = itself
    const rss = process.memoryUsage().rss;
    for (const [name, data] of [['deep.mp4', deep], ['huge.mp4', huge], ['deep.heic', heif], ['loop.tif', tiff]] as const) {
      const res = await post(svc, [{ name: 'file', filename: name, data }]);
      assert.ok([415, 422].includes(res.status), `${name}: ${res.status} ${res.body}`);
    }
    assert.ok(process.memoryUsage().rss - rss < 200 * 1024 * 1024, 'memory stayed bounded');
    await baseline(svc, 0);
  });
});

describe('THREATS: ffmpeg', () => {
  it('22 the demuxer is forced and only file: is allowed (see 14: a playlist never reaches a URL)', async () => {
    const { remuxArgs, probeArgs, frameArgs } = await import('../src/tools/ffmpeg-args.js');
    for (const args of [probeArgs('/tmp/x', 'mov'), remuxArgs({ input: '/tmp/x', output: '/tmp/y', demuxer: 'mov', muxer: 'mp4', streams: 'usual', legacyRotateDegrees: undefined }), frameArgs('/tmp/x', 'mov', 1, '/tmp/y.png')]) {
      const at = args.indexOf('-protocol_whitelist');
      assert.deepEqual(args.slice(at, at + 4), ['-protocol_whitelist', 'file', '-format_whitelist', 'mov']);
      assert.deepEqual(args.slice(at + 6, at + 10), ['-f', 'mov', '-i', 'file:/tmp/x']);
    }
  });

  it('23 stream-count limit, codec allowlist, and a timeout that leaves no ffmpeg behind', async () => {
    const many = { format: {}, chapters: [], streams: Array.from({ length: 40 }, (_, index) => ({ index, codec_type: 'data', codec_name: 'bin_data' })) };
    assert.deepEqual(planStreams(many as never).streams, [], 'data streams are never copied');
    // A file with more streams than any recording has is refused before the remux.
    const dir = await tempDir();
    const crowded = path.join(dir, 'crowded.mp4');
    await run('ffmpeg', ['-v', 'error', '-f', 'lavfi', '-i', 'sine=duration=0.2', ...Array.from({ length: 33 }, () => ['-map', '0:a']).flat(), '-c:a', 'aac', crowded]);
    const { cleanFile } = await import('../src/pipeline.js');
    const { pipelineDeps } = await import('./helpers.js');
    await mkdir(path.join(dir, 'work'));
    await assert.rejects(cleanFile({ id: 'c', inputPath: crowded, inputBytes: 1000, workDir: path.join(dir, 'work') }, 'standard', await pipelineDeps()), /at most 32/);
    // A decoder off the allowlist is never opened, not even to probe a stream that would be dropped:
    // H.264 beside an FFV1 stream is refused whole (before the list, the FFV1 stream was probed).
    const exotic = path.join(dir, 'exotic.mkv');
    await run('ffmpeg', ['-v', 'error', '-f', 'lavfi', '-i', 'testsrc2=size=160x120:duration=0.5', '-map', '0', '-map', '0', '-c:v:0', 'libx264', '-c:v:1', 'ffv1', exotic]);
    await assert.rejects(cleanFile({ id: 'e', inputPath: exotic, inputBytes: 1000, workDir: path.join(dir, 'work') }, 'standard', await pipelineDeps()), (err: unknown) => {
      assert.equal((err as { code?: string }).code, 'unsupported_structure');
      assert.match((err as { publicMessage?: string }).publicMessage ?? '', /codec scrubline does not open/);
      return true;
    });
    await removeDir(dir);

    // A run that would never end (an endless test source) is killed, with its whole process group.
    const { runTool } = await import('../src/tools/ffmpeg.js');
    const marker = path.join(await tempDir(), 'never-ending.nut');
    await assert.rejects(runTool('ffmpeg', ['-v', 'error', '-f', 'lavfi', '-i', 'testsrc2=size=640x480', '-f', 'nut', '-y', marker], 300), (err: unknown) => {
      assert.equal((err as { code?: string }).code, 'processing_timeout');
      return true;
    });
    await delay(200);
    const { stdout } = await run('ps', ['-eo', 'args']);
    assert.ok(!stdout.includes(marker), 'the timed-out ffmpeg is gone');
    await removeDir(path.dirname(marker));
  });

  it('24 /readyz names the ffmpeg in use and its version', async () => {
    const svc = await service();
    try {
      const ready = (await (await fetch(`${svc.server.url}/readyz`)).json()) as { ffmpeg: { version: string; source: string } };
      assert.ok(ready.ffmpeg.version && ready.ffmpeg.source);
    } finally {
      await stop(svc);
    }
  });
});

describe('THREATS: load and faults', () => {
  it('25–26 a trickling body gets 408 at the request timeout; slow headers are cut off', async () => {
    const svc = await service({ SCRUBLINE_REQUEST_TIMEOUT_MS: '1500', SCRUBLINE_HEADERS_TIMEOUT_MS: '1000' });
    try {
      const body = multipart('b', [{ name: 'file', filename: 'a.jpg', data: await jpeg() }]);
      const trickle = Array.from({ length: 40 }, (_, i) => body.subarray(i, i + 1));
      const slow = await raw(svc.port, uploadHead(svc.port, 'b', body.length), trickle, { gapMs: 200 });
      // Our JSON, not Node's bare status line: the client learns what happened and what to do.
      assert.equal(slow.status, 408, slow.headers);
      assert.equal(JSON.parse(slow.body).error.code, 'request_timeout');
      const headers = await raw(svc.port, '', ['POST /v1/uploads HTTP/1.1\r\n', 'Host: x\r\n', 'X-A: 1\r\n', 'X-B: 2\r\n', 'X-C: 3\r\n', 'X-D: 4\r\n', 'X-E: 5\r\n', 'X-F: 6\r\n'].map((s) => Buffer.from(s)), { gapMs: 300 });
      assert.equal(headers.status, 408, headers.headers);
      assert.equal(JSON.parse(headers.body).error.code, 'request_timeout');
      const garbage = await raw(svc.port, 'NOT HTTP AT ALL\r\n\r\n');
      assert.equal(garbage.status, 400);
      assert.equal(JSON.parse(garbage.body).error.code, 'bad_request');
      await delay(200);
      await baseline(svc, 0);
    } finally {
      await stop(svc);
    }
  });

  it('27 many concurrent uploads → a cap, the rest 503 with Retry-After, all answered, memory bounded', async () => {
    const svc = await service({ SCRUBLINE_MAX_CONCURRENT_UPLOADS: '2' });
    try {
      const file = await jpeg();
      const answers = await Promise.all(Array.from({ length: 60 }, () => post(svc, [{ name: 'file', filename: 'a.jpg', data: file }])));
      const statuses = answers.map((a) => a.status);
      assert.ok(statuses.every((s) => s === 201 || s === 503), statuses.join());
      const busy = answers.filter((a) => a.status === 503);
      assert.ok(busy.length > 0, 'the cap turned some away');
      assert.ok(busy.every((a) => /retry-after: 5/i.test(a.headers) && a.json.error?.code === 'overloaded'));
      const metrics = await (await fetch(`${svc.server.url}/metrics`)).text();
      assert.match(metrics, /scrubline_rejections_total\{reason="overloaded"\} \d+/);
      assert.match(metrics, /scrubline_uploads_total\{outcome="forwarded",family="image"\} \d+/);
      // Every stage of every accepted upload is timed, receive included.
      const accepted = statuses.filter((s) => s === 201).length;
      for (const stage of ['receive', 'sniff', 'strip', 'verify', 'fingerprint', 'forward']) {
        assert.match(metrics, new RegExp(`scrubline_stage_duration_seconds_count\\{stage="${stage}"\\} ${accepted}\\n`), stage);
      }
      await baseline(svc, accepted);
    } finally {
      await stop(svc);
    }
  });

  it('28 disk full → 507 while receiving and while processing, nothing left behind, and the service recovers', async (t) => {
    // A real full file system: the data dir on a 2 MiB tmpfs (mounting needs root; CI runs as root).
    const dataDir = await tempDir();
    const mounted = await run('mount', ['-t', 'tmpfs', '-o', 'size=2m,mode=0700', 'tmpfs', dataDir]).then(() => true, () => false);
    if (!mounted) {
      await removeDir(dataDir);
      return t.skip('mounting a tmpfs needs root');
    }
    // No headroom: the disk's 2 MiB are all the uploads'.
    const svc = await service({ SCRUBLINE_MAX_UPLOAD_BYTES: String(8 * 1024 * 1024), SCRUBLINE_TEMP_HEADROOM_BYTES: '0' }, dataDir);
    const filler = path.join(dataDir, 'filler');
    try {
      // Before a byte is read: a 3 MiB upload cannot land on a 2 MiB disk (issue 29: refused from its Content-Length).
      const big = Buffer.concat([await jpeg(), Buffer.alloc(3 * 1024 * 1024, 7)]);
      const received = await post(svc, [{ name: 'file', filename: 'a.jpg', data: big }]);
      assert.equal(received.status, 507, received.body);
      assert.equal(received.json.error?.code, 'insufficient_storage');
      await baseline(svc, 0);

      const photo = await sharp({ create: { width: 700, height: 700, channels: 3, background: '#808080', noise: { type: 'gaussian', mean: 128, sigma: 40 } } })
        .jpeg({ quality: 95 })
        .toBuffer();
      const boundary = 'diskfullboundary';
      const body = multipart(boundary, [{ name: 'file', filename: 'a.jpg', data: photo }]);
      /**
       * The upload passes the space check, then another writer fills the disk while its body
       * arrives, leaving `left(rest)` bytes free for the rest of the body and what follows.
       */
      const fillMidway = async (left: (rest: number) => number) => {
        const first = body.subarray(0, 4096);
        const answer = raw(svc.port, uploadHead(svc.port, boundary, body.length), [first, body.subarray(4096)], { gapMs: 1500 });
        await delay(500);
        const { bavail, bsize } = await statfs(dataDir);
        await writeFile(filler, Buffer.alloc(Math.max(0, bavail * bsize - left(body.length - first.length))));
        const res = await answer;
        await rm(filler);
        return res;
      };
      // Receiving: not even the rest of the body fits.
      const whileReceiving = await fillMidway(() => 64 * 1024);
      assert.equal(whileReceiving.status, 507, whileReceiving.body);
      assert.match(whileReceiving.body, /insufficient_storage/);
      await baseline(svc, 0);

      // Processing: room for the upload but not for its cleaned copy beside it.
      const whileProcessing = await fillMidway((rest) => rest + Math.round(0.3 * photo.length));
      assert.equal(whileProcessing.status, 507, whileProcessing.body);
      assert.match(whileProcessing.body, /insufficient_storage/);
      await baseline(svc, 0);

      // Space back: the same upload goes through.
      await rm(filler, { force: true });
      const again = await post(svc, [{ name: 'file', filename: 'a.jpg', data: photo }]);
      assert.equal(again.status, 201, again.body);
      await baseline(svc, 1);
    } finally {
      await svc.server.close();
      await svc.upstream.close();
      await run('umount', [dataDir]);
      await removeDir(dataDir);
    }
  });

  it('29 kill -9 mid-upload and mid-ffmpeg, then restart: temp dir swept, no orphan ffmpeg, nothing forwarded', async () => {
    const dataDir = await tempDir();
    const upstream = await startUpstream();
    const env = { ...process.env, SCRUBLINE_DATA_DIR: dataDir, SCRUBLINE_PORT: '0', SCRUBLINE_HOST: '127.0.0.1', SCRUBLINE_API_TOKEN: testToken, SCRUBLINE_UPSTREAM_URL: upstream.url, SCRUBLINE_SHUTDOWN_DELAY_MS: '0' };
    const start = async (): Promise<{ child: ReturnType<typeof spawn>; port: number }> => {
      const child = spawn(process.execPath, [path.join(root, 'bin/scrubline.js'), 'serve'], { env, stdio: ['ignore', 'pipe', 'ignore'] });
      let out = '';
      const port = await new Promise<number>((resolve) => child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        const m = /"url":"http:\/\/127\.0\.0\.1:(\d+)"/.exec(out);
        if (m) resolve(Number(m[1]));
      }));
      return { child, port };
    };
    try {
      const first = await start();
      const body = multipart('b', [{ name: 'file', filename: 'a.mp4', data: await readFile(fixture('media/mp4-location.mp4')) }]);
      void raw(first.port, uploadHead(first.port, 'b', body.length), [body.subarray(0, 8000), body.subarray(8000)], { gapMs: 5000 });
      await delay(500);
      assert.ok((await filesUnder(path.join(dataDir, 'tmp'))).length > 0, 'the partial original is on disk mid-upload');
      first.child.kill('SIGKILL');
      await new Promise((resolve) => first.child.once('exit', resolve));

      // Now mid-ffmpeg: a big clip, and the kill lands while ffmpeg or ffprobe is working on it.
      const clip = path.join(await tempDir(), 'big.mp4');
      await run('ffmpeg', ['-v', 'error', '-f', 'lavfi', '-i', 'testsrc2=size=1920x1080:rate=30:duration=20', '-vf', 'noise=alls=20:allf=t', '-c:v', 'libx264', '-preset', 'ultrafast', '-crf', '10', clip]);
      const restarted = await start();
      const big = multipart('b', [{ name: 'file', filename: 'big.mp4', data: await readFile(clip) }]);
      void raw(restarted.port, uploadHead(restarted.port, 'b', big.length), big);
      const toolRunning = async (): Promise<boolean> => {
        const { stdout } = await run('ps', ['-eo', 'args']);
        return stdout.split('\n').some((line) => /ffmpeg|ffprobe/.test(line) && line.includes(path.join(dataDir, 'tmp')));
      };
      let caught = false;
      for (let i = 0; i < 400 && !caught; i++) {
        caught = await toolRunning();
        if (!caught) await delay(10);
      }
      assert.ok(caught, 'ffmpeg/ffprobe seen working on the upload');
      restarted.child.kill('SIGKILL');
      await new Promise((resolve) => restarted.child.once('exit', resolve));
      await removeDir(path.dirname(clip));

      const second = await start();
      assert.deepEqual(await filesUnder(path.join(dataDir, 'tmp')), [], 'swept at startup');
      assert.equal(await toolRunning(), false, 'no orphan ffmpeg after the restart');
      assert.equal(upstream.requests.length, 0, 'nothing forwarded');
      second.child.kill('SIGTERM');
      await new Promise((resolve) => second.child.once('exit', resolve));
    } finally {
      await upstream.close();
      await removeDir(dataDir);
    }
  });
});

it('29 (mechanism) startup kills a tool a crashed process left running on the temp dir', async () => {
  const { killOrphans } = await import('../src/tools/ffmpeg.js');
  const tmp = path.join(await tempDir(), 'tmp');
  await mkdir(tmp);
  // Stands in for an ffmpeg orphaned by kill -9: its own process group, a temp-dir path in its args.
  const orphan = spawn('sh', ['-c', 'sleep 30', path.join(tmp, 'upload', 'original')], { detached: true, stdio: 'ignore' });
  const exited = new Promise((resolve) => orphan.once('exit', (_code, sig) => resolve(sig)));
  await delay(100);
  assert.equal(await killOrphans(tmp), 1);
  assert.equal(await exited, 'SIGKILL');
  await removeDir(path.dirname(tmp));
});

describe('THREATS: access and logs', () => {
  let svc: Service;
  before(async () => (svc = await service()));
  after(() => stop(svc));

  it('30 upstream down → 502, hanging → 504, 5xx then success → retried with one Idempotency-Key, one job', async () => {
    const file = await jpeg();
    // Down: a port with nothing listening.
    const gone = await startUpstream();
    const goneUrl = gone.url;
    await gone.close();
    const hanging = await startUpstream(() => undefined);
    let calls = 0;
    const jobs = new Set<string>();
    const flaky = await startUpstream((req, res) => {
      if (++calls <= 2) return void res.writeHead(503).end();
      jobs.add(String(req.headers['idempotency-key']));
      res.writeHead(202).end('{}');
    });
    try {
      for (const [url, status, env] of [
        [goneUrl, 502, {}],
        [hanging.url, 504, { SCRUBLINE_UPSTREAM_TIMEOUT_MS: '300' }],
        [flaky.url, 201, {}],
      ] as const) {
        const faulty = await service({ SCRUBLINE_UPSTREAM_URL: url, ...env });
        try {
          const res = await post(faulty, [{ name: 'file', filename: 'a.jpg', data: file }]);
          assert.equal(res.status, status, res.body);
          assert.deepEqual(await filesUnder(path.join(faulty.dataDir, 'tmp')), []);
        } finally {
          await stop(faulty);
        }
      }
      assert.equal(flaky.requests.length, 3, 'two retries');
      assert.equal(new Set(flaky.requests.map((r) => r.headers['idempotency-key'])).size, 1);
      assert.equal(jobs.size, 1, 'exactly one render job');
    } finally {
      await hanging.close();
      await flaky.close();
    }
  });

  it('31 no or wrong credentials → 401 before a byte is written', async () => {
    const body = multipart('b', [{ name: 'file', filename: 'a.jpg', data: await jpeg() }]);
    const res = await raw(svc.port, `POST /v1/uploads HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`, body);
    assert.equal(res.status, 401);
    await baseline(svc, 0);
  });

  it('32 fingerprint and crash lookups: 401 without a token, the same 404 for unknown ids', async () => {
    for (const route of ['/v1/fingerprints/fp_0123456789abcdef', '/v1/crashes/cr_x', '/v1/files/abc']) {
      assert.equal((await fetch(`${svc.server.url}${route}`)).status, 401);
      const res = await fetch(`${svc.server.url}${route}`, { headers: auth });
      assert.equal(res.status, 404);
      assert.equal(((await res.json()) as { error: { code: string } }).error.code, 'not_found');
    }
  });

  it('33 an Authorization header, a CR/LF file name and an EXIF Artist never reach the logs', async () => {
    const crlf = `${String(planted.filename)}\r\nX-Injected: 1`;
    const logged = svc.logs.text.length;
    // As RFC 5987 encodes it, the file name with its CR/LF reaches multer and the pipeline; sent
    // raw, the CR/LF ends the part's header and the upload has no file (400, logged too).
    const cleaned = await post(svc, [{ raw: `Content-Disposition: form-data; name="file"; filename*=UTF-8''${encodeURIComponent(crlf)}`, data: await jpeg() }]);
    const broken = await post(svc, [{ raw: `Content-Disposition: form-data; name="file"; filename="${crlf.replace(/"/g, '')}"`, data: await jpeg() }]);
    assert.equal(broken.status, 400, broken.body);
    const refused = await post(svc, [{ name: 'file', filename: String(planted.filename), data: Buffer.alloc(3 * 1024 * 1024) }]); // multer error path
    // Both went where the secrets could leak: through the pipeline (the JPEG carries the EXIF
    // Artist) and through multer's error, and both were logged.
    assert.equal(cleaned.status, 201, JSON.stringify(cleaned.json));
    assert.equal(refused.status, 413, refused.body);
    const lines = svc.logs.text.slice(logged);
    for (const status of [201, 400, 413]) assert.ok(lines.includes(`"statusCode":${status}`), `the ${status} answer was logged`);
    assert.ok(lines.includes('"msg":"file cleaned"'), 'the cleaned file was logged');
    for (const secret of [testToken, String(planted.filename), 'X-Injected', String(planted.artist)]) assert.ok(!svc.logs.text.includes(secret), secret);
  });
});
