/**
 * Where each track's samples lie in an ISOBMFF file (stsc + stco/co64 + stsz), for the verifier:
 * of an output, that the bytes no sample owns are zero (`unownedBytesProblems`); of an *input*,
 * the following. A remux copies the audio/video samples as the sample tables point at them, so a
 * hostile or corrupted table that points an audio sample at a subtitle track's text, at the
 * `udta` box or at bytes no track owns would carry metadata into the output inside "audio".
 * This finds that case (kept samples overlapping anything but media data) and returns the bytes
 * the verifier must treat as metadata: the samples of every other track (subtitles, GPMF, camm,
 * mebx …) and any mdat bytes no track owns. Fragmented files (mvex/moof) are not analysed.
 */
import { open } from 'node:fs/promises';
import { readAt as read, topLevelBoxes } from '../formats/isobmff.js';
import { WorkBudget } from '../formats/work-budget.js';

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

/**
 * Sample byte ranges of one trak (merged where contiguous). One pass over the chunk offsets with
 * a cursor into the sample-to-chunk runs (the spec orders them by first chunk; a table that is
 * not ordered is refused, since a demuxer may read it otherwise than we do). Fixed-size samples
 * make one range per chunk without a step per sample.
 */
function trackRanges(b: Buffer, stbl: { start: number; end: number }, budget: WorkBudget, problems: string[]): Range[] | undefined {
  const boxes = new Map(children(b, stbl.start, stbl.end).map((c) => [c.type, c]));
  const stsz = boxes.get('stsz');
  const stsc = boxes.get('stsc');
  const stco = boxes.get('stco') ?? boxes.get('co64');
  if (!stsz || !stsc || !stco) return undefined;
  const wide = boxes.has('co64') && !boxes.has('stco');
  const fixedSize = b.readUInt32BE(stsz.start + 4);
  const sampleCount = b.readUInt32BE(stsz.start + 8);
  const sizeAt = (i: number): number => (stsz.start + 12 + i * 4 + 4 <= stsz.end ? b.readUInt32BE(stsz.start + 12 + i * 4) : 0);
  const chunkCount = Math.min(b.readUInt32BE(stco.start + 4), Math.floor((stco.end - stco.start - 8) / (wide ? 8 : 4)));
  const chunkOffset = (i: number): number => {
    const at = stco.start + 8 + i * (wide ? 8 : 4);
    return wide ? Number(b.readBigUInt64BE(at)) : b.readUInt32BE(at);
  };
  const entries = Math.min(b.readUInt32BE(stsc.start + 4), Math.floor((stsc.end - stsc.start - 8) / 12));
  const firstChunkOf = (i: number): number => b.readUInt32BE(stsc.start + 8 + i * 12);
  const perChunkOf = (i: number): number => b.readUInt32BE(stsc.start + 12 + i * 12);
  budget.spend(entries + chunkCount);
  for (let i = 1; i < entries; i++) {
    if (firstChunkOf(i) <= firstChunkOf(i - 1)) {
      problems.push('isobmff input: a sample-to-chunk table is out of order');
      return [];
    }
  }
  const ranges: Range[] = [];
  const add = (start: number, end: number): void => {
    const last = ranges.at(-1);
    if (last && last.end === start) last.end = end;
    else ranges.push({ start, end });
  };
  let run = -1;
  let sample = 0;
  for (let chunk = 1; chunk <= chunkCount && sample < sampleCount; chunk++) {
    while (run + 1 < entries && firstChunkOf(run + 1) <= chunk) run++;
    const inChunk = Math.min(run < 0 ? 0 : perChunkOf(run), sampleCount - sample);
    let offset = chunkOffset(chunk - 1);
    if (fixedSize !== 0) {
      add(offset, offset + inChunk * fixedSize);
      sample += inChunk;
      continue;
    }
    budget.spend(inChunk);
    for (let k = 0; k < inChunk; k++, sample++) {
      const size = sizeAt(sample);
      add(offset, offset + size);
      offset += size;
    }
  }
  return ranges;
}

/** Sorted by start, overlapping or touching ranges merged. */
function merged(list: Range[]): Range[] {
  const out: Range[] = [];
  for (const r of [...list].sort((x, y) => x.start - y.start)) {
    const last = out.at(-1);
    if (last && r.start <= last.end) last.end = Math.max(last.end, r.end);
    else out.push({ ...r });
  }
  return out;
}

/** Whether any range of `a` overlaps one of `b` (both sorted and merged): one sweep over both. */
function anyOverlap(a: Range[], b: Range[]): boolean {
  for (let i = 0, j = 0; i < a.length && j < b.length; ) {
    if (a[i]!.start < b[j]!.end && b[j]!.start < a[i]!.end) return true;
    if (a[i]!.end <= b[j]!.end) i++;
    else j++;
  }
  return false;
}

/** Whether every range of `inner` (sorted, merged) lies inside one of `outer` (sorted, disjoint). */
function allInside(inner: Range[], outer: Range[]): boolean {
  let j = 0;
  for (const r of inner) {
    while (j < outer.length && outer[j]!.end <= r.start) j++;
    if (j === outer.length || r.start < outer[j]!.start || r.end > outer[j]!.end) return false;
  }
  return true;
}

