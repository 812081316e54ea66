/**
 * Just enough ISOBMFF box reading for the fingerprint's layout and keyframe table, repro's
 * rotation and the verifier's look at an input's sample tables: the top-level boxes of a file,
 * the boxes inside a range of a buffer, and the video tracks of a `moov`. Lenient (a box that
 * does not fit ends the list) and without an allowlist: the stripper and the verifier's
 * structural proof keep their own, strict, readers on purpose.
 */
import type { FileHandle } from 'node:fs/promises';
export interface BoxRange {
  type: string;
  /** First byte of the payload (after the 8-byte header). */
  start: number;
  end: number;
}

export function boxesIn(buf: Buffer, start: number, end: number): BoxRange[] {
  const out: BoxRange[] = [];
  for (let pos = start; pos + 8 <= end; ) {
    const size = buf.readUInt32BE(pos);
    if (size < 8 || pos + size > end) break;
    out.push({ type: buf.toString('latin1', pos + 4, pos + 8), start: pos + 8, end: pos + size });
    pos += size;
  }
  return out;
}

export const childBox = (buf: Buffer, parent: { start: number; end: number }, type: string): BoxRange | undefined =>
  boxesIn(buf, parent.start, parent.end).find((b) => b.type === type);

/** The `trak` boxes of a moov payload [start, end) whose handler is `vide`, in file order. */
export function videoTracks(buf: Buffer, start: number, end: number): BoxRange[] {
  return boxesIn(buf, start, end).filter((trak) => {
    if (trak.type !== 'trak') return false;
    const mdia = childBox(buf, trak, 'mdia');
    const hdlr = mdia && childBox(buf, mdia, 'hdlr');
    return hdlr !== undefined && buf.toString('latin1', hdlr.start + 8, hdlr.start + 12) === 'vide';
  });
}

/** Reads `length` bytes at `position` (fewer at the end of the file). */
export async function readAt(file: FileHandle, position: number, length: number): Promise<Buffer> {
  const buffer = Buffer.alloc(length);
  const { bytesRead } = await file.read(buffer, 0, length, position);
  return buffer.subarray(0, bytesRead);
}

/**
 * The top-level boxes of a file, from their headers only (a 1 GB video costs a few small reads),
 * up to the first header that does not fit. `start` is the payload, `box` the header's offset.
 */
export async function topLevelBoxes(file: FileHandle, size: number, max = 100_000): Promise<Array<BoxRange & { box: number }>> {
  const out: Array<BoxRange & { box: number }> = [];
  for (let pos = 0; pos + 8 <= size && out.length < max; ) {
    const h = await readAt(file, pos, 16);
    let boxSize = h.readUInt32BE(0);
    let header = 8;
    if (boxSize === 1) {
      boxSize = Number(h.readBigUInt64BE(8));
      header = 16;
    } else if (boxSize === 0) boxSize = size - pos;
    if (boxSize < header || pos + boxSize > size) break;
    out.push({ type: h.toString('latin1', 4, 8), box: pos, start: pos + header, end: pos + boxSize });
    pos += boxSize;
  }
  return out;
}
