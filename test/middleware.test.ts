/**
 * The middleware as a render service embeds it (issue 19): its contract with the route after it,
 * the error handler's reach, the route's own fields, per-file errors and start-up checks. Each
 * test mounts the real middleware in an Express app of its own and talks to it over loopback.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmod, chown, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import express, { type ErrorRequestHandler, type RequestHandler } from 'express';
import sharp from 'sharp';
import { removedCategories } from '../src/context.js';
import { errorHandler } from '../src/http/errors.js';
import { scrubline, type ScrublineOptions } from '../src/middleware.js';
import { filesUnder, findPlanted, fixture, removeDir, root as projectRoot, tempDir, testKey } from './helpers.js';

interface App {
  url: string;
  tmpDir: string;
  close(): Promise<void>;
}

let root: string;
before(async () => {
  root = await tempDir('scrubline-middleware-');
});
after(async () => {
  await removeDir(root);
});

/** An app with the middleware on POST /render, the given route after it, and errorHandler(). */
async function app(options: Partial<ScrublineOptions>, route: RequestHandler, extra?: (app: express.Express) => void): Promise<App> {
  const tmpDir = path.join(root, `tmp-${Math.random().toString(36).slice(2)}`);
  const server = express();
  extra?.(server);
  server.post('/render', scrubline({ tmpDir, fingerprintKey: testKey, ...options }), route);
  server.use(errorHandler());
  // The app's own last handler: what errorHandler passed on arrives here.
  const appHandler: ErrorRequestHandler = (err: Error & { status?: number }, _req, res, _next) => {
    res.status(err.status ?? 500).json({ app: true, message: err.message });
  };
  server.use(appHandler);
  const listening = server.listen(0, '127.0.0.1');
  await new Promise((resolve) => listening.once('listening', resolve));
  const { port } = listening.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, tmpDir, close: () => new Promise((resolve) => listening.close(() => resolve())) };
}

async function form(files: string[], fields: Record<string, string | string[]> = {}): Promise<FormData> {
  const body = new FormData();
  for (const [name, value] of Object.entries(fields)) for (const v of [value].flat()) body.append(name, v);
  for (const file of files) body.append('file', new Blob([await readFile(fixture(file))]), 'Planted Client Name.jpg');
  return body;
}

async function send(target: App, body: FormData, route = '/render'): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(target.url + route, { method: 'POST', body });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

const jpeg = 'media/jpeg-gps-exif-xmp-iptc.jpg';

