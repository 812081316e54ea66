/**
 * Object storage as the destination (issue 17): the service, built with real parts, keeps the
 * cleaned files, their reports and thumbnails in an S3-protocol server on loopback through the
 * real AWS SDK v3. At rest the bucket holds only envelopes; every write asks for server-side
 * encryption and carries its retention tag; the sweeper empties the bucket on the job clock.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import request from 'supertest';
import { sweep } from '../src/retention/sweeper.js';
import { BucketStore, parseBucketUrl } from '../src/storage/bucket.js';
import { unseal } from '../src/storage/envelope.js';
import { binaryBody, filesUnder, findPlanted, fixture, testService, testStorage } from './helpers.js';
import { startS3, type S3Server } from './servers.js';

const jpegSignature = Buffer.from([0xff, 0xd8, 0xff]);

describe('s3:// URLs', () => {
  it('take a bucket and a prefix, and refuse what the SDK should be told instead', () => {
    assert.deepEqual(parseBucketUrl(new URL('s3://media-clean/uploads/eu/')), { bucket: 'media-clean', prefix: 'uploads/eu' });
    assert.throws(() => parseBucketUrl(new URL('s3://media-clean')), /prefix that is scrubline's own/, 'never a shared bucket\'s root');
    assert.throws(() => parseBucketUrl(new URL('s3://media-clean/')), /prefix that is scrubline's own/);
    assert.throws(() => parseBucketUrl(new URL('s3://ab/x')), /bucket name/);
    assert.throws(() => parseBucketUrl(new URL('s3://key:secret@media-clean/x')), /credentials/);
    assert.throws(() => parseBucketUrl(new URL('s3://media-clean/a b')), /prefix/);
  });
});

describe('a bucket as the destination', () => {
  let s3: S3Server;
  let bucket: BucketStore;
  let svc: Awaited<ReturnType<typeof testService>>;
  before(async () => {
    s3 = await startS3();
    bucket = new BucketStore({ bucket: s3.bucket, prefix: 'uploads', sse: 'AES256', client: await s3.client() });
    svc = await testService({ bucket });
  });
  after(async () => {
    await svc.close();
    bucket.close();
    await s3.stop();
  });

  it('stores the file, its report and its thumbnail as envelopes under <prefix>/<job>/, asking for SSE and tagging each', async () => {
    const res = await svc.api.post('/v1/uploads').field('jobId', 'job-b1').attach('file', fixture('media/jpeg-gps-exif-xmp-iptc.jpg'), 'Planted Client Name.jpg');
    assert.equal(res.status, 201);
    assert.equal(res.body.upstream.destination, 'bucket');
    const { id } = res.body.files[0] as { id: string };
    await svc.previewsSettled();
    assert.deepEqual(await s3.keys(), [`uploads/job-b1/${id}.jpg`, `uploads/job-b1/${id}.json`, `uploads/job-b1/th_${id}.thumb.jpg`].sort());
    for (const key of await s3.keys()) {
      const atRest = await s3.raw(key);
      assert.ok(atRest.subarray(0, 9).equals(Buffer.from('SCRUBENC1')), `${key} is an envelope`);
      assert.equal(atRest.indexOf(jpegSignature), -1, `${key} holds no JPEG signature`);
      assert.equal(atRest.indexOf(Buffer.from(`"${id}"`)), -1, `${key} holds no readable report`);
      assert.deepEqual(findPlanted(atRest), [], key);
    }
    const puts = s3.requests.filter((r) => r.method === 'PUT');
    assert.equal(puts.length, 3);
    // Reports and envelopes only: the SDK is not told the bytes are a JPEG either.
    for (const put of puts) assert.equal(put.headers['content-type'], 'application/octet-stream', put.key);
    for (const put of puts) {
      assert.equal(put.headers['x-amz-server-side-encryption'], 'AES256', put.key);
      assert.equal(put.headers['x-amz-tagging'], 'scrubline-retention=standard', put.key);
    }

    const record = await svc.api.get(`/v1/files/${id}`);
    assert.equal(record.body.destination, 'bucket');
    assert.equal(record.body.preview, 'ready');
    const content = await binaryBody(svc.api.get(`/v1/files/${id}/content`));
    assert.equal(content.status, 200);
    assert.ok((content.body as Buffer).subarray(0, 3).equals(jpegSignature));
    assert.deepEqual(findPlanted(content.body as Buffer), []);
    assert.ok(unseal(testStorage, `uploads/job-b1/${id}.jpg`, await s3.raw(`uploads/job-b1/${id}.jpg`)).equals(content.body as Buffer));
    const thumbnail = await binaryBody(svc.api.get(`/v1/files/${id}/thumbnail`));
    assert.equal(thumbnail.status, 200);
    assert.ok((thumbnail.body as Buffer).subarray(0, 3).equals(jpegSignature));
  });

  it('holds a video as an envelope too: no ftyp box, no planted value', async () => {
    const res = await svc.api.post('/v1/uploads').field('jobId', 'job-v').attach('file', fixture('media/mp4-location.mp4'));
    assert.equal(res.status, 201);
    const { id } = res.body.files[0] as { id: string };
    await svc.previewsSettled();
    const atRest = await s3.raw(`uploads/job-v/${id}.mp4`);
    assert.equal(atRest.indexOf(Buffer.from('ftyp')), -1);
    assert.deepEqual(findPlanted(atRest), []);
    const content = await binaryBody(svc.api.get(`/v1/files/${id}/content`));
    assert.equal(content.status, 200);
    assert.equal((content.body as Buffer).subarray(4, 8).toString('latin1'), 'ftyp');
    assert.deepEqual(findPlanted(content.body as Buffer), []);
  });

  it('asks for SSE-KMS with the configured key when told to', async () => {
    const kms = new BucketStore({ bucket: s3.bucket, prefix: 'kms', sse: 'aws:kms', kmsKeyId: 'alias/scrubline-test', client: await s3.client() });
    try {
      await kms.put(kms.nameFor('report', 'k1', 'json', 'job-k'), Buffer.from('x'), 1, { retention: 'extended' });
      const put = s3.requests.filter((r) => r.method === 'PUT' && r.key === 'kms/job-k/k1.json');
      assert.equal(put.length, 1);
      assert.equal(put[0]!.headers['x-amz-server-side-encryption'], 'aws:kms');
      assert.equal(put[0]!.headers['x-amz-server-side-encryption-aws-kms-key-id'], 'alias/scrubline-test');
      assert.equal(put[0]!.headers['x-amz-tagging'], 'scrubline-retention=extended');
      await kms.delete('kms/job-k/k1.json');
      await assert.rejects(kms.delete('uploads/job-k/k1.json'), /not one scrubline builds/, 'a key outside its prefix is refused');
    } finally {
      kms.close();
    }
  });

  it('refuses an object altered in the bucket, or another file\'s object put in its place', async () => {
    const a = (await svc.api.post('/v1/uploads').field('jobId', 'job-b2').attach('file', fixture('media/png-text-exif-xmp.png'))).body.files[0].id as string;
    const b = (await svc.api.post('/v1/uploads').field('jobId', 'job-b2').attach('file', fixture('media/png-text-exif-xmp.png'))).body.files[0].id as string;
    const key = `uploads/job-b2/${a}.png`;
    const original = await s3.raw(key);
    const flipped = Buffer.from(original);
    flipped[flipped.length - 40]! ^= 0x01;
    await s3.put(key, flipped);
    const altered = await svc.api.get(`/v1/files/${a}/content`);
    assert.equal(altered.status, 500);
    assert.match(altered.body.error.message, /integrity/);
    await s3.put(key, await s3.raw(`uploads/job-b2/${b}.png`));
    assert.equal((await svc.api.get(`/v1/files/${a}/content`)).status, 500);
    await s3.put(key, original);
    assert.equal((await svc.api.get(`/v1/files/${a}/content`)).status, 200);
  });

  it('empties the bucket on the job clock, and then answers 410 gone', async () => {
    const kept = (await svc.api.post('/v1/uploads').field('jobId', 'job-b3').attach('file', fixture('media/png-text-exif-xmp.png'))).body.files[0].id as string;
    await svc.previewsSettled();
    await svc.api.post('/v1/jobs/job-b3/finished');
    // An object nobody recorded (a crash between the write and the ledger) and one not ours.
    await s3.put('uploads/job-b9/orphan1.png', Buffer.from('left by a crash'));
    await s3.put('elsewhere/keep.txt', Buffer.from('not scrubline\'s'));
    // Later than the test clock's records and than the server's real modification times.
    const report = await sweep({ ledger: svc.ledger, dataDir: svc.dataDir, bucket, at: new Date(Date.now() + 31 * 86_400_000), orphanGraceMs: 0 });
    assert.ok(report.purged.file >= 5 && report.purged.thumbnail >= 3, JSON.stringify(report.purged));
    assert.equal(report.orphans, 1);
    assert.deepEqual(report.skipped, []);
    assert.deepEqual(await s3.keys(), ['elsewhere/keep.txt'], 'nothing of scrubline\'s is left in the bucket');
    const gone = await svc.api.get(`/v1/files/${kept}/content`);
    assert.equal(gone.status, 410);
    assert.equal((await svc.api.get(`/v1/files/${kept}/thumbnail`)).status, 404);
    const deletes = s3.requests.filter((r) => r.method === 'DELETE').map((r) => r.key);
    assert.equal(deletes.length, new Set(deletes).size, 'each object deleted once');
  });

  it('spares an unrecorded object for the 15-minute grace (an upload being recorded), then removes it', async () => {
    // Last: the bucket holds nothing else of scrubline's by now, so these sweeps purge only the orphan.
    await s3.put('uploads/job-b8/young.png', Buffer.from('written a moment ago'));
    // The default grace, against the bucket's own LastModified: 14 minutes on, still an upload
    // that may be recording; 16 minutes on, an orphan.
    const soon = await sweep({ ledger: svc.ledger, dataDir: svc.dataDir, bucket, at: new Date(Date.now() + 14 * 60_000), dryRun: true });
    assert.equal(soon.orphans, 0);
    const later = await sweep({ ledger: svc.ledger, dataDir: svc.dataDir, bucket, at: new Date(Date.now() + 16 * 60_000) });
    assert.equal(later.orphans, 1);
    assert.ok(!(await s3.keys()).includes('uploads/job-b8/young.png'));
  });
});

describe('the bucket away and back (issue 28)', () => {
  let s3: S3Server;
  let bucket: BucketStore;
  let svc: Awaited<ReturnType<typeof testService>>;
  const failed: string[] = [];
  before(async () => {
    s3 = await startS3();
    bucket = new BucketStore({ bucket: s3.bucket, prefix: 'outage', sse: 'AES256', client: await s3.client(), onError: (operation) => failed.push(operation) });
    svc = await testService({ bucket });
  });
  after(async () => {
    await svc.close();
    bucket.close();
    await s3.stop();
  });

  /** /readyz shares one storage check for 2 s: a later probe sees the change. */
  const probe = async (): Promise<request.Response> => {
    await new Promise((resolve) => setTimeout(resolve, 2_100));
    return request(svc.app).get('/readyz');
  };

  it('uploads and reads answer 503 storage_unavailable with Retry-After, /readyz says not ready; both recover when it is back', async () => {
    const before = await svc.api.post('/v1/uploads').attach('file', fixture('media/jpeg-orientation-6.jpg'));
    assert.equal(before.status, 201);
    const { id } = before.body.files[0] as { id: string };
    await svc.previewsSettled();
    const ready = await probe();
    assert.deepEqual([ready.status, ready.body.bucket], [200, { ok: true }]);

    await s3.halt();
    const upload = await svc.api.post('/v1/uploads').attach('file', fixture('media/jpeg-orientation-6.jpg'));
    assert.equal(upload.status, 503, JSON.stringify(upload.body));
    assert.equal(upload.body.error.code, 'storage_unavailable');
    assert.equal(upload.headers['retry-after'], '5');
    const content = await svc.api.get(`/v1/files/${id}/content`);
    assert.deepEqual([content.status, content.body.error?.code], [503, 'storage_unavailable']);
    const notReady = await probe();
    assert.equal(notReady.status, 503);
    assert.deepEqual(notReady.body.bucket, { ok: false });
    assert.equal(notReady.headers['retry-after'], '5');
    assert.ok(failed.includes('put') && failed.includes('get') && failed.includes('list'), failed.join());
    assert.deepEqual(await filesUnder(path.join(svc.dataDir, 'tmp')).catch(() => []), [], 'nothing of the refused upload is left');

    await s3.resume();
    assert.equal((await probe()).status, 200);
    const after = await svc.api.post('/v1/uploads').attach('file', fixture('media/jpeg-orientation-6.jpg'));
    assert.equal(after.status, 201, JSON.stringify(after.body));
  });
});

