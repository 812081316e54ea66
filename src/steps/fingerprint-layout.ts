/**
 * The structural layout of a cleaned file for its fingerprint: the sequence of segments, chunks,
 * blocks, boxes or elements, with sizes rounded to two significant digits and runs of the same
 * type folded into one entry with a count. Every name is a structure type from the format's own
 * closed vocabulary (and, after verify, from scrubline's allowlists): never content. Also the
 * keyframe table of an ISOBMFF video track (`stss`), which a remux keeps and ffprobe does not
 * summarise without reading every packet.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { childBox, readAt as read, topLevelBoxes, videoTracks } from '../formats/isobmff.js';
import type { ImageFormat } from '../media.js';
import { codedStructure } from '../verify/structure-image.js';

export interface LayoutEntry {
  type: string;
  count: number;
  /** Total bytes of the run, rounded to two significant digits. */
  size: number;
}

export const roundSize = (n: number): number => {
  if (n < 100) return n;
  const scale = 10 ** (Math.floor(Math.log10(n)) - 1);
  return Math.round(n / scale) * scale;
};

const safeType = (t: string): string => (/^[A-Za-z0-9 _.:/-]{1,24}$/.test(t) ? t.trim() : '?');

function fold(items: Array<[string, number]>): LayoutEntry[] {
  const out: Array<{ type: string; count: number; size: number }> = [];
  for (const [type, size] of items) {
    const last = out.at(-1);
    if (last && last.type === type) {
      last.count++;
      last.size += size;
    } else out.push({ type: safeType(type), count: 1, size });
  }
  return out.map((e) => ({ ...e, size: roundSize(e.size) }));
}

const jpegNames: Record<number, string> = { 0xd8: 'SOI', 0xd9: 'EOI', 0xc4: 'DHT', 0xdb: 'DQT', 0xdd: 'DRI', 0xda: 'SOS', 0xcc: 'DAC' };
const jpegName = (m: number): string => jpegNames[m] ?? (m >= 0xc0 && m <= 0xcf ? `SOF${m - 0xc0}` : m >= 0xe0 && m <= 0xef ? `APP${m - 0xe0}` : 'marker');

/**
 * `codedEnds`: where each scan's coded data ends, by where it starts, as the verifier's walk of the
 * same bytes found it (a scan is most of a photo: not searched a second time). Bytes the verifier
 * passed had every scan walked; the layout of any others ends at a scan it did not list.
 */
function jpegLayout(b: Buffer, codedEnds: ReadonlyMap<number, number>): Array<[string, number]> {
  const items: Array<[string, number]> = [['SOI', 2]];
  let pos = 2;
  while (pos + 2 <= b.length && b[pos] === 0xff) {
    const marker = b[pos + 1]!;
    if (marker === 0xd9) {
      items.push(['EOI', 2]);
      break;
    }
    if (pos + 4 > b.length) break;
    let end = pos + 2 + b.readUInt16BE(pos + 2);
    if (marker === 0xda) end = codedEnds.get(end) ?? b.length;
    items.push([jpegName(marker), end - pos]);
    pos = end;
  }
  return items;
}

function pngLayout(b: Buffer): Array<[string, number]> {
  const items: Array<[string, number]> = [['signature', 8]];
  for (let pos = 8; pos + 12 <= b.length; ) {
    const length = b.readUInt32BE(pos);
    items.push([b.toString('latin1', pos + 4, pos + 8), 12 + length]);
    pos += 12 + length;
  }
  return items;
}

function riffLayout(b: Buffer): Array<[string, number]> {
  const items: Array<[string, number]> = [['RIFF', 12]];
  for (let pos = 12; pos + 8 <= b.length; ) {
    const size = b.readUInt32LE(pos + 4);
    items.push([b.toString('latin1', pos, pos + 4), 8 + size + (size % 2)]);
    pos += 8 + size + (size % 2);
  }
  return items;
}

function gifLayout(b: Buffer): Array<[string, number]> {
  const table = (flags: number): number => (flags & 0x80 ? 3 * 2 ** ((flags & 7) + 1) : 0);
  const items: Array<[string, number]> = [['header', 13]];
  let pos = 13;
  if (table(b[10] ?? 0)) items.push(['colourTable', table(b[10]!)]);
  pos += table(b[10] ?? 0);
  const subBlocks = (at: number): number => {
    while (at < b.length && b[at] !== 0) at += 1 + b[at]!;
    return at + 1;
  };
  while (pos < b.length) {
    const start = pos;
    if (b[pos] === 0x3b) {
      items.push(['trailer', 1]);
      break;
    }
    if (b[pos] === 0x2c) {
      pos = subBlocks(pos + 10 + table(b[pos + 9] ?? 0) + 1);
      items.push(['image', pos - start]);
    } else {
      const label = b[pos + 1];
      pos = subBlocks(pos + 2);
      items.push([label === 0xf9 ? 'graphicControl' : label === 0xff ? 'application' : 'extension', pos - start]);
    }
  }
  return items;
}

/** ISOBMFF boxes from a buffer: top level, and the children of `meta` (HEIF). */
function isobmffLayout(b: Buffer): Array<[string, number]> {
  const items: Array<[string, number]> = [];
  const walk = (start: number, end: number, prefix: string, depth: number): void => {
    for (let pos = start; pos + 8 <= end; ) {
      let size = b.readUInt32BE(pos);
      const type = b.toString('latin1', pos + 4, pos + 8);
      if (size === 1 && pos + 16 <= end) size = Number(b.readBigUInt64BE(pos + 8));
      if (size === 0) size = end - pos;
      if (size < 8 || pos + size > end) return;
      items.push([`${prefix}${type}`, size]);
      if (type === 'meta' && depth === 0) walk(pos + 12, pos + size, 'meta/', 1);
      pos += size;
    }
  };
  walk(0, b.length, '', 0);
  return items;
}

