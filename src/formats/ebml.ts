/**
 * Just enough EBML (Matroska, WebM): element headers read with positional reads, so a 1 GB file
 * costs a few small reads. A header that does not fit is no element (undefined). Shared by the
 * stripper and the verifier's structural walk, each of which decides on its own what is allowed.
 */
import type { FileHandle } from 'node:fs/promises';
import { readAt } from './isobmff.js';

export interface EbmlElement {
  id: number;
  /** Offset of the element's first byte (its id). */
  start: number;
  /** Offset and width of its size field. */
  sizeAt: number;
  sizeBytes: number;
  dataStart: number;
  dataEnd: number;
}

export const ebmlIds = {
  segment: 0x18538067,
  tracks: 0x1654ae6b,
  trackEntry: 0xae,
  trackType: 0x83,
  codecId: 0x86,
  codecPrivate: 0x63a2,
  cluster: 0x1f43b675,
  void: 0xec,
} as const;

export async function readElement(file: FileHandle, pos: number, end: number): Promise<EbmlElement | undefined> {
  const head = await readAt(file, pos, 12);
  const first = head[0];
  if (first === undefined || first === 0) return undefined;
  const idLength = Math.clz32(first) - 23;
  if (idLength > 4 || head.length < idLength + 1) return undefined;
  let id = 0;
  for (let i = 0; i < idLength; i++) id = id * 256 + head[i]!;
  const sizeFirst = head[idLength]!;
  if (sizeFirst === 0) return undefined;
  const sizeBytes = Math.clz32(sizeFirst) - 23;
  if (head.length < idLength + sizeBytes) return undefined;
  let size = sizeFirst & (0xff >> sizeBytes);
  let allOnes = size === 0xff >> sizeBytes;
  for (let i = 1; i < sizeBytes; i++) {
    const byte = head[idLength + i]!;
    size = size * 256 + byte;
    if (byte !== 0xff) allOnes = false;
  }
  const dataStart = pos + idLength + sizeBytes;
  // An unknown size (all ones) runs to the end of its parent.
  const dataEnd = allOnes ? end : dataStart + size;
  return dataEnd > end ? undefined : { id, start: pos, sizeAt: pos + idLength, sizeBytes, dataStart, dataEnd };
}

/** The child elements of [start, end), up to `max` of them, stopping at the first Cluster (media follows). */
export async function childElements(file: FileHandle, start: number, end: number, max = 10_000): Promise<EbmlElement[]> {
  const out: EbmlElement[] = [];
  for (let pos = start; pos < end && out.length < max; ) {
    const element = await readElement(file, pos, end);
    if (!element || element.id === ebmlIds.cluster) break;
    out.push(element);
    pos = element.dataEnd;
  }
  return out;
}

/** An EBML size field of exactly `width` bytes (1-8) holding `value`. Pure. */
export function sizeField(value: number, width: number): Buffer {
  if (width < 1 || width > 8 || value >= 2 ** (7 * width) - 1) throw new RangeError('an EBML size that does not fit its width');
  const out = Buffer.alloc(width);
  let rest = value;
  for (let i = width - 1; i >= 0; i--) {
    out[i] = rest % 256;
    rest = Math.floor(rest / 256);
  }
  out[0]! |= 0x80 >> (width - 1);
  return out;
}

/** A Void element of exactly `total` bytes (at least 2): filler a Matroska reader skips. Pure. */
export function voidElement(total: number): Buffer {
  if (total < 2) throw new RangeError('a Void element takes at least 2 bytes');
  const width = total - 1 <= 127 ? 1 : total - 1 <= 16_384 ? 2 : 8;
  return Buffer.concat([Buffer.from([ebmlIds.void]), sizeField(total - 1 - width, width), Buffer.alloc(total - 1 - width)]);
}
