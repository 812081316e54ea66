/**
 * Two replicas that agree (issue 17): two scrubline processes, each with its own data dir, on one
 * PostgreSQL ledger (a throwaway cluster) and one bucket (an S3-protocol server on loopback).
 * Upload through A, finish the job through B, read the file and its thumbnail through B, then
 * sweep on both at once with an injected clock (`scrubline sweep --at`): each artefact is purged
 * exactly once, and nothing is left in the bucket.
 */
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { readFile } from 'node:fs/promises';
import * as tus from 'tus-js-client';
import { findPlanted, fixture, removeDir, tempDir } from './helpers.js';
import { postgresMissing, startPostgres, startS3, type Postgres, type S3Server } from './servers.js';
import { service, stop } from './threat-helpers.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const cli = path.join(root, 'bin', 'scrubline.js');
const token = randomBytes(24).toString('hex');

interface Replica {
  name: string;
  url: string;
  env: NodeJS.ProcessEnv;
  dataDir: string;
  process: ChildProcess;
  api(method: string, route: string, body?: FormData | Blob): Promise<Response>;
}

/** Starts `scrubline serve` and resolves once it says where it listens. */
async function startReplica(name: string, shared: Record<string, string>): Promise<Replica> {
  const dataDir = await tempDir();
  const env = { ...process.env, ...shared, SCRUBLINE_DATA_DIR: dataDir, SCRUBLINE_PORT: '0', SCRUBLINE_HOST: '127.0.0.1', SCRUBLINE_SWEEP_INTERVAL_MS: '0', SCRUBLINE_SHUTDOWN_DELAY_MS: '0' };
  const child = spawn(process.execPath, [cli, 'serve'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    let err = '';
    child.stderr!.on('data', (chunk: Buffer) => (err += chunk.toString()));
    child.stdout!.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      const line = out.split('\n').find((l) => l.includes('"scrubline listening"'));
      if (line) resolve((JSON.parse(line) as { url: string }).url);
    });
    child.once('exit', (code) => reject(new Error(`replica ${name} exited with ${code}: ${out.slice(-2000)} ${err.slice(-2000)}`)));
  });
  return {
    name,
    url,
    env,
    dataDir,
    process: child,
    api: (method, route, body) => fetch(`${url}${route}`, { method, body, headers: { authorization: `Bearer ${token}` } }),
  };
}

async function stopReplica(replica: Replica): Promise<void> {
  if (replica.process.exitCode === null) {
    const exited = new Promise((resolve) => replica.process.once('exit', resolve));
    replica.process.kill('SIGTERM');
    await exited;
  }
  await removeDir(replica.dataDir);
}

const skip = postgresMissing() ?? false;