describe('middleware: what the route after it finds', () => {
  it('cleaned files only: the originals and intermediates are gone before the route runs; release() leaves nothing', async () => {
    let seen: string[] = [];
    let modes: number[] = [];
    const target = await app({}, async (req, res) => {
      const upload = req.scrubline!;
      seen = (await filesUnder(target.tmpDir)).map((f) => path.basename(f));
      modes = await Promise.all(upload.files.map(async (f) => (await stat(f.path)).mode & 0o777));
      const bytes = await readFile(upload.files[0]!.path);
      await upload.release();
      res.status(201).json({ planted: findPlanted(bytes), left: (await filesUnder(target.tmpDir)).length, removed: upload.files[0]!.removed });
    });
    try {
      const { status, json } = await send(target, await form([jpeg, 'media/mp4-location.mp4']));
      assert.equal(status, 201, JSON.stringify(json));
      assert.deepEqual(seen.sort(), ['clean.jpg', 'clean.mp4'], 'no original, no intermediate when the route runs');
      assert.deepEqual(modes, [0o600, 0o600]);
      assert.deepEqual(json.planted, []);
      assert.equal(json.left, 0, 'release() removed the cleaned files before the answer');
      for (const category of Object.keys(json.removed as object)) assert.ok((removedCategories as readonly string[]).includes(category));
    } finally {
      await target.close();
    }
  });

  it('each image comes with its preview; with previews: false a big JPEG has makePreview() instead, which makes the same one', async () => {
    // A 2600 px JPEG: its preview comes from the picture its walk read, so it can wait.
    const big = await sharp({ create: { width: 2600, height: 1700, channels: 3, background: '#2a6', noise: { type: 'gaussian', mean: 120, sigma: 20 } } }).jpeg().toBuffer();
    const route: RequestHandler = async (req, res) => {
      const files = req.scrubline!.files;
      const made = await Promise.all(files.map(async (f) => (f.preview ?? (await f.makePreview?.()))?.subarray(0, 2).toString('hex') ?? null));
      res.status(201).json({ now: files.map((f) => f.preview !== undefined), made });
    };
    for (const [previews, now] of [
      [undefined, [true, true, true]],
      [false, [false, true, true]],
    ] as const) {
      const target = await app(previews === undefined ? {} : { previews }, route);
      try {
        const body = new FormData();
        body.append('file', new Blob([big]), 'big.jpg');
        for (const file of [jpeg, 'media/png-text-exif-xmp.png']) body.append('file', new Blob([await readFile(fixture(file))]), 'x');
        const { status, json } = await send(target, body);
        assert.equal(status, 201, JSON.stringify(json));
        assert.deepEqual(json.now, now, `previews: ${previews}`);
        assert.deepEqual(json.made, ['ffd8', 'ffd8', 'ffd8'], 'every file has its preview, now or on request');
      } finally {
        await target.close();
      }
    }
  });

  it('while an upload is processed, its directory is 0700 and its original 0600', async () => {
    // An ffmpeg that lists the modes of everything in the temp dir, then runs the real one: the
    // original is on disk for as long as the remux runs.
    const dir = await tempDir();
    const log = path.join(dir, 'modes.log');
    const tmpDir = path.join(root, `tmp-modes-${Math.random().toString(36).slice(2)}`);
    const real = (await promisify(execFile)('sh', ['-c', 'command -v ffmpeg'])).stdout.trim();
    const wrapper = path.join(dir, 'ffmpeg');
    await writeFile(wrapper, `#!/bin/sh\nfind ${tmpDir} -mindepth 1 -printf '%m %y %p\\n' >> ${log}\nexec ${real} "$@"\n`, { mode: 0o755 });
    const target = await app({ tmpDir, ffmpegPath: wrapper }, (_req, res) => void res.sendStatus(204));
    try {
      assert.equal((await fetch(target.url + '/render', { method: 'POST', body: await form(['media/mp4-location.mp4']) })).status, 204);
      // Lines of "mode type path" (type d or f), one listing per ffmpeg run.
      const seen = (await readFile(log, 'utf8')).trim().split('\n').map((line) => line.split(' ') as [string, string, string]);
      assert.ok(seen.some(([, type]) => type === 'd'), 'the upload\'s directory was seen');
      assert.ok(seen.some(([, type, name]) => type === 'f' && !path.basename(name).startsWith('clean')), 'the original was seen while ffmpeg ran');
      for (const [mode, type, name] of seen) assert.equal(mode, type === 'd' ? '700' : '600', name);
    } finally {
      await target.close();
      await removeDir(dir);
    }
  });

  it('fileMode shares cleaned files with a group; directories get the search bit only', async () => {
    let info: { file: number; dir: number } | undefined;
    const target = await app({ fileMode: 0o640 }, async (req, res) => {
      const file = req.scrubline!.files[0]!;
      info = { file: (await stat(file.path)).mode & 0o777, dir: (await stat(path.dirname(file.path))).mode & 0o777 };
      res.sendStatus(204);
    });
    try {
      assert.equal((await fetch(target.url + '/render', { method: 'POST', body: await form([jpeg]) })).status, 204);
      assert.deepEqual(info, { file: 0o640, dir: 0o710 });
      assert.throws(() => scrubline({ tmpDir: target.tmpDir, fingerprintKey: testKey, fileMode: 0o755 }), /fileMode must give the owner read and write and nobody execute/);
    } finally {
      await target.close();
    }
  });

  it('the route’s own text fields pass through in req.body, within their limits; others are refused', async () => {
    const target = await app({ fields: { preset: { maxLength: 8, pattern: /720p|1080p/ }, note: { required: true } } }, (req, res) => {
      res.json({ body: req.body, jobId: req.scrubline!.jobId });
    });
    try {
      const ok = await send(target, await form([jpeg], { preset: '1080p', note: 'hi', jobId: 'job-1' }));
      assert.equal(ok.status, 200, JSON.stringify(ok.json));
      assert.deepEqual(ok.json, { body: { preset: '1080p', note: 'hi', jobId: 'job-1' }, jobId: 'job-1' });
      for (const [fields, pattern] of [
        [{ note: 'x', tag: 'y' }, /Unknown text field.*Only jobId, retention, preset, note are accepted/],
        [{ note: 'x', preset: 'x1080py' }, /preset does not have an accepted value/],
        [{ note: 'x', preset: '1080p1080p' }, /preset is longer than 8 characters/],
        [{ preset: '720p' }, /note is required/],
        [{ note: ['a', 'b'] }, /note was sent more than once/],
      ] as const) {
        const refused = await send(target, await form([jpeg], fields as Record<string, string | string[]>));
        assert.equal(refused.status, 400, JSON.stringify(fields));
        assert.match((refused.json.error as { message: string }).message, pattern);
        assert.doesNotMatch(JSON.stringify(refused.json), /x1080py|Planted Client Name/, 'no value and no file name is echoed');
      }
      assert.equal((await filesUnder(target.tmpDir)).length, 0);
      assert.throws(() => scrubline({ tmpDir: target.tmpDir, fingerprintKey: testKey, fields: { jobId: {} } }), /not a usable field name/);
      assert.throws(() => scrubline({ tmpDir: target.tmpDir, fingerprintKey: testKey, fields: { preset: { maxLength: 0 } } }), /maxLength must be a whole number/);
    } finally {
      await target.close();
    }
  });

  it('a refusal in a multi-file upload names the file by its index', async () => {
    const target = await app({}, (_req, res) => res.sendStatus(204));
    try {
      const { status, json } = await send(target, await form([jpeg, 'media/png-text-exif-xmp.png', 'reject/html-as-image.png']));
      assert.equal(status, 415);
      const error = json.error as { code: string; message: string; fileIndex: number };
      assert.equal(error.code, 'unsupported_type');
      assert.equal(error.fileIndex, 2);
      assert.match(error.message, /^File 3 of 3 \(index 2\): /);
      assert.equal((await filesUnder(target.tmpDir)).length, 0);
    } finally {
      await target.close();
    }
  });
});

