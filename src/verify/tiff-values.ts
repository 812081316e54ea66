/**
 * The verifier's own walk of a TIFF/EXIF block (kept apart from formats/tiff-ifd.ts, which the
 * strippers use): follows IFD0, the Exif, GPS and Interop IFDs, SubIFDs and the IFD chain, and
 * hands every value that could identify someone to the collector.
 */
import type { ValueCollector } from './values.js';

const pointerTags = new Set([0x8769, 0x8825, 0xa005, 0x014a]);
const typeSizes: Record<number, number> = { 1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4 };
const maxIfds = 64;
const TAG_ICC = 0x8773;
const TAG_XMP = 0x02bc;
const TAG_JPEG_TABLES = 0x015b;

export interface TiffTag {
  ifd: number;
  tag: number;
  type: number;
  count: number;
  /** Where the value lies in the block, and its size in bytes (0 for an unknown type). */
  valueAt: number;
  size: number;
}

/** Collects values and returns the tags seen (for the TIFF structure check). */
export function tiffValues(block: Uint8Array, into: ValueCollector | undefined): TiffTag[] {
  const seen: TiffTag[] = [];
  if (block.length < 8) return seen;
  const view = new DataView(block.buffer, block.byteOffset, block.byteLength);
  const little = block[0] === 0x49;
  if (!little && block[0] !== 0x4d) return seen;
  const u16 = (at: number): number => view.getUint16(at, little);
  const u32 = (at: number): number => view.getUint32(at, little);
  const queue: number[] = [u32(4)];
  const visited = new Set<number>();

  while (queue.length > 0 && visited.size < maxIfds) {
    const ifd = queue.shift()!;
    if (visited.has(ifd) || ifd < 8 || ifd + 2 > block.length) continue;
    visited.add(ifd);
    const count = u16(ifd);
    if (ifd + 2 + count * 12 + 4 > block.length) continue;
    for (let i = 0; i < count; i++) {
      const at = ifd + 2 + i * 12;
      const tag = u16(at);
      const type = u16(at + 2);
      const n = u32(at + 4);
      const size = (typeSizes[type] ?? 0) * n;
      const valueAt = size <= 4 ? at + 8 : u32(at + 8);
      seen.push({ ifd, tag, type, count: n, valueAt, size });
      if (size === 0 || valueAt + size > block.length) continue;
      const value = block.subarray(valueAt, valueAt + size);
      if (pointerTags.has(tag) && (type === 4 || type === 13)) {
        // One pointer sits in the entry itself; SubIFDs may list several elsewhere.
        for (let k = 0; k < n && k < 16; k++) queue.push(u32(valueAt + 4 * k));
        continue;
      }
      // The colour profile is rebuilt and checked on its own (formats/icc.ts), and JPEGTables
      // holds the coding tables of JPEG-compressed strips (libtiff's default for sharp's TIFF),
      // which the output shares with the input by design: neither is a value to look for.
      if (!into || tag === TAG_ICC || tag === TAG_JPEG_TABLES) continue;
      if (tag === TAG_XMP) {
        into.xml(Buffer.from(value).toString('utf8'));
      } else if (type === 2) {
        for (const part of Buffer.from(value).toString('latin1').split('\0')) into.text(part);
      } else if (type === 1 || type === 7) {
        into.bytes(value);
        into.printableRuns(value);
        if (tag >= 0x9c9b && tag <= 0x9c9f) into.text(Buffer.from(value).toString('utf16le')); // XP* tags
      } else if (type === 5 && n === 3 && (tag === 2 || tag === 4)) {
        // GPS latitude/longitude as three rationals: the raw 24 bytes and the decimal degrees.
        into.bytes(value);
        const rational = (k: number): number => {
          const den = u32(valueAt + 8 * k + 4);
          return den === 0 ? 0 : u32(valueAt + 8 * k) / den;
        };
        into.coordinate(rational(0) + rational(1) / 60 + rational(2) / 3600);
      }
    }
    const next = u32(ifd + 2 + count * 12);
    if (next !== 0) queue.push(next);
  }
  return seen;
}
