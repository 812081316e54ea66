/**
 * Lossless GIF rebuild (../shared/METADATA.md, GIF): image blocks and the ICC application
 * extension are copied; graphic control extensions and the animation loop are written anew from
 * their fields (issue 26: extra data sub-blocks after either were copied along, with any text);
 * comments, plain text, other application extensions (XMP DataXMP …) and bytes after the trailer
 * go.
 */
import { countRemoved, type Removed } from '../context.js';
import { reject } from '../errors.js';
import { dataSubBlocks, lzwImageData } from '../formats/gif-lzw.js';
import { canonicalIcc } from '../formats/icc.js';
import type { ImageStripResult } from './strip-image.js';

const loopApplications = new Set(['NETSCAPE2.0', 'ANIMEXTS1.0']);

/** The data sub-blocks of a chain starting at `pos`, without their terminator. */
function subBlocks(input: Buffer, pos: number): Buffer[] {
  const blocks: Buffer[] = [];
  for (;;) {
    const size = input[pos]!;
    if (size === 0) return blocks;
    blocks.push(input.subarray(pos + 1, pos + 1 + size));
    pos += 1 + size;
  }
}

/** A Graphic Control Extension from its fields: disposal, user input and transparency flags, delay, transparent index. */
function graphicControl(fields: Buffer): Buffer {
  return Buffer.from([0x21, 0xf9, 0x04, fields[0]! & 0x1f, fields[1]!, fields[2]!, fields[3]!, 0x00]);
}

/** The NETSCAPE2.0 looping extension from its one field, the loop count (0 = for ever). */
function loopExtension(loops: number): Buffer {
  return Buffer.concat([Buffer.from([0x21, 0xff, 0x0b]), Buffer.from('NETSCAPE2.0', 'latin1'), Buffer.from([0x03, 0x01, loops & 0xff, loops >> 8, 0x00])]);
}

/** The ICC application extension, its profile rebuilt from its fields (formats/icc.ts), in sub-blocks of 255. */
function iccExtension(profile: Buffer, removed: Removed): Buffer {
  const rebuilt = canonicalIcc(profile, 'GIF');
  if (rebuilt.changed) countRemoved(removed, 'profileText');
  return Buffer.concat([Buffer.from([0x21, 0xff, 0x0b]), Buffer.from('ICCRGBG1012', 'latin1'), dataSubBlocks(rebuilt.profile)]);
}

/** Position just after a chain of data sub-blocks starting at `pos` (ends with a 0 block). */
function skipSubBlocks(input: Buffer, pos: number): number {
  for (;;) {
    if (pos >= input.length) throw reject.corrupt('GIF', 'truncated data sub-blocks');
    const size = input[pos]!;
    pos += 1 + size;
    if (size === 0) return pos;
  }
}

export function stripGif(input: Buffer): ImageStripResult {
  const version = input.toString('latin1', 0, 6);
  if (input.length < 13 || (version !== 'GIF87a' && version !== 'GIF89a')) throw reject.corrupt('GIF', 'bad header');
  const removed: Removed = {};
  const packed = input[10]!;
  const globalTable = packed & 0x80 ? 3 * 2 ** ((packed & 0x07) + 1) : 0;
  let pos = 13 + globalTable;
  if (pos > input.length) throw reject.corrupt('GIF', 'truncated colour table');
  const parts: Buffer[] = [input.subarray(0, pos)];
  let images = 0;

  for (;;) {
    if (pos >= input.length) throw reject.corrupt('GIF', 'truncated before the trailer');
    const introducer = input[pos]!;
    const start = pos;
    if (introducer === 0x3b) {
      parts.push(input.subarray(pos, pos + 1));
      pos += 1;
      break;
    }
    if (introducer === 0x2c) {
      if (pos + 10 > input.length) throw reject.corrupt('GIF', 'truncated image descriptor');
      const flags = input[pos + 9]!;
      const localTable = flags & 0x80 ? 3 * 2 ** ((flags & 0x07) + 1) : 0;
      const dataAt = pos + 10 + localTable + 1; // descriptor, local colour table, LZW minimum code size
      if (dataAt > input.length) throw reject.corrupt('GIF', 'truncated image descriptor');
      pos = skipSubBlocks(input, dataAt);
      // The LZW data up to its end code, in canonical sub-blocks: what follows it goes.
      const pixels = input.readUInt16LE(start + 5) * input.readUInt16LE(start + 7);
      const data = lzwImageData(input.subarray(dataAt, pos), input[dataAt - 1]!, pixels);
      if (!data.canonical) countRemoved(removed, 'other');
      parts.push(input.subarray(start, dataAt), data.blocks);
      images++;
      continue;
    }
    if (introducer !== 0x21 || pos + 2 > input.length) throw reject.corrupt('GIF', 'unknown block');
    const label = input[pos + 1]!;
    const end = skipSubBlocks(input, pos + 2);
    if (label === 0xf9) {
      const [fields, ...extra] = subBlocks(input, pos + 2);
      if (fields?.length !== 4) throw reject.corrupt('GIF', 'a graphic control extension without its four bytes');
      if (extra.length > 0) countRemoved(removed, 'other');
      parts.push(graphicControl(fields));
    } else if (label === 0xff) {
      const blockSize = input[pos + 2]!;
      const identifier = blockSize === 11 ? input.toString('latin1', pos + 3, pos + 14) : '';
      if (identifier === 'ICCRGBG1012') parts.push(iccExtension(Buffer.concat(subBlocks(input, pos + 14)), removed));
      else if (loopApplications.has(identifier)) {
        // Sub-block 1 holds the loop count; others (buffering hints) and anything else go.
        const blocks = subBlocks(input, pos + 14);
        const loop = blocks.find((b) => b.length === 3 && b[0] === 1);
        if (loop) parts.push(loopExtension(loop.readUInt16LE(1)));
        if (!loop || blocks.length > 1 || identifier !== 'NETSCAPE2.0') countRemoved(removed, 'other');
      } else countRemoved(removed, identifier === 'XMP DataXMP' ? 'xmp' : 'vendor');
    } else if (label === 0xfe) {
      countRemoved(removed, 'comment');
    } else if (label === 0x01) {
      countRemoved(removed, 'text');
    } else {
      countRemoved(removed, 'other');
    }
    pos = end;
  }
  if (images === 0) throw reject.corrupt('GIF', 'no image');
  if (pos < input.length) countRemoved(removed, 'trailer');
  return { parts, removed, orientation: 1 };
}
