/**
 * Lossless WebP rebuild (../shared/METADATA.md, WebP): RIFF chunks from an allowlist, VP8X flags
 * and the RIFF size fixed up. A non-1 EXIF orientation survives as an EXIF chunk holding only
 * Orientation, as for JPEG.
 */
import { countRemoved, type Removed } from '../context.js';
import { reject } from '../errors.js';
import { exifCategories, minimalOrientationTiff, readOrientation } from '../formats/tiff-ifd.js';
import type { ImageStripResult } from './strip-image.js';

const keep = new Set(['VP8 ', 'VP8L', 'VP8X', 'ALPH', 'ANIM', 'ANMF', 'ICCP']);
const VP8X_ICC = 0x20;
const VP8X_EXIF = 0x08;
const VP8X_XMP = 0x04;

function chunk(fourcc: string, data: Buffer): Buffer[] {
  const header = Buffer.alloc(8);
  header.write(fourcc, 0, 'latin1');
  header.writeUInt32LE(data.length, 4);
  return data.length % 2 === 1 ? [header, data, Buffer.alloc(1)] : [header, data];
}

export function stripWebp(input: Buffer): ImageStripResult {
  if (input.length < 20 || input.toString('latin1', 0, 4) !== 'RIFF' || input.toString('latin1', 8, 12) !== 'WEBP') {
    throw reject.corrupt('WebP', 'bad RIFF header');
  }
  const riffEnd = 8 + input.readUInt32LE(4);
  if (riffEnd > input.length) throw reject.corrupt('WebP', 'RIFF size runs past the end of the file');
  const removed: Removed = {};
  if (riffEnd < input.length) countRemoved(removed, 'trailer');

  const kept: Array<{ fourcc: string; data: Buffer }> = [];
  let orientation: number | undefined;
  let pos = 12;
  while (pos < riffEnd) {
    if (pos + 8 > riffEnd) throw reject.corrupt('WebP', 'truncated chunk header');
    const fourcc = input.toString('latin1', pos, pos + 4);
    const size = input.readUInt32LE(pos + 4);
    const dataEnd = pos + 8 + size;
    if (dataEnd > riffEnd) throw reject.corrupt('WebP', `${fourcc.trim()} chunk runs past the end`);
    const data = input.subarray(pos + 8, dataEnd);
    pos = dataEnd + (size % 2);
    if (keep.has(fourcc)) {
      kept.push({ fourcc, data });
    } else if (fourcc === 'EXIF') {
      // Some writers prefix the TIFF block with JPEG's "Exif\0\0".
      const tiff = data.toString('latin1', 0, 6) === 'Exif\0\0' ? data.subarray(6) : data;
      orientation ??= readOrientation(tiff);
      for (const found of exifCategories(tiff)) countRemoved(removed, found);
    } else if (fourcc === 'XMP ') {
      countRemoved(removed, 'xmp');
    } else {
      countRemoved(removed, 'other');
    }
  }
  const image = kept.find((c) => c.fourcc === 'VP8 ' || c.fourcc === 'VP8L' || c.fourcc === 'ANMF');
  if (!image) throw reject.corrupt('WebP', 'no image data');

  const vp8x = kept.find((c) => c.fourcc === 'VP8X');
  const writeOrientation = orientation !== undefined && orientation !== 1 && vp8x !== undefined;
  const body: Buffer[] = [];
  for (const { fourcc, data } of kept) {
    if (fourcc === 'VP8X') {
      if (data.length < 10) throw reject.corrupt('WebP', 'short VP8X chunk');
      const fixed = Buffer.from(data);
      const hasIcc = kept.some((c) => c.fourcc === 'ICCP');
      let flags = fixed[0]! & ~(VP8X_EXIF | VP8X_XMP | VP8X_ICC);
      if (hasIcc) flags |= VP8X_ICC;
      if (writeOrientation) flags |= VP8X_EXIF;
      fixed[0] = flags;
      body.push(...chunk(fourcc, fixed));
    } else {
      body.push(...chunk(fourcc, data));
    }
  }
  // The container spec puts EXIF after the image data.
  if (writeOrientation) body.push(...chunk('EXIF', minimalOrientationTiff(orientation!)));

  const size = 4 + body.reduce((sum, b) => sum + b.length, 0);
  const header = Buffer.alloc(12);
  header.write('RIFF', 0, 'latin1');
  header.writeUInt32LE(size, 4);
  header.write('WEBP', 8, 'latin1');
  return { parts: [header, ...body], removed, orientation: writeOrientation ? orientation! : 1 };
}
