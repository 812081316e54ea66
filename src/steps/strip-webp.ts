/**
 * Lossless WebP rebuild (../shared/METADATA.md, WebP): RIFF chunks from an allowlist, the RIFF
 * size fixed up. VP8X, ANIM, each ANMF frame's header and ALPH's header byte are written anew from
 * their fields at their fixed lengths, and an ANMF frame keeps only its image sub-chunks (ALPH,
 * VP8, VP8L): issue 26 found an EXIF sub-chunk copied along inside a frame. A non-1 EXIF
 * orientation survives as an EXIF chunk holding only Orientation, as for JPEG.
 */
import { countRemoved, type Removed } from '../context.js';
import { reject } from '../errors.js';
import { canonicalIcc } from '../formats/icc.js';
import { exifCategories, minimalOrientationTiff, readOrientation } from '../formats/tiff-ifd.js';
import type { ImageStripResult } from './strip-image.js';

const keep = new Set(['VP8 ', 'VP8L', 'VP8X', 'ALPH', 'ANIM', 'ANMF', 'ICCP']);
const VP8X_ICC = 0x20;
const VP8X_ALPHA = 0x10;
const VP8X_EXIF = 0x08;
const VP8X_ANIMATION = 0x02;
const frameChunks = new Set(['ALPH', 'VP8 ', 'VP8L']);

function chunk(fourcc: string, data: Buffer): Buffer[] {
  const header = Buffer.alloc(8);
  header.write(fourcc, 0, 'latin1');
  header.writeUInt32LE(data.length, 4);
  return data.length % 2 === 1 ? [header, data, Buffer.alloc(1)] : [header, data];
}

/** ALPH: a header byte (2 reserved bits, preprocessing, filtering, compression), then coded alpha. */
function alphaChunk(data: Buffer): Buffer {
  if (data.length < 1) throw reject.corrupt('WebP', 'empty ALPH chunk');
  return Buffer.concat([Buffer.from([data[0]! & 0x3f]), data.subarray(1)]);
}

/**
 * ANMF: 16 bytes of fields (offsets, size, duration, and two flag bits: blending, disposal), then
 * the frame's own chunks, of which only the image ones are kept.
 */
function animationFrame(data: Buffer, removed: Removed): Buffer {
  if (data.length < 16) throw reject.corrupt('WebP', 'short ANMF chunk');
  const fields = Buffer.from(data.subarray(0, 16));
  fields[15] = fields[15]! & 0x03;
  const parts: Buffer[] = [fields];
  let image = false;
  for (let pos = 16; pos < data.length; ) {
    if (pos + 8 > data.length) throw reject.corrupt('WebP', 'truncated chunk inside a frame');
    const fourcc = data.toString('latin1', pos, pos + 4);
    const size = data.readUInt32LE(pos + 4);
    const end = pos + 8 + size;
    if (end > data.length) throw reject.corrupt('WebP', 'a chunk inside a frame runs past it');
    const payload = data.subarray(pos + 8, end);
    pos = end + (size % 2);
    if (!frameChunks.has(fourcc)) {
      countRemoved(removed, fourcc === 'EXIF' ? 'exif' : fourcc === 'XMP ' ? 'xmp' : 'other');
      continue;
    }
    image ||= fourcc !== 'ALPH';
    parts.push(...chunk(fourcc, fourcc === 'ALPH' ? alphaChunk(payload) : payload));
  }
  if (!image) throw reject.corrupt('WebP', 'an animation frame without image data');
  return Buffer.concat(parts);
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
    if (fourcc === 'ICCP') {
      // The profile rebuilt from its fields (formats/icc.ts).
      const rebuilt = canonicalIcc(data, 'WebP');
      if (rebuilt.changed) countRemoved(removed, 'profileText');
      kept.push({ fourcc, data: rebuilt.profile });
    } else if (keep.has(fourcc)) {
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
      if (data.length > 10 || data[1] !== 0 || data[2] !== 0 || data[3] !== 0) countRemoved(removed, 'other');
      // Flags (only the ones the format defines), three reserved bytes, the canvas size.
      const fixed = Buffer.alloc(10);
      let flags = data[0]! & (VP8X_ALPHA | VP8X_ANIMATION);
      if (kept.some((c) => c.fourcc === 'ICCP')) flags |= VP8X_ICC;
      if (writeOrientation) flags |= VP8X_EXIF;
      fixed[0] = flags;
      data.copy(fixed, 4, 4, 10);
      body.push(...chunk(fourcc, fixed));
    } else if (fourcc === 'ANIM') {
      if (data.length < 6) throw reject.corrupt('WebP', 'short ANIM chunk');
      if (data.length > 6) countRemoved(removed, 'other');
      body.push(...chunk(fourcc, Buffer.from(data.subarray(0, 6))));
    } else if (fourcc === 'ANMF') {
      body.push(...chunk(fourcc, animationFrame(data, removed)));
    } else if (fourcc === 'ALPH') {
      body.push(...chunk(fourcc, alphaChunk(data)));
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
