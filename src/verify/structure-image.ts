/**
 * The verifier's structural proof for a cleaned image: walk every structure of the output and
 * refuse unless each is on the allowlist and nothing trails the end (issue 3). Written apart
 * from the strippers on purpose. Returns problems (category words, never values) and the byte
 * ranges of kept colour profiles, which the value scan may not flag.
 */
import type { ImageFormat } from '../media.js';
import { checkHeifStructure } from './heif.js';
import { tiffValues } from './tiff-values.js';

export interface StructureReport {
  problems: string[];
  /** [start, end) ranges holding an ICC profile, copied verbatim from the input on purpose. */
  profileRanges: Array<[number, number]>;
  /**
   * Byte signatures that must occur nowhere in the output outside those ranges, whatever the
   * structure around them. Looked for in the verifier's one pass over the output bytes, with the
   * value scan, rather than in a pass of their own.
   */
  forbidden: Array<{ bytes: Buffer; problem: string }>;
}

/** An EXIF block is allowed only if it holds IFD0 Orientation and nothing else. */
function isOrientationOnly(tiff: Buffer): boolean {
  const tags = tiffValues(tiff, undefined);
  return tags.length === 1 && tags[0]!.tag === 0x0112 && tiff.length <= 26;
}

function walkJpeg(out: Buffer, report: StructureReport): void {
  if (out.readUInt16BE(0) !== 0xffd8) return void report.problems.push('jpeg: no SOI');
  let pos = 2;
  while (pos + 2 <= out.length) {
    if (out[pos] !== 0xff) return void report.problems.push('jpeg: bytes between segments');
    const marker = out[pos + 1]!;
    if (marker === 0xd9) {
      if (pos + 2 !== out.length) report.problems.push('jpeg: data after EOI');
      return;
    }
    if (pos + 4 > out.length) break;
    const length = out.readUInt16BE(pos + 2);
    const payload = out.subarray(pos + 4, pos + 2 + length);
    const id = payload.toString('latin1', 0, 12);
    const allowed =
      (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc8) || // SOFn, DHT, DAC
      marker === 0xdb || marker === 0xdd || marker === 0xdc || marker === 0xda ||
      (marker === 0xe0 && id.startsWith('JFIF\0') && length === 16) ||
      (marker === 0xe1 && id.startsWith('Exif\0\0') && isOrientationOnly(payload.subarray(6))) ||
      (marker === 0xe2 && id === 'ICC_PROFILE\0') ||
      (marker === 0xee && id.startsWith('Adobe') && length <= 16);
    if (!allowed) report.problems.push(`jpeg: segment 0xFF${marker.toString(16).toUpperCase()} not allowed`);
    if (marker === 0xe2) report.profileRanges.push([pos + 4, pos + 2 + length]);
    pos += 2 + length;
    if (marker === 0xda) {
      // Entropy-coded data runs to the first marker that is not stuffing or a restart.
      for (;;) {
        pos = out.indexOf(0xff, pos);
        if (pos < 0 || pos + 1 >= out.length) return void report.problems.push('jpeg: scan without EOI');
        const next = out[pos + 1]!;
        if (next === 0x00 || (next >= 0xd0 && next <= 0xd7) || next === 0xff) pos += 1;
        else break;
      }
    }
  }
  report.problems.push('jpeg: no EOI');
}

const pngAllowed = new Set(['IHDR', 'PLTE', 'IDAT', 'IEND', 'tRNS', 'iCCP', 'sRGB', 'gAMA', 'cHRM', 'cICP', 'mDCV', 'cLLI', 'sBIT', 'pHYs', 'acTL', 'fcTL', 'fdAT']);

function walkPng(out: Buffer, report: StructureReport): void {
  let pos = 8;
  while (pos + 12 <= out.length) {
    const length = out.readUInt32BE(pos);
    const type = out.toString('latin1', pos + 4, pos + 8);
    if (!pngAllowed.has(type)) report.problems.push(`png: chunk not allowed`);
    if (type === 'iCCP') report.profileRanges.push([pos + 8, pos + 8 + length]);
    pos += 12 + length;
    if (type === 'IEND') {
      if (pos !== out.length) report.problems.push('png: data after IEND');
      return;
    }
  }
  report.problems.push('png: no IEND');
}

