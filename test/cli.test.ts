/** The `scrubline` command as a user runs it: the real bin, built JS, real tools. */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { findPlanted, fixture, removeDir, root, tempDir } from './helpers.js';

const run = async (args: string[], env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> => {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [path.join(root, 'bin/scrubline.js'), ...args], { env: { ...process.env, ...env } });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
};

describe('scrubline CLI', () => {
  let dir: string;
  let env: Record<string, string>;
  before(async () => {
    dir = await tempDir();
    env = { SCRUBLINE_DATA_DIR: path.join(dir, 'data') };
  });
  after(() => removeDir(dir));

  it('strip cleans several files into --out-dir and exits 0, with --json reports', async () => {
    const out = path.join(dir, 'out');
    const result = await run(['strip', fixture('media/jpeg-gps-exif-xmp-iptc.jpg'), fixture('media/mov-location.mov'), '--out-dir', out, '--json'], env);
    assert.equal(result.code, 0, result.stderr);
    const reports = result.stdout.trim().split('\n').map((line) => JSON.parse(line));
    assert.equal(reports.length, 2);
    for (const report of reports) {
      assert.deepEqual(findPlanted(await readFile(report.output)), []);
      assert.match(report.fingerprint.id, /^fp_/);
    }
  });

  it('strip spreads a batch over worker threads: every file cleaned or refused, exit 2 for the refusal', async () => {
    const out = path.join(dir, 'batch');
    const inputs = ['media/jpeg-gps-exif-xmp-iptc.jpg', 'media/png-text-exif-xmp.png', 'media/webp-exif-xmp.webp', 'media/heic-exif-xmp-thumbnail.heic', 'media/mp4-location.mp4', 'reject/html-as-image.png'];
    const result = await run(['strip', ...inputs.map((f) => fixture(f)), '--out-dir', out, '--json'], env);
    assert.equal(result.code, 2, result.stderr);
    const reports = result.stdout.trim().split('\n').map((line) => JSON.parse(line));
    assert.equal(reports.length, inputs.length);
    assert.equal(reports.filter((r) => r.error?.code === 'unsupported_type').length, 1);
    const cleaned = reports.filter((r) => r.output);
    assert.equal(cleaned.length, inputs.length - 1, JSON.stringify(reports.filter((r) => !r.output)));
    for (const report of cleaned) assert.deepEqual(findPlanted(await readFile(report.output)), []);
    assert.deepEqual(await readdir(path.join(dir, 'data', 'tmp')), [], 'no work dir left behind');
  });

  it('a batch without ffmpeg cleans its images and refuses only its video (tool_unavailable, exit 1)', async () => {
    // ffmpeg is looked up by the thread that first meets a video: images neither need nor wait for it.
    const out = path.join(dir, 'no-ffmpeg');
    const images = ['media/jpeg-gps-exif-xmp-iptc.jpg', 'media/png-text-exif-xmp.png', 'media/webp-exif-xmp.webp', 'media/heic-exif-xmp-thumbnail.heic'];
    const inputs = [...images, 'media/mp4-location.mp4'].map((f) => fixture(f));
    const result = await run(['strip', ...inputs, '--out-dir', out, '--json'], { ...env, SCRUBLINE_FFMPEG_PATH: path.join(dir, 'no-such-ffmpeg') });
    assert.equal(result.code, 1, result.stderr);
    const reports = result.stdout.trim().split('\n').map((line) => JSON.parse(line));
    assert.deepEqual(reports.filter((r) => r.error).map((r) => [path.basename(r.input), r.error.code]), [['mp4-location.mp4', 'tool_unavailable']]);
    assert.match(result.stderr, /Video needs ffmpeg/);
    assert.deepEqual((await readdir(out)).sort(), images.map((f) => path.basename(f)).sort());
    assert.deepEqual(await readdir(path.join(dir, 'data', 'tmp')), [], 'no work dir left behind');
  });

  it('strip rejects a non-media file with exit 2, one line on stderr and no output file', async () => {
    const target = path.join(dir, 'never.png');
    const result = await run(['strip', fixture('reject/html-as-image.png'), '-o', target], env);
    assert.equal(result.code, 2);
    assert.equal(result.stderr.trim().split('\n').length, 1);
    assert.match(result.stderr, /rejected \(unsupported_type\)/);
    assert.equal(existsSync(target), false);
  });

  it('inspect lists categories with counts and no values', async () => {
    const result = await run(['inspect', fixture('media/jpeg-gps-exif-xmp-iptc.jpg'), '--json'], env);
    assert.equal(result.code, 0, result.stderr);
    const report = JSON.parse(result.stdout);
    assert.equal(report.metadata.gps, 1);
    assert.equal(report.metadata.trailer, 1);
    assert.deepEqual(findPlanted(Buffer.from(result.stdout)), []);
  });

  it('fingerprint prints a deterministic fingerprint without values', async () => {
    const a = await run(['fingerprint', fixture('media/webp-exif-xmp.webp')], env);
    const b = await run(['fingerprint', fixture('media/webp-exif-xmp.webp')], env);
    assert.equal(a.code, 0, a.stderr);
    assert.equal(a.stdout, b.stdout);
    const fp = JSON.parse(a.stdout);
    assert.equal(fp.width, 40);
    assert.equal(fp.orientation, 3);
    assert.deepEqual(findPlanted(Buffer.from(a.stdout)), []);
  });

  it('--version names the ffmpeg in use; --help lists the commands; a bad variable stops with its name', async () => {
    const version = await run(['--version'], env);
    assert.equal(version.code, 0);
    assert.match(version.stdout, /^scrubline \d+\.\d+\.\d+\nffmpeg \S+ \((config|PATH|npm): /);
    assert.match((await run(['--help'], env)).stdout, /scrubline strip <input…>/);
    const bad = await run(['strip', 'x', '-o', 'y'], { ...env, SCRUBLINE_MAX_FILES: 'lots' });
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /SCRUBLINE_MAX_FILES must be a whole number/);
  });
});
