/**
 * Lossless TIFF rebuild, byte for byte like the other formats (issue 16; it was a sharp
 * re-encode, which turned 16-bit images into 8-bit ones):
 *   - a new header and one IFD holding only what a decoder needs to draw the first image
 *     (`decoderTags`), each value copied from the original in its own byte order;
 *   - the strips or tiles copied unchanged, one after another, with their offsets rewritten;
 *   - nothing else: EXIF, GPS and GeoTIFF tags, XMP (700), IPTC (33723), Photoshop (34377, 37724),
 *     DNG and private tags, SubIFDs and every further IFD.
 * Multi-page policy: the first page is kept and the rest are removed (reported as `pages`); a
 * render job draws one picture. Old-style JPEG (compression 6) and BigTIFF are refused.
 */
import { countRemoved, type Removed } from '../context.js';
import { reject, ScrubError } from '../errors.js';
import { canonicalIcc } from '../formats/icc.js';
import { exifCategories, readerFor, readIfd, type Entry, type Reader } from '../formats/tiff-ifd.js';
import { WorkBudget } from '../formats/work-budget.js';
import type { ImageStripResult } from './strip-image.js';

const FORMAT = 'TIFF';

/** Bytes per value of each TIFF 6 field type. */
const typeSizes: Record<number, number> = { 1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4 };

const TAG = {
  width: 256,
  height: 257,
  compression: 259,
  stripOffsets: 273,
  orientation: 274,
  stripByteCounts: 279,
  tileOffsets: 324,
  tileByteCounts: 325,
  jpegTables: 347,
  xmp: 700,
  iptc: 33723,
  photoshop: 34377,
  imageSourceData: 37724,
} as const;

/**
 * What a decoder needs to draw the image, and nothing that describes who, where or when: size,
 * sample layout, compression and its parameters, strips or tiles, colour map, YCbCr fields,
 * extra samples, resolution, orientation, colour (ICC, white point, primaries, transfer).
 */
export const decoderTags: ReadonlySet<number> = new Set([
  254, // NewSubfileType
  256, 257, // ImageWidth, ImageLength
  258, 259, 262, 266, // BitsPerSample, Compression, PhotometricInterpretation, FillOrder
  273, 274, 277, 278, 279, // StripOffsets, Orientation, SamplesPerPixel, RowsPerStrip, StripByteCounts
  282, 283, 284, 296, // XResolution, YResolution, PlanarConfiguration, ResolutionUnit
  301, 317, 318, 319, 320, // TransferFunction, Predictor, WhitePoint, PrimaryChromaticities, ColorMap
  322, 323, 324, 325, // TileWidth, TileLength, TileOffsets, TileByteCounts
  332, 338, 339, 340, 341, // InkSet, ExtraSamples, SampleFormat, SMinSampleValue, SMaxSampleValue
  347, // JPEGTables (rebuilt to its tables alone)
  529, 530, 531, 532, // YCbCrCoefficients, YCbCrSubSampling, YCbCrPositioning, ReferenceBlackWhite
  34675, // ICC profile
]);

/** GeoTIFF: where the picture is on Earth. */
const geoTags = new Set([33550, 33922, 34264, 34735, 34736, 34737]);

interface Kept {
  tag: number;
  type: number;
  count: number;
  value: Buffer;
}

function valueOf(input: Buffer, reader: Reader, entry: Entry): Buffer {
  const unit = typeSizes[entry.type];
  if (unit === undefined) throw reject.corrupt(FORMAT, `a tag of unknown type ${entry.type}`);
  const size = unit * entry.count;
  const at = size <= 4 ? entry.valueAt : reader.u32(entry.valueAt);
  if (at + size > input.length) throw reject.corrupt(FORMAT, 'a tag value runs past the end of the file');
  return input.subarray(at, at + size);
}

/** The numbers of a SHORT or LONG array (strip and tile offsets and byte counts). */
function numbers(reader: Reader, input: Buffer, entry: Entry, budget: WorkBudget): number[] {
  if (entry.type !== 3 && entry.type !== 4) throw reject.corrupt(FORMAT, 'strip or tile offsets that are not SHORT or LONG');
  const value = valueOf(input, reader, entry);
  budget.spend(entry.count);
  const start = value.byteOffset - input.byteOffset;
  return Array.from({ length: entry.count }, (_, i) => (entry.type === 3 ? reader.u16(start + 2 * i) : reader.u32(start + 4 * i)));
}

