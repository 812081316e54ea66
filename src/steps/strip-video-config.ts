/**
 * The picture stream's half of the video strip (issue 26). The remux drops every non-picture unit
 * from the packets (`filter_units`, see formats/units.ts), but FFmpeg writes the decoder
 * configuration record as it came; this module rewrites that record in the cleaned file from its
 * parsed fields (formats/codec-config.ts), in place:
 *   - MP4/MOV: FFmpeg writes the moov last, after the media data, so the rebuilt moov (a record
 *     shrinks, every enclosing box's size with it) is written where the old one began and the
 *     file is cut after it. No sample offset moves.
 *   - Matroska/WebM: CodecPrivate keeps its place; the bytes it no longer needs become a Void
 *     element right after it, so no offset in the file moves.
 * Also here: which codec the input's main video stream has, read from the container itself so the
 * remux can start with the right filter before ffprobe has answered.
 */
import { open, type FileHandle } from 'node:fs/promises';
import type { Removed } from '../context.js';
import { reject } from '../errors.js';
import { canonicalConfig, ConfigError, configBoxOf, pictureCodecOfEntry, pictureCodecOfMatroska, type CanonicalConfig } from '../formats/codec-config.js';
import { canonicalEsds, canonicalMpegHeaders } from '../formats/mpeg-headers.js';
import { childElements, ebmlIds, sizeField, voidElement, type EbmlElement } from '../formats/ebml.js';
import { boxesIn, readAt, topLevelBoxes, videoTracks, type BoxRange } from '../formats/isobmff.js';
import type { PictureCodec } from '../formats/units.js';

type Container = 'isobmff' | 'matroska';

/** A moov is a few MB at most for hours of video; larger is refused before it is read. */
const maxMoovBytes = 64 * 1024 * 1024;
/** Visual sample entry fields before its child boxes (ISO/IEC 14496-12, 12.1.3). */
const visualEntryFields = 78;

async function readMoov(file: FileHandle): Promise<{ moov: Buffer; at: number; last: boolean } | undefined> {
  const { size } = await file.stat();
  const top = await topLevelBoxes(file, size, 10_000);
  const index = top.findIndex((b) => b.type === 'moov');
  const box = top[index];
  if (!box || box.end - box.box > maxMoovBytes) return undefined;
  return { moov: await readAt(file, box.box, box.end - box.box), at: box.box, last: index === top.length - 1 && box.end === size };
}

/**
 * A record this module rebuilds: the three filtered codecs' own, an `esds` (MPEG-4 Part 2 and
 * MPEG-1/2 video in MP4), or Matroska's raw MPEG headers.
 */
type RecordKind = PictureCodec | 'esds' | 'mpegHeaders';

const boxOfKind = (kind: RecordKind): string => (kind === 'esds' || kind === 'mpegHeaders' ? 'esds' : configBoxOf[kind]);

function canonicalRecord(kind: RecordKind, record: Buffer): CanonicalConfig {
  if (kind === 'esds') return canonicalEsds(record);
  if (kind === 'mpegHeaders') return canonicalMpegHeaders(record);
  return canonicalConfig(kind, record);
}

/** Where each sample entry's configuration box lies, with its enclosing boxes. */
interface ConfigSite {
  codec: RecordKind;
  box: BoxRange;
  /** Header offsets (in the moov buffer) of every box that encloses it, outermost first. */
  enclosing: number[];
}

function configSites(moov: Buffer): ConfigSite[] {
  const sites: ConfigSite[] = [];
  // The moov's own payload starts after its 8-byte header (FFmpeg never writes a 64-bit moov size).
  for (const trak of videoTracks(moov, 8, moov.length)) {
    const path = ['mdia', 'minf', 'stbl', 'stsd'];
    const chain: BoxRange[] = [trak];
    for (const type of path) {
      const parent = chain.at(-1)!;
      const child = boxesIn(moov, parent.start, parent.end).find((b) => b.type === type);
      if (!child) break;
      chain.push(child);
    }
    if (chain.length !== path.length + 1) continue;
    const stsd = chain.at(-1)!;
    // stsd: version and flags, an entry count, then the entries.
    for (const entry of boxesIn(moov, stsd.start + 8, stsd.end)) {
      const codec: RecordKind | undefined = entry.type === 'mp4v' ? 'esds' : pictureCodecOfEntry(entry.type);
      if (!codec) continue;
      const box = boxesIn(moov, entry.start + visualEntryFields, entry.end).find((b) => b.type === boxOfKind(codec));
      if (box) sites.push({ codec, box, enclosing: [0, ...[...chain, entry].map((b) => b.start - 8)] });
    }
  }
  return sites;
}

/** The input's main video codec (the first video track), or undefined when it is none of the three. */
export async function pictureCodecIn(path: string, container: Container): Promise<PictureCodec | undefined> {
  const file = await open(path, 'r');
  try {
    if (container === 'isobmff') {
      const read = await readMoov(file);
      const trak = read && videoTracks(read.moov, 8, read.moov.length)[0];
      if (!read || !trak) return undefined;
      const stbl = ['mdia', 'minf', 'stbl', 'stsd'].reduce<BoxRange | undefined>((parent, type) => parent && boxesIn(read.moov, parent.start, parent.end).find((b) => b.type === type), trak);
      const entry = stbl && boxesIn(read.moov, stbl.start + 8, stbl.end)[0];
      return entry && pictureCodecOfEntry(entry.type);
    }
    const entry = (await matroskaVideoEntries(file))[0];
    return entry?.codec;
  } finally {
    await file.close();
  }
}

