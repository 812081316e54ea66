/**
 * Issue 31: a negative test for each safeguard an audit found no test would miss. Each builds the
 * situation the safeguard exists for and asserts the refusal or the absence, with an oracle of its
 * own where the code under test could agree with itself (the envelope is opened with Node's own
 * AES-GCM, not with scrubline's reader). `npm run mutations` switches each safeguard off in turn
 * and checks that these fail.
 */
import assert from 'node:assert/strict';
import { createDecipheriv, createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import sharp from 'sharp';
import { ScrubError } from '../src/errors.js';
import { sweep } from '../src/retention/sweeper.js';
import { Ledger, type ArtefactRecord } from '../src/storage/ledger.js';
import { LocalStore, type ObjectStore } from '../src/storage/objects.js';
import { sniff } from '../src/steps/sniff.js';
import { strip } from '../src/steps/strip.js';
import { verify } from '../src/steps/verify.js';
import { Keyring, seal, TamperedObject, unseal } from '../src/storage/envelope.js';
import { filesUnder, fixture, pipelineDeps, removeDir, tempDir, testService } from './helpers.js';
import { auth, service, stop, type Service } from './threat-helpers.js';

describe('the envelope is keyed by the storage key (issue 31)', () => {
  const key = randomBytes(32);
  const name = 'clean/abc.jpg.enc';
  const object = seal(new Keyring([key]), name, Buffer.from('cleaned bytes'));

  it('its data key unwraps with the storage key itself, read by Node\'s AES-GCM (not scrubline\'s reader)', () => {
    // Layout: "SCRUBENC1" · key id (8) · wrap nonce (12) · wrapped data key (32) · wrap tag (16).
    const magic = object.subarray(0, 9);
    const id = object.subarray(9, 17);
    assert.ok(id.equals(createHash('sha256').update(key).digest().subarray(0, 8)), 'the key id names the storage key');
    const unwrap = (wrappingKey: Buffer): Buffer => {
      const decipher = createDecipheriv('aes-256-gcm', wrappingKey, object.subarray(17, 29));
      decipher.setAAD(Buffer.concat([magic, id, Buffer.from(name, 'utf8')]));
      decipher.setAuthTag(object.subarray(61, 77));
      return Buffer.concat([decipher.update(object.subarray(29, 61)), decipher.final()]);
    };
    assert.equal(unwrap(key).length, 32);
    assert.throws(() => unwrap(Buffer.alloc(32)), 'not under an all-zero key');
  });

  it('does not open under another storage key, nor without the key', () => {
    assert.throws(() => unseal(new Keyring([randomBytes(32)]), name, object), TamperedObject);
    // Another key that claims the same id (a forged ring entry) still cannot unwrap it.
    const forged = new Keyring([randomBytes(32)]);
    (forged as unknown as { byId: Map<string, { key: Buffer; id: Buffer }> }).byId.set(object.subarray(9, 17).toString('hex'), { key: randomBytes(32), id: object.subarray(9, 17) });
    assert.throws(() => unseal(forged, name, object), TamperedObject);
    assert.ok(unseal(new Keyring([key]), name, object).equals(Buffer.from('cleaned bytes')));
  });
});

describe('a deleted job takes nothing more, and nothing of it reaches the render service (issue 31)', () => {
  let svc: Service;
  before(async () => (svc = await service()));
  after(() => stop(svc));

  it('an upload to a deleted job answers 410 and the upstream receives no request', async () => {
    assert.equal((await fetch(`${svc.server.url}/v1/jobs/gone-job`, { method: 'DELETE', headers: auth })).status, 200);
    const form = new FormData();
    form.append('jobId', 'gone-job');
    form.append('file', new Blob([new Uint8Array(await readFile(fixture('media/jpeg-orientation-6.jpg')))]), 'x.jpg');
    const res = await fetch(`${svc.server.url}/v1/uploads`, { method: 'POST', headers: auth, body: form });
    assert.equal(res.status, 410);
    assert.equal(svc.upstream.requests.length, 0, 'nothing was forwarded');
  });
});

describe('the orphan sweep spares live objects (issue 31, on a controlled clock)', () => {
  it('an unexpired file older than the grace period stays; one the ledger does not know goes', async () => {
    const svc = await testService();
    try {
      const res = await svc.api.post('/v1/uploads').attach('file', fixture('media/jpeg-orientation-6.jpg')).field('jobId', 'kept-job');
      assert.equal(res.status, 201);
      await svc.previewsSettled();
      const stored = await filesUnder(path.join(svc.dataDir, 'clean'));
      assert.ok(stored.length > 0);
      // The sweep runs an hour after the upload, by the service's clock; the files were written an
      // hour before that, so every one is past the 15-minute grace, and only liveness keeps them.
      const sweepAt = new Date(svc.clock.now.getTime() + 3_600_000);
      const written = new Date(svc.clock.now.getTime());
      for (const file of stored) await utimes(file, written, written);
      const stray = path.join(svc.dataDir, 'clean', 'strayobject0000.jpg.enc');
      await writeFile(stray, 'x');
      await utimes(stray, written, written);
      const report = await sweep({ ledger: svc.ledger, dataDir: svc.dataDir, at: sweepAt });
      assert.deepEqual(report.ids, [], 'nothing expired');
      assert.equal(report.orphans, 1, 'the stray object is an orphan');
      assert.deepEqual((await filesUnder(path.join(svc.dataDir, 'clean'))).sort(), stored.sort(), 'the live, unexpired file stays');
    } finally {
      await svc.close();
    }
  });
});

describe('the verifier refuses an image whose colour or way up did not survive (issue 31)', () => {
  /** Strips `input` for real, then puts `output` where the cleaned file was, and verifies that. */
  async function verifyInstead(input: Buffer, output: (cleaned: Buffer) => Promise<Buffer>): Promise<string> {
    const workDir = await tempDir();
    try {
      const inputPath = path.join(workDir, 'original');
      await writeFile(inputPath, input);
      const stripped = await strip(await sniff({ id: 'test', inputPath, inputBytes: input.length, workDir }), await pipelineDeps());
      await writeFile(stripped.cleanPath, await output(await readFile(stripped.cleanPath)), { mode: 0o600 });
      await verify({ ...stripped, original: undefined }, await pipelineDeps());
      return 'verified';
    } catch (err) {
      return err instanceof ScrubError ? err.publicMessage : String(err);
    } finally {
      await removeDir(workDir);
    }
  }

  it('"colour profile lost": the input has a profile, the output none', async () => {
    const input = await sharp({ create: { width: 40, height: 30, channels: 3, background: '#3a6' } }).withIccProfile('p3').jpeg().toBuffer();
    assert.equal(await verifyInstead(input, async (cleaned) => cleaned), 'verified', 'the real output passes');
    const without = (cleaned: Buffer): Promise<Buffer> => sharp(cleaned).jpeg().toBuffer(); // sharp writes no profile unless asked
    assert.match(await verifyInstead(input, without), /colour profile lost/);
  });

  it('"orientation changed": a 180° turn keeps the size, so only the orientation tells', async () => {
    const input = await sharp({ create: { width: 40, height: 30, channels: 3, background: '#a63' } }).withMetadata({ orientation: 3 }).jpeg().toBuffer();
    assert.equal(await verifyInstead(input, async (cleaned) => cleaned), 'verified', 'the real output passes');
    const upright = (cleaned: Buffer): Promise<Buffer> => sharp(cleaned).withMetadata({ orientation: 1 }).jpeg().toBuffer();
    assert.match(await verifyInstead(input, upright), /orientation changed/);
  });
});

describe('a file sent to an HTTP upstream is not served back (issue 31)', () => {
  let svc: Service;
  before(async () => (svc = await service()));
  after(() => stop(svc));

  it('GET /v1/files/:id/content answers 404: the render service has the file, scrubline keeps none', async () => {
    const form = new FormData();
    form.append('file', new Blob([new Uint8Array(await readFile(fixture('media/jpeg-orientation-6.jpg')))]), 'x.jpg');
    const res = await fetch(`${svc.server.url}/v1/uploads`, { method: 'POST', headers: auth, body: form });
    assert.equal(res.status, 201);
    const { files } = (await res.json()) as { files: Array<{ id: string }> };
    assert.equal(svc.upstream.requests.length, 1, 'it went upstream');
    const content = await fetch(`${svc.server.url}/v1/files/${files[0]!.id}/content`, { headers: auth });
    assert.equal(content.status, 404);
    assert.equal(((await content.json()) as { error: { code: string } }).error.code, 'not_found');
    assert.deepEqual((await filesUnder(path.join(svc.dataDir, 'clean'))).length, 0, 'no copy of it in the local sink');
  });
});

describe('key rotation through the configuration (issue 31)', () => {
  it('a key moved to SCRUBLINE_STORAGE_OLD_KEYS still reads what it encrypted; without it nothing opens', async () => {
    const dataDir = await tempDir();
    const [oldKey, newKey] = [randomBytes(32).toString('hex'), randomBytes(32).toString('hex')];
    const localSink = { SCRUBLINE_UPSTREAM_URL: '' };
    const read = async (svc: Service, id: string): Promise<{ status: number; body: Buffer }> => {
      const res = await fetch(`${svc.server.url}/v1/files/${id}/content`, { headers: auth });
      return { status: res.status, body: Buffer.from(await res.arrayBuffer()) };
    };
    const restart = async (svc: Service): Promise<void> => {
      await svc.server.close();
      await svc.upstream.close();
    };
    let svc = await service({ ...localSink, SCRUBLINE_STORAGE_KEY: oldKey }, dataDir);
    try {
      const form = new FormData();
      form.append('file', new Blob([new Uint8Array(await readFile(fixture('media/jpeg-orientation-6.jpg')))]), 'x.jpg');
      const res = await fetch(`${svc.server.url}/v1/uploads`, { method: 'POST', headers: auth, body: form });
      assert.equal(res.status, 201);
      const id = ((await res.json()) as { files: Array<{ id: string }> }).files[0]!.id;
      const original = await read(svc, id);
      assert.equal(original.status, 200);

      await restart(svc);
      svc = await service({ ...localSink, SCRUBLINE_STORAGE_KEY: newKey, SCRUBLINE_STORAGE_OLD_KEYS: oldKey }, dataDir);
      const rotated = await read(svc, id);
      assert.equal(rotated.status, 200, 'read with the old key, from the configuration');
      assert.ok(rotated.body.equals(original.body));

      await restart(svc);
      svc = await service({ ...localSink, SCRUBLINE_STORAGE_KEY: newKey }, dataDir);
      const lost = await read(svc, id);
      assert.equal(lost.status, 500, 'the new key alone does not open it');
      assert.ok(!lost.body.includes(original.body.subarray(0, 64)), 'no byte of the file sent');
    } finally {
      await stop(svc);
    }
  });
});

describe('start-up warnings (issue 31)', () => {
  it('plain HTTP beyond loopback, and a plain-HTTP upstream off this machine, are each named at start; a loopback setup warns of neither', async () => {
    const exposed = await service({ SCRUBLINE_HOST: '0.0.0.0', SCRUBLINE_UPSTREAM_URL: 'http://10.255.255.1:9/render' });
    const quiet = await service();
    try {
      assert.match(exposed.logs.text, /"host":"0\.0\.0\.0".*listening on plain HTTP beyond loopback/);
      assert.match(exposed.logs.text, /"upstream":"10\.255\.255\.1:9".*reached over plain HTTP on a non-loopback address/);
      assert.doesNotMatch(quiet.logs.text, /plain HTTP/);
    } finally {
      await Promise.all([stop(exposed), stop(quiet)]);
    }
  });
});

describe('the service sweeps on its own, every interval (issue 31)', () => {
  it('an artefact expired before start goes at start, and one that expires while it runs goes on a later round', async () => {
    const dataDir = await tempDir();
    const row = (id: string): ArtefactRecord => ({ id, kind: 'file', jobId: 'j', mime: 'image/jpeg', bytes: 1, fingerprintId: 'fp', destination: 'local', retention: 'standard', createdAt: '2026-01-01T00:00:00.000Z', expiresAt: '2026-01-02T00:00:00.000Z', paths: [`clean/${id}.jpg.enc`] });
    const plant = async (id: string): Promise<void> => {
      await mkdir(path.join(dataDir, 'clean'), { recursive: true });
      await writeFile(path.join(dataDir, 'clean', `${id}.jpg.enc`), 'x');
      const ledger = await Ledger.open(dataDir);
      await ledger.record([row(id)]);
      await ledger.close();
    };
    const gone = async (id: string): Promise<boolean> => {
      for (let tries = 0; tries < 200; tries++) {
        if (!existsSync(path.join(dataDir, 'clean', `${id}.jpg.enc`))) return true;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      return false;
    };
    await plant('before-start');
    const svc = await service({ SCRUBLINE_SWEEP_INTERVAL_MS: '300' }, dataDir);
    try {
      assert.ok(await gone('before-start'), 'swept at start');
      await plant('while-running');
      assert.ok(await gone('while-running'), 'swept on a later round, with no request to prompt it');
      assert.match(svc.logs.text, /sweep purged expired artefacts/);
    } finally {
      await stop(svc);
    }
  });
});

describe('a job deleted while an upload to it is being stored keeps nothing of it (issue 31, THREATS 41)', () => {
  it('a later upload to the deleted job stores nothing in the local sink (the store side of THREATS 41)', async () => {
    const t = await testService();
    try {
      assert.equal((await t.api.delete('/v1/jobs/gone-local')).status, 200);
      const res = await t.api.post('/v1/uploads').field('jobId', 'gone-local').attach('file', fixture('media/jpeg-orientation-6.jpg'));
      assert.equal(res.status, 410);
      assert.deepEqual((await filesUnder(t.dataDir)).filter((f) => /\/(clean|reports|thumbnails)\//.test(f)), [], 'nothing stored');
    } finally {
      await t.close();
    }
  });

  it('the objects written before the ledger refused the upload are removed, and it answers 410', async () => {
    const storeDir = await tempDir();
    const inner = new LocalStore(storeDir);
    let entered!: () => void;
    const storing = new Promise<void>((resolve) => (entered = resolve));
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    // A bucket whose writes land and then wait: the deletion comes in between.
    const bucket: ObjectStore = {
      destination: 'bucket',
      nameFor: (role, id, ext) => inner.nameFor(role, id, ext),
      put: async (name, body, length, info) => {
        await inner.put(name, body, length, info);
        entered();
        await gate;
      },
      get: (name) => inner.get(name),
      delete: (name) => inner.delete(name),
      list: () => inner.list(),
    };
    const t = await testService({ bucket });
    try {
      const upload = t.api.post('/v1/uploads').field('jobId', 'mid-forward').attach('file', fixture('media/jpeg-orientation-6.jpg')).then((res) => res);
      await storing;
      assert.ok((await filesUnder(storeDir)).length > 0, 'the upload\'s object is in the store');
      assert.equal((await t.api.delete('/v1/jobs/mid-forward')).status, 200);
      release();
      const res = await upload;
      assert.equal(res.status, 410, JSON.stringify(res.body));
      assert.equal(res.body.error.code, 'job_deleted');
      assert.deepEqual(await filesUnder(storeDir), [], 'nothing of it is left in the store');
    } finally {
      release();
      await t.close();
      await removeDir(storeDir);
    }
  });
});
