/**
 * The verifier's structural proof for a cleaned video, read from disk with positional reads of
 * box/element headers only (a 1 GB file costs a few thousand small reads, not 1 GB of memory).
 *
 * ISOBMFF (MP4/MOV/M4V/3GP): every box must be on an allowlist tree, so `udta`, `meta`, `uuid`,
 * `ilst`, `keys`, vendor atoms and timed-metadata tracks cannot hide; header times must be zero.
 * Matroska/WebM: no Attachments, Chapters, Title, DateUTC or track names, and Tags only as the
 * per-track DURATION ffmpeg writes itself.
 */
import { open, type FileHandle } from 'node:fs/promises';
// The element header reader is shared; what is allowed where is this walker's own.
import { readElement, type EbmlElement } from '../formats/ebml.js';

/** Box type → the child boxes it may hold. A box not listed as a parent is not descended into. */
const isobmffTree: Record<string, ReadonlySet<string>> = {
  '': new Set(['ftyp', 'moov', 'mdat', 'free', 'skip', 'wide']),
  moov: new Set(['mvhd', 'trak', 'iods']),
  trak: new Set(['tkhd', 'edts', 'mdia', 'tapt']),
  edts: new Set(['elst']),
  mdia: new Set(['mdhd', 'hdlr', 'minf']),
  minf: new Set(['vmhd', 'smhd', 'hdlr', 'dinf', 'stbl']),
  dinf: new Set(['dref']),
  stbl: new Set(['stsd', 'stts', 'stss', 'ctts', 'stsc', 'stsz', 'stz2', 'stco', 'co64', 'sdtp', 'sgpd', 'sbgp', 'cslg', 'stps']),
};
const timedHeaders = new Set(['mvhd', 'tkhd', 'mdhd']);

/**
 * ffmpeg's mp4 muxer always writes this udta: an iTunes-style meta with an empty item list. It
 * is allowed byte for byte and in no other form, so not one tag can ride along in it.
 */
const emptyUdta = Buffer.concat([
  Buffer.from('0000003d75647461', 'hex'), // udta
  Buffer.from('000000356d65746100000000', 'hex'), // meta (full box)
  Buffer.from('0000002168646c72', 'hex'), // hdlr
  Buffer.from('00000000000000006d6469726170706c', 'hex'), // version/flags, pre_defined, 'mdir', 'appl'
  Buffer.alloc(9), // reserved, empty name
  Buffer.from('00000008696c7374', 'hex'), // ilst, empty
]);
const maxBoxes = 100_000;

async function read(file: FileHandle, position: number, length: number): Promise<Buffer> {
  const buffer = Buffer.alloc(length);
  const { bytesRead } = await file.read(buffer, 0, length, position);
  return buffer.subarray(0, bytesRead);
}

async function walkIsobmff(file: FileHandle, size: number, problems: string[]): Promise<void> {
  let boxes = 0;
  const walk = async (parent: string, start: number, end: number, depth: number): Promise<void> => {
    let pos = start;
    while (pos < end) {
      if (++boxes > maxBoxes || depth > 8) return void problems.push('isobmff: too many boxes');
      const header = await read(file, pos, 16);
      if (header.length < 8) return void problems.push('isobmff: truncated box header');
      let boxSize = header.readUInt32BE(0);
      const type = header.toString('latin1', 4, 8);
      let headerSize = 8;
      if (boxSize === 1) {
        if (header.length < 16) return void problems.push('isobmff: truncated box header');
        boxSize = Number(header.readBigUInt64BE(8));
        headerSize = 16;
      } else if (boxSize === 0) {
        boxSize = end - pos;
      }
      if (boxSize < headerSize || pos + boxSize > end) return void problems.push('isobmff: box runs past its parent');
      const allowed = isobmffTree[parent];
      if (!allowed?.has(type) && !(parent === 'moov' && type === 'udta')) problems.push(`isobmff: box not allowed under ${parent || 'top level'}`);
      if (parent === 'moov' && type === 'udta') {
        const body = await read(file, pos, Math.min(boxSize, 4096));
        if (!body.equals(emptyUdta)) problems.push('isobmff: udta with content');
        pos += boxSize;
        continue;
      }
      if (type === 'free' || type === 'skip') {
        const body = await read(file, pos + headerSize, Math.min(boxSize - headerSize, 4096));
        if (boxSize - headerSize > 4096 || body.some((b) => b !== 0)) problems.push('isobmff: free box with content');
      }
      if (timedHeaders.has(type)) {
        const body = await read(file, pos + headerSize, 20);
        const times = body[0] === 1 ? [body.readBigUInt64BE(4), body.readBigUInt64BE(12)] : [BigInt(body.readUInt32BE(4)), BigInt(body.readUInt32BE(8))];
        if (times.some((t) => t !== 0n)) problems.push(`isobmff: ${type} carries a creation or modification time`);
      }
      if (isobmffTree[type]) await walk(type, pos + headerSize, pos + boxSize, depth + 1);
      pos += boxSize;
    }
  };
  await walk('', 0, size, 0);
}

