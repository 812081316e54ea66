/**
 * The privacy policy promises no face data or other biometric processing. This fails if a
 * face-detection/recognition, saliency or perceptual-hash package enters the dependency tree.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { it } from 'node:test';
import { root } from './helpers.js';

const forbidden = /face|opencv|tensorflow|tfjs|mediapipe|onnx|dlib|smartcrop|saliency|blazeface|pico\.?js|tracking\.?js|phash|blockhash|imghash|image-hash|dhash|perceptual/i;

it('no biometric, saliency or perceptual-hash package is installed', async () => {
  const lock = JSON.parse(await readFile(path.join(root, 'package-lock.json'), 'utf8')) as { packages: Record<string, unknown> };
  const names = Object.keys(lock.packages).filter(Boolean).map((p) => p.slice(p.lastIndexOf('node_modules/') + 'node_modules/'.length));
  assert.ok(names.includes('sharp'), 'the lock file lists the tree');
  assert.deepEqual(names.filter((n) => forbidden.test(n)), []);
  assert.ok(forbidden.test('@vladmandic/face-api') && forbidden.test('smartcrop-sharp'), 'the pattern catches known packages');
});
