/**
 * Encryption at rest (issue 17): the envelope format on its own, then the service's stored files,
 * reports and thumbnails, read back through GET /v1/files/:id/content.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { buffer as streamToBuffer } from 'node:stream/consumers';
import { after, before, describe, it } from 'node:test';
import { Keyring, openObject, seal, sealedBytes, sealedFile, sealInto, segmentBytes, TamperedObject, unseal, verifyObject } from '../src/storage/envelope.js';
import { sweep } from '../src/retention/sweeper.js';
import type { CleanFile } from '../src/pipeline.js';
import { StoreSink } from '../src/steps/forward-store.js';
import { LocalStore } from '../src/storage/objects.js';
import { binaryBody, findPlanted, fixture, removeDir, tempDir, testService, testStorage } from './helpers.js';

const keyA = randomBytes(32);
const keyB = randomBytes(32);
const headerBytes = 9 + 8 + 12 + 32 + 16 + 7;

describe('envelope encryption (AES-256-GCM, a data key per object, segments bound to their place)', () => {
  const ring = new Keyring([keyA]);

  it('round-trips any size, across segment boundaries', () => {
    for (const size of [0, 1, segmentBytes - 1, segmentBytes, segmentBytes + 1, 3 * segmentBytes + 17]) {
      const plain = randomBytes(size);
      const object = seal(ring, 'clean/a.bin.enc', plain);
      assert.ok(unseal(ring, 'clean/a.bin.enc', object).equals(plain), `size ${size}`);
      assert.notEqual(seal(ring, 'clean/a.bin.enc', plain).toString('hex'), object.toString('hex'), 'a fresh data key and nonce each time');
    }
  });

  it('refuses an object with any byte flipped, a segment cut off, or segments swapped', () => {
    const plain = randomBytes(2 * segmentBytes + 100);
    const object = seal(ring, 'clean/a.bin.enc', plain);
    for (const at of [0, 9, 20, 40, 70, headerBytes - 1, headerBytes, headerBytes + segmentBytes + 5, object.length - 1]) {
      const bad = Buffer.from(object);
      bad[at]! ^= 0x01;
      assert.throws(() => unseal(ring, 'clean/a.bin.enc', bad), TamperedObject, `byte ${at}`);
    }
    const stride = segmentBytes + 16;
    // Cut at a segment boundary: what is left looks whole but its last segment was not sealed as last.
    assert.throws(() => unseal(ring, 'clean/a.bin.enc', object.subarray(0, headerBytes + stride)), TamperedObject);
    assert.throws(() => unseal(ring, 'clean/a.bin.enc', object.subarray(0, object.length - 1)), TamperedObject);
    const swapped = Buffer.concat([object.subarray(0, headerBytes), object.subarray(headerBytes + stride, headerBytes + 2 * stride), object.subarray(headerBytes, headerBytes + stride), object.subarray(headerBytes + 2 * stride)]);
    assert.throws(() => unseal(ring, 'clean/a.bin.enc', swapped), TamperedObject);
    // One object copied over another's name does not open under that name.
    assert.throws(() => unseal(ring, 'clean/b.bin.enc', object), /stored under another name/);
  });

  it('seals into a buffer of the object\'s size, and refuses one too short to hold it whole', () => {
    const plain = randomBytes(segmentBytes + 5);
    const out = Buffer.alloc(sealedBytes(plain.length));
    assert.equal(sealInto(ring, 'partials/p.part', plain, out), out.length);
    assert.ok(unseal(ring, 'partials/p.part', out).equals(plain));
    assert.throws(() => sealInto(ring, 'partials/p.part', plain, Buffer.alloc(out.length - 1)), RangeError);
  });

  it('keys rotate: an object names its key; older keys still open it; a missing key refuses it', () => {
    const old = seal(new Keyring([keyA]), 'r', Buffer.from('hello'));
    assert.equal(unseal(new Keyring([keyB, keyA]), 'r', old).toString(), 'hello');
    assert.throws(() => unseal(new Keyring([keyB]), 'r', old), /storage key that is not configured/);
  });

  it('files are sealed and opened a segment at a time, from chunks of any size; a changed object is refused before a byte is given out', async () => {
    const dir = await tempDir();
    // The bytes as a store hands them over: in chunks that do not line up with the segments.
    const chunked = async function* (bytes: Buffer, size: number): AsyncGenerator<Buffer> {
      for (let at = 0; at < bytes.length; at += size) yield bytes.subarray(at, at + size);
    };
    try {
      for (const size of [0, 1, segmentBytes, 2 * segmentBytes, 5 * segmentBytes + 3]) {
        const plain = randomBytes(size);
        await writeFile(path.join(dir, 'plain'), plain);
        const sealed = await sealedFile(ring, 'sealed', path.join(dir, 'plain'));
        const object = await streamToBuffer(sealed.body);
        assert.equal(object.length, sealed.length, `the length is known up front (size ${size})`);
        assert.ok(unseal(ring, 'sealed', object).equals(plain), `the buffer reader agrees (size ${size})`);
        for (const chunk of [1000, 65_551, 1 << 20]) {
          assert.equal(await verifyObject(ring, 'sealed', chunked(object, chunk)), plain.length, `size ${size}, chunks of ${chunk}`);
          assert.ok((await streamToBuffer(openObject(ring, 'sealed', chunked(object, chunk)))).equals(plain), `size ${size}, chunks of ${chunk}`);
        }
        // Cut at a segment's end, the object is still refused: the last segment says it is last.
        const cut = object.subarray(0, object.length - (size > segmentBytes ? segmentBytes + 16 : 1));
        await assert.rejects(verifyObject(ring, 'sealed', chunked(cut, 4096)), TamperedObject, `cut, size ${size}`);
        const bad = Buffer.from(object);
        bad[bad.length - 10]! ^= 0x80;
        await assert.rejects(verifyObject(ring, 'sealed', chunked(bad, 4096)), TamperedObject, `altered, size ${size}`);
      }
      await assert.rejects(verifyObject(ring, 'sealed', chunked(Buffer.alloc(0), 1)), TamperedObject, 'an empty object');
    } finally {
      await removeDir(dir);
    }
  });
});

describe('the service stores nothing readable, and serves it back decrypted', () => {
  let svc: Awaited<ReturnType<typeof testService>>;
  before(async () => (svc = await testService()));
  after(() => svc.close());

  it('the cleaned file, its report and its thumbnail are encrypted on disk; /content returns the clean file', async () => {
    const res = await svc.api.post('/v1/uploads').field('jobId', 'job-at-rest').attach('file', fixture('media/jpeg-gps-exif-xmp-iptc.jpg'), 'Planted Client Name.jpg');
    assert.equal(res.status, 201);
    const { id, bytes } = res.body.files[0] as { id: string; bytes: number };
    await svc.previewsSettled();
    for (const folder of ['clean', 'reports', 'thumbnails']) {
      const names = await readdir(path.join(svc.dataDir, folder));
      assert.ok(names.length > 0 && names.every((n) => n.endsWith('.enc')), folder);
      for (const name of names) {
        const atRest = await readFile(path.join(svc.dataDir, folder, name));
        assert.equal(atRest.indexOf(Buffer.from([0xff, 0xd8, 0xff])), -1, `${folder}/${name} holds no JPEG signature`);
        assert.equal(atRest.indexOf(Buffer.from(`"${id}"`)), -1, `${folder}/${name} holds no readable report`);
        assert.deepEqual(findPlanted(atRest), []);
      }
    }
    const content = await binaryBody(svc.api.get(`/v1/files/${id}/content`));
    assert.equal(content.status, 200);
    assert.equal(content.headers['content-type'], 'image/jpeg');
    assert.equal((content.body as Buffer).length, bytes);
    assert.ok((content.body as Buffer).subarray(0, 3).equals(Buffer.from([0xff, 0xd8, 0xff])));
    assert.deepEqual(findPlanted(content.body as Buffer), []);
    const stored = unseal(testStorage, `clean/${id}.jpg.enc`, await readFile(path.join(svc.dataDir, 'clean', `${id}.jpg.enc`)));
    assert.ok(stored.equals(content.body as Buffer));
    const thumb = await binaryBody(svc.api.get(`/v1/files/${id}/thumbnail`));
    assert.equal(thumb.status, 200);
    assert.ok((thumb.body as Buffer).subarray(0, 3).equals(Buffer.from([0xff, 0xd8, 0xff])));
  });

  it('a stored file altered on disk is refused whole, never served in part; a purged one answers 410', async () => {
    const res = await svc.api.post('/v1/uploads').attach('file', fixture('media/png-text-exif-xmp.png'));
    const { id } = res.body.files[0] as { id: string };
    const file = path.join(svc.dataDir, 'clean', `${id}.png.enc`);
    const original = await readFile(file);
    const bad = Buffer.from(original);
    bad[bad.length - 20]! ^= 0x01;
    await writeFile(file, bad);
    const refused = await svc.api.get(`/v1/files/${id}/content`);
    assert.equal(refused.status, 500);
    assert.equal(refused.headers['content-type']?.startsWith('application/json'), true);
    assert.match(refused.body.error.message, /failed its integrity check/);
    await writeFile(file, original);
    assert.equal((await svc.api.get(`/v1/files/${id}/content`)).status, 200);
    // Another file's intact object put in its place is refused too: objects are bound to their names.
    const other = await svc.api.post('/v1/uploads').attach('file', fixture('media/png-text-exif-xmp.png'));
    await writeFile(file, await readFile(path.join(svc.dataDir, 'clean', `${other.body.files[0].id}.png.enc`)));
    assert.equal((await svc.api.get(`/v1/files/${id}/content`)).status, 500);
    await writeFile(file, original);

    await sweep({ ledger: svc.ledger, dataDir: svc.dataDir, at: new Date(Date.parse('2026-06-30T00:00:00.000Z')) });
    const gone = await svc.api.get(`/v1/files/${id}/content`);
    assert.equal(gone.status, 410);
    assert.equal(gone.body.error.code, 'gone');
    assert.equal((await svc.api.get('/v1/files/nope/content')).status, 404);
  });
});

describe('the store sink adopts a sealed copy staged beside verify (issue 30)', () => {
  it('moves it into place when the work dir shares the data dir\'s file system, and seals afresh when it cannot (EXDEV)', async () => {
    const dataDir = await tempDir();
    // tmpfs: a file system of its own, where a rename into the data dir fails with EXDEV.
    const elsewhere = await mkdtemp(path.join('/dev/shm', 'scrubline-test-'));
    try {
      const store = new LocalStore(dataDir);
      const sink = new StoreSink(store, testStorage);
      const clean = Buffer.from('cleaned image bytes '.repeat(4000));
      for (const [where, moved] of [[path.join(dataDir, 'tmp'), true], [elsewhere, false]] as const) {
        await mkdir(where, { recursive: true });
        const id = moved ? 'f_same' : 'f_other';
        const cleanPath = path.join(where, `${id}.jpg`);
        await writeFile(cleanPath, clean);
        const name = store.nameFor('file', id, 'jpg');
        const staged = path.join(where, `${id}.sealed`);
        const sealed = await sealedFile(testStorage, name, cleanPath);
        await writeFile(staged, await streamToBuffer(sealed.body));
        const file = { id, ext: 'jpg', path: cleanPath, staged: Promise.resolve({ name, path: staged }), retention: 'standard' } as unknown as CleanFile;
        await sink.forward([file], { jobId: undefined, retention: 'standard' });
        assert.deepEqual(await streamToBuffer(openObject(testStorage, name, await store.get(name))), clean, `${where}: stored and readable`);
        assert.equal(existsSync(staged), !moved, moved ? 'moved, not copied' : 'left for the request\'s clean-up');
      }
    } finally {
      await removeDir(dataDir);
      await rm(elsewhere, { recursive: true, force: true });
    }
  });
});
