/**
 * Just enough TIFF/EXIF IFD reading for the strippers: find the orientation, and say which
 * metadata categories an EXIF block carries (for the removal report). Values are never returned
 * except Orientation, which is a closed 1–8 vocabulary. Every offset is bounds-checked: EXIF
 * blocks in the wild point anywhere.
 */
import type { RemovedCategory } from '../context.js';

const TAG_ORIENTATION = 0x0112;
const TAG_EXIF_IFD = 0x8769;
const TAG_GPS_IFD = 0x8825;
const TAG_MAKER_NOTE = 0x927c;

export interface Reader {
  u16(offset: number): number;
  u32(offset: number): number;
  length: number;
}

export function readerFor(tiff: Uint8Array): Reader | undefined {
  if (tiff.length < 8) return undefined;
  const view = new DataView(tiff.buffer, tiff.byteOffset, tiff.byteLength);
  const little = tiff[0] === 0x49 && tiff[1] === 0x49;
  const big = tiff[0] === 0x4d && tiff[1] === 0x4d;
  if (!little && !big) return undefined;
  if (view.getUint16(2, little) !== 42) return undefined;
  return {
    u16: (offset) => view.getUint16(offset, little),
    u32: (offset) => view.getUint32(offset, little),
    length: tiff.length,
  };
}

export interface Entry {
  tag: number;
  type: number;
  count: number;
  /** Offset of the 4-byte value/offset field. */
  valueAt: number;
}

export function readIfd(reader: Reader, offset: number): { entries: Entry[]; next: number } | undefined {
  if (offset < 8 || offset + 2 > reader.length) return undefined;
  const count = reader.u16(offset);
  if (offset + 2 + count * 12 + 4 > reader.length) return undefined;
  const entries: Entry[] = [];
  for (let i = 0; i < count; i++) {
    const at = offset + 2 + i * 12;
    entries.push({ tag: reader.u16(at), type: reader.u16(at + 2), count: reader.u32(at + 4), valueAt: at + 8 });
  }
  return { entries, next: reader.u32(offset + 2 + count * 12) };
}

/** Orientation 1–8 from IFD0, or undefined when absent or malformed. */
export function readOrientation(tiff: Uint8Array): number | undefined {
  const reader = readerFor(tiff);
  if (!reader) return undefined;
  const ifd0 = readIfd(reader, reader.u32(4));
  const entry = ifd0?.entries.find((e) => e.tag === TAG_ORIENTATION);
  if (!entry || entry.type !== 3 || entry.count < 1) return undefined;
  const value = reader.u16(entry.valueAt);
  return value >= 1 && value <= 8 ? value : undefined;
}

/** Categories present in an EXIF/TIFF metadata block, for the removal report. */
export function exifCategories(tiff: Uint8Array): RemovedCategory[] {
  const found: RemovedCategory[] = ['exif'];
  const reader = readerFor(tiff);
  if (!reader) return found;
  const ifd0 = readIfd(reader, reader.u32(4));
  if (!ifd0) return found;
  const pointer = (tag: number): number | undefined => {
    const entry = ifd0.entries.find((e) => e.tag === tag);
    return entry ? reader.u32(entry.valueAt) : undefined;
  };
  const gps = pointer(TAG_GPS_IFD);
  if (gps !== undefined && readIfd(reader, gps)) found.push('gps');
  const exifIfd = pointer(TAG_EXIF_IFD);
  if (exifIfd !== undefined && readIfd(reader, exifIfd)?.entries.some((e) => e.tag === TAG_MAKER_NOTE)) found.push('makerNote');
  if (ifd0.next !== 0 && readIfd(reader, ifd0.next)) found.push('thumbnail');
  return found;
}

/**
 * A TIFF block holding nothing but IFD0 Orientation: how an orientation survives when the
 * rest of EXIF is removed (../shared/METADATA.md, JPEG "Keep").
 */
export function minimalOrientationTiff(orientation: number): Buffer {
  const tiff = Buffer.alloc(26);
  tiff.write('MM', 0, 'latin1');
  tiff.writeUInt16BE(42, 2);
  tiff.writeUInt32BE(8, 4); // IFD0 right after the header
  tiff.writeUInt16BE(1, 8); // one entry
  tiff.writeUInt16BE(TAG_ORIENTATION, 10);
  tiff.writeUInt16BE(3, 12); // SHORT
  tiff.writeUInt32BE(1, 14);
  tiff.writeUInt16BE(orientation, 18);
  tiff.writeUInt32BE(0, 22); // no next IFD, so no thumbnail
  return tiff;
}
