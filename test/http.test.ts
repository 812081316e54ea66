/**
 * The HTTP service end to end over real loopback HTTP: buildApp with real parts, a temp data dir,
 * and a real upstream server that records what it received.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import request from 'supertest';
import sharp from 'sharp';
import { buildApp } from '../src/http/app.js';
import { Ledger } from '../src/storage/ledger.js';
import { createLogger } from '../src/log.js';
import { HttpForwarder } from '../src/steps/forward-http.js';
import { StoreSink } from '../src/steps/forward-store.js';
import type { Previews } from '../src/http/previews.js';
import { storesFor } from '../src/storage/objects.js';
import type { Forwarder } from '../src/steps/forward.js';
import { unseal } from '../src/storage/envelope.js';
import { ffmpegTools, filesUnder, findPlanted, fixture, LogCapture, manifest, multipartParts, removeDir, startUpstream, tempDir, testKey, testStorage, testToken } from './helpers.js';

const plantedName = String(manifest.planted.filename);

async function makeApp(forwarder: (dataDir: string) => Forwarder) {
  const dataDir = await tempDir();
  const logs = new LogCapture();
  const tools = await ffmpegTools();
  const ledger = await Ledger.open(dataDir);
  const app = buildApp({
    logger: createLogger('info', logs),
    dataDir,
    forwarder: forwarder(dataDir),
    ledger,
    stores: storesFor(dataDir),
    tools,
    storage: testStorage,
    apiTokens: [testToken],
    unfinishedJobCapHours: 168,
    // These tests send a few requests at once on purpose; the cap has its own test (threats 27).
    maxConcurrentUploads: 64,
    scrubline: {
      tmpDir: path.join(dataDir, 'tmp'),
      fingerprintKey: testKey,
      maxUploadBytes: 5 * 1024 * 1024,
      maxFiles: 3,
      ffmpegPath: tools.ffmpeg.path,
      ffprobePath: tools.ffprobe.path,
      clock: () => new Date('2026-03-01T12:00:00.000Z'),
    },
  });
  // Every request of these tests carries the token unless a test says otherwise.
  const api = request.agent(app).set('authorization', `Bearer ${testToken}`);
  return { app, api, dataDir, logs, ledger, tmpFiles: () => filesUnder(path.join(dataDir, 'tmp')), cleanup: async () => { await (app.locals.previews as Previews).settled(); await ledger.close(); await removeDir(dataDir); } };
}

describe('POST /v1/uploads to a render service', () => {
  let upstream: Awaited<ReturnType<typeof startUpstream>>;
  let svc: Awaited<ReturnType<typeof makeApp>>;
  before(async () => {
    upstream = await startUpstream();
    svc = await makeApp(() => new HttpForwarder(new URL(upstream.url), 5_000));
  });
  after(async () => {
    await upstream.close();
    await svc.cleanup();
  });

  it('cleans a JPEG with GPS and an MP4 with a location and forwards them, named by id', async () => {
    const res = await svc.api
      .post('/v1/uploads')
      .field('jobId', 'job-42')
      .field('retention', 'extended')
      .attach('file', fixture('media/jpeg-gps-exif-xmp-iptc.jpg'), { filename: plantedName, contentType: 'image/png' })
      .attach('file', fixture('media/mp4-location.mp4'), { filename: 'holiday\r\nX-Injected: 1.mp4' });
    assert.equal(res.status, 201, JSON.stringify(res.body));
    assert.equal(res.body.files.length, 2);
    const [jpeg, mp4] = res.body.files;
    assert.equal(jpeg.mime, 'image/jpeg');
    assert.equal(mp4.mime, 'video/mp4');
    assert.equal(jpeg.retention, 'extended');
    // job-42 has not reported finished: the 7-day safety cap applies until it does.
    assert.equal(jpeg.expiresAt, '2026-03-08T12:00:00.000Z');
    assert.ok(jpeg.removed.gps >= 1 && jpeg.removed.exif >= 1);
    assert.match(jpeg.fingerprint.id, /^fp_[0-9a-f]{16}$/);
    assert.deepEqual(res.body.upstream, { status: 202, destination: 'upstream' });
    assert.deepEqual(findPlanted(Buffer.from(JSON.stringify(res.body))), []);

    assert.equal(upstream.requests.length, 1);
    const received = upstream.requests[0]!;
    assert.ok(typeof received.headers['idempotency-key'] === 'string');
    const parts = multipartParts(received.body, String(received.headers['content-type']));
    // A well-formed body of the length announced, by undici's own multipart parser too.
    assert.equal(Number(received.headers['content-length']), received.body.length);
    const form = await new Response(new Uint8Array(received.body), { headers: { 'content-type': String(received.headers['content-type']) } }).formData();
    const forwarded = form.getAll('file') as File[];
    assert.deepEqual(
      forwarded.map((f) => [f.name, f.type, f.size]),
      [[`${jpeg.id}.jpg`, 'image/jpeg', jpeg.bytes], [`${mp4.id}.mp4`, 'video/mp4', mp4.bytes]],
    );
    assert.deepEqual([form.get('jobId'), form.get('retention')], ['job-42', 'extended']);
    const files = parts.filter((p) => p.name === 'file');
    assert.deepEqual(files.map((f) => f.filename), [`${jpeg.id}.jpg`, `${mp4.id}.mp4`]);
    for (const f of files) assert.deepEqual(findPlanted(f.data), []);
    assert.equal(parts.find((p) => p.name === 'jobId')?.data.toString(), 'job-42');
    const manifestField = JSON.parse(parts.find((p) => p.name === 'scrubline')!.data.toString());
    assert.deepEqual(manifestField.map((m: { id: string }) => m.id), [jpeg.id, mp4.id]);
    assert.equal(manifestField[0].expiresAt, jpeg.expiresAt);
    assert.ok(!received.body.includes(Buffer.from(plantedName)));

    assert.equal((await svc.ledger.get(jpeg.id))?.retention, 'extended');
    assert.deepEqual(await svc.tmpFiles(), []);
    const logText = svc.logs.text;
    assert.ok(logText.includes('file cleaned'));
    for (const secret of [plantedName, testToken, String(manifest.planted.artist), 'holiday']) assert.ok(!logText.includes(secret), `logs contain ${secret}`);
  });

  it('refuses HTML sent as an image with 415 and forwards nothing', async () => {
    const before = upstream.requests.length;
    const res = await svc.api.post('/v1/uploads').attach('file', fixture('reject/html-as-image.png'), { contentType: 'image/png' });
    assert.equal(res.status, 415);
    assert.equal(res.body.error.code, 'unsupported_type');
    assert.equal(upstream.requests.length, before);
    assert.deepEqual(await svc.tmpFiles(), []);
  });

  it('refuses a GIF polyglot and a truncated JPEG with 415', async () => {
    for (const name of ['reject/gif-polyglot.gif', 'reject/jpeg-truncated.jpg']) {
      const res = await svc.api.post('/v1/uploads').attach('file', fixture(name));
      assert.equal(res.status, 415, name);
    }
    assert.deepEqual(await svc.tmpFiles(), []);
  });

  it('answers 400 for a bad retention, an unknown field, an unexpected file field or no file', async () => {
    const cases = [
      svc.api.post('/v1/uploads').field('retention', 'forever').attach('file', fixture('media/gif-comment-xmp.gif')),
      svc.api.post('/v1/uploads').field('owner', 'x').attach('file', fixture('media/gif-comment-xmp.gif')),
      svc.api.post('/v1/uploads').attach('upload', fixture('media/gif-comment-xmp.gif')),
      svc.api.post('/v1/uploads').field('jobId', 'a'),
      svc.api.post('/v1/uploads').field('a[b][c]', '1').attach('file', fixture('media/gif-comment-xmp.gif')),
    ];
    for (const res of await Promise.all(cases)) {
      assert.equal(res.status, 400, JSON.stringify(res.body));
      assert.equal(typeof res.body.error.message, 'string');
    }
    assert.deepEqual(await svc.tmpFiles(), []);
  });

  it('answers 415 for a body that is not multipart', async () => {
    const res = await svc.api.post('/v1/uploads').set('content-type', 'application/json').send('{"file":"x"}');
    assert.equal(res.status, 415);
    assert.equal(res.body.error.code, 'not_multipart');
  });

  it('answers 413 for too many files and for a file over the limit, keeping nothing', async () => {
    let req = svc.api.post('/v1/uploads');
    for (let i = 0; i < 4; i++) req = req.attach('file', fixture('media/gif-comment-xmp.gif'));
    assert.equal((await req).status, 413);
    const big = Buffer.alloc(6 * 1024 * 1024, 1);
    const res = await svc.api.post('/v1/uploads').attach('file', big, 'big.jpg');
    assert.equal(res.status, 413);
    assert.equal(res.body.error.code, 'too_large');
    assert.deepEqual(await svc.tmpFiles(), []);
  });

  it('serves /healthz and a green /readyz naming the ffmpeg in use', async () => {
    assert.equal((await svc.api.get('/healthz')).status, 200);
    const ready = await svc.api.get('/readyz');
    assert.equal(ready.status, 200, JSON.stringify(ready.body));
    assert.equal(ready.body.ffmpeg.ok, true);
    assert.equal(typeof ready.body.ffmpeg.version, 'string');
    assert.equal(ready.body.dataDir.writable, true);
  });

  it('answers unknown routes with a JSON 404', async () => {
    const res = await svc.api.get('/v1/nothing');
    assert.equal(res.status, 404);
    assert.equal(res.body.error.code, 'not_found');
  });
});

describe('upstream faults', () => {
  it('maps a refused connection to 502, an upstream 500 to 502 with its status, a hang to 504', async () => {
    const refusing = await startUpstream();
    const deadUrl = refusing.url;
    await refusing.close();
    const failing = await startUpstream((_req, res) => res.writeHead(500).end('boom'));
    const hanging = await startUpstream(() => undefined);
    const cases: Array<[string, number, number, string]> = [
      [deadUrl, 5_000, 502, 'upstream_unreachable'],
      [failing.url, 5_000, 502, 'upstream_rejected'],
      [hanging.url, 300, 504, 'upstream_timeout'],
    ];
    try {
      for (const [url, timeout, status, code] of cases) {
        const svc = await makeApp(() => new HttpForwarder(new URL(url), timeout, 2, 10));
        const res = await svc.api.post('/v1/uploads').attach('file', fixture('media/jpeg-orientation-6.jpg'));
        assert.equal(res.status, status, JSON.stringify(res.body));
        assert.equal(res.body.error.code, code);
        if (code === 'upstream_rejected') assert.equal(res.body.error.upstreamStatus, 500);
        if (url === failing.url) assert.equal(failing.requests.length, 3, 'one try and two retries');
        assert.deepEqual(await svc.tmpFiles(), []);
        await svc.cleanup();
      }
    } finally {
      await failing.close();
      await hanging.close();
    }
  });
});

describe('forwarding to a render service that reads slowly', () => {
  it('sends a file of megabytes byte for byte though its writes wait on the upstream', async () => {
    // Larger than loopback's socket buffers, so the forwarder's writes must wait for the upstream
    // to read, while its one read buffer is ready to be filled again.
    const jpeg = await sharp({ create: { width: 2400, height: 1800, channels: 3, background: '#808080', noise: { type: 'gaussian', mean: 128, sigma: 40 } } })
      .jpeg({ quality: 95 })
      .toBuffer();
    assert.ok(jpeg.length > 3 * 1024 * 1024, `the photo is ${jpeg.length} bytes`);
    const slow = await startUpstream(undefined, 300);
    const svc = await makeApp(() => new HttpForwarder(new URL(slow.url), 10_000));
    try {
      const res = await svc.api.post('/v1/uploads').attach('file', jpeg, { filename: 'noise.jpg' });
      assert.equal(res.status, 201, JSON.stringify(res.body));
      const received = slow.requests[0]!;
      assert.equal(Number(received.headers['content-length']), received.body.length);
      const [file] = multipartParts(received.body, String(received.headers['content-type'])).filter((p) => p.name === 'file');
      assert.equal(file!.data.length, res.body.files[0].bytes);
      // The scan is copied as it came: the forwarded photo decodes to the very same pixels.
      const pixels = async (bytes: Buffer) => sharp(bytes).raw().toBuffer();
      assert.ok((await pixels(file!.data)).equals(await pixels(jpeg)), 'the forwarded photo decodes to the original pixels');
    } finally {
      await svc.cleanup();
      await slow.close();
    }
  });
});

describe('upstream retries', () => {
  it('retries a 5xx with the same Idempotency-Key and starts exactly one render job', async () => {
    const jobs = new Set<string>();
    let calls = 0;
    const flaky = await startUpstream((req, res) => {
      calls++;
      if (calls <= 2) return void res.writeHead(503).end('busy');
      jobs.add(String(req.headers['idempotency-key']));
      res.writeHead(202).end('{}');
    });
    const svc = await makeApp(() => new HttpForwarder(new URL(flaky.url), 5_000, 2, 10));
    try {
      const res = await svc.api.post('/v1/uploads').attach('file', fixture('media/gif-comment-xmp.gif'));
      assert.equal(res.status, 201, JSON.stringify(res.body));
      assert.equal(flaky.requests.length, 3);
      assert.equal(new Set(flaky.requests.map((r) => r.headers['idempotency-key'])).size, 1, 'one key for every attempt');
      assert.equal(jobs.size, 1);
      // Every attempt carried the whole cleaned file.
      for (const r of flaky.requests) assert.equal(multipartParts(r.body, String(r.headers['content-type'])).filter((p) => p.name === 'file').length, 1);
    } finally {
      await flaky.close();
      await svc.cleanup();
    }
  });
});

describe('embedded local sink', () => {
  it('writes the cleaned file and its report under the data dir', async () => {
    const svc = await makeApp((dataDir) => new StoreSink(storesFor(dataDir).local, testStorage));
    try {
      const res = await svc.api.post('/v1/uploads').attach('file', fixture('media/png-text-exif-xmp.png'), plantedName);
      assert.equal(res.status, 201);
      const { id } = res.body.files[0];
      assert.deepEqual(res.body.upstream, { status: 201, destination: 'local' });
      // Encrypted at rest: the bytes on disk are no PNG; the storage key opens them.
      const atRest = await readFile(path.join(svc.dataDir, 'clean', `${id}.png.enc`));
      assert.equal(atRest.indexOf(Buffer.from('\x89PNG', 'latin1')), -1);
      const cleaned = unseal(testStorage, `clean/${id}.png.enc`, atRest);
      assert.ok(cleaned.subarray(0, 4).equals(Buffer.from('\x89PNG', 'latin1')));
      assert.deepEqual(findPlanted(cleaned), []);
      const report = JSON.parse(unseal(testStorage, `reports/${id}.json.enc`, await readFile(path.join(svc.dataDir, 'reports', `${id}.json.enc`))).toString('utf8'));
      assert.equal(report.id, id);
      assert.deepEqual(findPlanted(Buffer.from(JSON.stringify(report))), []);
      assert.deepEqual(await svc.tmpFiles(), []);
    } finally {
      await svc.cleanup();
    }
  });

  it('seals a JPEG while it is verified, but stores it only once it passed: a refused one, alone or after a clean one, leaves nothing', async () => {
    const svc = await makeApp((dataDir) => new StoreSink(storesFor(dataDir).local, testStorage));
    try {
      // A scan cut short: stripped (its scan copied, its sealed copy started), refused by the
      // verifier's walk, stripped again with its scans walked, and refused as corrupt.
      const photo = await sharp({ create: { width: 640, height: 480, channels: 3, background: '#456', noise: { type: 'gaussian', mean: 120, sigma: 30 } } }).jpeg().toBuffer();
      const hostile = Buffer.concat([photo.subarray(0, photo.length - 4000), photo.subarray(-2)]);
      const stored = async (): Promise<string[]> => (await filesUnder(svc.dataDir)).filter((f) => /^(clean|reports)\//.test(path.relative(svc.dataDir, f)));
      for (const files of [[hostile], [photo, hostile]]) {
        const post = svc.api.post('/v1/uploads');
        files.forEach((bytes, i) => post.attach('file', bytes, `f${i}.jpg`));
        const res = await post;
        assert.equal(res.status, 415, JSON.stringify(res.body));
        assert.equal(res.body.error.code, 'corrupt_media');
        assert.deepEqual(await stored(), [], `${files.length} file(s): nothing stored`);
        assert.deepEqual(await svc.tmpFiles(), [], 'no sealed copy left behind');
      }
      // The clean one alone: stored from its sealed copy, and reads back as the cleaned file.
      const res = await svc.api.post('/v1/uploads').attach('file', photo, 'f.jpg');
      assert.equal(res.status, 201);
      const { id } = res.body.files[0];
      const content = await svc.api.get(`/v1/files/${id}/content`).buffer(true).parse((r, done) => {
        const chunks: Buffer[] = [];
        r.on('data', (c: Buffer) => chunks.push(c)).on('end', () => done(null, Buffer.concat(chunks)));
      });
      assert.equal(content.status, 200);
      assert.ok((await sharp(content.body as Buffer).raw().toBuffer()).equals(await sharp(photo).raw().toBuffer()), 'the same pixels');
      assert.deepEqual(await svc.tmpFiles(), []);
    } finally {
      await svc.cleanup();
    }
  });
});
