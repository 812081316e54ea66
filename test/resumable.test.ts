/**
 * /v1/resumable, the tus 1.0 endpoint (issue 29), driven by tus-js-client, the protocol's own
 * client, against the service on a real loopback listener: an upload cut off mid-body resumes and
 * comes back cleaned; while it is partial no plaintext of it is on disk; an expired one is swept;
 * a deleted job takes none; the limits answer before a byte is stored.
 */
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as tus from 'tus-js-client';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { ffmpegTools, fixture, filesUnder, findPlanted, removeDir, tempDir, testToken, testService } from './helpers.js';
import { sweep } from '../src/retention/sweeper.js';
import { OffsetConflict } from '../src/storage/ledger.js';
import { pieceBytes } from '../src/storage/partials.js';

type Service = Awaited<ReturnType<typeof testService>>;

const run = promisify(execFile);

interface Listening {
  url: string;
  sockets: Set<Socket>;
  close(): Promise<void>;
}

async function listen(app: Service['app']): Promise<Listening> {
  const server: Server = createServer(app);
  const sockets = new Set<Socket>();
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    sockets,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

const auth = { Authorization: `Bearer ${testToken}` };

interface Finished {
  status: number;
  body: Record<string, unknown>;
}

/** Runs a tus upload to its end; resolves to the finishing response, rejects with the client's error. */
function finish(upload: tus.Upload): Promise<Finished> {
  return new Promise((resolve, reject) => {
    upload.options.onSuccess = ({ lastResponse }) => resolve({ status: lastResponse.getStatus(), body: JSON.parse(lastResponse.getBody() || '{}') as Record<string, unknown> });
    upload.options.onError = reject;
    upload.start();
  });
}

function tusUpload(url: string, file: Buffer, options: Partial<tus.UploadOptions> = {}): tus.Upload {
  return new tus.Upload(file, {
    endpoint: `${url}/v1/resumable`,
    headers: auth,
    chunkSize: 2048,
    retryDelays: null,
    metadata: { filename: 'holiday-at-home.mov', filetype: 'video/quicktime' },
    ...options,
  });
}

/** Plain tus requests, for what the client library does not expose. */
async function tusRequest(url: string, method: string, headers: Record<string, string> = {}, body?: Buffer): Promise<{ status: number; headers: Headers; text: string }> {
  const res = await fetch(url, { method, headers: { ...auth, 'Tus-Resumable': '1.0.0', ...headers }, body: body === undefined ? undefined : new Uint8Array(body) });
  return { status: res.status, headers: res.headers, text: await res.text() };
}

/** What is left of uploads in progress in the data dir: pieces, and anything in tmp/. */
async function leftovers(dataDir: string, only: Array<'partials' | 'tmp'> = ['partials', 'tmp']): Promise<string[]> {
  return (await filesUnder(dataDir)).map((f) => path.relative(dataDir, f)).filter((f) => only.some((dir) => f.startsWith(`${dir}${path.sep}`)));
}

/** Every byte under the data dir (ledger, pieces, tmp): what a disk image would show. */
async function dataDirBytes(dataDir: string): Promise<Buffer> {
  return Buffer.concat(await Promise.all((await filesUnder(dataDir)).map((f) => readFile(f))));
}

const metadata = (fields: Record<string, string>): string =>
  Object.entries(fields)
    .map(([k, v]) => `${k} ${Buffer.from(v).toString('base64')}`)
    .join(',');

describe('resumable uploads (tus 1.0 at /v1/resumable)', () => {
  let svc: Service;
  let server: Listening;
  let video: Buffer;
  before(async () => {
    svc = await testService();
    server = await listen(svc.app);
    video = await readFile(fixture('media/mov-location.mov'));
  });
  after(async () => {
    await server.close();
    await svc.close();
  });

  it('resumes an upload cut off mid-body, holds no plaintext meanwhile, and answers with the cleaned file', async () => {
    assert.ok(findPlanted(video).length > 0, 'the fixture carries planted values');
    const upload = tusUpload(server.url, video, { metadata: { jobId: 'job-resume', retention: 'extended', filename: 'holiday-at-home.mov' } });
    // The connection is cut (server side) once 40 % of the file is out.
    let cut = false;
    upload.options.onProgress = (sent) => {
      if (!cut && sent > video.length * 0.4) {
        cut = true;
        for (const socket of server.sockets) socket.destroy();
      }
    };
    await assert.rejects(finish(upload));
    assert.ok(upload.url, 'the upload was created');

    const head = await tusRequest(upload.url, 'HEAD');
    assert.equal(head.status, 200);
    const offset = Number(head.headers.get('upload-offset'));
    assert.ok(offset > 0 && offset < video.length, `partial offset ${offset}`);
    assert.equal(head.headers.get('upload-metadata'), null, 'the metadata is not echoed');

    // While partial: pieces exist, sealed; no plaintext of the video anywhere in the data dir.
    const pieces = await leftovers(svc.dataDir, ['partials']);
    assert.ok(pieces.length > 0, 'pieces are stored');
    const disk = await dataDirBytes(svc.dataDir);
    assert.equal(disk.includes(Buffer.from('ftyp')), false, 'no ftyp box on disk');
    assert.deepEqual(findPlanted(disk), [], 'no planted value on disk');
    assert.equal(disk.includes(Buffer.from('holiday-at-home')), false, 'the client file name is not kept');

    // Resume: the client asks for the offset and sends the rest.
    upload.options.onProgress = null;
    const done = await finish(upload);
    assert.equal(done.status, 201);
    const files = done.body.files as Array<{ id: string; mime: string; bytes: number; removed: Record<string, unknown>; retention: string }>;
    assert.equal(files.length, 1);
    assert.equal(files[0]!.retention, 'extended');
    assert.ok(Object.keys(files[0]!.removed).length > 0, 'the report names what was removed');
    assert.deepEqual(done.body.upstream, { status: 201, destination: 'local' });

    const content = await svc.api.get(`/v1/files/${files[0]!.id}/content`).buffer(true).parse((res, cb) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => cb(null, Buffer.concat(chunks)));
    });
    assert.equal(content.status, 200);
    assert.deepEqual(findPlanted(content.body as Buffer), []);
    assert.equal((await svc.api.get(`/v1/files/${files[0]!.id}`)).body.jobId, 'job-resume');

    // The pieces and the temp copy are gone; the upload is over.
    assert.deepEqual(await leftovers(svc.dataDir), []);
    assert.equal((await tusRequest(upload.url, 'HEAD')).status, 404);
  });

  it('assembles a file of megabytes byte for byte: it comes back cleaned as the same upload through POST /v1/uploads does', async () => {
    // Several of the assembly's 1 MiB writes, each from one buffer filled again after it.
    const dir = await tempDir();
    try {
      const file = path.join(dir, 'big.mp4');
      const { ffmpeg } = await ffmpegTools();
      await run(ffmpeg.path, ['-v', 'error', '-f', 'lavfi', '-i', 'testsrc2=size=640x360:rate=25', '-t', '8', '-c:v', 'mpeg4', '-q:v', '1', file]);
      const mp4 = await readFile(file);
      assert.ok(mp4.length > 3 * 1024 * 1024, `the video is ${mp4.length} bytes`);
      const content = async (id: string): Promise<Buffer> =>
        (await svc.api.get(`/v1/files/${id}/content`).buffer(true).parse((res, cb) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => cb(null, Buffer.concat(chunks)));
        })).body as Buffer;
      const posted = await svc.api.post('/v1/uploads').attach('file', mp4, { filename: 'big.mp4' });
      assert.equal(posted.status, 201, JSON.stringify(posted.body));
      const done = await finish(tusUpload(server.url, mp4, { chunkSize: 5 * 1024 * 1024, metadata: { filetype: 'video/mp4' } }));
      assert.equal(done.status, 201, JSON.stringify(done.body));
      const [viaTus] = done.body.files as Array<{ id: string }>;
      assert.ok((await content(viaTus!.id)).equals(await content(posted.body.files[0].id)), 'the same cleaned bytes both ways');
    } finally {
      await removeDir(dir);
    }
  });

  it('frees what each piece leaves while it is young, and what the PATCHes left once the last byte is in (with --expose-gc)', async () => {
    // V8's collector is replaced by a recorder for this upload alone (gc.ts looks it up per call).
    const dir = await tempDir();
    const holder = globalThis as { gc?: unknown };
    const exposed = holder.gc;
    const calls: string[] = [];
    try {
      const file = path.join(dir, 'pieces.mp4');
      const { ffmpeg } = await ffmpegTools();
      await run(ffmpeg.path, ['-v', 'error', '-f', 'lavfi', '-i', 'testsrc2=size=640x360:rate=25', '-t', '5', '-c:v', 'mpeg4', '-q:v', '1', file]);
      const mp4 = await readFile(file);
      const pieces = Math.ceil(mp4.length / pieceBytes);
      assert.ok(pieces >= 3, `the video is ${mp4.length} bytes`);
      holder.gc = (options?: { type?: string }) => void calls.push(options?.type ?? 'major');
      const done = await finish(tusUpload(server.url, mp4, { chunkSize: 2 * pieceBytes + 12345, metadata: { filetype: 'video/mp4' } }));
      assert.equal(done.status, 201, JSON.stringify(done.body));
      // Each piece stored, then a full collection when the last byte is in, then each piece
      // assembled: a young collection after each. (The service may collect again once it has
      // answered; nothing is asserted about that.)
      const full = calls.indexOf('major');
      assert.ok(full >= pieces, `a young collection after each stored piece, then a full one: ${calls.join(' ')}`);
      assert.ok(calls.slice(0, full).every((type) => type === 'minor'), calls.join(' '));
      assert.ok(calls.slice(full + 1).filter((type) => type === 'minor').length >= pieces, `a young collection after each assembled piece: ${calls.join(' ')}`);
    } finally {
      holder.gc = exposed;
      await removeDir(dir);
    }
  });

  it('refuses a file the pipeline refuses with the same JSON as POST /v1/uploads, and keeps nothing of it', async () => {
    const text = Buffer.from('not a picture at all, just some words '.repeat(200));
    const done = await finish(tusUpload(server.url, text)).then(
      () => assert.fail('a text file was accepted'),
      (err: tus.DetailedError) => err,
    );
    const res = done.originalResponse!;
    assert.equal(res.getStatus(), 415);
    const plain = await svc.api.post('/v1/uploads').attach('file', text, 'words.txt');
    assert.equal(plain.status, 415);
    assert.equal((JSON.parse(res.getBody()) as { error: { code: string } }).error.code, plain.body.error.code);
    assert.deepEqual(await leftovers(svc.dataDir), []);
  });

  it('takes a whole small file in its creation request (creation-with-upload) and answers with the cleaned file', async () => {
    const photo = await readFile(fixture('media/jpeg-gps-exif-xmp-iptc.jpg'));
    const created = await tusRequest(`${server.url}/v1/resumable`, 'POST', { 'Upload-Length': String(photo.length), 'Content-Type': 'application/offset+octet-stream' }, photo);
    assert.equal(created.status, 201, created.text);
    const body = JSON.parse(created.text) as { files: Array<{ mime: string; removed: Record<string, number> }> };
    assert.equal(body.files[0]!.mime, 'image/jpeg');
    assert.ok(body.files[0]!.removed.gps, 'GPS was removed');
    assert.deepEqual(await leftovers(svc.dataDir), []);
  });

  it('answers the library\'s refusals in JSON: 404 unknown, 409 wrong offset, 413 too large, 401 without the token', async () => {
    const unknown = await tusRequest(`${server.url}/v1/resumable/nosuchupload000`, 'HEAD');
    assert.equal(unknown.status, 404);
    const created = await tusRequest(`${server.url}/v1/resumable`, 'POST', { 'Upload-Length': String(video.length) });
    assert.equal(created.status, 201);
    const location = new URL(created.headers.get('location')!, server.url).href;
    const wrong = await tusRequest(location, 'PATCH', { 'Upload-Offset': '100', 'Content-Type': 'application/offset+octet-stream' }, video.subarray(0, 10));
    assert.equal(wrong.status, 409);
    assert.equal((JSON.parse(wrong.text) as { error: { code: string } }).error.code, 'offset_mismatch');
    assert.match(wrong.headers.get('content-type') ?? '', /^application\/json/);
    assert.equal((await tusRequest(location, 'DELETE')).status, 204);
    assert.equal((await tusRequest(location, 'HEAD')).status, 404);
    const huge = await tusRequest(`${server.url}/v1/resumable`, 'POST', { 'Upload-Length': String(3 * 1024 ** 3) });
    assert.equal(huge.status, 413);
    const anonymous = await fetch(`${server.url}/v1/resumable`, { method: 'POST', headers: { 'Tus-Resumable': '1.0.0', 'Upload-Length': '10' } });
    assert.equal(anonymous.status, 401);
    const badJob = await tusRequest(`${server.url}/v1/resumable`, 'POST', { 'Upload-Length': '10', 'Upload-Metadata': metadata({ jobId: '../x' }) });
    assert.equal(badJob.status, 400);
    assert.equal((JSON.parse(badJob.text) as { error: { code: string } }).error.code, 'bad_request');
  });

  it('removes a job\'s partial uploads when the job is deleted, and refuses new ones with 410', async () => {
    const upload = tusUpload(server.url, video, { metadata: { jobId: 'job-gone' } });
    upload.options.onChunkComplete = () => void upload.abort();
    await new Promise<void>((resolve, reject) => {
      upload.options.onChunkComplete = () => void upload.abort().then(resolve, reject);
      upload.options.onError = reject;
      upload.start();
    });
    assert.equal((await tusRequest(upload.url!, 'HEAD')).status, 200);
    const deleted = await svc.api.delete('/v1/jobs/job-gone');
    assert.equal(deleted.status, 200);
    assert.equal(deleted.body.partialUploads, 1);
    assert.equal((await tusRequest(upload.url!, 'HEAD')).status, 404);
    assert.deepEqual(await leftovers(svc.dataDir), []);
    const again = await tusRequest(`${server.url}/v1/resumable`, 'POST', { 'Upload-Length': '10', 'Upload-Metadata': metadata({ jobId: 'job-gone' }) });
    assert.equal(again.status, 410);
    assert.equal((JSON.parse(again.text) as { error: { code: string } }).error.code, 'job_deleted');
  });

  it('expires a partial upload after its time: 410 to the client, and the sweeper removes its pieces', async () => {
    const created = await tusRequest(`${server.url}/v1/resumable`, 'POST', { 'Upload-Length': String(video.length) });
    const location = new URL(created.headers.get('location')!, server.url).href;
    const patched = await tusRequest(location, 'PATCH', { 'Upload-Offset': '0', 'Content-Type': 'application/offset+octet-stream' }, video.subarray(0, 4096));
    assert.equal(patched.status, 204);
    assert.equal(patched.headers.get('upload-offset'), '4096');
    // tus dates it on the system clock: an hour from now (the service's clock is a test's).
    const expires = new Date(patched.headers.get('upload-expires')!).getTime();
    assert.ok(Math.abs(expires - (Date.now() + 60 * 60_000)) < 60_000, 'a PATCH says when the upload expires');
    const started = svc.clock.now;
    try {
      svc.clock.now = new Date(started.getTime() + 60 * 60_000 + 1000);
      assert.equal((await tusRequest(location, 'HEAD')).status, 410);
      const resumed = await tusRequest(location, 'PATCH', { 'Upload-Offset': '4096', 'Content-Type': 'application/offset+octet-stream' }, video.subarray(4096));
      assert.equal(resumed.status, 410);
      const report = await sweep({ ledger: svc.ledger, dataDir: svc.dataDir, at: svc.clock.now });
      assert.equal(report.partialUploads, 1);
      assert.deepEqual(await leftovers(svc.dataDir), []);
      assert.equal((await tusRequest(location, 'HEAD')).status, 404);
    } finally {
      svc.clock.now = started;
    }
  });
});