function walkWebp(out: Buffer, report: StructureReport): void {
  if (out.toString('latin1', 0, 4) !== 'RIFF' || 8 + out.readUInt32LE(4) !== out.length) {
    return void report.problems.push('webp: RIFF size does not match the file');
  }
  let pos = 12;
  while (pos + 8 <= out.length) {
    const fourcc = out.toString('latin1', pos, pos + 4);
    const size = out.readUInt32LE(pos + 4);
    const data = out.subarray(pos + 8, pos + 8 + size);
    const allowed = ['VP8 ', 'VP8L', 'VP8X', 'ALPH', 'ANIM', 'ANMF', 'ICCP'].includes(fourcc) || (fourcc === 'EXIF' && isOrientationOnly(data));
    if (!allowed) report.problems.push('webp: chunk not allowed');
    if (fourcc === 'VP8X' && (data[0]! & 0x04) !== 0) report.problems.push('webp: VP8X declares XMP');
    if (fourcc === 'ICCP') report.profileRanges.push([pos + 8, pos + 8 + size]);
    pos += 8 + size + (size % 2);
  }
  if (pos !== out.length) report.problems.push('webp: chunks do not fill the RIFF');
}

function walkGif(out: Buffer, report: StructureReport): void {
  const packed = out[10] ?? 0;
  let pos = 13 + (packed & 0x80 ? 3 * 2 ** ((packed & 0x07) + 1) : 0);
  const skip = (at: number): number => {
    while (at < out.length && out[at] !== 0) at += 1 + out[at]!;
    return at + 1;
  };
  while (pos < out.length) {
    const introducer = out[pos];
    if (introducer === 0x3b) {
      if (pos + 1 !== out.length) report.problems.push('gif: data after trailer');
      return;
    }
    if (introducer === 0x2c) {
      const flags = out[pos + 9] ?? 0;
      pos = skip(pos + 10 + (flags & 0x80 ? 3 * 2 ** ((flags & 0x07) + 1) : 0) + 1);
      continue;
    }
    const label = out[pos + 1];
    const app = out.toString('latin1', pos + 3, pos + 14);
    if (introducer !== 0x21 || !(label === 0xf9 || (label === 0xff && ['NETSCAPE2.0', 'ANIMEXTS1.0', 'ICCRGBG1012'].includes(app)))) {
      report.problems.push('gif: block not allowed');
    }
    if (label === 0xff && app === 'ICCRGBG1012') report.profileRanges.push([pos, skip(pos + 2)]);
    pos = skip(pos + 2);
  }
  report.problems.push('gif: no trailer');
}

/** Baseline TIFF tags that describe pixels, layout and colour; anything else is metadata. */
const tiffTechnicalTags = new Set([
  0x00fe, 0x0100, 0x0101, 0x0102, 0x0103, 0x0106, 0x0111, 0x0112, 0x0115, 0x0116, 0x0117, 0x011a, 0x011b, 0x011c, 0x0128,
  0x013d, 0x0140, 0x0142, 0x0143, 0x0144, 0x0145, 0x0152, 0x0153, 0x0211, 0x0212, 0x0213, 0x0214, 0x8773,
]);

function walkTiff(out: Buffer, report: StructureReport): void {
  const tags = tiffValues(out, undefined);
  const ifds = new Set(tags.map((t) => t.ifd));
  if (ifds.size !== 1) report.problems.push('tiff: more than one IFD');
  for (const { tag } of tags) if (!tiffTechnicalTags.has(tag)) report.problems.push('tiff: metadata tag present');
}

/** XMP's own markers: in no clean image, whatever its format (outside a kept ICC profile). */
const xmpMarkers = ['<x:xmpmeta', '<rdf:RDF', 'http://ns.adobe.com/xap/1.0/'].map((marker) => ({ bytes: Buffer.from(marker, 'latin1'), problem: 'image: an XMP packet is present' }));

export function checkImageStructure(format: ImageFormat, out: Buffer): StructureReport {
  const report: StructureReport = { problems: [], profileRanges: [], forbidden: xmpMarkers };
  if (format === 'jpeg') walkJpeg(out, report);
  else if (format === 'png') walkPng(out, report);
  else if (format === 'webp') walkWebp(out, report);
  else if (format === 'gif') walkGif(out, report);
  else if (format === 'tiff') walkTiff(out, report);
  else checkHeifStructure(out, report.problems, report.profileRanges);
  return report;
}
