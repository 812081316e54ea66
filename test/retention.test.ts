/**
 * Retention end to end with an injected clock: the job-finished clock (24 h / 72 h), the safety
 * cap for jobs that never finish, thumbnails on their file's clock, the sweeper (boundaries,
 * orphans, a kill mid-sweep), deletion on request, and the access control in front of it all.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readdir, stat, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import sharp from 'sharp';
import request from 'supertest';
import { sweep } from '../src/retention/sweeper.js';
import { readExifValuesStrict } from '../src/tools/exifr.js';
import { binaryBody, filesUnder, findPlanted, fixture, root, testService, testToken } from './helpers.js';

const hour = 3_600_000;
const t0 = new Date('2026-06-01T08:00:00.000Z');
const at = (hours: number): Date => new Date(t0.getTime() + hours * hour);

async function service() {
  const svc = await testService({ now: t0 });
  const upload = async (file: string, fields: Record<string, string> = {}): Promise<{ id: string; expiresAt: string }> => {
    let req = svc.api.post('/v1/uploads');
    for (const [k, v] of Object.entries(fields)) req = req.field(k, v);
    const res = await req.attach('file', fixture(file));
    assert.equal(res.status, 201, JSON.stringify(res.body));
    // Previews are made after the answer; these tests are about their clock, not their timing.
    await svc.previewsSettled();
    return res.body.files[0];
  };
  const record = async (id: string) => (await svc.api.get(`/v1/files/${id}`)).body as { expiresAt: string; jobFinishedAt: string | null; purgedAt: string | null; thumbnail: boolean; retention: string };
  return { ...svc, upload, record };
}

/** GET a thumbnail with its body as a Buffer (supertest would try to parse an image otherwise). */
function thumbnail(svc: Awaited<ReturnType<typeof service>>, id: string) {
  return binaryBody(svc.api.get(`/v1/files/${id}/thumbnail`));
}

describe('access control', () => {
  let svc: Awaited<ReturnType<typeof service>>;
  before(async () => (svc = await service()));
  after(() => svc.close());

  it('refuses /v1 without the bearer token before a byte reaches the disk, and leaves health open', async () => {
    const none = await request(svc.app).post('/v1/uploads').attach('file', fixture('media/jpeg-gps-exif-xmp-iptc.jpg'));
    assert.equal(none.status, 401);
    assert.equal(none.body.error.code, 'unauthorized');
    assert.match(none.headers['www-authenticate'] ?? '', /^Bearer/);
    const wrong = await request(svc.app).get('/v1/files/x').set('authorization', `Bearer ${testToken.slice(0, -1)}x`);
    assert.equal(wrong.status, 401);
    const basic = await request(svc.app).post('/v1/jobs/j/finished').set('authorization', `Basic ${Buffer.from(`u:${testToken}`).toString('base64')}`);
    assert.equal(basic.status, 401);
    assert.deepEqual(await filesUnder(path.join(svc.dataDir, 'tmp')).catch(() => []), []);
    assert.equal(await svc.ledger.jobFinishedAt('j'), undefined);
    assert.equal((await request(svc.app).get('/healthz')).status, 200);
  });

  it('answers 404 for unknown ids and 400 for a malformed job id', async () => {
    assert.equal((await svc.api.get('/v1/files/nope')).status, 404);
    assert.equal((await svc.api.get('/v1/files/nope/thumbnail')).status, 404);
    assert.equal((await svc.api.post('/v1/jobs/bad%20id/finished')).status, 400);
  });

  it('keeps the ledger private: it and its -wal and -shm files are 0600', async () => {
    await svc.upload('media/png-text-exif-xmp.png');
    const ledgerFiles = (await readdir(svc.dataDir)).filter((f) => f.startsWith('ledger.sqlite3'));
    assert.deepEqual(ledgerFiles.sort(), ['ledger.sqlite3', 'ledger.sqlite3-shm', 'ledger.sqlite3-wal']);
    for (const f of ledgerFiles) assert.equal((await stat(path.join(svc.dataDir, f))).mode & 0o777, 0o600, f);
  });
});

