/**
 * Issue 30: the verifier's structure check of a cleaned image runs on a thread of its own in the
 * service (verify/structure-thread.ts), beside the rest of verify, in the verifier's own buffer
 * (shared, not copied). It must answer exactly what the same check answers in line (a batch
 * worker's way), problems, spans and picture alike, and fail closed.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import sharp from 'sharp';
import { giveBack, readWhole } from '../src/buffers.js';
import type { ImageFormat } from '../src/media.js';
import { checkImageStructure } from '../src/verify/structure-image.js';
import { structureOnThread, structureThreads } from '../src/verify/structure-thread.js';
import { removeDir, tempDir } from './helpers.js';

let work: string;
before(async () => (work = await tempDir()));
after(() => removeDir(work));

/** The bytes in memory another thread can be handed, as the verifier's read of a file gives them. */
function shared(bytes: Buffer): Buffer {
  const out = Buffer.from(new SharedArrayBuffer(bytes.length));
  bytes.copy(out);
  return out;
}

describe('issue 30: the structure check on its own thread', () => {
  it('answers what the check answers in line, for clean and refused images of every format it walks', async () => {
    const base = sharp({ create: { width: 160, height: 96, channels: 3, background: '#468', noise: { type: 'gaussian', mean: 128, sigma: 20 } } });
    const jpeg = await base.clone().jpeg({ quality: 85 }).toBuffer();
    const images: Array<[string, ImageFormat, Buffer]> = [
      ['baseline JPEG', 'jpeg', jpeg],
      ['progressive JPEG', 'jpeg', await base.clone().jpeg({ progressive: true }).toBuffer()],
      ['JPEG with text after its last MCU', 'jpeg', Buffer.concat([jpeg.subarray(0, -2), Buffer.from('Jane Doe, 51.5072 N'), jpeg.subarray(-2)])],
      ['JPEG cut short', 'jpeg', jpeg.subarray(0, jpeg.length >> 1)],
      ['PNG', 'png', await base.clone().png().toBuffer()],
      ['WebP', 'webp', await base.clone().webp({ lossless: true }).toBuffer()],
      ['GIF', 'gif', await base.clone().gif().toBuffer()],
      ['TIFF', 'tiff', await base.clone().tiff().toBuffer()],
      ['JPEG with EXIF', 'jpeg', await base.clone().withExif({ IFD0: { Artist: 'Jane Doe' } }).jpeg().toBuffer()],
    ];
    let refused = 0;
    for (const [what, format, bytes] of images) {
      const inline = checkImageStructure(format, bytes, { dc: format === 'jpeg' });
      const threaded = await structureOnThread(format, shared(bytes), { dc: format === 'jpeg' });
      assert.ok(threaded, 'the test runs on the main thread, where a thread is used');
      assert.deepEqual(threaded, inline, what);
      if (inline.problems.length > 0) refused++;
    }
    assert.ok(refused >= 3, 'the refused images were refused on the thread too');
    assert.ok(checkImageStructure('jpeg', jpeg, { dc: true }).dcPicture, 'a JPEG\'s picture at 1/8 scale was compared too');
  });

  it('checks the verifier\'s read of a file where it lies: a buffer from readWhole is shared, and the answer is the file\'s', async () => {
    const jpeg = await sharp({ create: { width: 64, height: 48, channels: 3, background: '#a52' } }).jpeg().toBuffer();
    const file = path.join(work, 'read.jpg');
    await writeFile(file, jpeg);
    const read = await readWhole(file);
    assert.ok(read.buffer instanceof SharedArrayBuffer, 'readWhole reads into memory a thread can be handed without a copy');
    assert.deepEqual(await structureOnThread('jpeg', read, { dc: true }), checkImageStructure('jpeg', jpeg, { dc: true }));
    giveBack(read);
  });

  it('bytes that are not shared are left to the caller to check in line (a thread would get a copy)', async () => {
    const png = await sharp({ create: { width: 8, height: 8, channels: 3, background: '#000' } }).png().toBuffer();
    assert.equal(structureOnThread('png', png), undefined);
    assert.deepEqual(await structureOnThread('png', shared(png)), checkImageStructure('png', png));
  });

  it('a check that throws on the thread fails closed (rejects, as it throws in line), and the thread serves the next', async () => {
    // An empty "JPEG" (no stripper writes one) makes the walk throw rather than report a problem.
    const empty = Buffer.alloc(0);
    assert.throws(() => checkImageStructure('jpeg', empty));
    await assert.rejects(structureOnThread('jpeg', shared(empty))!);
    const png = await sharp({ create: { width: 8, height: 8, channels: 3, background: '#000' } }).png().toBuffer();
    assert.deepEqual(await structureOnThread('png', shared(png)), checkImageStructure('png', png));
  });

  it('a thread ends once idle (its memory is given back), and a new one serves the next check', async () => {
    const png = await sharp({ create: { width: 8, height: 8, channels: 3, background: '#fff' } }).png().toBuffer();
    assert.deepEqual(await structureOnThread('png', shared(png)), checkImageStructure('png', png));
    assert.ok(structureThreads() > 0, 'a thread runs while it has work and just after');
    for (const deadline = Date.now() + 30_000; structureThreads() > 0; await sleep(100)) assert.ok(Date.now() < deadline, 'an idle structure thread ended');
    assert.deepEqual(await structureOnThread('png', shared(png)), checkImageStructure('png', png));
  });
});
