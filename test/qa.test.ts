/**
 * QA suites: the judging rules, `scrubline qa` over fixtures/ (itself a suite) in process and
 * against a running service, JUnit XML, and the HTML report opened in a real headless Chromium.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { judge } from '../src/qa/judge.js';
import { loadSuite } from '../src/qa/suite.js';
import { startServer, type RunningServer } from '../src/http/server.js';
import { loadConfig } from '../src/config.js';
import { createLogger } from '../src/log.js';
import { fixture, fixturesDir, LogCapture, manifest, removeDir, root, tempDir, testToken } from './helpers.js';

const chromium = '/usr/bin/chromium';

async function qa(args: string[], env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [path.join(root, 'bin/scrubline.js'), 'qa', ...args], { env: { ...process.env, ...env } });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

describe('judging a file against its expectation', () => {
  const clean = { outcome: 'clean' as const, removed: { gps: 1, exif: 1 }, after: { width: 64, height: 48, orientation: 1 }, fingerprint: { container: 'jpeg' }, ms: 1 };
  it('passes what matches and names each mismatch', () => {
    assert.deepEqual(judge({ outcome: 'clean', removed: ['gps'], width: 64, height: 48, orientation: 1, fingerprint: { container: 'jpeg' } }, clean), { pass: true, problems: [] });
    const verdict = judge({ outcome: 'clean', removed: ['xmp'], width: 10, fingerprint: { container: 'png' } }, clean);
    assert.equal(verdict.pass, false);
    assert.deepEqual(verdict.problems, ['expected xmp to be removed', 'width 64, expected 10', 'fingerprint container is "jpeg", expected "png"']);
  });
  it('holds rejections to their code, and a default file to "clean or rejected, never dirty"', () => {
    assert.equal(judge({ outcome: 'reject', code: 'corrupt_media' }, { outcome: 'reject', code: 'corrupt_media', ms: 1 }).pass, true);
    assert.deepEqual(judge({ outcome: 'reject', code: 'corrupt_media' }, { outcome: 'reject', code: 'unsupported_type', ms: 1 }).problems, ['rejected with unsupported_type, expected corrupt_media']);
    assert.equal(judge({ outcome: 'reject' }, clean).pass, false);
    assert.equal(judge(undefined, { outcome: 'reject', code: 'unsupported_type', ms: 1 }).pass, true);
    assert.equal(judge(undefined, clean).pass, true);
    assert.deepEqual(judge(undefined, { ...clean, dirty: ['gps'] }).problems, ['DIRTY: gps still present']);
    assert.equal(judge(undefined, { outcome: 'error', code: 'internal', ms: 1 }).pass, false);
  });
});

describe('scrubline qa', () => {
  let dir: string;
  let env: Record<string, string>;
  let failing: string;
  before(async () => {
    dir = await tempDir();
    env = { SCRUBLINE_DATA_DIR: path.join(dir, 'data') };
    // A suite with two wrong expectations and one file left to the default.
    failing = path.join(dir, 'failing-suite');
    await mkdir(path.join(failing, 'photos'), { recursive: true });
    await copyFile(fixture('media/jpeg-gps-exif-xmp-iptc.jpg'), path.join(failing, 'photos', 'gps.jpg'));
    await copyFile(fixture('reject/html-as-image.png'), path.join(failing, 'not-an-image.png'));
    await copyFile(fixture('media/gif-comment-xmp.gif'), path.join(failing, 'unlisted.gif'));
    await writeFile(
      path.join(failing, 'suite.json'),
      JSON.stringify({
        name: 'deliberately failing',
        files: [
          { file: 'photos/gps.jpg', expect: { outcome: 'reject', code: 'corrupt_media' } },
          { file: 'not-an-image.png', expect: { outcome: 'clean' } },
        ],
      }),
    );
  });
  after(() => removeDir(dir));

  it('treats fixtures/ as a suite: listed files with expectations, the rest by default, ignores honoured', async () => {
    const suite = await loadSuite(fixturesDir);
    assert.equal(suite.name, 'scrubline fixtures');
    assert.equal(suite.files.filter((f) => f.expect).length, manifest.files.length);
    assert.ok(!suite.files.some((f) => f.file === 'generate.ts' || f.file === 'manifest.json' || f.file.endsWith('.srt')));
  });

  it('runs fixtures/ in process: every expectation met, exit 0, JUnit with one case per file', async () => {
    const junit = path.join(dir, 'fixtures.xml');
    const result = await qa([fixturesDir, '--junit', junit, '--json'], env);
    assert.equal(result.code, 0, result.stdout + result.stderr);
    const report = JSON.parse(result.stdout) as { summary: { total: number; failed: number; dirty: number } };
    assert.equal(report.summary.failed, 0);
    assert.equal(report.summary.dirty, 0);
    const xml = await readFile(junit, 'utf8');
    assert.equal((xml.match(/<testcase /g) ?? []).length, report.summary.total);
    assert.match(xml, /<testsuite name="scrubline fixtures" tests="\d+" failures="0"/);
  });

  it('fails a suite whose expectations are wrong: exit 1, failures in JUnit and in the summary', async () => {
    const junit = path.join(dir, 'failing.xml');
    const html = path.join(dir, 'failing.html');
    const result = await qa([failing, '--junit', junit, '--html', html], env);
    assert.equal(result.code, 1);
    assert.match(result.stdout, /failed\s+2/);
    assert.match(result.stdout, /FAIL photos\/gps\.jpg: expected a rejection \(corrupt_media\), but it came out clean/);
    assert.match(result.stdout, /FAIL not-an-image\.png: expected clean, but rejected \(unsupported_type\)/);
    const xml = await readFile(junit, 'utf8');
    assert.match(xml, /tests="3" failures="2"/);
    assert.equal((xml.match(/<failure /g) ?? []).length, 2);
  });

  describe('against a running service (--url)', () => {
    let server: RunningServer;
    let serviceDir: string;
    before(async () => {
      serviceDir = await tempDir();
      const config = loadConfig({ SCRUBLINE_DATA_DIR: serviceDir, SCRUBLINE_PORT: '0', SCRUBLINE_HOST: '127.0.0.1', SCRUBLINE_API_TOKEN: testToken, SCRUBLINE_SWEEP_INTERVAL_MS: '0' });
      server = await startServer(config, createLogger('info', new LogCapture()));
    });
    after(async () => {
      await server.close();
      await removeDir(serviceDir);
    });

    it('uploads each file to the service and judges its answers the same way', async () => {
      const result = await qa([fixturesDir, '--url', server.url, '--json'], { ...env, SCRUBLINE_API_TOKEN: testToken });
      assert.equal(result.code, 0, result.stdout + result.stderr);
      const report = JSON.parse(result.stdout) as { summary: { failed: number; cleaned: number; rejected: number } };
      assert.equal(report.summary.failed, 0);
      assert.ok(report.summary.cleaned > 0 && report.summary.rejected > 0);
    });
  });

  it('writes an HTML report that a real browser shows with the run\'s counts, filterable to failures', { skip: existsSync(chromium) ? false : `${chromium} not installed (apt-get install chromium)` }, async () => {
    const html = path.join(dir, 'fixtures.html');
    const result = await qa([fixturesDir, '--html', html, '--json'], env);
    const run = JSON.parse(result.stdout) as { summary: Record<string, number> };
    const failingHtml = path.join(dir, 'failing.html');
    if (!existsSync(failingHtml)) await qa([failing, '--html', failingHtml], env);

    const { chromium: browserType } = await import('playwright-core');
    const browser = await browserType.launch({ executablePath: chromium, args: ['--no-sandbox'] });
    try {
      const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
      await page.goto(pathToFileURL(html).href);
      const shown = async (id: string): Promise<number> => Number(await page.getByTestId(`count-${id}`).textContent());
      assert.equal(await shown('total'), run.summary.total);
      assert.equal(await shown('passed'), run.summary.passed);
      assert.equal(await shown('failed'), run.summary.failed);
      assert.equal(await shown('cleaned'), run.summary.cleaned);
      assert.equal(await shown('rejected'), run.summary.rejected);
      assert.equal(await page.locator('tbody tr').count(), run.summary.total);
      // Previews are images the browser actually decoded.
      const decoded = await page.locator('tbody img').evaluateAll((imgs) => imgs.filter((img) => (img as HTMLImageElement).naturalWidth > 0).length);
      assert.ok(decoded >= 10, `${decoded} previews decoded`);
      const shot = path.join(dir, 'report.png');
      await page.screenshot({ path: shot, fullPage: true });
      const png = await readFile(shot);
      assert.ok(png.subarray(1, 4).toString() === 'PNG' && png.length > 10_000);

      await page.goto(pathToFileURL(failingHtml).href);
      assert.equal(await page.locator('tbody tr:visible').count(), 3);
      await page.locator('#only-failures').check();
      assert.equal(await page.locator('tbody tr:visible').count(), 2);
      assert.equal(await page.locator('tbody tr.fail:visible').count(), 2);
    } finally {
      await browser.close();
    }
  });
});
