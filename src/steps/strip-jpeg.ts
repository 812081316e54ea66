/**
 * Lossless JPEG rebuild from an allowlist of markers (../shared/METADATA.md, JPEG). Compressed
 * image data is copied byte for byte; only whole segments are dropped, so pixels are identical.
 *
 * Kept: SOI, DQT, DHT, DAC, SOFn, DRI, DNL, SOS + entropy-coded data, EOI, APP0 JFIF (without
 * its thumbnail), APP2 ICC_PROFILE, APP14 Adobe (rebuilt to its canonical 12 bytes). Dropped:
 * every other APPn, COM, and everything after EOI. Orientation survives as a minimal EXIF holding
 * only Orientation. No segment of variable content is copied verbatim but the coding ones and
 * the ICC profile, which the verifier exempts by position.
 */
import { countRemoved, type Removed, type RemovedCategory } from '../context.js';
import { reject } from '../errors.js';
import { exifCategories, minimalOrientationTiff, readOrientation } from '../formats/tiff-ifd.js';
import type { ImageStripResult } from './strip-image.js';

const SOI = 0xd8;
const EOI = 0xd9;
const SOS = 0xda;

const startsWith = (segment: Buffer, signature: string): boolean =>
  segment.length >= signature.length && segment.toString('latin1', 0, signature.length) === signature;

/** SOFn markers: C0–CF except DHT (C4), JPG (C8) and DAC (CC). */
const isSof = (m: number): boolean => m >= 0xc0 && m <= 0xcf && m !== 0xc4 && m !== 0xc8 && m !== 0xcc;
/** Table and frame markers that rendering needs, kept as they are. */
const isCoding = (m: number): boolean => isSof(m) || m === 0xc4 || m === 0xcc || m === 0xdb || m === 0xdd || m === 0xdc;

/** APPn payloads and the category each one is reported under when dropped. */
function appCategory(marker: number, payload: Buffer): RemovedCategory {
  if (marker === 0xe1) {
    if (startsWith(payload, 'Exif\0')) return 'exif';
    if (startsWith(payload, 'http://ns.adobe.com/xap/1.0/')) return 'xmp';
    if (startsWith(payload, 'http://ns.adobe.com/xmp/extension/')) return 'xmp';
  }
  if (marker === 0xe0 && startsWith(payload, 'JFXX')) return 'thumbnail';
  if (marker === 0xe2 && startsWith(payload, 'MPF\0')) return 'mpf';
  if (marker === 0xed) return 'iptc';
  if (marker === 0xeb) return 'jumbf';
  return 'vendor';
}

export function stripJpeg(input: Buffer): ImageStripResult {
  if (input.length < 4 || input[0] !== 0xff || input[1] !== SOI) throw reject.corrupt('JPEG', 'no start-of-image marker');
  const removed: Removed = {};
  const head: Buffer[] = [];
  const body: Buffer[] = [];
  let orientation: number | undefined;
  let adobeTransform: number | undefined;
  let sawFrame = false;
  let sawScan = false;
  let pos = 2;

  for (;;) {
    // Markers may be preceded by any number of 0xFF fill bytes (T.81 B.1.1.2).
    if (pos >= input.length || input[pos] !== 0xff) throw reject.corrupt('JPEG', 'truncated or malformed marker stream');
    while (pos < input.length && input[pos] === 0xff) pos++;
    if (pos >= input.length) throw reject.corrupt('JPEG', 'truncated before end-of-image');
    const marker = input[pos++]!;

    if (marker === EOI) {
      body.push(input.subarray(pos - 2, pos));
      if (pos < input.length) countRemoved(removed, 'trailer');
      break;
    }
    if (marker === 0x00 || marker === SOI || (marker >= 0xd0 && marker <= 0xd7) || marker === 0x01) {
      throw reject.corrupt('JPEG', 'unexpected marker outside a scan');
    }
    if (pos + 2 > input.length) throw reject.corrupt('JPEG', 'truncated segment header');
    const length = input.readUInt16BE(pos);
    const end = pos + length;
    if (length < 2 || end > input.length) throw reject.corrupt('JPEG', 'segment runs past the end of the file');
    const segment = input.subarray(pos - 2, end);
    const payload = input.subarray(pos + 2, end);
    pos = end;

    if (marker === SOS) {
      if (!sawFrame) throw reject.corrupt('JPEG', 'scan before frame header');
      sawScan = true;
      const scanEnd = findScanEnd(input, pos);
      body.push(segment, input.subarray(pos, scanEnd));
      pos = scanEnd;
      continue;
    }
    if (isCoding(marker)) {
      if (isSof(marker)) sawFrame = true;
      body.push(segment);
      continue;
    }
    if (marker === 0xfe) {
      countRemoved(removed, 'comment');
      continue;
    }
    if (marker < 0xe0 || marker > 0xef) {
      // JPG extensions (F0–FD) and reserved markers: we do not know what they carry.
      throw reject.structure('JPEG', `marker 0xFF${marker.toString(16).toUpperCase()}`);
    }

    // APPn
    if (marker === 0xe0 && startsWith(payload, 'JFIF\0')) {
      head.push(jfifWithoutThumbnail(payload, removed));
      continue;
    }
    if (marker === 0xe2 && startsWith(payload, 'ICC_PROFILE\0')) {
      body.push(segment);
      continue;
    }
    if (marker === 0xee && startsWith(payload, 'Adobe')) {
      // Photoshop and Lightroom write it longer than its 12 bytes; only the transform decides
      // how a decoder reads the colour. libjpeg ignores one shorter than 12 bytes, and the last
      // one wins: one canonical segment with that transform is written.
      // What goes beyond that (a longer payload, a short or an earlier segment) is reported.
      if (payload.length !== 12 || adobeTransform !== undefined) countRemoved(removed, 'vendor');
      if (payload.length >= 12) adobeTransform = payload[11]!;
      continue;
    }
    const category = appCategory(marker, payload);
    if (category === 'exif') {
      const tiff = payload.subarray(6);
      // The first EXIF block is the one decoders read orientation from.
      orientation ??= readOrientation(tiff);
      for (const found of exifCategories(tiff)) countRemoved(removed, found);
    } else {
      countRemoved(removed, category);
    }
  }

  if (!sawFrame || !sawScan) throw reject.corrupt('JPEG', 'no frame or no scan');
  const parts = [input.subarray(0, 2), ...head];
  if (orientation !== undefined && orientation !== 1) parts.push(orientationApp1(orientation));
  if (adobeTransform !== undefined) parts.push(adobeApp14(adobeTransform));
  parts.push(...body);
  return { parts, removed, orientation: orientation ?? 1 };
}

