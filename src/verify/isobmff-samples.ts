/**
 * Where each track's samples lie in an ISOBMFF *input* (stsc + stco/co64 + stsz), for the
 * verifier. A remux copies the audio/video samples as the sample tables point at them, so a
 * hostile or corrupted table that points an audio sample at a subtitle track's text, at the
 * `udta` box or at bytes no track owns would carry metadata into the output inside "audio".
 * This finds that case (kept samples overlapping anything but media data) and returns the bytes
 * the verifier must treat as metadata: the samples of every other track (subtitles, GPMF, camm,
 * mebx …) and any mdat bytes no track owns. Fragmented files (mvex/moof) are not analysed.
 */
import { open } from 'node:fs/promises';
import { readAt as read, topLevelBoxes } from '../formats/isobmff.js';

interface Range {
  start: number;
  end: number;
}

export interface SampleLayout {
  /** Kept-kind (video/audio) sample ranges that overlap metadata or lie outside every mdat. */
  problems: string[];
  /** Byte ranges holding metadata-track samples or unowned mdat bytes. */
  metadataRanges: Range[];
  fragmented: boolean;
}

const maxMoovBytes = 64 * 1024 * 1024;
const maxSamples = 20_000_000;


function children(b: Buffer, start: number, end: number): Array<{ type: string; start: number; end: number }> {
  const out: Array<{ type: string; start: number; end: number }> = [];
  for (let pos = start; pos + 8 <= end; ) {
    let size = b.readUInt32BE(pos);
    let header = 8;
    if (size === 1 && pos + 16 <= end) {
      size = Number(b.readBigUInt64BE(pos + 8));
      header = 16;
    }
    if (size < header || pos + size > end) break;
    out.push({ type: b.toString('latin1', pos + 4, pos + 8), start: pos + header, end: pos + size });
    pos += size;
  }
  return out;
}

/** Sample byte ranges of one trak (merged where contiguous). */
function trackRanges(b: Buffer, stbl: { start: number; end: number }): Range[] | undefined {
  const boxes = new Map(children(b, stbl.start, stbl.end).map((c) => [c.type, c]));
  const stsz = boxes.get('stsz');
  const stsc = boxes.get('stsc');
  const stco = boxes.get('stco') ?? boxes.get('co64');
  if (!stsz || !stsc || !stco) return undefined;
  const wide = boxes.has('co64') && !boxes.has('stco');
  const fixedSize = b.readUInt32BE(stsz.start + 4);
  const sampleCount = Math.min(b.readUInt32BE(stsz.start + 8), maxSamples);
  const sizeAt = (i: number): number => (fixedSize !== 0 ? fixedSize : stsz.start + 12 + i * 4 + 4 <= stsz.end ? b.readUInt32BE(stsz.start + 12 + i * 4) : 0);
  const chunkCount = b.readUInt32BE(stco.start + 4);
  const chunkOffset = (i: number): number => {
    const at = stco.start + 8 + i * (wide ? 8 : 4);
    if (at + (wide ? 8 : 4) > stco.end) return -1;
    return wide ? Number(b.readBigUInt64BE(at)) : b.readUInt32BE(at);
  };
  const entries = b.readUInt32BE(stsc.start + 4);
  const runs: Array<{ firstChunk: number; perChunk: number }> = [];
  for (let i = 0; i < entries && stsc.start + 8 + i * 12 + 12 <= stsc.end; i++) {
    runs.push({ firstChunk: b.readUInt32BE(stsc.start + 8 + i * 12), perChunk: b.readUInt32BE(stsc.start + 12 + i * 12) });
  }
  const ranges: Range[] = [];
  let sample = 0;
  for (let chunk = 1; chunk <= chunkCount && sample < sampleCount; chunk++) {
    let perChunk = 0;
    for (const run of runs) if (run.firstChunk <= chunk) perChunk = run.perChunk;
    let offset = chunkOffset(chunk - 1);
    if (offset < 0) break;
    for (let k = 0; k < perChunk && sample < sampleCount; k++, sample++) {
      const size = sizeAt(sample);
      const last = ranges.at(-1);
      if (last && last.end === offset) last.end += size;
      else ranges.push({ start: offset, end: offset + size });
      offset += size;
    }
  }
  return ranges;
}