describe('limits of resumable uploads and of temp space', () => {
  it('refuses an upload beyond the open-upload count or the declared-bytes total with 503 and Retry-After, before storing a byte', async () => {
    const svc = await testService({ app: { resumableMaxOpen: 1, resumableMaxBytes: 50_000 } });
    const server = await listen(svc.app);
    try {
      const first = await tusRequest(`${server.url}/v1/resumable`, 'POST', { 'Upload-Length': '20000' });
      assert.equal(first.status, 201);
      const second = await tusRequest(`${server.url}/v1/resumable`, 'POST', { 'Upload-Length': '20000' });
      assert.equal(second.status, 503);
      assert.equal(second.headers.get('retry-after'), '5');
      assert.equal((JSON.parse(second.text) as { error: { code: string } }).error.code, 'overloaded');
      // The first one ended: room again, but not for more bytes than the total allows.
      assert.equal((await tusRequest(new URL(first.headers.get('location')!, server.url).href, 'DELETE')).status, 204);
      assert.equal((await tusRequest(`${server.url}/v1/resumable`, 'POST', { 'Upload-Length': '60000' })).status, 503);
      assert.equal((await tusRequest(`${server.url}/v1/resumable`, 'POST', { 'Upload-Length': '40000' })).status, 201);
      const metrics = await svc.api.get('/metrics');
      assert.match(metrics.text, /^scrubline_resumable_uploads_open 1$/m);
      assert.match(metrics.text, /^scrubline_resumable_declared_bytes 40000$/m);
    } finally {
      await server.close();
      await svc.close();
    }
  });

  it('answers 507 before reading a body when the temp dir cannot hold the upload twice over, on both doors, and exports the free space', async () => {
    const svc = await testService({ app: { tempHeadroomBytes: Number.MAX_SAFE_INTEGER } });
    const server = await listen(svc.app);
    try {
      const plain = await svc.api.post('/v1/uploads').attach('file', await readFile(fixture('media/jpeg-gps-exif-xmp-iptc.jpg')), 'a.jpg');
      assert.equal(plain.status, 507);
      assert.equal(plain.body.error.code, 'insufficient_storage');
      const resumable = await tusRequest(`${server.url}/v1/resumable`, 'POST', { 'Upload-Length': '20000' });
      assert.equal(resumable.status, 507);
      assert.equal((JSON.parse(resumable.text) as { error: { code: string } }).error.code, 'insufficient_storage');
      assert.deepEqual(await leftovers(svc.dataDir), []);
      const metrics = await svc.api.get('/metrics');
      const free = Number(/^scrubline_temp_free_bytes (\d+)$/m.exec(metrics.text)?.[1]);
      assert.ok(free > 0, 'free temp space is exported');
      assert.match(metrics.text, /^scrubline_temp_reserved_bytes 0$/m);
    } finally {
      await server.close();
      await svc.close();
    }
  });
});

