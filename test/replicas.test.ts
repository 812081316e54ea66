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
import { findPlanted, fixture, removeDir, tempDir } from './helpers.js';
import { postgresMissing, startPostgres, startS3, type Postgres, type S3Server } from './servers.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const cli = path.join(root, 'bin', 'scrubline.js');
const token = randomBytes(24).toString('hex');

interface Replica {
  name: string;
  url: string;
  env: NodeJS.ProcessEnv;
  dataDir: string;
  process: ChildProcess;
  api(method: string, route: string, body?: FormData): Promise<Response>;
}

/** Starts `scrubline serve` and resolves once it says where it listens. */
async function startReplica(name: string, shared: Record<string, string>): Promise<Replica> {
  const dataDir = await tempDir();
  const env = { ...process.env, ...shared, SCRUBLINE_DATA_DIR: dataDir, SCRUBLINE_PORT: '0', SCRUBLINE_HOST: '127.0.0.1', SCRUBLINE_SWEEP_INTERVAL_MS: '0' };
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

  it('agree on every file, its thumbnail and its clock, and purge each artefact exactly once', async () => {
    // Upload through A.
    const ids: string[] = [];
    for (const name of ['media/jpeg-gps-exif-xmp-iptc.jpg', 'media/png-text-exif-xmp.png']) {
      const form = new FormData();
      form.append('jobId', 'job-r');
      form.append('file', new Blob([await import('node:fs/promises').then((fs) => fs.readFile(fixture(name)))]), path.basename(name));
      const res = await a.api('POST', '/v1/uploads', form);
      assert.equal(res.status, 201, await res.clone().text());
      ids.push(((await res.json()) as { files: Array<{ id: string }> }).files[0]!.id);
    }

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
    assert.equal(keys.length, 6, 'two files, two reports, two thumbnails');

    // Sweep on both at once, 31 days on: files, thumbnails and fingerprint records are all due.
    const at = new Date(Date.now() + 31 * 86_400_000).toISOString();
    const sweepOn = (replica: Replica) => promisify(execFile)(process.execPath, [cli, 'sweep', '--at', at, '--json'], { env: replica.env });
    const reports = (await Promise.all([sweepOn(a), sweepOn(b)])).map((r) => JSON.parse(r.stdout) as { ids: string[]; skipped: string[] });
    const purged = reports.flatMap((r) => r.ids);
    assert.equal(purged.length, new Set(purged).size, 'no artefact purged twice');
    for (const id of [...ids, ...ids.map((id) => `th_${id}`)]) assert.ok(purged.includes(id), id);
    assert.equal(purged.length, 6, 'two files, two thumbnails and two fingerprint records');
    assert.deepEqual(reports.flatMap((r) => r.skipped), []);
    assert.deepEqual(await s3.keys(), [], 'nothing is left in the bucket');
    const deletes = s3.requests.filter((r) => r.method === 'DELETE').map((r) => r.key);
    assert.deepEqual(new Set(deletes), new Set(keys));
    assert.equal(deletes.length, keys.length, 'each object deleted once');

    for (const replica of [a, b]) {
      const gone = await replica.api('GET', `/v1/files/${ids[0]}/content`);
      assert.equal(gone.status, 410, replica.name);
    }
  });
});
