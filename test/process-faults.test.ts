/**
 * Faults around the process rather than the file (issue 27, from a deployment trial): a SIGKILL
 * mid-upload, a second process on the same data dir, tools outliving their service, and the
 * ledger's PostgreSQL stopped and started again under a running service. Real processes, a real
 * cluster; nothing here asserts how long something took.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdir, readFile, stat, utimes, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { DataDirLocked, lockDataDir, lockFileIn } from '../src/storage/lock.js';
import { filesUnder, fixture, removeDir, root, tempDir } from './helpers.js';
import { postgresMissing, startPostgres, type Postgres } from './servers.js';
import { auth, multipart, service, stop, type Service } from './threat-helpers.js';

const cli = path.join(root, 'bin', 'scrubline.js');
const token = randomBytes(24).toString('hex');

interface Running {
  url: string;
  port: number;
  child: ChildProcess;
  output: () => string;
}

/** `scrubline serve` on a data dir; resolves once it listens, or rejects with what it printed when it exits first. */
function serve(dataDir: string): Promise<Running> {
  const env = { ...process.env, SCRUBLINE_DATA_DIR: dataDir, SCRUBLINE_PORT: '0', SCRUBLINE_HOST: '127.0.0.1', SCRUBLINE_SWEEP_INTERVAL_MS: '0', SCRUBLINE_API_TOKEN: token, SCRUBLINE_SHUTDOWN_DELAY_MS: '0' };
  const child = spawn(process.execPath, [cli, 'serve'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (chunk: Buffer) => (out += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (out += chunk.toString()));
  return new Promise((resolve, reject) => {
    const onData = (): void => {
      const line = out.split('\n').find((l) => l.includes('"scrubline listening"'));
      if (!line) return;
      child.stdout!.off('data', onData);
      const url = (JSON.parse(line) as { url: string }).url;
      resolve({ url, port: Number(new URL(url).port), child, output: () => out });
    };
    child.stdout!.on('data', onData);
    child.once('exit', (code) => reject(Object.assign(new Error(`scrubline serve exited with ${code}`), { code, output: out })));
  });
}

async function ended(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  await new Promise((resolve) => child.once('exit', resolve));
}

/** The head and the first half of a multipart upload, then nothing: an upload in its receive stage. */
function halfUpload(port: number, file: Buffer): { socket: net.Socket; rest: Buffer; answer: Promise<{ status: number; body: string }> } {
  const boundary = 'faultboundary';
  const body = multipart(boundary, [{ name: 'file', filename: 'holiday.jpg', data: file }]);
  const socket = net.connect(port, '127.0.0.1');
  let response = '';
  socket.on('data', (d) => (response += d.toString('latin1')));
  socket.on('error', () => undefined);
  const answer = new Promise<{ status: number; body: string }>((resolve) =>
    socket.on('close', () => resolve({ status: Number(/^HTTP\/1\.1 (\d+)/.exec(response)?.[1] ?? 0), body: response.split('\r\n\r\n')[1] ?? '' })),
  );
  const half = body.length >> 1;
  socket.write(
    `POST /v1/uploads HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAuthorization: Bearer ${token}\r\nContent-Type: multipart/form-data; boundary=${boundary}\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`,
  );
  socket.write(body.subarray(0, half));
  return { socket, rest: body.subarray(half), answer };
}

/** Waits until the temp dir holds a file with bytes in it (the partial original). */
async function partialOriginal(dataDir: string): Promise<string> {
  for (let i = 0; i < 400; i++) {
    for (const file of await filesUnder(path.join(dataDir, 'tmp')).catch(() => [] as string[])) {
      if ((await stat(file).catch(() => undefined))?.size) return file;
    }
    await delay(25);
  }
  return assert.fail('no partial original appeared in the temp dir');
}

/** Processes (not yet reaped zombies aside) whose command line contains `needle`. */
async function processesWith(needle: string): Promise<number[]> {
  const found: number[] = [];
  for (const pid of (await readdir('/proc')).filter((p) => /^\d+$/.test(p) && Number(p) !== process.pid)) {
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (!cmdline.includes(needle)) continue;
    const state = (await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '')).replace(/^.*\) /, '')[0];
    if (state !== undefined && state !== 'Z' && state !== 'X') found.push(Number(pid));
  }
  return found;
}