describe('the ledger keeps one order of pieces, however many replicas append', () => {
  it('records a piece only at the offset the upload stands at, and never past its length', async () => {
    const svc = await testService();
    try {
      const at = '2026-06-01T08:00:00.000Z';
      await svc.ledger.openPartial({ id: 'raceupload000001', jobId: undefined, retention: 'standard', size: 100, createdAt: at, expiresAt: '2026-06-01T09:00:00.000Z' });
      const piece = (start: number, length: number) => ({ start, length, name: `partials/raceupload000001_${start}.part.enc`, destination: 'local' as const });
      await svc.ledger.appendPiece('raceupload000001', piece(0, 40));
      // A second request that also read offset 0 (on another replica) loses: nothing recorded.
      await assert.rejects(svc.ledger.appendPiece('raceupload000001', piece(0, 40)), OffsetConflict);
      await assert.rejects(svc.ledger.appendPiece('raceupload000001', piece(40, 61)), OffsetConflict, 'past the declared length');
      await svc.ledger.appendPiece('raceupload000001', piece(40, 60));
      assert.deepEqual((await svc.ledger.piecesOf('raceupload000001')).map((p) => [p.start, p.length]), [[0, 40], [40, 60]]);
      assert.equal((await svc.ledger.partial('raceupload000001'))?.received, 100);
    } finally {
      await svc.close();
    }
  });
});
