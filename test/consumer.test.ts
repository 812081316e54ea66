/**
 * A render-service app as its engineers write it (issue 19): the README's middleware example,
 * installed from a folder, compiled under `strict` and run against real files.
 *
 * The folder install is laid out as npm lays it out: `node_modules/scrubline` is a link to this
 * repository, and the app has its own copy of Express's types. That copy is the point: a type
 * augmentation that lands on scrubline's copy instead of the app's ("Property 'scrubline' does
 * not exist on type 'Request'") fails this test.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { cp, mkdir, readdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { filesUnder, findPlanted, fixture, removeDir, root, tempDir } from './helpers.js';

const run = promisify(execFile);

/** The middleware guide's example (docs/middleware.md), as written there. */
async function readmeExample(): Promise<string> {
  const readme = await readFile(path.join(root, 'docs', 'middleware.md'), 'utf8');
  const marker = readme.indexOf('<!-- consumer-example');
  assert.ok(marker >= 0, 'the middleware guide marks its example');
  const start = readme.indexOf('```ts\n', marker) + '```ts\n'.length;
  return readme.slice(start, readme.indexOf('\n```', start) + 1);
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer().listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as { port: number };
      probe.close(() => resolve(port));
    });
    probe.once('error', reject);
  });
}

let app: string;
before(async () => {
  app = await tempDir('scrubline-consumer-');
  const modules = path.join(app, 'node_modules');
  await mkdir(modules);
  // `npm i ../scrubline`: a link to the folder, which keeps its own node_modules.
  await symlink(root, path.join(modules, 'scrubline'), 'dir');
  // The app's own dependencies: real copies of the types, so they are not scrubline's files.
  for (const types of ['@types', 'undici-types']) await cp(path.join(root, 'node_modules', types), path.join(modules, types), { recursive: true });
  await symlink(path.join(root, 'node_modules', 'express'), path.join(modules, 'express'), 'dir');
  await writeFile(path.join(app, 'package.json'), JSON.stringify({ name: 'render-service', private: true, type: 'module' }));
  await writeFile(
    path.join(app, 'tsconfig.json'),
    JSON.stringify({ compilerOptions: { strict: true, target: 'es2022', module: 'nodenext', moduleResolution: 'nodenext', outDir: 'dist', types: ['node'] }, include: ['app.ts'] }),
  );
  await writeFile(path.join(app, 'app.ts'), await readmeExample());
});
after(async () => {
  await removeDir(app);
});

describe('the README middleware example in an app that installed scrubline from a folder', () => {
  it('importing scrubline loads none of its optional peers (the ledger drivers, the AWS SDK, the npm ffmpeg builds)', async () => {
    const probe = `await import('scrubline'); const { default: m } = await import('node:module');
      console.log(JSON.stringify(Object.keys(m._cache).filter((k) => /better-sqlite3|node_modules[\\/]pg[\\/]|@aws-sdk|ffmpeg-installer|ffprobe-installer/.test(k))));`;
    const { stdout } = await run(process.execPath, ['--input-type=module', '-e', probe], { cwd: app });
    assert.deepEqual(JSON.parse(stdout), []);
  });

  it('compiles under strict, and cleans real files through it with the route’s own field', async () => {
    const tsc = path.join(root, 'node_modules', 'typescript', 'bin', 'tsc');
    const compiled = await run(process.execPath, [tsc, '-p', app]).catch((err: { stdout: string }) => ({ stdout: err.stdout, failed: true }));
    assert.ok(!('failed' in compiled), `tsc failed:\n${compiled.stdout}`);

    const tmpDir = path.join(app, 'tmp');
    const queueDir = path.join(app, 'queue');
    await mkdir(queueDir);
    const port = await freePort();
    const child = spawn(process.execPath, [path.join(app, 'dist', 'app.js')], {
      env: { ...process.env, PORT: String(port), RENDER_TMP_DIR: tmpDir, RENDER_QUEUE_DIR: queueDir, FP_KEY: 'k'.repeat(32) },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    try {
      const url = `http://127.0.0.1:${port}/render`;
      for (let i = 0; ; i++) {
        const up = await fetch(url, { method: 'HEAD' }).then(() => true, () => false);
        if (up) break;
        assert.ok(i < 200 && child.exitCode === null, `the app did not start: ${stderr}`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      const files = ['media/jpeg-gps-exif-xmp-iptc.jpg', 'media/heic-exif-xmp-thumbnail.heic', 'media/mov-location.mov'];
      const body = new FormData();
      body.append('preset', '1080p');
      for (const file of files) body.append('file', new Blob([await readFile(fixture(file))]), 'Planted Client Name.jpg');
      const res = await fetch(url, { method: 'POST', body });
      const json = (await res.json()) as { preset: string; files: Array<{ id: string; removed: Record<string, number> }> };
      assert.equal(res.status, 202, JSON.stringify(json));
      assert.equal(json.preset, '1080p');
      assert.ok(json.files.every((f) => (f.removed.gps ?? 0) >= 1), 'GPS reported in the same word for JPEG, HEIC and MOV');
      const queued = await readdir(queueDir);
      assert.equal(queued.length, 3);
      for (const name of queued) assert.deepEqual(findPlanted(await readFile(path.join(queueDir, name))), [], name);
      assert.deepEqual(await filesUnder(tmpDir), [], 'nothing of the upload is on disk once the 202 is received');

      const refused = await fetch(url, { method: 'POST', body: (() => {
        const f = new FormData();
        f.append('preset', '8k');
        f.append('file', new Blob([Buffer.from('hello')]), 'x.jpg');
        return f;
      })() });
      assert.equal(refused.status, 400);
      assert.match(((await refused.json()) as { error: { message: string } }).error.message, /preset does not have an accepted value/);
    } finally {
      child.kill();
    }
  });
});