const overlaps = (a: Range, list: Range[]): boolean => list.some((b) => a.start < b.end && b.start < a.end);

/** [from, to) minus the ranges (sorted, merged), as ranges. */
function gaps(from: number, to: number, taken: Range[]): Range[] {
  const out: Range[] = [];
  let at = from;
  for (const r of [...taken].sort((x, y) => x.start - y.start)) {
    if (r.end <= at || r.start >= to) continue;
    if (r.start > at) out.push({ start: at, end: r.start });
    at = Math.max(at, r.end);
  }
  if (at < to) out.push({ start: at, end: to });
  return out;
}

export async function sampleLayout(path: string): Promise<SampleLayout> {
  const layout: SampleLayout = { problems: [], metadataRanges: [], fragmented: false };
  const file = await open(path, 'r');
  try {
    const { size } = await file.stat();
    const top = await topLevelBoxes(file, size, 10_000);
    const moovBox = top.find((b) => b.type === 'moov');
    // ffmpeg's demuxer reads a moov whose box size is broken; this reader does not guess, so such
    // a file is refused rather than remuxed on tables nobody checked.
    if (!moovBox || moovBox.end - moovBox.start > maxMoovBytes) {
      layout.problems.push('isobmff input: no readable moov box');
      return layout;
    }
    if (top.some((b) => b.type === 'moof')) return { ...layout, fragmented: true };
    const moov = await read(file, moovBox.start, moovBox.end - moovBox.start);
    if (children(moov, 0, moov.length).some((c) => c.type === 'mvex')) return { ...layout, fragmented: true };

    const media: Range[] = [];
    const metadata: Range[] = [];
    for (const trak of children(moov, 0, moov.length).filter((c) => c.type === 'trak')) {
      const mdia = children(moov, trak.start, trak.end).find((c) => c.type === 'mdia');
      const hdlr = mdia && children(moov, mdia.start, mdia.end).find((c) => c.type === 'hdlr');
      const minf = mdia && children(moov, mdia.start, mdia.end).find((c) => c.type === 'minf');
      const stbl = minf && children(moov, minf.start, minf.end).find((c) => c.type === 'stbl');
      if (!hdlr || !stbl) continue;
      const handler = moov.toString('latin1', hdlr.start + 8, hdlr.start + 12);
      const ranges = trackRanges(moov, stbl) ?? [];
      (handler === 'vide' || handler === 'soun' ? media : metadata).push(...ranges);
    }
    const mdats = top.filter((b) => b.type === 'mdat');
    for (const r of media) {
      if (!mdats.some((m) => r.start >= m.start && r.end <= m.end)) {
        layout.problems.push('isobmff input: an audio/video sample lies outside the media data');
        break;
      }
      if (overlaps(r, metadata)) {
        layout.problems.push('isobmff input: an audio/video sample overlaps a metadata track');
        break;
      }
    }
    // Bytes of mdat no track owns, and the metadata tracks' own samples.
    const owned = [...media, ...metadata];
    for (const m of mdats) layout.metadataRanges.push(...gaps(m.start, m.end, owned));
    layout.metadataRanges.push(...metadata);
  } finally {
    await file.close();
  }
  return layout;
}

/** Reads ranges (up to `limit` bytes in all) for the value collector. */
export async function readRanges(path: string, ranges: Range[], limit: number): Promise<Buffer[]> {
  const file = await open(path, 'r');
  const out: Buffer[] = [];
  let budget = limit;
  try {
    for (const r of ranges) {
      if (budget <= 0) break;
      const length = Math.min(r.end - r.start, budget);
      if (length <= 0) continue;
      out.push(await read(file, r.start, length));
      budget -= length;
    }
  } finally {
    await file.close();
  }
  return out;
}
