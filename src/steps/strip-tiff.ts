/**
 * TIFF: IFDs may point anywhere in the file, so there is no safe byte-level rebuild. The image
 * is re-written pixel-losslessly by sharp instead (see rewriteTiff), which keeps only the first
 * page, the pixels upright and the ICC profile.
 */
import { countRemoved, type Removed } from '../context.js';
import { reject } from '../errors.js';
import { exifCategories } from '../formats/tiff-ifd.js';
import { rewriteTiff } from '../tools/sharp.js';
import type { ImageStripResult } from './strip-image.js';

export async function stripTiff(input: Buffer, limits: { maxInputPixels: number }): Promise<ImageStripResult> {
  if (input.length < 8) throw reject.corrupt('TIFF', 'too short');
  const removed: Removed = {};
  // A TIFF is its own EXIF container: every category its IFDs carry is dropped by the rewrite.
  for (const category of exifCategories(input)) countRemoved(removed, category === 'thumbnail' ? 'pages' : category);
  const output = await rewriteTiff(input, limits.maxInputPixels);
  return { parts: [output], removed, orientation: 1 };
}
