/**
 * Crash diagnostics: fingerprints that say nothing about a person yet let engineering rebuild a
 * file with the same technical properties (the round-trip property over every fixture), and the
 * crash records API that links a failure to a fingerprint.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { copyFile, mkdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { Ajv2020 } from 'ajv/dist/2020.js';
import request from 'supertest';
import { cleanFile, type CleanFile } from '../src/pipeline.js';
import { repro, ReproError } from '../src/cli/repro.js';
import type { Fingerprint, VideoFingerprint } from '../src/steps/fingerprint.js';
import { sweep } from '../src/retention/sweeper.js';
import { cleanFixtures, ffmpegTools, fixture, LogCapture, manifest, pipelineDeps, removeDir, root, tempDir, testService } from './helpers.js';

let work: string;
before(async () => {
  work = await tempDir();
});
after(() => removeDir(work));

let n = 0;
async function clean(file: string): Promise<CleanFile> {
  const workDir = path.join(work, `w${n++}`);
  await mkdir(workDir);
  const inputPath = path.join(workDir, 'original');
  await copyFile(file, inputPath);
  return cleanFile({ id: `t${n}`, inputPath, inputBytes: (await stat(inputPath)).size, workDir }, 'standard', await pipelineDeps());
}

/** Everything but the hash, its id and byte-level sizes (the layout keeps its types and counts). */
function structural(fp: Fingerprint): Record<string, unknown> {
  const { contentHmac: _h, id: _i, bytes: _b, layout, ...rest } = fp;
  return JSON.parse(JSON.stringify({ ...rest, layout: layout.map(({ type, count }) => ({ type, count })) })) as Record<string, unknown>;
}

describe('fingerprints', () => {
  const schema = JSON.parse(readFileSync(path.join(root, 'schemas', 'fingerprint-v1.schema.json'), 'utf8')) as object;
  const validate = new Ajv2020({ allErrors: true, strict: false }).compile(schema);

  it('match the JSON Schema and carry no planted value, file name or date from the file', async () => {
    const planted = manifest.planted as Record<string, unknown>;
    const dates = [String(planted.dateTime), String(planted.dateTime).replace(/:/, '-').replace(/:/, '-'), '2021-07-14', '2021:07:14'];
    const needles = [...Object.values(planted).filter((v) => typeof v === 'string').map(String), ...dates, ...cleanFixtures.map((f) => path.basename(f.file))];
    for (const entry of cleanFixtures) {
      const { fingerprint } = await clean(fixture(entry.file));
      assert.ok(validate(fingerprint), `${entry.file}: ${JSON.stringify(validate.errors)}`);
      const json = JSON.stringify(fingerprint);
      for (const needle of needles) assert.ok(!json.includes(needle), `${entry.file}: fingerprint contains "${needle}"`);
      // Coordinates in any of the forms metadata writes them.
      for (const coordinate of [planted.latitude, planted.longitude].map((c) => Math.abs(Number(c)).toFixed(3))) assert.ok(!json.includes(coordinate));
    }
  });

  it('are deterministic: the same cleaned bytes and key give the same fingerprint', async () => {
    for (const file of ['media/jpeg-gps-exif-xmp-iptc.jpg', 'media/mp4-location.mp4', 'media/heic-exif-xmp-thumbnail.heic']) {
      const [a, b] = [await clean(fixture(file)), await clean(fixture(file))];
      assert.deepEqual(a.fingerprint, b.fingerprint, file);
    }
  });

  it('carry the HMAC-SHA256 of exactly the cleaned bytes (a video hashed on its own thread, an image in memory)', async () => {
    const { fingerprintKey } = await pipelineDeps();
    for (const file of ['media/mp4-location.mp4', 'media/mkv-attachment-chapters.mkv', 'media/jpeg-gps-exif-xmp-iptc.jpg']) {
      const cleaned = await clean(fixture(file));
      const expected = createHmac('sha256', fingerprintKey).update(await readFile(cleaned.path)).digest('hex');
      assert.equal(cleaned.fingerprint.contentHmac, expected, file);
      assert.equal(cleaned.fingerprint.id, `fp_${expected.slice(0, 16)}`, file);
    }
  });

  it('describe structure and keyframes: layout types, GOP from the sync-sample table, brand', async () => {
    const mp4 = (await clean(fixture('media/mp4-location.mp4'))).fingerprint as VideoFingerprint;
    assert.equal(mp4.brand, 'isom');
    assert.deepEqual(mp4.layout.map((l) => l.type), ['ftyp', 'free', 'mdat', 'moov']);
    assert.equal(mp4.streams[0]!.keyframes, 1);
    assert.equal(mp4.streams[0]!.keyframeInterval, 10);
    const jpeg = (await clean(fixture('media/jpeg-gps-exif-xmp-iptc.jpg'))).fingerprint;
    assert.deepEqual(jpeg.layout.at(0), { type: 'SOI', count: 1, size: 2 });
    assert.deepEqual(jpeg.layout.at(-1), { type: 'EOI', count: 1, size: 2 });
  });
});

