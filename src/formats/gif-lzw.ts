/**
 * Where a GIF image's LZW data ends (GIF89a appendix F; issue 26): the code stream is walked,
 * code widths and table growth only, no pixels, to the end-of-information code, or to the code
 * that completes the frame's pixels in a stream that has none. Data sub-blocks after that are
 * read by no decoder, so text there would ride along unseen.
 *
 * The canonical image data is the stream up to that code, its last byte's unused high bits
 * cleared, cut into 255-byte sub-blocks (the last one shorter) and the block terminator: what
 * every GIF encoder writes. Linear in the data.
 */
import { reject } from '../errors.js';

export interface LzwData {
  /** The canonical sub-blocks and terminator, to write after the minimum code size byte. */
  blocks: Buffer;
  /** The input's sub-blocks already were exactly these. */
  canonical: boolean;
}

/**
 * The canonical image data of a frame of `pixels` pixels whose LZW minimum code size is `minimum`,
 * from its data sub-blocks `raw` (sizes included, terminator included).
 */
export function lzwImageData(raw: Buffer, minimum: number, pixels: number): LzwData {
  if (minimum < 2 || minimum > 11) throw reject.corrupt('GIF', 'an LZW minimum code size out of range');
  // The sub-blocks' bytes, in one stream.
  const chunks: Buffer[] = [];
  let at = 0;
  for (;;) {
    const size = raw[at];
    if (size === undefined) throw reject.corrupt('GIF', 'truncated data sub-blocks');
    if (size === 0) break;
    chunks.push(raw.subarray(at + 1, at + 1 + size));
    at += 1 + size;
  }
  const stream = Buffer.concat(chunks);
  const end = codeStreamEnd(stream, minimum, pixels);
  const bytes = Buffer.from(stream.subarray(0, Math.ceil(end / 8)));
  if (end % 8 !== 0) bytes[bytes.length - 1]! &= (1 << end % 8) - 1;
  const canonical = dataSubBlocks(bytes);
  return { blocks: canonical, canonical: canonical.equals(raw.subarray(0, at + 1)) };
}

/** Bytes as GIF data sub-blocks, as every encoder cuts them: 255 at a time, then the 0 terminator. */
export function dataSubBlocks(bytes: Buffer): Buffer {
  const blocks: Buffer[] = [];
  for (let from = 0; from < bytes.length; from += 255) {
    const block = bytes.subarray(from, from + 255);
    blocks.push(Buffer.from([block.length]), block);
  }
  return Buffer.concat([...blocks, Buffer.from([0])]);
}

/** The bit position just after the last code a decoder reads. */
function codeStreamEnd(stream: Buffer, minimum: number, pixels: number): number {
  const clear = 1 << minimum;
  const endOfInformation = clear + 1;
  // Each table entry's string length, to count the pixels the codes produce.
  const lengths = new Uint16Array(4096);
  lengths.fill(1, 0, clear);
  let width = minimum + 1;
  let next = endOfInformation + 1;
  let previous = -1;
  let produced = 0;
  let bit = 0;
  const total = stream.length * 8;
  while (bit + width <= total) {
    let code = 0;
    for (let i = 0; i < width; i++, bit++) code |= ((stream[bit >> 3]! >> (bit & 7)) & 1) << i;
    if (code === clear) {
      width = minimum + 1;
      next = endOfInformation + 1;
      previous = -1;
      continue;
    }
    if (code === endOfInformation) return bit;
    if (previous < 0) {
      if (code >= clear) throw reject.corrupt('GIF', 'LZW data starting with a code not in its table');
      produced += 1;
    } else {
      if (code > next) throw reject.corrupt('GIF', 'LZW data with a code not yet in its table');
      const length = code === next ? lengths[previous]! + 1 : lengths[code]!;
      produced += length;
      if (next < 4096) {
        lengths[next] = lengths[previous]! + 1;
        next++;
        if (next === 1 << width && width < 12) width++;
      }
    }
    previous = code;
    if (produced >= pixels) {
      // The frame is complete; an end code right after it belongs to the stream too.
      const after = bit;
      if (after + width <= total) {
        let peek = 0;
        for (let i = 0; i < width; i++) peek |= ((stream[(after + i) >> 3]! >> ((after + i) & 7)) & 1) << i;
        if (peek === endOfInformation) return after + width;
      }
      return after;
    }
  }
  throw reject.corrupt('GIF', 'LZW data that ends before its frame does');
}