/** [from, to) minus the ranges (sorted, merged), as ranges. */
function gaps(from: number, to: number, taken: Range[]): Range[] {
  const out: Range[] = [];
  let at = from;
  for (const r of taken) {
    if (r.end <= at || r.start >= to) continue;
    if (r.start > at) out.push({ start: at, end: r.start });
    at = Math.max(at, r.end);
  }
  if (at < to) out.push({ start: at, end: to });
  return out;
}

export async function sampleLayout(path: string, budget = new WorkBudget('MP4/MOV')): Promise<SampleLayout> {
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
      const ranges = trackRanges(moov, stbl, budget, layout.problems) ?? [];
      (handler === 'vide' || handler === 'soun' ? media : metadata).push(...ranges);
    }
    if (layout.problems.length > 0) return layout;
    const mdats = merged(top.filter((b) => b.type === 'mdat'));
    const mediaRanges = merged(media);
    const metadataRanges = merged(metadata);
    budget.spend(mdats.length + mediaRanges.length + metadataRanges.length);
    if (!allInside(mediaRanges, mdats)) layout.problems.push('isobmff input: an audio/video sample lies outside the media data');
    else if (anyOverlap(mediaRanges, metadataRanges)) layout.problems.push('isobmff input: an audio/video sample overlaps a metadata track');
    // Bytes of mdat no track owns, and the metadata tracks' own samples.
    const owned = merged([...media, ...metadata]);
    for (const m of mdats) layout.metadataRanges.push(...gaps(m.start, m.end, owned));
    layout.metadataRanges.push(...metadataRanges);
  } finally {
    await file.close();
  }
  return layout;
}

/**
 * The byte ranges of the samples of one trak (the `nth` in file order, which is ffprobe's stream
 * index), in decode order, contiguous ones merged: the picture stream's proof reads them itself
 * rather than through an ffmpeg dump. Undefined for a fragmented file, or a trak that is not video.
 */
export async function videoSampleRanges(path: string, nth: number, budget = new WorkBudget('MP4/MOV')): Promise<Range[] | undefined> {
  const file = await open(path, 'r');
  try {
    const { size } = await file.stat();
    const top = await topLevelBoxes(file, size, 10_000);
    const moovBox = top.find((b) => b.type === 'moov');
    if (!moovBox || moovBox.end - moovBox.start > maxMoovBytes || top.some((b) => b.type === 'moof')) return undefined;
    const moov = await read(file, moovBox.start, moovBox.end - moovBox.start);
    if (children(moov, 0, moov.length).some((c) => c.type === 'mvex')) return undefined;
    const trak = children(moov, 0, moov.length).filter((c) => c.type === 'trak')[nth];
    const mdia = trak && children(moov, trak.start, trak.end).find((c) => c.type === 'mdia');
    const hdlr = mdia && children(moov, mdia.start, mdia.end).find((c) => c.type === 'hdlr');
    const minf = mdia && children(moov, mdia.start, mdia.end).find((c) => c.type === 'minf');
    const stbl = minf && children(moov, minf.start, minf.end).find((c) => c.type === 'stbl');
    if (!hdlr || !stbl || moov.toString('latin1', hdlr.start + 8, hdlr.start + 12) !== 'vide') return undefined;
    const problems: string[] = [];
    const ranges = trackRanges(moov, stbl, budget, problems);
    if (!ranges || problems.length > 0 || ranges.some((r) => r.end > size)) return undefined;
    return ranges;
  } finally {
    await file.close();
  }
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

/** The most bytes an output's mdat may hold outside every sample (units dropped in place: a few per frame). */
const maxUnownedBytes = 16 * 1024 * 1024;

/**
 * The output's side: every byte of its mdat that no audio or video sample owns must be zero.
 * ffmpeg's muxer writes samples alone; the stripper's in-place unit filter (strip-video-units.ts)
 * leaves zeros where it closed the holes of dropped units. Anything else there (a unit's bytes
 * left behind, data put between samples) would reach the render service in no structure that
 * any other check reads, so it is refused.
 */
export async function unownedBytesProblems(path: string): Promise<string[]> {
  const layout = await sampleLayout(path);
  if (layout.fragmented) return [];
  if (layout.problems.length > 0) return layout.problems.map((p) => p.replace('isobmff input', 'isobmff output'));
  const total = layout.metadataRanges.reduce((n, r) => n + r.end - r.start, 0);
  if (total > maxUnownedBytes) return ['isobmff output: too many media-data bytes no sample owns'];
  const zeros = Buffer.alloc(64 * 1024);
  for (const bytes of await readRanges(path, layout.metadataRanges, maxUnownedBytes)) {
    for (let at = 0; at < bytes.length; at += zeros.length) {
      const slice = bytes.subarray(at, at + zeros.length);
      if (!slice.equals(zeros.subarray(0, slice.length))) return ['isobmff output: media-data bytes no sample owns are not zero'];
    }
  }
  return [];
}