/**
 * JPEGTables is an abbreviated JPEG stream; only its quantisation and Huffman tables matter (an
 * APPn or COM in it would be metadata). Rebuilt as SOI, those segments, EOI.
 */
function tablesOnly(stream: Buffer): Buffer {
  if (stream.length < 4 || stream[0] !== 0xff || stream[1] !== 0xd8) throw reject.corrupt(FORMAT, 'JPEGTables is not a JPEG stream');
  const parts: Buffer[] = [stream.subarray(0, 2)];
  let pos = 2;
  while (pos + 2 <= stream.length) {
    if (stream[pos] !== 0xff) throw reject.corrupt(FORMAT, 'JPEGTables is malformed');
    const marker = stream[pos + 1]!;
    if (marker === 0xd9) break;
    if (pos + 4 > stream.length) throw reject.corrupt(FORMAT, 'JPEGTables is truncated');
    const end = pos + 2 + stream.readUInt16BE(pos + 2);
    if (end > stream.length) throw reject.corrupt(FORMAT, 'JPEGTables is truncated');
    if (marker === 0xdb || marker === 0xc4 || marker === 0xdd) parts.push(stream.subarray(pos, end));
    pos = end;
  }
  parts.push(Buffer.from([0xff, 0xd9]));
  return Buffer.concat(parts);
}