// Matroska element ids (with their length-marker bits, as written).
const EBML = 0x1a45dfa3;
const SEGMENT = 0x18538067;
const segmentChildren = new Map([
  [0x114d9b74, 'SeekHead'],
  [0x1549a966, 'Info'],
  [0x1654ae6b, 'Tracks'],
  [0x1f43b675, 'Cluster'],
  [0x1c53bb6b, 'Cues'],
  [0xec, 'Void'],
  [0x1254c367, 'Tags'],
]);
const INFO_FORBIDDEN = new Set([0x7ba9 /* Title */, 0x4461 /* DateUTC */]);
const TRACKS = 0x1654ae6b;
const TRACK_ENTRY = 0xae;
const TRACK_NAME = 0x536e;
const TAGS = 0x1254c367;
const TAG = 0x7373;
const SIMPLE_TAG = 0x67c8;
const TAG_NAME = 0x45a3;
const TARGETS = 0x63c0;

async function children(file: FileHandle, start: number, end: number, problems: string[]): Promise<EbmlElement[]> {
  const list: EbmlElement[] = [];
  let pos = start;
  while (pos < end && list.length < maxBoxes) {
    const element = await readElement(file, pos, end);
    if (!element) {
      problems.push('matroska: malformed element');
      break;
    }
    list.push(element);
    pos = element.dataEnd;
  }
  return list;
}

async function walkMatroska(file: FileHandle, size: number, problems: string[]): Promise<void> {
  const top = await children(file, 0, size, problems);
  if (top[0]?.id !== EBML || top[1]?.id !== SEGMENT || top.length !== 2) return void problems.push('matroska: not one EBML header and one Segment');
  const segment = top[1];
  for (const child of await children(file, segment.dataStart, segment.dataEnd, problems)) {
    if (!segmentChildren.has(child.id)) problems.push('matroska: segment element not allowed (attachments, chapters …)');
    if (child.id === 0x1549a966) {
      for (const info of await children(file, child.dataStart, child.dataEnd, problems)) {
        if (INFO_FORBIDDEN.has(info.id)) problems.push('matroska: title or date in Info');
      }
    }
    if (child.id === TRACKS) {
      for (const entry of await children(file, child.dataStart, child.dataEnd, problems)) {
        if (entry.id !== TRACK_ENTRY) continue;
        for (const field of await children(file, entry.dataStart, entry.dataEnd, problems)) {
          if (field.id === TRACK_NAME) problems.push('matroska: track name');
        }
      }
    }
    if (child.id === TAGS) {
      for (const tag of await children(file, child.dataStart, child.dataEnd, problems)) {
        for (const part of tag.id === TAG ? await children(file, tag.dataStart, tag.dataEnd, problems) : []) {
          if (part.id === TARGETS) continue;
          const fields = part.id === SIMPLE_TAG ? await children(file, part.dataStart, part.dataEnd, problems) : [];
          const name = fields.find((f) => f.id === TAG_NAME);
          const text = name ? (await read(file, name.dataStart, name.dataEnd - name.dataStart)).toString('utf8') : '';
          if (text !== 'DURATION' || fields.length !== 2) problems.push('matroska: tag other than DURATION');
        }
      }
    }
  }
}

export async function checkVideoStructure(container: 'isobmff' | 'matroska', path: string): Promise<string[]> {
  const problems: string[] = [];
  const file = await open(path, 'r');
  try {
    const { size } = await file.stat();
    if (container === 'isobmff') await walkIsobmff(file, size, problems);
    else await walkMatroska(file, size, problems);
  } finally {
    await file.close();
  }
  return problems;
}