describe('middleware: errorHandler() answers scrubline’s errors only', () => {
  it('passes the app’s own errors on (after the upload, and on unrelated routes), and still releases the upload', async () => {
    let leftWhenThrown = -1;
    const target = await app(
      {},
      async (req) => {
        leftWhenThrown = (await filesUnder(path.dirname(path.dirname(req.scrubline!.files[0]!.path)))).length;
        throw Object.assign(new Error('render queue full'), { status: 503 });
      },
      (server) => server.post('/settings', express.json(), (_req, res) => res.sendStatus(204)),
    );
    try {
      const thrown = await send(target, await form([jpeg]));
      assert.equal(leftWhenThrown, 1);
      assert.equal(thrown.status, 503);
      assert.deepEqual(thrown.json, { app: true, message: 'render queue full' });
      assert.equal((await filesUnder(target.tmpDir)).length, 0, 'the cleaned file went with the failed request');

      const badJson = await fetch(target.url + '/settings', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"a":' });
      assert.equal(badJson.status, 400);
      assert.equal(((await badJson.json()) as { app?: boolean }).app, true, 'body-parser’s error reached the app’s handler, not scrubline’s');

      const ours = await send(target, await form(['reject/html-as-image.png']));
      assert.equal(ours.status, 415);
      assert.equal((ours.json.error as { code: string }).code, 'unsupported_type');
    } finally {
      await target.close();
    }
  });
});

describe('middleware: misconfiguration is found at start', () => {
  it('an unknown option name is an error listing the known ones', () => {
    assert.throws(
      () => scrubline({ tmpDir: path.join(root, 'x'), fingerprintKey: testKey, maxFileSize: 10 } as ScrublineOptions),
      /unknown option maxFileSize\. Known options: tmpDir, fingerprintKey, maxUploadBytes/,
    );
  });

  it('a tmpDir that cannot be written fails at start', async () => {
    const file = path.join(root, 'a-file');
    await writeFile(file, 'not a directory');
    assert.throws(() => scrubline({ tmpDir: path.join(file, 'tmp'), fingerprintKey: testKey }), /option tmpDir ".*" is not a directory this process can write \(ENOTDIR\)/);
    if (process.getuid?.() !== 0) {
      const readOnly = path.join(root, 'read-only');
      await mkdir(readOnly, { mode: 0o500 });
      assert.throws(() => scrubline({ tmpDir: readOnly, fingerprintKey: testKey }), /\(EACCES\)/);
    } else {
      // Root writes anywhere, and CI runs as root: the same check, made by a process run as
      // nobody (setpriv) on a directory nobody owns read-only.
      const base = await mkdtemp(path.join(tmpdir(), 'scrubline-eacces-'));
      try {
        await chmod(base, 0o711);
        const readOnly = path.join(base, 'read-only');
        await mkdir(readOnly, { mode: 0o500 });
        await chown(readOnly, 65534, 65534);
        const script = `import { scrubline } from ${JSON.stringify(path.join(projectRoot, 'dist', 'index.js'))};
          try { scrubline({ tmpDir: ${JSON.stringify(readOnly)}, fingerprintKey: Buffer.alloc(32, 7) }); console.log('accepted'); }
          catch (err) { console.log(err.message); }`;
        const { stdout } = await promisify(execFile)('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '--input-type=module', '-e', script]);
        assert.match(stdout, /option tmpDir ".*" is not a directory this process can write \(EACCES\)/);
      } finally {
        await rm(base, { recursive: true, force: true });
      }
    }
  });

  it('a configured ffmpeg path that is not an executable fails at start', () => {
    assert.throws(() => scrubline({ tmpDir: path.join(root, 'y'), fingerprintKey: testKey, ffmpegPath: '/nonexistent/ffmpeg' }), /option ffmpegPath "\/nonexistent\/ffmpeg" is not an executable file/);
  });

  it('images never need ffmpeg: with one that does not work, a JPEG is cleaned and a video gets 503', async () => {
    // /bin/false is executable (so it passes the start check) and fails every run.
    const target = await app({ ffmpegPath: '/bin/false', ffprobePath: '/bin/false' }, (req, res) => res.json({ files: req.scrubline!.files.length }));
    try {
      const image = await send(target, await form([jpeg]));
      assert.equal(image.status, 200, JSON.stringify(image.json));
      const video = await send(target, await form(['media/mp4-location.mp4']));
      assert.equal(video.status, 503);
      assert.equal((video.json.error as { code: string }).code, 'tool_unavailable');
      assert.equal((await filesUnder(target.tmpDir)).length, 0);
    } finally {
      await target.close();
    }
  });
});