describe('large objects go to the bucket in parts (issue 29)', () => {
  let s3: S3Server;
  let bucket: BucketStore;
  before(async () => {
    s3 = await startS3();
    bucket = new BucketStore({ bucket: s3.bucket, prefix: 'big', sse: 'AES256', client: await s3.client() });
  });
  after(async () => {
    bucket.close();
    await s3.stop();
  });

  /** `bytes` random bytes, in 1 MiB chunks, failing after `failAfter` bytes when given. */
  function source(bytes: number, failAfter?: number): Readable {
    let sent = 0;
    return new Readable({
      read() {
        if (failAfter !== undefined && sent >= failAfter) return void this.destroy(new Error('the source failed midway'));
        if (sent >= bytes) return void this.push(null);
        const chunk = randomBytes(Math.min(1024 * 1024, bytes - sent));
        sent += chunk.length;
        this.push(chunk);
      },
    });
  }

  it('writes an object larger than several parts as a multipart upload, with SSE and the retention tag, and reads it back whole', async () => {
    const body = randomBytes(21 * 1024 * 1024);
    const name = bucket.nameFor('file', 'bigvideo1', 'mp4', 'job-big');
    s3.requests.length = 0;
    await bucket.put(name, Readable.from([body.subarray(0, 7_000_000), body.subarray(7_000_000)]), body.length, { retention: 'extended' });
    const mine = s3.requests.filter((r) => r.key === name);
    const query = (r: { query: string }): string[] => r.query.split('&').map((p) => p.split('=')[0]!);
    const create = mine.filter((r) => r.method === 'POST' && query(r).includes('uploads'));
    assert.equal(create.length, 1, 'one multipart upload was started');
    assert.equal(create[0]!.headers['x-amz-server-side-encryption'], 'AES256');
    assert.equal(create[0]!.headers['x-amz-tagging'], 'scrubline-retention=extended');
    assert.equal(mine.filter((r) => r.method === 'PUT' && /partNumber=\d+/.test(r.query)).length, 3, '21 MiB in 8 MiB parts');
    assert.equal(mine.filter((r) => r.method === 'PUT' && !query(r).includes('partNumber')).length, 0, 'no single PUT');
    assert.ok(mine.some((r) => r.method === 'POST' && r.query.startsWith('uploadId=')), 'the upload was completed');
    const chunks: Buffer[] = [];
    for await (const chunk of await bucket.get(name)) chunks.push(Buffer.from(chunk));
    assert.ok(Buffer.concat(chunks).equals(body));
  });

  it('aborts a multipart upload whose source fails midway, and leaves no object', async () => {
    const name = bucket.nameFor('file', 'bigvideo2', 'mp4', 'job-big');
    s3.requests.length = 0;
    await assert.rejects(bucket.put(name, source(30 * 1024 * 1024, 18 * 1024 * 1024), 30 * 1024 * 1024, { retention: 'standard' }));
    const mine = s3.requests.filter((r) => r.key === name);
    assert.ok(mine.some((r) => r.method === 'PUT' && /partNumber=1/.test(r.query)), 'parts went up before the failure');
    assert.ok(mine.some((r) => r.method === 'DELETE' && r.query.startsWith('uploadId=')), 'the upload was aborted (AbortMultipartUpload)');
    assert.equal(mine.some((r) => r.method === 'POST' && r.query.startsWith('uploadId=')), false, 'never completed');
    assert.equal((await s3.keys()).includes(name), false);
  });

  it('keeps small objects to one PUT', async () => {
    const name = bucket.nameFor('report', 'small1', 'json', 'job-big');
    s3.requests.length = 0;
    await bucket.put(name, Buffer.from('{}'), 2, { retention: 'standard' });
    assert.deepEqual(s3.requests.filter((r) => r.key === name).map((r) => `${r.method} ${r.query}`), ['PUT x-id=PutObject']);
  });

  it('asks the bucket for stale multipart uploads in the sweep (s3rver cannot list them: counted as none)', async () => {
    s3.requests.length = 0;
    assert.equal(await bucket.abortStaleUploads(new Date(), 0), 0);
    assert.ok(s3.requests.some((r) => r.method === 'GET' && /(^|&)uploads(=|&|$)/.test(r.query) && r.query.includes('prefix=big%2F')), `ListMultipartUploads under the prefix: ${s3.requests.map((r) => r.query).join(' | ')}`);
  });
});
