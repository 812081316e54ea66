/**
 * A PNG's image data: one zlib stream, spread over the IDAT chunks (or, for an APNG frame, over its
 * fdAT chunks after their sequence numbers). Decoders stop at the stream's end, and at the picture's
 * last row, so bytes after either ride along unseen: text after the stream's Adler-32, or rows a
 * picture of this size does not have (issue 26). This finds where the stream ends and proves it
 * inflates to exactly the rows IHDR (or fcTL) describes. The inflate is zlib's own, bounded by that
 * size, so its cost and memory are those of the picture the pixel budget already allowed.
 */
import { crc32, inflateSync } from 'node:zlib';

/** A chunk: its length, type, data and the CRC-32 of type and data. */
export function pngChunk(type: string, data: Buffer): Buffer {
  const chunk = Buffer.alloc(12 + data.length);
  chunk.writeUInt32BE(data.length, 0);
  chunk.write(type, 4, 'latin1');
  data.copy(chunk, 8);
  chunk.writeUInt32BE(crc32(chunk.subarray(4, 8 + data.length)), 8 + data.length);
  return chunk;
}

export class PngDataError extends Error {}

export interface PngGeometry {
  bitDepth: number;
  colourType: number;
  interlaced: boolean;
}

const channels: Record<number, number> = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };

/** Adam7's passes: first column and row, then steps (PNG 3rd edition, 8.2). */
const adam7 = [
  [0, 0, 8, 8],
  [4, 0, 8, 8],
  [0, 4, 4, 8],
  [2, 0, 4, 4],
  [0, 2, 2, 4],
  [1, 0, 2, 2],
  [0, 1, 1, 2],
] as const;

/** IHDR's fields, or undefined when its colour type and depth are not a valid pair. */
export function pngGeometry(ihdr: Buffer): PngGeometry | undefined {
  if (ihdr.length < 13) return undefined;
  const bitDepth = ihdr[8]!;
  const colourType = ihdr[9]!;
  if (channels[colourType] === undefined || ![1, 2, 4, 8, 16].includes(bitDepth)) return undefined;
  return { bitDepth, colourType, interlaced: ihdr[12] === 1 };
}

/** The inflated size of a picture of this size: each row's filter byte and its packed samples. */
export function rawDataSize(geometry: PngGeometry, width: number, height: number): number {
  const bitsPerPixel = channels[geometry.colourType]! * geometry.bitDepth;
  const rows = (w: number, h: number): number => (w === 0 || h === 0 ? 0 : h * (1 + Math.ceil((w * bitsPerPixel) / 8)));
  if (!geometry.interlaced) return rows(width, height);
  let total = 0;
  for (const [x0, y0, dx, dy] of adam7) total += rows(Math.ceil(Math.max(0, width - x0) / dx), Math.ceil(Math.max(0, height - y0) / dy));
  return total;
}

/**
 * Where the zlib stream in `data` ends (its Adler-32 included), given the picture's inflated
 * size. Throws PngDataError when the stream is damaged, ends early, or inflates to more or less
 * than the picture.
 */
export function zlibStreamEnd(data: Buffer, expected: number): number {
  // A preset dictionary (FDICT) is not PNG's: zlib would ask for one we do not have.
  if (data.length < 2 || (data[0]! & 0x0f) !== 8 || (data[1]! & 0x20) !== 0) throw new PngDataError('its image data is not a zlib stream');
  let result: { buffer: Buffer; engine: { bytesWritten: number } };
  try {
    // One byte more than the picture holds: inflating it proves the stream has more rows.
    result = inflateSync(data, { info: true, maxOutputLength: Math.max(1, expected + 1) }) as unknown as typeof result;
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === 'ERR_BUFFER_TOO_LARGE') throw new PngDataError('its image data holds more than the picture\'s rows');
    throw new PngDataError(code === 'Z_BUF_ERROR' ? 'its image data ends early' : 'its image data does not inflate');
  }
  if (result.buffer.length !== expected) throw new PngDataError(result.buffer.length > expected ? 'its image data holds more than the picture\'s rows' : 'its image data is shorter than the picture');
  return result.engine.bytesWritten;
}