describe('the job-finished clock', () => {
  let svc: Awaited<ReturnType<typeof service>>;
  before(async () => (svc = await service()));
  after(() => svc.close());

  it('caps a running job at 7 days, then dates files 24 h / 72 h from the finish, once', async () => {
    const standard = await svc.upload('media/jpeg-gps-exif-xmp-iptc.jpg', { jobId: 'job-a' });
    const extended = await svc.upload('media/png-text-exif-xmp.png', { jobId: 'job-a', retention: 'extended' });
    assert.equal(standard.expiresAt, at(168).toISOString());
    assert.equal((await svc.record(standard.id)).jobFinishedAt, null);

    svc.clock.now = at(5);
    const finished = await svc.api.post('/v1/jobs/job-a/finished');
    assert.equal(finished.status, 200);
    assert.equal(finished.body.firstReport, true);
    assert.equal((await svc.record(standard.id)).expiresAt, at(5 + 24).toISOString());
    assert.equal((await svc.record(standard.id)).jobFinishedAt, at(5).toISOString());
    assert.equal((await svc.record(extended.id)).expiresAt, at(5 + 72).toISOString());

    // Reported again later: the first finish stands, nothing is extended.
    svc.clock.now = at(20);
    const again = await svc.api.post('/v1/jobs/job-a/finished');
    assert.equal(again.body.firstReport, false);
    assert.equal(again.body.finishedAt, at(5).toISOString());
    assert.equal((await svc.record(standard.id)).expiresAt, at(29).toISOString());

    // A file uploaded to a job that already finished runs on that finish.
    const late = await svc.upload('media/gif-comment-xmp.gif', { jobId: 'job-a' });
    assert.equal(late.expiresAt, at(29).toISOString());
  });

  it('without a job id, the upload is the job: 24 h from upload; extended only when asked', async () => {
    svc.clock.now = at(1);
    const plain = await svc.upload('media/webp-exif-xmp.webp');
    assert.equal(plain.expiresAt, at(25).toISOString());
    assert.equal((await svc.record(plain.id)).retention, 'standard');
  });
});

describe('thumbnails', () => {
  let svc: Awaited<ReturnType<typeof service>>;
  before(async () => (svc = await service()));
  after(() => svc.close());

  for (const file of ['media/jpeg-orientation-6.jpg', 'media/jpeg-gps-exif-xmp-iptc.jpg', 'media/mp4-location.mp4', 'media/avif-exif-xmp-gps.avif']) {
    it(`${file}: a small metadata-free JPEG made from the cleaned file`, async () => {
      const { id } = await svc.upload(file, { jobId: 'thumbs' });
      const res = await thumbnail(svc, id);
      assert.equal(res.status, 200);
      assert.equal(res.headers['content-type'], 'image/jpeg');
      const jpeg = res.body as Buffer;
      const meta = await sharp(jpeg).metadata();
      assert.ok(Math.max(meta.width!, meta.height!) <= 320);
      assert.equal(meta.orientation ?? 1, 1);
      assert.equal(meta.exif, undefined);
      assert.equal(meta.xmp, undefined);
      assert.deepEqual(await readExifValuesStrict(jpeg), {});
      assert.deepEqual(findPlanted(jpeg), []);
      assert.equal((await svc.record(id)).thumbnail, true);
    });
  }

  it('keeps the way up: the portrait-orientation JPEG gives a portrait thumbnail', async () => {
    const { id } = await svc.upload('media/jpeg-orientation-6.jpg');
    const res = await thumbnail(svc, id);
    const thumb = await sharp(res.body as Buffer).metadata();
    const original = await sharp(fixture('media/jpeg-orientation-6.jpg')).metadata();
    // Orientation 6: the stored pixels are landscape, the displayed picture portrait.
    assert.equal(thumb.width! < thumb.height!, original.width! > original.height!);
  });

  it('HEIC has no preview (sharp cannot decode HEVC): 404, and the record says so', async () => {
    const { id } = await svc.upload('media/heic-exif-xmp-thumbnail.heic');
    assert.equal((await svc.api.get(`/v1/files/${id}/thumbnail`)).status, 404);
    assert.equal((await svc.record(id)).thumbnail, false);
  });
});