export function stripTiff(input: Buffer, limits: { maxInputPixels: number }): ImageStripResult {
  if (input.length >= 4 && (input.toString('latin1', 0, 4) === 'II+\0' || input.toString('latin1', 0, 4) === 'MM\0+')) {
    throw reject.structure(FORMAT, 'a BigTIFF');
  }
  const reader = readerFor(input);
  if (!reader) throw reject.corrupt(FORMAT, 'no TIFF header');
  const ifd = readIfd(reader, reader.u32(4));
  if (!ifd) throw reject.corrupt(FORMAT, 'the first image directory is outside the file');
  const budget = new WorkBudget(FORMAT);
  budget.spend(ifd.entries.length);

  const removed: Removed = {};
  // A TIFF is its own EXIF container: what its directories carry is reported as EXIF's is.
  for (const category of exifCategories(input)) countRemoved(removed, category === 'thumbnail' ? 'pages' : category);
  const kept: Kept[] = [];
  const entry = (tag: number): Entry | undefined => ifd.entries.find((e) => e.tag === tag);
  for (const e of ifd.entries) {
    if (decoderTags.has(e.tag)) {
      if (kept.some((k) => k.tag === e.tag)) throw reject.corrupt(FORMAT, 'a tag given twice');
      kept.push({ tag: e.tag, type: e.type, count: e.count, value: valueOf(input, reader, e) });
    } else if (e.tag === TAG.xmp) countRemoved(removed, 'xmp');
    else if (e.tag === TAG.iptc || e.tag === TAG.photoshop) countRemoved(removed, 'iptc');
    else if (geoTags.has(e.tag)) countRemoved(removed, 'gps');
    else if (e.tag === TAG.imageSourceData) countRemoved(removed, 'other');
  }

  const number = (tag: number): number | undefined => {
    const e = entry(tag);
    return e && e.count === 1 && (e.type === 3 || e.type === 4) ? numbers(reader, input, e, budget)[0] : undefined;
  };
  const width = number(TAG.width);
  const height = number(TAG.height);
  if (!width || !height) throw reject.corrupt(FORMAT, 'no image size');
  if (width * height > limits.maxInputPixels) {
    throw reject.pixels(width, height, limits.maxInputPixels);
  }
  if (number(TAG.compression) === 6) throw reject.structure(FORMAT, 'old-style JPEG compression (6)');
  // A camera raw file built on TIFF (NEF, ARW, PEF ...): its first picture is a reduced-size
  // preview and the photo lies in a SubIFD. Cleaning it would hand on the preview as the photo.
  if (((number(254) ?? 0) & 1) === 1 && entry(330) !== undefined) {
    throw new ScrubError('unsupported_type', 'The file is a camera raw image: its first picture is only a preview of the raw data. Export it as JPEG or TIFF and send that.');
  }

  // The image data: strips or tiles, each copied as it is.
  const tiled = entry(TAG.tileOffsets) !== undefined;
  const offsetsEntry = entry(tiled ? TAG.tileOffsets : TAG.stripOffsets);
  const countsEntry = entry(tiled ? TAG.tileByteCounts : TAG.stripByteCounts);
  if (!offsetsEntry || !countsEntry) throw reject.corrupt(FORMAT, 'no strip or tile offsets and byte counts');
  const offsets = numbers(reader, input, offsetsEntry, budget);
  const counts = numbers(reader, input, countsEntry, budget);
  if (offsets.length !== counts.length || offsets.length === 0) throw reject.corrupt(FORMAT, 'strip or tile offsets and byte counts do not match');
  // The other layout's tags would point into the new file at random: they go.
  const unused = new Set<number>(tiled ? [TAG.stripOffsets, TAG.stripByteCounts, 278] : [TAG.tileOffsets, TAG.tileByteCounts, 322, 323]);
  kept.splice(0, kept.length, ...kept.filter((k) => !unused.has(k.tag)));
  const blocks = offsets.map((offset, i) => {
    const end = offset + counts[i]!;
    if (end > input.length) throw reject.corrupt(FORMAT, 'image data runs past the end of the file');
    return input.subarray(offset, end);
  });

  const icc = kept.find((k) => k.tag === 34675);
  if (icc) {
    // The profile rebuilt from its fields (formats/icc.ts), as an UNDEFINED array.
    const rebuilt = canonicalIcc(icc.value, 'TIFF');
    if (rebuilt.changed) countRemoved(removed, 'profileText');
    icc.value = rebuilt.profile;
    icc.count = rebuilt.profile.length;
    icc.type = 7;
  }

  const tables = kept.find((k) => k.tag === TAG.jpegTables);
  if (tables) {
    tables.value = tablesOnly(tables.value);
    tables.count = tables.value.length;
    tables.type = 7;
  }

  // Layout: header, the IFD, out-of-line values (word-aligned), then the image data.
  kept.sort((a, b) => a.tag - b.tag);
  const little = input[0] === 0x49;
  const offsetsTag = tiled ? TAG.tileOffsets : TAG.stripOffsets;
  const offsetsKept = kept.find((k) => k.tag === offsetsTag)!;
  offsetsKept.type = 4;
  offsetsKept.value = Buffer.alloc(4 * blocks.length);
  const ifdSize = 2 + kept.length * 12 + 4;
  let valuesSize = 0;
  for (const k of kept) if (k.value.length > 4) valuesSize += k.value.length + (k.value.length % 2);
  const dataStart = 8 + ifdSize + valuesSize;
  const head = Buffer.alloc(dataStart);
  const u16 = (v: number, at: number): number => (little ? head.writeUInt16LE(v, at) : head.writeUInt16BE(v, at));
  const u32 = (v: number, at: number): number => (little ? head.writeUInt32LE(v, at) : head.writeUInt32BE(v, at));
  let at = dataStart;
  blocks.forEach((block, i) => {
    little ? offsetsKept.value.writeUInt32LE(at, 4 * i) : offsetsKept.value.writeUInt32BE(at, 4 * i);
    at += block.length;
  });
  head.write(little ? 'II' : 'MM', 0, 'latin1');
  u16(42, 2);
  u32(8, 4);
  u16(kept.length, 8);
  let valueAt = 8 + ifdSize;
  kept.forEach((k, i) => {
    const entryAt = 10 + 12 * i;
    u16(k.tag, entryAt);
    u16(k.type, entryAt + 2);
    u32(k.count, entryAt + 4);
    if (k.value.length <= 4) {
      k.value.copy(head, entryAt + 8);
    } else {
      u32(valueAt, entryAt + 8);
      k.value.copy(head, valueAt);
      valueAt += k.value.length + (k.value.length % 2);
    }
  });
  // The next-IFD pointer after the entries stays 0: one page.
  const orientation = number(TAG.orientation);
  return { parts: [head, ...blocks], removed, orientation: orientation !== undefined && orientation >= 1 && orientation <= 8 ? orientation : 1 };
}