/** `structures`: the verifier's structure report of the same bytes (for a JPEG, where its scans end). */
export function imageLayout(format: ImageFormat, bytes: Buffer, structures: ReadonlyArray<{ start: number; end: number; what: string }>): LayoutEntry[] {
  if (format === 'jpeg') return fold(jpegLayout(bytes, new Map(structures.filter((s) => s.what === codedStructure('jpeg')).map((s) => [s.start, s.end]))));
  if (format === 'png') return fold(pngLayout(bytes));
  if (format === 'webp') return fold(riffLayout(bytes));
  if (format === 'gif') return fold(gifLayout(bytes));
  if (format === 'heif') return fold(isobmffLayout(bytes));
  return fold([['TIFF', bytes.length]]);
}

// ---------------------------------------------------------------------------------------------
// Video, read from disk with positional reads (memory stays flat in file size)


export interface VideoLayout {
  layout: LayoutEntry[];
  /** Per video track in file order: how many sync samples, out of how many, and the longest gap. */
  keyframes: Array<{ keyframes: number; samples: number; interval: number }>;
}

const ebmlNames = new Map([
  [0x1a45dfa3, 'EBML'], [0x18538067, 'Segment'], [0x114d9b74, 'SeekHead'], [0x1549a966, 'Info'], [0x1654ae6b, 'Tracks'],
  [0x1f43b675, 'Cluster'], [0x1c53bb6b, 'Cues'], [0x1254c367, 'Tags'], [0xec, 'Void'], [0x1043a770, 'Chapters'], [0x1941a469, 'Attachments'],
]);

async function ebmlLayout(file: FileHandle, size: number): Promise<Array<[string, number]>> {
  const items: Array<[string, number]> = [];
  const element = async (pos: number, end: number): Promise<{ id: number; data: number; end: number } | undefined> => {
    const h = await read(file, pos, 12);
    const idLength = h[0] ? Math.clz32(h[0]) - 23 : 0;
    if (idLength < 1 || idLength > 4 || h.length < idLength + 1) return undefined;
    let id = 0;
    for (let i = 0; i < idLength; i++) id = id * 256 + h[i]!;
    const first = h[idLength]!;
    const sizeLength = first ? Math.clz32(first) - 23 : 0;
    if (sizeLength < 1 || sizeLength > 8) return undefined;
    let length = first & (0xff >> sizeLength);
    let unknown = length === 0xff >> sizeLength;
    for (let i = 1; i < sizeLength; i++) {
      length = length * 256 + h[idLength + i]!;
      if (h[idLength + i] !== 0xff) unknown = false;
    }
    const data = pos + idLength + sizeLength;
    return { id, data, end: unknown ? end : Math.min(end, data + length) };
  };
  for (let pos = 0, n = 0; pos < size && n < 100_000; n++) {
    const top = await element(pos, size);
    if (!top) break;
    items.push([ebmlNames.get(top.id) ?? 'element', top.end - pos]);
    if (top.id === 0x18538067) {
      for (let at = top.data, m = 0; at < top.end && m < 100_000; m++) {
        const child = await element(at, top.end);
        if (!child || child.end <= at) break;
        items.push([`Segment/${ebmlNames.get(child.id) ?? 'element'}`, child.end - at]);
        at = child.end;
      }
    }
    pos = top.end;
  }
  return items;
}

/** Sync-sample tables of the video tracks, from a moov payload held in memory. */
function keyframeTables(moov: Buffer): VideoLayout['keyframes'] {
  const tables: VideoLayout['keyframes'] = [];
  for (const trak of videoTracks(moov, 0, moov.length)) {
    const mdia = childBox(moov, trak, 'mdia')!;
    const minf = childBox(moov, mdia, 'minf');
    const stbl = minf && childBox(moov, minf, 'stbl');
    const stsz = stbl && childBox(moov, stbl, 'stsz');
    if (!stbl || !stsz) continue;
    const samples = moov.readUInt32BE(stsz.start + 8);
    const stss = childBox(moov, stbl, 'stss');
    if (!stss) {
      tables.push({ keyframes: samples, samples, interval: 1 }); // no table: every sample is a sync sample
      continue;
    }
    const count = moov.readUInt32BE(stss.start + 4);
    let previous = 0;
    let interval = 0;
    for (let i = 0; i < count && stss.start + 12 + i * 4 <= stss.end; i++) {
      const sample = moov.readUInt32BE(stss.start + 8 + i * 4);
      if (i > 0) interval = Math.max(interval, sample - previous);
      previous = sample;
    }
    // The last GOP runs to the end of the track.
    interval = Math.max(interval, samples - previous + 1);
    tables.push({ keyframes: count, samples, interval });
  }
  return tables;
}

export async function videoLayout(container: 'isobmff' | 'matroska', path: string): Promise<VideoLayout> {
  const file = await open(path, 'r');
  try {
    const { size } = await file.stat();
    if (container === 'matroska') return { layout: fold(await ebmlLayout(file, size)), keyframes: [] };
    const boxes = await topLevelBoxes(file, size);
    const moov = boxes.find((b) => b.type === 'moov');
    // moov is small next to the media data; capped so a hostile one cannot take memory.
    const keyframes = moov && moov.end - moov.start <= 64 * 1024 * 1024 ? keyframeTables(await read(file, moov.start, moov.end - moov.start)) : [];
    const items = boxes.map((b): [string, number] => [b.type, b.end - b.box]);
    return { layout: fold(items), keyframes };
  } finally {
    await file.close();
  }
}