describe('crash leftovers and a second process on the data dir (issue 27)', { skip: process.platform !== 'linux' ? 'reads /proc' : false }, () => {
  let dataDir: string;
  before(async () => (dataDir = await tempDir()));
  after(() => removeDir(dataDir));

  it('a second process on a locked data dir exits non-zero, saying why, and the first one\'s upload goes through', async () => {
    const first = await serve(dataDir);
    try {
      const upload = halfUpload(first.port, await readFile(fixture('media/jpeg-gps-exif-xmp-iptc.jpg')));
      const partial = await partialOriginal(dataDir);
      // Private from its first byte, in a private folder.
      assert.equal((await stat(partial)).mode & 0o777, 0o600);
      assert.equal((await stat(path.dirname(partial))).mode & 0o777, 0o700);
      const second = await serve(dataDir).then(
        async (running) => {
          running.child.kill('SIGKILL');
          await ended(running.child);
          return assert.fail('a second process started on a locked data dir');
        },
        (err: { code: number; output: string }) => err,
      );
      assert.equal(second.code, 1);
      assert.match(second.output, /Another scrubline process \(pid \d+ on .+\) is using the data dir/);
      assert.ok((await stat(partial)).size > 0, 'the live upload\'s file was not swept');
      upload.socket.write(upload.rest);
      const answer = await upload.answer;
      assert.equal(answer.status, 201, answer.body);
    } finally {
      first.child.kill('SIGTERM');
      await ended(first.child);
    }
    assert.deepEqual(await readdir(dataDir).then((names) => names.filter((n) => n === 'scrubline.lock')), [], 'a clean stop releases the lock');
  });

  it('after SIGKILL mid-upload the next start takes over the lock and removes the original; nothing of the upload is left', async () => {
    const first = await serve(dataDir);
    const upload = halfUpload(first.port, await readFile(fixture('media/jpeg-gps-exif-xmp-iptc.jpg')));
    const partial = await partialOriginal(dataDir);
    first.child.kill('SIGKILL');
    await ended(first.child);
    upload.socket.destroy();
    assert.ok((await stat(partial)).size > 0, 'the killed process left its partial original (until the next start)');
    assert.equal((await stat(partial)).mode & 0o777, 0o600, 'and it is private');
    const next = await serve(dataDir);
    try {
      assert.deepEqual(await filesUnder(path.join(dataDir, 'tmp')), [], 'the next start removed it');
      const form = new FormData();
      form.append('file', new Blob([new Uint8Array(await readFile(fixture('media/jpeg-orientation-6.jpg')))]), 'x.jpg');
      const res = await fetch(`${next.url}/v1/uploads`, { method: 'POST', headers: { authorization: `Bearer ${token}` }, body: form });
      assert.equal(res.status, 201);
    } finally {
      next.child.kill('SIGTERM');
      await ended(next.child);
    }
  });

  it('a lock held elsewhere is honoured while its heartbeat is fresh, and taken over once it is stale', async () => {
    const dir = await tempDir();
    try {
      await writeFile(lockFileIn(dir), JSON.stringify({ host: 'another-host', pid: 1 }));
      assert.throws(() => lockDataDir(dir), (err: unknown) => err instanceof DataDirLocked && /pid 1 on another-host/.test(err.message));
      const longAgo = new Date(Date.now() - 10 * 60_000);
      await utimes(lockFileIn(dir), longAgo, longAgo);
      const lock = lockDataDir(dir);
      assert.match(await readFile(lockFileIn(dir), 'utf8'), new RegExp(`"pid":${process.pid}`));
      lock.release();
      assert.deepEqual(await readdir(dir), []);
    } finally {
      await removeDir(dir);
    }
  });

  it('a tool outlives no service: SIGKILL of the process that started it kills it too (parent-death signal)', async () => {
    const marker = `testsrc2=size=64x64:rate=1:duration=${3600 + Math.floor(Math.random() * 1000)}`;
    // A process that starts a real ffmpeg through runTool (an hour of work), then waits.
    const script = `
      const { runTool, resolveBinary } = await import(${JSON.stringify(path.join(root, 'src', 'tools', 'ffmpeg.ts'))});
      const ffmpeg = resolveBinary('ffmpeg', undefined);
      runTool(ffmpeg.path, ['-nostdin', '-nostats', '-v', 'error', '-re', '-f', 'lavfi', '-i', process.env.TOOL_INPUT, '-f', 'null', '-'], 7_200_000).catch(() => undefined);
      setInterval(() => undefined, 1000);
    `;
    // The input comes by the environment: the parent's own command line must not match the marker.
    const parent = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: root, stdio: 'ignore', env: { ...process.env, TOOL_INPUT: marker } });
    let tools: number[] = [];
    for (let i = 0; i < 400 && tools.length === 0; i++) {
      await delay(25);
      tools = await processesWith(marker);
    }
    assert.equal(tools.length, 1, 'ffmpeg started');
    // The marker is on setpriv's command line too, before it has set the signal and run ffmpeg in
    // its place: wait for ffmpeg itself (under load that took long enough for a kill to land first).
    const command = async (): Promise<string> => (await readFile(`/proc/${tools[0]}/comm`, 'utf8').catch(() => '')).trim();
    for (let i = 0; i < 400 && (await command()) !== 'ffmpeg'; i++) await delay(25);
    assert.equal(await command(), 'ffmpeg', 'ffmpeg runs in its wrapper\'s place');
    parent.kill('SIGKILL');
    await ended(parent);
    // The kernel signals the tool as its parent dies; it is gone (or a zombie) a moment later.
    for (let i = 0; i < 200 && (await processesWith(marker)).length > 0; i++) await delay(25);
    const left = await processesWith(marker);
    for (const pid of left) process.kill(pid, 'SIGKILL');
    assert.deepEqual(left, [], 'no ffmpeg survived its parent');
  });
});