describe('scrubline repro', () => {
  // A fixture marked `reproducible: false` has a structure sharp cannot write (restart markers).
  for (const entry of cleanFixtures.filter((f) => (f as { reproducible?: boolean }).reproducible !== false)) {
    it(`${entry.file}: fingerprint(repro(fingerprint(x))) = fingerprint(x) on every structural field`, async () => {
      const original = (await clean(fixture(entry.file))).fingerprint;
      const target = path.join(work, `repro-${path.basename(entry.file)}`);
      const tools = await ffmpegTools();
      if (original.mime === 'image/heic') {
        // sharp's libvips has no HEVC encoder: a clear refusal, not a different file.
        await assert.rejects(repro(original, target, tools), (err: unknown) => err instanceof ReproError && /HEVC encoder/.test(err.message));
        return;
      }
      await repro(original, target, tools);
      const again = (await clean(target)).fingerprint;
      assert.deepEqual(structural(again), structural(original));
    });
  }

  it('names the missing encoder instead of making something else', async () => {
    const fp = (await clean(fixture('media/3gp-tags.3gp'))).fingerprint as VideoFingerprint;
    const amr = { ...fp, streams: [...fp.streams, { type: 'audio', codec: 'amr_nb', profile: undefined, level: undefined, sampleRate: 8000, channels: 1 }] };
    await assert.rejects(repro(amr, path.join(work, 'amr.3gp'), await ffmpegTools()), /no "libopencore_amrnb" encoder/);
    const unknown = { ...fp, streams: [{ type: 'video', codec: 'cinepak', profile: undefined, level: undefined }] };
    await assert.rejects(repro(unknown, path.join(work, 'x.3gp'), await ffmpegTools()), /no known encoder for video codec "cinepak"/);
  });
});

describe('crash records API', () => {
  let svc: Awaited<ReturnType<typeof testService>>;
  let api: Awaited<ReturnType<typeof testService>>['api'];
  const logs = new LogCapture();
  before(async () => {
    svc = await testService({ logs, now: new Date('2026-07-01T00:00:00.000Z') });
    api = svc.api;
  });
  after(() => svc.close());

  it('files a crash against an uploaded file and returns the bundle with the repro command', async () => {
    const upload = await api.post('/v1/uploads').field('jobId', 'render-7').attach('file', fixture('media/mp4-location.mp4'));
    assert.equal(upload.status, 201);
    const file = upload.body.files[0] as { id: string; fingerprint: Fingerprint };
    const secretMessage = 'decoder failed on frame 7 near the blue door';
    const filed = await api.post('/v1/crashes').send({ fileId: file.id, error: { message: secretMessage, stack: 'Error: x\n    at decode (render.js:1:1)' }, jobConfig: { preset: 'fast', crf: 23 } });
    assert.equal(filed.status, 201, JSON.stringify(filed.body));
    assert.equal(filed.body.fingerprintId, file.fingerprint.id);

    const bundle = await api.get(`/v1/crashes/${filed.body.id}`);
    assert.equal(bundle.status, 200);
    assert.deepEqual(bundle.body.fingerprint, file.fingerprint);
    assert.equal(bundle.body.error.message, secretMessage);
    assert.deepEqual(bundle.body.jobConfig, { preset: 'fast', crf: 23 });
    assert.equal(bundle.body.jobId, 'render-7');
    assert.equal(bundle.body.repro.command, `scrubline repro ${file.fingerprint.id} -o repro.mp4`);
    assert.deepEqual((await api.get(`/v1/fingerprints/${file.fingerprint.id}`)).body, file.fingerprint);
    // By fingerprint id as well.
    assert.equal((await api.post('/v1/crashes').send({ fingerprintId: file.fingerprint.id, error: { message: 'again' } })).status, 201);
    // The message and config never reach the logs.
    assert.ok(!logs.text.includes(secretMessage));
    assert.ok(!logs.text.includes('"crf"'));

    // The engineer's side: the repro command, run against the same data dir, rebuilds the file.
    const out = path.join(work, 'from-ledger.mp4');
    await promisify(execFile)(process.execPath, [path.join(root, 'bin/scrubline.js'), 'repro', file.fingerprint.id, '-o', out], { env: { ...process.env, SCRUBLINE_DATA_DIR: svc.dataDir } });
    assert.deepEqual(structural((await clean(out)).fingerprint), structural(file.fingerprint));
  });

  it('refuses malformed, oversized, unknown and unauthenticated reports', async () => {
    const bad = async (body: unknown, type = 'application/json'): Promise<number> => (await api.post('/v1/crashes').set('content-type', type).send(body as object)).status;
    assert.equal(await bad('{"fileId": '), 400);
    assert.equal(await bad({ error: { message: 'x' } }), 400); // no id
    assert.equal(await bad({ fileId: 'a', fingerprintId: 'fp_0000000000000000', error: { message: 'x' } }), 400);
    assert.equal(await bad({ fileId: 'a', error: {} }), 400);
    assert.equal(await bad({ fileId: 'a', error: { message: 'x' }, extra: 1 }), 400);
    assert.equal(await bad({ fileId: 'a', error: { message: 'x'.repeat(5000) } }), 400);
    assert.equal(await bad({ fileId: 'a', error: { message: 'x', stack: 's'.repeat(300_000) } }), 413);
    assert.equal(await bad({ fileId: 'no-such-file', error: { message: 'x' } }), 404);
    assert.equal((await api.get('/v1/crashes/cr_nope')).status, 404);
    assert.equal((await api.get('/v1/fingerprints/fp_0000000000000000')).status, 404);
    assert.equal((await request(svc.app).post('/v1/crashes').send({ fileId: 'a', error: { message: 'x' } })).status, 401);
  });

  it('keeps fingerprints and crash records for the record retention, then the sweeper clears them', async () => {
    const { ledger, dataDir } = svc;
    const crashes = (await ledger.ofJob('render-7')).filter((r) => r.kind === 'crash');
    assert.equal(crashes.length, 2);
    const report = await sweep({ ledger, dataDir, at: new Date(svc.clock.now.getTime() + 30 * 86_400_000) });
    assert.ok(report.purged.crash >= 2 && report.purged.fingerprint >= 1);
    assert.equal((await ledger.get(crashes[0]!.id))!.body, undefined, 'a purged record keeps no JSON');
    assert.equal((await api.get(`/v1/crashes/${crashes[0]!.id}`)).status, 404);
  });
});
