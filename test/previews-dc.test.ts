/**
 * Issue 26/30: a big JPEG's preview is made from the picture at 1/8 scale that the verifier's walk
 * of its scans read (its DC coefficients), not from a second decode of every scan. It must be the
 * preview a decode makes: the same size, the same way up, the same colours (its profile applied),
 * for the kinds of JPEG cameras and editors write.
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import sharp from 'sharp';
import { cleanFile } from '../src/pipeline.js';
import { decodePreview } from '../src/tools/sharp.js';
import { checkImageStructure } from '../src/verify/structure-image.js';
import { pipelineDeps, removeDir, tempDir } from './helpers.js';

let work: string;
before(async () => (work = await tempDir()));
after(() => removeDir(work));

/** Mean absolute difference of two previews' pixels, after checking they have the same size. */
async function difference(a: Buffer, b: Buffer): Promise<number> {
  const [x, y] = await Promise.all([a, b].map((p) => sharp(p).removeAlpha().raw().toBuffer({ resolveWithObject: true })));
  assert.deepEqual([x!.info.width, x!.info.height, x!.info.channels], [y!.info.width, y!.info.height, y!.info.channels], 'same size');
  let sum = 0;
  for (let i = 0; i < x!.data.length; i++) sum += Math.abs(x!.data[i]! - y!.data[i]!);
  return sum / x!.data.length;
}

/** A 2600 x 1800 photo-like picture: smooth gradients and noise, so blocks differ. */
async function photo(options: { grey?: boolean; progressive?: boolean; subsampling?: string; orientation?: number; p3?: boolean; restart?: boolean }): Promise<Buffer> {
  const gradient = Buffer.alloc(2600 * 1800 * 3);
  for (let y = 0; y < 1800; y++) for (let x = 0; x < 2600; x++) gradient.set([(x * 255) / 2600, (y * 255) / 1800, ((x + y) * 255) / 4400], (y * 2600 + x) * 3);
  let image = sharp(gradient, { raw: { width: 2600, height: 1800, channels: 3 } });
  if (options.grey) image = image.greyscale();
  if (options.p3) image = image.withIccProfile('p3');
  if (options.orientation) image = image.withMetadata({ orientation: options.orientation });
  return image.jpeg({ quality: 88, progressive: options.progressive ?? false, chromaSubsampling: options.subsampling ?? '4:2:0' }).toBuffer();
}

describe('a JPEG preview from the walk\'s picture at 1/8 scale', () => {
  const kinds = [
    { what: 'baseline 4:2:0 with a Display P3 profile', options: { p3: true } },
    { what: 'baseline 4:4:4', options: { subsampling: '4:4:4' } },
    { what: 'greyscale', options: { grey: true } },
    { what: 'progressive', options: { progressive: true, p3: true } },
    { what: 'turned (orientation 6)', options: { orientation: 6 } },
  ];
  for (const { what, options } of kinds) {
    it(`${what}: the preview a decode makes`, async () => {
      const jpeg = await photo(options);
      const input = path.join(work, `${what.replace(/\W+/g, '-')}.jpg`);
      await writeFile(input, jpeg);
      const [workDir, laterDir] = [await tempDir(), await tempDir()];
      try {
        const received = { id: 'dc', inputPath: input, inputBytes: jpeg.length, workDir };
        const file = await cleanFile(received, 'standard', await pipelineDeps());
        assert.ok(file.preview, 'a preview was made');
        const cleaned = await readFile(file.path);
        // The walk did read a picture, big enough to be the preview's source.
        const report = checkImageStructure('jpeg', cleaned, { dc: true });
        assert.deepEqual(report.problems, []);
        assert.ok(report.dcPicture && Math.max(report.dcPicture.width, report.dcPicture.height) >= 320, 'the walk read the picture');
        const decoded = await decodePreview(cleaned, { maxInputPixels: 1e9, format: 'JPEG', strictJpeg: true });
        assert.ok((await difference(file.preview, decoded)) < 3, 'the same picture, within rounding');
        const meta = await sharp(file.preview).metadata();
        assert.equal(meta.orientation ?? 1, 1);
        assert.equal(meta.icc, undefined, 'sRGB with no profile, as a decode\'s');
        if (options.orientation === 6) assert.ok(meta.height! > meta.width!, 'turned upright');
        // Asked for later, it is the same preview.
        const later = await cleanFile({ ...received, id: 'dc-later', workDir: laterDir }, 'standard', { ...(await pipelineDeps()), previews: 'later' });
        assert.equal(later.preview, undefined);
        assert.ok((await later.makePreview!()).equals(file.preview));
      } finally {
        await Promise.all([removeDir(workDir), removeDir(laterDir)]);
      }
    });
  }
});