describe('the sweeper', () => {
  let svc: Awaited<ReturnType<typeof service>>;
  before(async () => (svc = await service()));
  after(() => svc.close());

  it('purges exactly at the 24 h and 72 h boundaries, file and thumbnail together', async () => {
    const standard = await svc.upload('media/jpeg-gps-exif-xmp-iptc.jpg', { jobId: 'sweep-1' });
    const extended = await svc.upload('media/png-text-exif-xmp.png', { jobId: 'sweep-1', retention: 'extended' });
    svc.clock.now = at(2);
    await svc.api.post('/v1/jobs/sweep-1/finished');
    const onDisk = async (id: string): Promise<string[]> => (await svc.ledger.get(id))!.paths.concat((await svc.ledger.thumbnailOf(id))?.paths ?? []);
    const standardPaths = await onDisk(standard.id);
    assert.equal(standardPaths.length, 3, 'cleaned file, report and thumbnail');
    assert.ok(standardPaths.every((p) => existsSync(path.join(svc.dataDir, p))));

    let report = await sweep({ ledger: svc.ledger, dataDir: svc.dataDir, at: new Date(at(26).getTime() - 1) });
    assert.deepEqual(report.ids, []);
    report = await sweep({ ledger: svc.ledger, dataDir: svc.dataDir, at: at(26) });
    assert.deepEqual(report.purged, { file: 1, thumbnail: 1, fingerprint: 0, crash: 0 });
    assert.ok(standardPaths.every((p) => !existsSync(path.join(svc.dataDir, p))));
    assert.equal((await svc.record(standard.id)).purgedAt, at(26).toISOString());
    assert.equal((await svc.api.get(`/v1/files/${standard.id}/thumbnail`)).status, 404);
    assert.equal((await svc.record(extended.id)).purgedAt, null, 'extended retention survives the 24 h mark');

    report = await sweep({ ledger: svc.ledger, dataDir: svc.dataDir, at: new Date(at(74).getTime() - 1) });
    assert.deepEqual(report.ids, []);
    report = await sweep({ ledger: svc.ledger, dataDir: svc.dataDir, at: at(74) });
    assert.equal(report.purged.file, 1);
    assert.equal((await svc.record(extended.id)).purgedAt, at(74).toISOString());
    // Idempotent: nothing left to do.
    assert.deepEqual((await sweep({ ledger: svc.ledger, dataDir: svc.dataDir, at: at(100) })).ids, []);
  });

  it('bounds a job that never finishes by the safety cap', async () => {
    svc.clock.now = t0;
    const { id } = await svc.upload('media/gif-comment-xmp.gif', { jobId: 'never-finishes' });
    assert.deepEqual((await sweep({ ledger: svc.ledger, dataDir: svc.dataDir, at: at(167) })).ids.includes(id), false);
    assert.ok((await sweep({ ledger: svc.ledger, dataDir: svc.dataDir, at: at(168) })).ids.includes(id));
  });

  it('removes orphans the ledger does not know once they are past the grace period', async () => {
    const old = path.join(svc.dataDir, 'clean', 'orphan-old.jpg');
    const young = path.join(svc.dataDir, 'clean', 'orphan-young.jpg');
    await writeFile(old, 'x');
    await writeFile(young, 'x');
    const now = new Date();
    await utimes(old, new Date(now.getTime() - 2 * hour), new Date(now.getTime() - 2 * hour));
    const dry = await sweep({ ledger: svc.ledger, dataDir: svc.dataDir, at: now, dryRun: true });
    assert.equal(dry.orphans, 1);
    assert.ok(existsSync(old));
    const report = await sweep({ ledger: svc.ledger, dataDir: svc.dataDir, at: now });
    assert.equal(report.orphans, 1);
    assert.equal(existsSync(old), false);
    assert.equal(existsSync(young), true, 'a file younger than the grace period may be an upload being recorded');
  });

  it('deletes a whole job on request, answers with counts and keeps an audit row', async () => {
    svc.clock.now = t0;
    const a = await svc.upload('media/jpeg-gps-exif-xmp-iptc.jpg', { jobId: 'user-deletes' });
    const b = await svc.upload('media/mp4-location.mp4', { jobId: 'user-deletes', retention: 'extended' });
    const paths = (await Promise.all([a.id, b.id].map(async (id) => (await svc.ledger.get(id))!.paths.concat((await svc.ledger.thumbnailOf(id))?.paths ?? [])))).flat();
    const res = await svc.api.delete('/v1/jobs/user-deletes');
    assert.equal(res.status, 200);
    // Fingerprints are kept per file too (for crash reports), and go with the job.
    assert.deepEqual(res.body.purged, { file: 2, thumbnail: 2, fingerprint: 2, crash: 0 });
    assert.ok(paths.every((p) => !existsSync(path.join(svc.dataDir, p))));
    assert.notEqual((await svc.record(a.id)).purgedAt, null);
    const audit = await svc.ledger.deletions('user-deletes');
    assert.equal(audit.length, 1);
    assert.deepEqual(audit[0]!.counts, { file: 2, thumbnail: 2, fingerprint: 2, crash: 0 });
    assert.equal(audit[0]!.ids.length, 6);
  });
});