/**
 * End of the entropy-coded data that starts at `from`: the first 0xFF that is neither stuffing
 * (FF00), a restart marker (FFD0–D7) nor fill before one of those.
 */
function findScanEnd(input: Buffer, from: number): number {
  let pos = from;
  for (;;) {
    const ff = input.indexOf(0xff, pos);
    if (ff < 0 || ff + 1 >= input.length) throw reject.corrupt('JPEG', 'scan data is truncated (no end-of-image)');
    let next = ff + 1;
    while (next < input.length && input[next] === 0xff) next++;
    if (next >= input.length) throw reject.corrupt('JPEG', 'scan data is truncated (no end-of-image)');
    const byte = input[next]!;
    if (byte === 0x00 || (byte >= 0xd0 && byte <= 0xd7)) {
      pos = next + 1;
      continue;
    }
    return ff;
  }
}

/** APP0 JFIF can carry an uncompressed thumbnail; keep the 14 header bytes, drop the pixels. */
function jfifWithoutThumbnail(payload: Buffer, removed: Removed): Buffer {
  if (payload.length < 14) throw reject.corrupt('JPEG', 'short JFIF header');
  const thumbnailBytes = payload.length - 14;
  if (thumbnailBytes > 0 || payload[12] !== 0 || payload[13] !== 0) countRemoved(removed, 'thumbnail');
  const segment = Buffer.alloc(4 + 14);
  segment.writeUInt16BE(0xffe0, 0);
  segment.writeUInt16BE(2 + 14, 2);
  payload.copy(segment, 4, 0, 12);
  // Xthumbnail = Ythumbnail = 0 (already zero from alloc).
  return segment;
}

/**
 * APP14 "Adobe" as the DCT filters write it: version 100, no flags, then the colour transform
 * (0 none/CMYK, 1 YCbCr, 2 YCCK). The only byte of it a decoder reads is the transform.
 */
export function adobeApp14(transform: number): Buffer {
  const segment = Buffer.from([0xff, 0xee, 0x00, 0x0e, 0x41, 0x64, 0x6f, 0x62, 0x65, 0x00, 0x64, 0x00, 0x00, 0x00, 0x00, 0x00]);
  segment[15] = transform;
  return segment;
}

function orientationApp1(orientation: number): Buffer {
  const tiff = minimalOrientationTiff(orientation);
  const header = Buffer.alloc(4 + 6);
  header.writeUInt16BE(0xffe1, 0);
  header.writeUInt16BE(2 + 6 + tiff.length, 2);
  header.write('Exif\0\0', 4, 'latin1');
  return Buffer.concat([header, tiff]);
}
