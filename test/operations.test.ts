/**
 * Issue 28, operator traps: a misspelt variable stops the start, API tokens rotate with an
 * overlap, every subcommand answers --help, and a sweep never purges as of another time.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdir, readdir, readFile, stat } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import path from 'node:path';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import request from 'supertest';
import { main } from '../src/cli/cli.js';
import { ConfigError, loadConfig } from '../src/config.js';
import { filesUnder, fixture, removeDir, root, tempDir, testService, testToken, watchServe } from './helpers.js';

const run = promisify(execFile);
const cli = path.join(root, 'bin', 'scrubline.js');

const problemsOf = (env: Record<string, string>): string => {
  try {
    loadConfig(env);
  } catch (err) {
    assert.ok(err instanceof ConfigError);
    return err.message;
  }
  return '';
};

describe('configuration that catches mistakes (issue 28)', () => {
  it('an unknown SCRUBLINE_* variable stops the start, naming the closest known one', async () => {
    assert.match(problemsOf({ SCRUBLINE_PROT: '9000' }), /SCRUBLINE_PROT is not a scrubline setting; did you mean SCRUBLINE_PORT\?/);
    assert.match(problemsOf({ SCRUBLINE_UPSTREAM_ULR: 'http://x' }), /did you mean SCRUBLINE_UPSTREAM_URL\?/);
    // Nothing close: named, with no guess.
    assert.match(problemsOf({ SCRUBLINE_COMPLETELY_DIFFERENT_THING: '1' }), /SCRUBLINE_COMPLETELY_DIFFERENT_THING is not a scrubline setting \(/);
    assert.equal(problemsOf({ SCRUBLINE_PORT: '9000', SCRUBLINE_TEST_ANYTHING: '1', OTHER_TOOL_PROT: '1' }), '', 'known, test-only and foreign variables pass');
    // The process itself: exit 1 before anything listens, the variable named on stderr.
    const dataDir = await tempDir();
    try {
      const started = await run(process.execPath, [cli, 'serve'], { env: { ...process.env, SCRUBLINE_DATA_DIR: dataDir, SCRUBLINE_PROT: '0' } }).then(
        () => ({ code: 0, stderr: '' }),
        (err: { code: number; stderr: string }) => err,
      );
      assert.equal(started.code, 1);
      assert.match(started.stderr, /SCRUBLINE_PROT is not a scrubline setting; did you mean SCRUBLINE_PORT\?/);
    } finally {
      await removeDir(dataDir);
    }
  });

  it('several API tokens are valid at once, for a rotation; each must be long enough', async () => {
    const [next, old] = ['n'.repeat(40), 'o'.repeat(40)];
    assert.deepEqual(loadConfig({ SCRUBLINE_API_TOKEN: `${next}, ${old}` }).apiTokens, [next, old]);
    assert.match(problemsOf({ SCRUBLINE_API_TOKEN: `${next},short` }), /SCRUBLINE_API_TOKEN must be one token, or several separated by commas/);
    const svc = await testService({ apiTokens: [next, old] });
    try {
      for (const token of [next, old]) assert.equal((await request(svc.app).get('/v1/files/f_missing').set('Authorization', `Bearer ${token}`)).status, 404, 'either token is let in');
      const retired = await request(svc.app).get('/v1/files/f_missing').set('Authorization', `Bearer ${'x'.repeat(40)}`);
      assert.equal(retired.status, 401);
    } finally {
      await svc.close();
    }
  });
});

describe('the command line (issue 28)', () => {
  const capture = (): { out: { stdout: (s: string) => void; stderr: (s: string) => void }; text: () => string } => {
    let text = '';
    return { out: { stdout: (s) => void (text += s), stderr: (s) => void (text += s) }, text: () => text };
  };

  it('--help works on every subcommand, serve included, and starts nothing', async () => {
    for (const command of ['strip', 'inspect', 'fingerprint', 'sweep', 'qa', 'repro', 'serve']) {
      const { out, text } = capture();
      assert.equal(await main([command, '--help'], out), 0, command);
      assert.match(text(), new RegExp(`^Usage:\\n  scrubline ${command}`), command);
    }
  });

  it('on a Node.js older than 22.16 the command says which it needs and how to run it, and exits 1', async (t) => {
    // The machine's own Node.js, when it is older than the supported lines (Node 20 here).
    const system = ['/usr/bin/node', '/usr/local/bin/node'].find((p) => existsSync(p));
    const version = system ? (await run(system, ['--version'])).stdout.trim() : '';
    const [major, minor] = version.slice(1).split('.').map(Number);
    if (!system || major! > 22 || (major === 22 && minor! >= 16)) return t.skip(`no Node.js older than 22.16 on this machine (${version || 'none'})`);
    const result = await run(system, [cli, 'strip', '--help']).then(() => ({ code: 0, stderr: '' }), (err: { code: number; stderr: string }) => err);
    assert.equal(result.code, 1);
    assert.match(result.stderr, /scrubline needs Node\.js 22\.16 or later; this is v\d+.*node_modules\/\.bin\/node bin\/scrubline\.js/);
  });

  it('keeps its compile cache only in a temp-dir folder of its own that nobody else can write to', async () => {
    const uid = process.getuid?.() ?? 'user';
    const env = (tmp: string): NodeJS.ProcessEnv => {
      const { NODE_COMPILE_CACHE: _, ...rest } = process.env;
      return { ...rest, TMPDIR: tmp };
    };
    const own = await tempDir();
    const shared = await tempDir();
    try {
      await run(process.execPath, [cli, '--version'], { env: env(own) });
      const made = path.join(own, `scrubline-compile-cache-${uid}`);
      assert.equal((await stat(made)).mode & 0o777, 0o700, 'made private');
      assert.ok((await readdir(made)).length > 0, 'and used');
      // A folder of that name that others may write to (made by someone else first): code from it
      // would be run, so it is left alone and the command runs without a cache.
      const planted = path.join(shared, `scrubline-compile-cache-${uid}`);
      await mkdir(planted);
      await chmod(planted, 0o777);
      const { stdout } = await run(process.execPath, [cli, '--version'], { env: env(shared) });
      assert.match(stdout, /^scrubline /);
      assert.deepEqual(await readdir(planted), []);
    } finally {
      await Promise.all([removeDir(own), removeDir(shared)]);
    }
  });

  it('sweep --at without --dry-run is refused before the ledger is opened', async () => {
    const { out, text } = capture();
    assert.equal(await main(['sweep', '--at', new Date(Date.now() + 86_400_000).toISOString()], out), 1);
    assert.match(text(), /--at goes with --dry-run only: a real sweep purges what has expired by now, never early/);
  });
});

describe('graceful shutdown (issue 28)', () => {
  it('draining: /readyz 503 without a check; refusing: /v1 answers 503 shutting_down with Retry-After and closes', async () => {
    const svc = await testService();
    try {
      const lifecycle = svc.app.locals.lifecycle as { draining: boolean; refusing: boolean };
      assert.equal((await request(svc.app).get('/readyz')).status, 200);
      lifecycle.draining = true;
      const ready = await request(svc.app).get('/readyz');
      assert.deepEqual([ready.status, ready.body], [503, { status: 'shutting down' }]);
      assert.equal((await svc.api.get('/v1/files/f_missing')).status, 404, 'still taking requests while draining');
      lifecycle.refusing = true;
      const refused = await svc.api.post('/v1/uploads').attach('file', fixture('media/jpeg-gps-exif-xmp-iptc.jpg'));
      assert.equal(refused.status, 503);
      assert.equal(refused.body.error.code, 'shutting_down');
      assert.equal(refused.headers['retry-after'], '5');
      assert.equal(refused.headers.connection, 'close');
      assert.deepEqual(await filesUnder(path.join(svc.dataDir, 'tmp')).catch(() => []), []);
    } finally {
      await svc.close();
    }
  });

  it('SIGTERM with nothing in flight exits at once, however long the drain limit', async () => {
    const dataDir = await tempDir();
    const env = { ...process.env, SCRUBLINE_DATA_DIR: dataDir, SCRUBLINE_PORT: '0', SCRUBLINE_HOST: '127.0.0.1', SCRUBLINE_SWEEP_INTERVAL_MS: '0', SCRUBLINE_API_TOKEN: testToken, SCRUBLINE_SHUTDOWN_DELAY_MS: '0', SCRUBLINE_SHUTDOWN_TIMEOUT_MS: '3600000' };
    const child = spawn(process.execPath, [cli, 'serve'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    const served = watchServe(child);
    try {
      await served.url;
      child.kill('SIGTERM');
      // An hour's drain limit: only an idle timer left behind could keep it that long.
      const code = await Promise.race([served.exited, new Promise((resolve) => setTimeout(resolve, 60_000, 'still running'))]);
      assert.equal(code, 0);
      assert.match(served.output(), /shutdown: requests in flight finished/);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
      await served.exited;
      await removeDir(dataDir);
    }
  });

  it('SIGTERM: /readyz 503 at once, uploads still taken for the delay, then the one in flight is cut off at the limit and cleaned; exit 0', async () => {
    const dataDir = await tempDir();
    const env = {
      ...process.env,
      SCRUBLINE_DATA_DIR: dataDir,
      SCRUBLINE_PORT: '0',
      SCRUBLINE_HOST: '127.0.0.1',
      SCRUBLINE_SWEEP_INTERVAL_MS: '0',
      SCRUBLINE_API_TOKEN: testToken,
      SCRUBLINE_SHUTDOWN_DELAY_MS: '3000',
      SCRUBLINE_SHUTDOWN_TIMEOUT_MS: '1500',
    };
    const child = spawn(process.execPath, [cli, 'serve'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    const served = watchServe(child);
    const { exited } = served;
    try {
      const url = await served.url;
      const { port } = new URL(url);
      // An upload whose body stalls half way: it is in flight when the signal comes.
      const boundary = 'scrubline-shutdown';
      const jpeg = await readFile(fixture('media/jpeg-gps-exif-xmp-iptc.jpg'));
      const stalled = httpRequest({ host: '127.0.0.1', port, method: 'POST', path: '/v1/uploads', headers: { authorization: `Bearer ${testToken}`, 'content-type': `multipart/form-data; boundary=${boundary}` } });
      const stalledEnd = new Promise<string>((resolve) => {
        stalled.on('response', (res) => resolve(`answered ${res.statusCode}`));
        stalled.on('error', (err: NodeJS.ErrnoException) => resolve(`cut off (${err.code})`));
      });
      stalled.write(`--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n`);
      stalled.write(jpeg.subarray(0, jpeg.length >> 1));
      // Wait until its half is on the server's disk.
      for (let i = 0; i < 200 && (await filesUnder(path.join(dataDir, 'tmp'))).length === 0; i++) await new Promise((r) => setTimeout(r, 25));
      assert.ok((await filesUnder(path.join(dataDir, 'tmp'))).length > 0, 'the stalled upload is being received');

      child.kill('SIGTERM');
      for (let i = 0; i < 200 && !served.output().includes('shutdown started'); i++) await new Promise((r) => setTimeout(r, 10));
      const ready = await fetch(`${url}/readyz`);
      assert.equal(ready.status, 503, 'not ready at once');
      // Within the delay the listener still takes a whole upload: the load balancer may still send one.
      const form = new FormData();
      form.append('file', new Blob([jpeg], { type: 'image/jpeg' }), 'b.jpg');
      const late = await fetch(`${url}/v1/uploads`, { method: 'POST', body: form, headers: { authorization: `Bearer ${testToken}` } });
      assert.equal(late.status, 201, 'an upload inside the delay is still cleaned');

      assert.match(await stalledEnd, /^cut off/, 'the stalled upload is cut off at the limit');
      assert.equal(await exited, 0);
      assert.deepEqual(await filesUnder(path.join(dataDir, 'tmp')), [], 'nothing of the cut-off upload is left');
      const lines = served.output().split('\n').filter((l) => l.includes('shutdown') && l.startsWith('{')).map((l) => (JSON.parse(l) as { msg: string; cutOff?: number }));
      assert.deepEqual(lines.map((l) => l.msg), ['shutdown started: not ready, draining', 'shutdown: requests still in flight were cut off at the time limit', 'shutdown finished']);
      assert.equal(lines[1]!.cutOff, 1);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
      await exited;
      await removeDir(dataDir);
    }
  });
});

describe('metrics for alerting (issue 28)', () => {
  it('request durations by route pattern and status class, the last good sweep, build info', async () => {
    const dataDir = await tempDir();
    const { startServer } = await import('../src/http/server.js');
    const { createLogger } = await import('../src/log.js');
    const { LogCapture } = await import('./helpers.js');
    const server = await startServer(
      loadConfig({ SCRUBLINE_DATA_DIR: dataDir, SCRUBLINE_PORT: '0', SCRUBLINE_HOST: '127.0.0.1', SCRUBLINE_API_TOKEN: testToken, SCRUBLINE_SWEEP_INTERVAL_MS: '100' }),
      createLogger('info', new LogCapture()),
    );
    try {
      const missing = await fetch(`${server.url}/v1/files/f_missing`, { headers: { authorization: `Bearer ${testToken}` } });
      assert.equal(missing.status, 404);
      let text = '';
      for (let i = 0; i < 100; i++) {
        text = await (await fetch(`${server.url}/metrics`)).text();
        if (/^scrubline_sweeper_last_success_timestamp_seconds [1-9]/m.test(text)) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      const last = Number(/^scrubline_sweeper_last_success_timestamp_seconds (\S+)/m.exec(text)?.[1]);
      assert.ok(last > Date.now() / 1000 - 60, 'a sweep finished just now');
      assert.match(text, /scrubline_sweeper_failures_total 0/);
      assert.match(text, /scrubline_http_request_duration_seconds_count\{route="\/v1\/files\/:id",status="4xx"\} 1/, 'the pattern, never the id');
      assert.doesNotMatch(text, /f_missing/);
      assert.match(text, /scrubline_build_info\{version="\d+\.\d+\.\d+",node="\d+\.\d+\.\d+"\} 1/);
      assert.match(text, /scrubline_dependency_errors_total\{dependency="bucket",operation="put"\} 0/, 'a zero series to alert on');
    } finally {
      await server.close();
      await removeDir(dataDir);
    }
  });
});