describe('two replicas on one PostgreSQL ledger and one bucket', { skip }, () => {
  let postgres: Postgres;
  let s3: S3Server;
  let a: Replica;
  let b: Replica;
  before(async () => {
    postgres = await startPostgres();
    s3 = await startS3();
    const shared = {
      ...s3.env,
      SCRUBLINE_DATABASE_URL: await postgres.database('replicas'),
      SCRUBLINE_UPSTREAM_URL: `s3://${s3.bucket}/replicas`,
      SCRUBLINE_API_TOKEN: token,
      // Replicas share the keys: what one stores, another reads; fingerprints agree.
      SCRUBLINE_STORAGE_KEY: randomBytes(32).toString('hex'),
      SCRUBLINE_FINGERPRINT_KEY: randomBytes(32).toString('hex'),
      SCRUBLINE_LOG_LEVEL: 'info',
    };
    [a, b] = await Promise.all([startReplica('A', shared), startReplica('B', shared)]);
  });
  after(async () => {
    await Promise.all([a, b].filter(Boolean).map(stopReplica));
    await s3?.stop();
    await postgres?.stop();
  });

  /** Uploads a fixture through a replica; resolves to the file's id. */
  async function upload(replica: Replica, jobId: string, name: string): Promise<string> {
    const form = new FormData();
    form.append('jobId', jobId);
    form.append('file', new Blob([await readFile(fixture(name))]), path.basename(name));
    const res = await replica.api('POST', '/v1/uploads', form);
    assert.equal(res.status, 201, await res.clone().text());
    return ((await res.json()) as { files: Array<{ id: string }> }).files[0]!.id;
  }

  it('resumes a tus upload through the other replica: its pieces wait in the bucket, sealed, and go once it is cleaned', async () => {
    const video = await readFile(fixture('media/mov-location.mov'));
    const options = { headers: { Authorization: `Bearer ${token}` }, chunkSize: 4096, retryDelays: null, metadata: { jobId: 'job-tus' } };
    const first = new tus.Upload(video, { ...options, endpoint: `${a.url}/v1/resumable` });
    let chunks = 0;
    await new Promise<void>((resolve, reject) => {
      first.options.onChunkComplete = () => void (++chunks === 2 && first.abort().then(resolve, reject));
      first.options.onError = reject;
      first.start();
    });
    const pieces = (await s3.keys()).filter((k) => k.startsWith('replicas/_partials/'));
    assert.equal(pieces.length, 2, 'two pieces in the bucket');
    for (const key of pieces) {
      const atRest = await s3.raw(key);
      assert.ok(atRest.subarray(0, 9).equals(Buffer.from('SCRUBENC1')), `${key} is an envelope`);
      assert.equal(atRest.includes(Buffer.from('ftyp')), false);
      assert.deepEqual(findPlanted(atRest), []);
    }
    // The same upload, resumed through B: B finds its offset in the shared ledger.
    const uploadPath = new URL(first.url!).pathname;
    const resumed = new tus.Upload(video, { ...options, uploadUrl: `${b.url}${uploadPath}` });
    const answer = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      resumed.options.onSuccess = ({ lastResponse }) => resolve({ status: lastResponse.getStatus(), body: lastResponse.getBody() });
      resumed.options.onError = reject;
      resumed.start();
    });
    assert.equal(answer.status, 201, answer.body);
    const { id } = (JSON.parse(answer.body) as { files: Array<{ id: string }> }).files[0]!;
    const content = await a.api('GET', `/v1/files/${id}/content`);
    assert.equal(content.status, 200);
    assert.deepEqual(findPlanted(Buffer.from(await content.arrayBuffer())), []);
    assert.deepEqual((await s3.keys()).filter((k) => k.startsWith('replicas/_partials/')), [], 'the pieces are gone');
    // Leave the bucket as found: once its preview is made, the job goes.
    for (let i = 0; i < 100 && ((await (await b.api('GET', `/v1/files/${id}`)).json()) as { preview: string }).preview === 'pending'; i++) await new Promise((r) => setTimeout(r, 100));
    assert.equal((await b.api('DELETE', '/v1/jobs/job-tus')).status, 200);
  });

  it('a replica on the shared ledger with generated keys and no bucket says so at start, naming the variables', async () => {
    const lone = await service({ SCRUBLINE_DATABASE_URL: await postgres.database('warnings') });
    try {
      assert.match(lone.logs.text, /"unset":\["SCRUBLINE_STORAGE_KEY","SCRUBLINE_FINGERPRINT_KEY"\].*keys generated into this data dir/);
      assert.match(lone.logs.text, /thumbnails \(and files, without an upstream\) stay in this replica's data dir/);
    } finally {
      await stop(lone);
    }
  });

  it('answer the crash, fingerprint and deletion routes alike, whichever replica took the upload', async () => {
    const id = await upload(b, 'job-x', 'media/png-text-exif-xmp.png');
    const crash = await a.api('POST', '/v1/crashes', new Blob([JSON.stringify({ fileId: id, error: { message: 'render failed' } })], { type: 'application/json' }));
    assert.equal(crash.status, 201, await crash.clone().text());
    const { id: crashId, fingerprintId } = (await crash.json()) as { id: string; fingerprintId: string };
    for (const replica of [a, b]) {
      assert.equal((await replica.api('GET', `/v1/crashes/${crashId}`)).status, 200, replica.name);
      assert.equal((await replica.api('GET', `/v1/fingerprints/${fingerprintId}`)).status, 200, replica.name);
    }
    // Wait for B's preview, so the deletion has a thumbnail in the bucket to take too.
    for (let tries = 0; tries < 200 && ((await (await a.api('GET', `/v1/files/${id}`)).json()) as { preview: string }).preview !== 'ready'; tries++) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    const deleted = (await (await a.api('DELETE', '/v1/jobs/job-x')).json()) as { purged: Record<string, number> };
    assert.deepEqual(deleted.purged, { file: 1, thumbnail: 1, fingerprint: 1, crash: 1 });
    assert.deepEqual((await s3.keys()).filter((k) => k.includes('/job-x/')), [], 'the job\'s objects are gone from the bucket');
    for (const replica of [a, b]) {
      assert.equal((await replica.api('GET', `/v1/crashes/${crashId}`)).status, 404, replica.name);
      assert.equal((await replica.api('GET', `/v1/files/${id}/content`)).status, 410, replica.name);
      const again = new FormData();
      again.append('jobId', 'job-x');
      again.append('file', new Blob([await readFile(fixture('media/png-text-exif-xmp.png'))]), 'again.png');
      assert.equal((await replica.api('POST', '/v1/uploads', again)).status, 410, `${replica.name} refuses the deleted job`);
    }
  });

  it('agree on every file, its thumbnail and its clock, and purge each artefact exactly once', async () => {
    // Upload through A.
    const ids: string[] = [];
    for (const name of ['media/jpeg-gps-exif-xmp-iptc.jpg', 'media/png-text-exif-xmp.png']) ids.push(await upload(a, 'job-r', name));

    // B knows the files at once; their previews are made by A, after its answers.
    for (const id of ids) {
      let record: { preview: string; destination: string; jobFinishedAt: string | null } | undefined;
      for (let tries = 0; tries < 200; tries++) {
        record = (await (await b.api('GET', `/v1/files/${id}`)).json()) as typeof record;
        if (record!.preview === 'ready') break;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      assert.equal(record!.preview, 'ready', `B sees A's preview of ${id}`);
      assert.equal(record!.destination, 'bucket');
      assert.equal(record!.jobFinishedAt, null);
    }

    // The job finishes through both at once: one first report, one finish time, on both.
    const [onA, onB] = (await Promise.all([a.api('POST', '/v1/jobs/job-r/finished'), b.api('POST', '/v1/jobs/job-r/finished')].map(async (r) => (await r).json()))) as Array<{
      firstReport: boolean;
      finishedAt: string;
      artefacts: number;
    }>;
    assert.equal([onA!.firstReport, onB!.firstReport].filter(Boolean).length, 1, 'the first report wins');
    assert.equal(onA!.finishedAt, onB!.finishedAt);
    assert.equal(onA!.firstReport ? onA!.artefacts : onB!.artefacts, 4, 'two files and two thumbnails re-dated');

    // Read through B: the record, the file and the thumbnail A stored.
    for (const id of ids) {
      const record = (await (await b.api('GET', `/v1/files/${id}`)).json()) as { jobFinishedAt: string; expiresAt: string };
      assert.equal(record.jobFinishedAt, onA!.finishedAt);
      assert.equal(Date.parse(record.expiresAt) - Date.parse(record.jobFinishedAt), 24 * 3_600_000);
      const content = await b.api('GET', `/v1/files/${id}/content`);
      assert.equal(content.status, 200);
      assert.deepEqual(findPlanted(Buffer.from(await content.arrayBuffer())), []);
      const thumbnail = await b.api('GET', `/v1/files/${id}/thumbnail`);
      assert.equal(thumbnail.status, 200);
      assert.equal(thumbnail.headers.get('content-type'), 'image/jpeg');
    }
    const keys = await s3.keys();
    assert.deepEqual(keys.filter((k) => !k.includes('/job-r/')), []);
    assert.equal(keys.length, 6, 'two files, two reports, two thumbnails');

    // A sweeper killed (SIGKILL) after deleting two objects' artefacts: its transaction dies with
    // its connection, so every row is still there for the next sweepers to finish.
    const at = new Date(Date.now() + 31 * 86_400_000).toISOString();
    const killed = spawn(
      process.execPath,
      [
        '--import', 'tsx', '--input-type=module', '-e',
        `import { loadConfig } from ${JSON.stringify(path.join(root, 'src/config.ts'))};
         import { openStorage } from ${JSON.stringify(path.join(root, 'src/storage/open.ts'))};
         import { sweep } from ${JSON.stringify(path.join(root, 'src/retention/sweeper.ts'))};
         const config = loadConfig();
         const storage = await openStorage(config);
         let n = 0;
         await sweep({ ledger: storage.ledger, bucket: storage.bucket, dataDir: config.dataDir, at: new Date(${JSON.stringify(at)}),
           onDeleted: () => { if (++n === 2) process.kill(process.pid, 'SIGKILL'); } });`,
      ],
      { env: a.env, cwd: root, stdio: 'ignore' },
    );
    assert.equal(await new Promise((resolve) => killed.on('exit', (_code, signal) => resolve(signal))), 'SIGKILL');
    const afterKill = (await (await b.api('GET', `/v1/files/${ids[0]}`)).json()) as { purgedAt: string | null };
    assert.equal(afterKill.purgedAt, null, 'the killed sweep marked nothing');
    assert.ok((await s3.keys()).length < keys.length, 'the kill landed after some deletes');

    // Sweep on both at once: files, thumbnails and fingerprint records are all due.
    // Each replica's sweep in a process of its own, 31 days on (the CLI purges as of now only).
    const sweepOn = (replica: Replica) =>
      promisify(execFile)(
        process.execPath,
        [
          '--import', 'tsx', '--input-type=module', '-e',
          `import { loadConfig } from ${JSON.stringify(path.join(root, 'src/config.ts'))};
           import { openStorage } from ${JSON.stringify(path.join(root, 'src/storage/open.ts'))};
           import { sweep } from ${JSON.stringify(path.join(root, 'src/retention/sweeper.ts'))};
           const storage = await openStorage(loadConfig());
           const config = loadConfig();
           console.log(JSON.stringify(await sweep({ ledger: storage.ledger, bucket: storage.bucket, dataDir: config.dataDir, at: new Date(${JSON.stringify(at)}) })));
           await storage.close();`,
        ],
        { env: replica.env, cwd: root },
      );
    const reports = (await Promise.all([sweepOn(a), sweepOn(b)])).map((r) => JSON.parse(r.stdout) as { ids: string[]; skipped: string[] });
    const purged = reports.flatMap((r) => r.ids);
    assert.equal(purged.length, new Set(purged).size, 'no artefact purged twice');
    for (const id of [...ids, ...ids.map((id) => `th_${id}`)]) assert.ok(purged.includes(id), id);
    assert.equal(purged.length, 6, 'two files, two thumbnails and two fingerprint records');
    assert.deepEqual(reports.flatMap((r) => r.skipped), []);
    assert.deepEqual(await s3.keys(), [], 'nothing is left in the bucket');
    const deletes = s3.requests.filter((r) => r.method === 'DELETE' && r.key.includes('/job-r/')).map((r) => r.key);
    assert.deepEqual(new Set(deletes), new Set(keys));

    for (const replica of [a, b]) {
      const gone = await replica.api('GET', `/v1/files/${ids[0]}/content`);
      assert.equal(gone.status, 410, replica.name);
    }
  });
});