describe('scrubline sweep (out of process)', () => {
  let svc: Awaited<ReturnType<typeof service>>;
  before(async () => (svc = await service()));
  after(() => svc.close());

  it('lists with --dry-run --at --json, survives a kill mid-run, and a rerun finishes the job', async () => {
    const expiring: string[] = [];
    for (const file of ['media/jpeg-gps-exif-xmp-iptc.jpg', 'media/png-text-exif-xmp.png', 'media/gif-comment-xmp.gif', 'media/webp-exif-xmp.webp']) {
      expiring.push((await svc.upload(file)).id); // no job: 24 h from t0
    }
    const keeper = await svc.upload('media/jpeg-orientation-6.jpg', { retention: 'extended' }); // 72 h
    // The files were written at t0 on the test's clock, not today: with their real times, every
    // file would be younger than --at, inside the orphan grace, and the orphan sweep's check of
    // the ledger's live objects would go untested (a file it wrongly took for an orphan would
    // still be spared).
    for (const file of await filesUnder(svc.dataDir)) if (/\.(enc|jpg|png|gif|webp)$/.test(file)) await utimes(file, t0, t0);
    const env = { ...process.env, SCRUBLINE_DATA_DIR: svc.dataDir };
    const cli = path.join(root, 'bin', 'scrubline.js');

    const dry = await promisify(execFile)(process.execPath, [cli, 'sweep', '--dry-run', '--at', at(24).toISOString(), '--json'], { env });
    const listed = JSON.parse(dry.stdout) as { ids: string[]; dryRun: boolean };
    assert.equal(listed.dryRun, true);
    assert.deepEqual(new Set(listed.ids), new Set([...expiring, ...expiring.map((id) => `th_${id}`)]));
    assert.ok((await svc.ledger.expired(at(24).toISOString())).length === 8, 'a dry run changes nothing');

    // A sweeper that dies (SIGKILL) after deleting the third artefact's files.
    const child = spawn(
      process.execPath,
      [
        '--import', 'tsx', '--input-type=module', '-e',
        `import { Ledger } from ${JSON.stringify(path.join(root, 'src/storage/ledger.ts'))};
         import { sweep } from ${JSON.stringify(path.join(root, 'src/retention/sweeper.ts'))};
         const ledger = await Ledger.open(process.env.SCRUBLINE_DATA_DIR);
         let n = 0;
         await sweep({ ledger, dataDir: process.env.SCRUBLINE_DATA_DIR, at: new Date(${JSON.stringify(at(24).toISOString())}),
           onDeleted: () => { if (++n === 3) process.kill(process.pid, 'SIGKILL'); } });`,
      ],
      { env, cwd: root, stdio: 'ignore' },
    );
    const signal = await new Promise((resolve) => child.on('exit', (_code, sig) => resolve(sig)));
    assert.equal(signal, 'SIGKILL');
    // Its claim rolled back with it: every row is still expired and unpurged, though three
    // artefacts' files are already gone.
    const left = (await svc.ledger.expired(at(24).toISOString())).length;
    assert.equal(left, 8);
    const records = [...(await Promise.all(expiring.map((id) => svc.ledger.get(id)))), ...(await Promise.all(expiring.map((id) => svc.ledger.thumbnailOf(id))))];
    const gone = records.filter((r) => r!.paths.some((p) => !existsSync(path.join(svc.dataDir, p))));
    assert.equal(gone.length, 3, 'the kill landed mid-run');

    // The rerun, on the test's clock (the CLI purges as of now only, and now is past every expiry here).
    const rerun = await promisify(execFile)(
      process.execPath,
      [
        '--import', 'tsx', '--input-type=module', '-e',
        `import { Ledger } from ${JSON.stringify(path.join(root, 'src/storage/ledger.ts'))};
         import { sweep } from ${JSON.stringify(path.join(root, 'src/retention/sweeper.ts'))};
         const ledger = await Ledger.open(process.env.SCRUBLINE_DATA_DIR);
         console.log(JSON.stringify(await sweep({ ledger, dataDir: process.env.SCRUBLINE_DATA_DIR, at: new Date(${JSON.stringify(at(24).toISOString())}) })));
         await ledger.close();`,
      ],
      { env, cwd: root },
    );
    assert.equal((JSON.parse(rerun.stdout) as { ids: string[] }).ids.length, left);
    // The CLI itself will not purge as of another time than now.
    const early = await promisify(execFile)(process.execPath, [cli, 'sweep', '--at', at(24).toISOString()], { env }).then(() => undefined, (err: { code: number; stderr: string }) => err);
    assert.equal(early?.code, 1);
    assert.match(early!.stderr, /--at goes with --dry-run only/);
    assert.equal((await svc.ledger.expired(at(24).toISOString())).length, 0);
    for (const id of expiring) {
      assert.ok((await svc.ledger.get(id))!.paths.every((p) => !existsSync(path.join(svc.dataDir, p))), 'nothing expired survives');
    }
    const kept = (await svc.ledger.get(keeper.id))!;
    assert.equal(kept.purgedAt, undefined, 'nothing unexpired is touched');
    assert.ok(kept.paths.every((p) => existsSync(path.join(svc.dataDir, p))));
    assert.ok(existsSync(path.join(svc.dataDir, (await svc.ledger.thumbnailOf(keeper.id))!.paths[0]!)));
    const thumbnails = await readdir(path.join(svc.dataDir, 'thumbnails'));
    assert.deepEqual(thumbnails, [`th_${keeper.id}.jpg.enc`]);
  });
});