/** Matroska codec ids whose CodecPrivate is MPEG-1/2/4 Part 2 headers. */
const mpegHeaderCodecIds = /^V_MPEG(1|2|4\/ISO\/(SP|ASP|AP))$/;

async function matroskaVideoEntries(file: FileHandle): Promise<Array<{ codec: PictureCodec | undefined; record: RecordKind | undefined; entry: EbmlElement; codecPrivate: EbmlElement | undefined }>> {
  const { size } = await file.stat();
  const top = await childElements(file, 0, size, 4);
  const segment = top.find((e) => e.id === ebmlIds.segment);
  if (!segment) return [];
  const tracks = (await childElements(file, segment.dataStart, segment.dataEnd, 64)).find((e) => e.id === ebmlIds.tracks);
  if (!tracks) return [];
  const out: Array<{ codec: PictureCodec | undefined; record: RecordKind | undefined; entry: EbmlElement; codecPrivate: EbmlElement | undefined }> = [];
  for (const entry of await childElements(file, tracks.dataStart, tracks.dataEnd, 64)) {
    if (entry.id !== ebmlIds.trackEntry) continue;
    const fields = await childElements(file, entry.dataStart, entry.dataEnd, 256);
    const type = fields.find((f) => f.id === ebmlIds.trackType);
    if (!type || (await readAt(file, type.dataStart, 1))[0] !== 1) continue;
    const id = fields.find((f) => f.id === ebmlIds.codecId);
    const codecId = id ? (await readAt(file, id.dataStart, Math.min(64, id.dataEnd - id.dataStart))).toString('latin1').replace(/\0+$/, '') : '';
    const codec = pictureCodecOfMatroska(codecId);
    out.push({ codec, record: codec ?? (mpegHeaderCodecIds.test(codecId) ? 'mpegHeaders' : undefined), entry, codecPrivate: fields.find((f) => f.id === ebmlIds.codecPrivate) });
  }
  return out;
}

function addRemoved(into: Removed, from: Removed): void {
  for (const [category, n] of Object.entries(from) as Array<[keyof Removed, number]>) into[category] = (into[category] ?? 0) + n;
}

const notRebuilt = (why: string) => reject.structure('video', `its decoder configuration could not be rebuilt: ${why}`);

/**
 * Rewrites the cleaned file's configuration records canonical, in place. Returns what they held
 * that went. Throws a refusal when a record does not parse.
 */
export async function rewriteCodecConfig(path: string, container: Container): Promise<Removed> {
  const removed: Removed = {};
  const file = await open(path, 'r+');
  try {
    if (container === 'isobmff') {
      const read = await readMoov(file);
      if (!read) throw notRebuilt('no readable moov');
      const sites = configSites(read.moov);
      if (sites.length === 0) return removed;
      // FFmpeg writes the moov after the media data; rewriting one placed elsewhere would move samples.
      if (!read.last) throw notRebuilt('the moov is not the last box');
      let moov = read.moov;
      // From the last site back, so the offsets of the earlier ones stay valid.
      for (const site of [...sites].sort((a, b) => b.box.start - a.box.start)) {
        const rebuilt = canonical(site.codec, moov.subarray(site.box.start, site.box.end));
        addRemoved(removed, rebuilt.removed);
        const box = Buffer.concat([Buffer.alloc(8), rebuilt.bytes]);
        box.writeUInt32BE(box.length, 0);
        box.write(boxOfKind(site.codec), 4, 'latin1');
        const delta = box.length - (site.box.end - site.box.start + 8);
        moov = Buffer.concat([moov.subarray(0, site.box.start - 8), box, moov.subarray(site.box.end)]);
        for (const header of site.enclosing) moov.writeUInt32BE(moov.readUInt32BE(header) + delta, header);
      }
      await file.write(moov, 0, moov.length, read.at);
      await file.truncate(read.at + moov.length);
      return removed;
    }
    for (const { record: codec, codecPrivate } of await matroskaVideoEntries(file)) {
      if (!codec || !codecPrivate) continue;
      const old = await readAt(file, codecPrivate.dataStart, codecPrivate.dataEnd - codecPrivate.dataStart);
      const rebuilt = canonical(codec, old);
      addRemoved(removed, rebuilt.removed);
      const freed = old.length - rebuilt.bytes.length;
      if (freed === 0) continue;
      if (freed < 0) throw notRebuilt('the rebuilt record is longer');
      // One byte freed is too little for a Void element: the size field grows by one instead.
      const width = freed === 1 ? codecPrivate.sizeBytes + 1 : codecPrivate.sizeBytes;
      if (width > 8) throw notRebuilt('no room for the shorter record');
      const head = sizeField(rebuilt.bytes.length, width);
      const filler = freed === 1 ? Buffer.alloc(0) : voidElement(freed);
      await file.write(Buffer.concat([head, rebuilt.bytes, filler]), 0, head.length + rebuilt.bytes.length + filler.length, codecPrivate.sizeAt);
    }
    return removed;
  } finally {
    await file.close();
  }
}

function canonical(kind: RecordKind, record: Buffer): CanonicalConfig {
  try {
    return canonicalRecord(kind, record);
  } catch (err) {
    if (err instanceof ConfigError) throw notRebuilt(err.message);
    throw err;
  }
}