describe('the ledger survives its PostgreSQL (issue 27)', { skip: postgresMissing() ?? false }, () => {
  let postgres: Postgres;
  let svc: Service;
  before(async () => {
    postgres = await startPostgres();
    svc = await service({ SCRUBLINE_DATABASE_URL: await postgres.database('restart') });
  });
  after(async () => {
    await stop(svc);
    await postgres.stop();
  });

  const getFile = (id: string) => fetch(`${svc.server.url}/v1/files/${id}`, { headers: auth });

  it('a fast stop answers 503 with Retry-After (never 500, never an exit), and the service serves again once it is back', async () => {
    const form = new FormData();
    form.append('file', new Blob([new Uint8Array(await readFile(fixture('media/jpeg-orientation-6.jpg')))]), 'x.jpg');
    const uploaded = await fetch(`${svc.server.url}/v1/uploads`, { method: 'POST', headers: auth, body: form });
    assert.equal(uploaded.status, 201);
    const { files } = (await uploaded.json()) as { files: Array<{ id: string }> };
    const id = files[0]!.id;
    assert.equal((await getFile(id)).status, 200);

    // What a failover or a minor upgrade does: every pooled connection is told to terminate.
    await postgres.halt();
    await delay(200);
    const during = await getFile(id);
    assert.equal(during.status, 503);
    assert.ok(Number(during.headers.get('retry-after')) > 0, 'Retry-After');
    assert.equal(((await during.json()) as { error: { code: string } }).error.code, 'ledger_unavailable');
    const finished = await fetch(`${svc.server.url}/v1/jobs/job-1/finished`, { method: 'POST', headers: auth });
    assert.equal(finished.status, 503);
    const refused = await fetch(`${svc.server.url}/v1/uploads`, { method: 'POST', headers: auth, body: form });
    assert.deepEqual([refused.status, ((await refused.json()) as { error: { code: string } }).error.code], [503, 'ledger_unavailable'], 'an upload too');
    assert.equal((await fetch(`${svc.server.url}/healthz`)).status, 200, 'the process is up');
    // /readyz shares one check for 2 s; the next one after that sees the outage.
    await delay(2_100);
    const ready = await fetch(`${svc.server.url}/readyz`);
    assert.equal(ready.status, 503);
    assert.ok(Number(ready.headers.get('retry-after')) > 0);
    assert.equal(((await ready.json()) as { ledger: { ok: boolean } }).ledger.ok, false);
    const metrics = await (await fetch(`${svc.server.url}/metrics`)).text();
    const errors = /scrubline_dependency_errors_total\{dependency="ledger",operation="(?:connect|query)"\} ([1-9]\d*)/.exec(metrics);
    assert.ok(errors, 'ledger errors are counted');

    await postgres.resume();
    const back = await getFile(id);
    assert.equal(back.status, 200, await back.text());
    await delay(2_100);
    assert.equal((await fetch(`${svc.server.url}/readyz`)).status, 200, 'ready again');
    assert.ok(!svc.logs.text.includes('Unhandled'), 'no unhandled error');
  });
});
