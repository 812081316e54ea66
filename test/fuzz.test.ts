/**
 * A short fuzz run on every test run (the long one is `npm run fuzz -- --iterations 10000`):
 * mutated fixtures must come out verified-clean or be cleanly rejected, never crash, hang or
 * come out dirty, and leave no work dir behind.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { it } from 'node:test';
import { promisify } from 'node:util';
import { root } from './helpers.js';

it('80 mutants of the fixtures: no crash, no hang, no dirty output', async () => {
  const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', path.join(root, 'scripts', 'fuzz.ts'), '--iterations', '80', '--seed', '7', '--timeout-ms', '120000'], {
    cwd: root,
  }).catch((err: { stdout: string; code: number }) => {
    assert.fail(`fuzz exited ${err.code}:\n${err.stdout}`);
  });
  const counts = /clean (\d+)\s+rejected (\d+)\s+crash (\d+)\s+hang (\d+)\s+dirty (\d+)\s+work dirs left (\d+)/.exec(stdout);
  assert.ok(counts, stdout);
  const [, clean, rejected, crash, hang, dirty, left] = counts.map(Number);
  assert.equal(clean! + rejected!, 80);
  assert.deepEqual([crash, hang, dirty, left], [0, 0, 0, 0]);
  assert.ok(clean! > 0 && rejected! > 0, 'the mutants exercise both paths');
});
