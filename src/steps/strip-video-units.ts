/**
 * The picture stream's units filtered in the remuxed MP4/MOV itself, instead of by ffmpeg's
 * `filter_units` bitstream filter (issue 26's speed). The filter splits and rebuilds every packet
 * of the stream, unescaping each NAL as it goes (+110–130 ms on a 70 MB clip, most of what a
 * clean costs beyond a bare remux); yet an encoder puts the units we drop (SEI, AUD, filler,
 * reserved types, AV1 metadata and padding) in few packets, often the first alone.
 *
 * So the remux copies the stream as it is, and this pass walks the output's video samples by its
 * own sample tables, chunk by chunk, reading each unit's header only. A chunk that holds a unit
 * to drop is rewritten in place: its samples with the kept units alone (the bytes of each kept
 * unit as they were, length prefix included), moved up to close the holes, then zeros to the old
 * end of the chunk. Each changed sample's size is written back into `stsz`. Chunk offsets do not
 * move, and no box changes size: the zeros are mdat bytes no sample owns, which the verifier
 * requires to be zero (verify.ts), as it requires every kept unit to be of a kept type and the
 * coded slices to be the input's.
 *
 * What it does not handle (a fragmented file, sizes in a compact or fixed table, a unit that
 * overruns its sample, a sample with no unit to keep) it says so, and the caller remuxes again
 * with the bitstream filter, overwriting whatever this pass wrote.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { lengthSizeOf, configBoxOf } from '../formats/codec-config.js';
import { boxesIn, childBox, readAt, topLevelBoxes, videoTracks, type BoxRange } from '../formats/isobmff.js';
import { keptUnitTypes, leb128, nalType, type PictureCodec } from '../formats/units.js';

/** The largest moov this pass reads (as the config rewriter). */
const maxMoovBytes = 64 * 1024 * 1024;
/** The largest chunk it reads whole (ffmpeg's muxer writes chunks of about a megabyte or less). */
const maxChunkBytes = 64 * 1024 * 1024;

/** Where one sample's kept units lie, relative to the sample's start. */
type Kept = Array<[start: number, end: number]>;

/**
 * The kept units of one sample, or undefined when every unit is kept (the common case: nothing
 * to copy). Throws NotHandled when the sample does not split into units cleanly.
 */
function keptUnitsOf(sample: Buffer, codec: PictureCodec, lengthSize: 1 | 2 | 4): Kept | undefined {
  const keep = keptUnitTypes[codec];
  const kept: Kept = [];
  let dropped = false;
  for (let pos = 0; pos < sample.length; ) {
    let end: number;
    let type: number;
    if (codec === 'av1') {
      const header = sample[pos]!;
      // An OBU in MP4 carries its size; one without could not be delimited here.
      if (!(header & 0x02)) throw new NotHandled('an AV1 OBU without a size field');
      const size = leb128(sample, pos + (header & 0x04 ? 2 : 1));
      if (!size) throw new NotHandled('an AV1 OBU size that does not read');
      type = (header >> 3) & 0x0f;
      end = size.next + size.value;
    } else {
      if (pos + lengthSize > sample.length) throw new NotHandled('a NAL length cut short');
      const length = sample.readUIntBE(pos, lengthSize);
      if (length === 0) throw new NotHandled('an empty NAL unit');
      type = nalType(codec, sample[pos + lengthSize]!);
      end = pos + lengthSize + length;
    }
    if (end > sample.length) throw new NotHandled('a unit that overruns its sample');
    if (keep.has(type)) kept.push([pos, end]);
    else dropped = true;
    pos = end;
  }
  if (!dropped) return undefined;
  if (kept.length === 0) throw new NotHandled('a sample with no unit to keep');
  return kept;
}

export class NotHandled extends Error {}

/** How much of the file one read brings in: chunks are small (a frame or a few), reads are not. */
const windowBytes = 8 * 1024 * 1024;

/**
 * Reads the file forward in large blocks and hands out views of them: thousands of small chunks
 * cost a few reads, not one each (one read per chunk took 80–200 ms on a 70 MB clip). A view may
 * be changed in place; it is valid until the next read.
 */
class ReadWindow {
  private block = Buffer.alloc(0);
  private start = 0;

  constructor(
    private readonly file: FileHandle,
    private readonly size: number,
  ) {}

  async read(offset: number, length: number): Promise<Buffer> {
    if (offset < this.start || offset + length > this.start + this.block.length) {
      const want = Math.min(Math.max(length, windowBytes), this.size - offset);
      const block = this.block.length >= want ? this.block.subarray(0, want) : Buffer.allocUnsafe(want);
      const { bytesRead } = await this.file.read(block, 0, want, offset);
      if (bytesRead < length) throw new NotHandled('a chunk past the end of the file');
      this.block = block.subarray(0, bytesRead);
      this.start = offset;
    }
    return this.block.subarray(offset - this.start, offset - this.start + length);
  }
}

/** The sample tables of the first video track, read from a moov held in `moov` (box header included). */
function tablesOf(moov: Buffer): { stsz: BoxRange; stsc: BoxRange; stco: BoxRange; wide: boolean; entry: BoxRange | undefined } {
  const trak = videoTracks(moov, 8, moov.length)[0];
  if (!trak) throw new NotHandled('no video track');
  const stbl = ['mdia', 'minf', 'stbl'].reduce<BoxRange | undefined>((parent, type) => parent && childBox(moov, parent, type), trak);
  if (!stbl) throw new NotHandled('no sample table');
  const stsz = childBox(moov, stbl, 'stsz');
  const stsc = childBox(moov, stbl, 'stsc');
  const co64 = childBox(moov, stbl, 'co64');
  const stco = childBox(moov, stbl, 'stco') ?? co64;
  if (!stsz || !stsc || !stco) throw new NotHandled('no stsz, stsc or chunk offsets');
  const stsd = childBox(moov, stbl, 'stsd');
  const entry = stsd && boxesIn(moov, stsd.start + 8, stsd.end)[0];
  return { stsz, stsc, stco, wide: stco === co64, entry };
}

/**
 * Drops the units a cleaned stream may not hold from the video samples of the MP4/MOV at `path`,
 * in place. Resolves to the number of samples changed; throws NotHandled when the file is not one
 * this pass can rewrite (the caller then remuxes with the bitstream filter).
 */
export async function dropUnitsInPlace(path: string, codec: PictureCodec): Promise<number> {
  const file = await open(path, 'r+');
  try {
    const { size } = await file.stat();
    const top = await topLevelBoxes(file, size, 10_000);
    if (top.some((b) => b.type === 'moof')) throw new NotHandled('a fragmented file');
    const moovBox = top.find((b) => b.type === 'moov');
    if (!moovBox || moovBox.end - moovBox.box > maxMoovBytes) throw new NotHandled('no readable moov');
    const moov = await readAt(file, moovBox.box, moovBox.end - moovBox.box);
    const { stsz, stsc, stco, wide, entry } = tablesOf(moov);
    const record = entry && childBox(moov, { start: entry.start + 78, end: entry.end }, configBoxOf[codec]);
    const lengthSize = lengthSizeOf(codec, record && moov.subarray(record.start, record.end)) ?? (codec === 'av1' ? 4 : undefined);
    if (lengthSize === undefined) throw new NotHandled('no decoder configuration record');
    if (moov.readUInt32BE(stsz.start + 4) !== 0) throw new NotHandled('one size for every sample');
    const sampleCount = moov.readUInt32BE(stsz.start + 8);
    if (stsz.start + 12 + sampleCount * 4 > stsz.end) throw new NotHandled('a sample size table cut short');
    const chunkCount = moov.readUInt32BE(stco.start + 4);
    if (stco.start + 8 + chunkCount * (wide ? 8 : 4) > stco.end) throw new NotHandled('a chunk offset table cut short');
    const runs = moov.readUInt32BE(stsc.start + 4);
    if (stsc.start + 8 + runs * 12 > stsc.end) throw new NotHandled('a sample-to-chunk table cut short');
    const sizeAt = (i: number): number => moov.readUInt32BE(stsz.start + 12 + i * 4);
    const offsetOf = (c: number): number => (wide ? Number(moov.readBigUInt64BE(stco.start + 8 + c * 8)) : moov.readUInt32BE(stco.start + 8 + c * 4));

    const window = new ReadWindow(file, size);
    let changed = 0;
    let sample = 0;
    let run = -1;
    for (let chunk = 0; chunk < chunkCount && sample < sampleCount; chunk++) {
      while (run + 1 < runs && moov.readUInt32BE(stsc.start + 8 + (run + 1) * 12) <= chunk + 1) run++;
      const inChunk = Math.min(run < 0 ? 0 : moov.readUInt32BE(stsc.start + 12 + run * 12), sampleCount - sample);
      let length = 0;
      for (let k = 0; k < inChunk; k++) length += sizeAt(sample + k);
      const offset = offsetOf(chunk);
      if (offset + length > size) throw new NotHandled('a chunk past the end of the file');
      if (length > maxChunkBytes) throw new NotHandled('a chunk larger than this pass holds in memory');
      const bytes = await window.read(offset, length);
      // The chunk's samples, each with its kept units when it loses some.
      const samples: Array<{ at: number; size: number; kept: Kept | undefined }> = [];
      let at = 0;
      for (let k = 0; k < inChunk; k++) {
        const sampleSize = sizeAt(sample + k);
        samples.push({ at, size: sampleSize, kept: keptUnitsOf(bytes.subarray(at, at + sampleSize), codec, lengthSize) });
        at += sampleSize;
      }
      if (samples.some((s) => s.kept !== undefined)) {
        // Rebuilt over itself: every write lands at or before what it copies, so nothing is read after it is overwritten.
        let to = 0;
        for (const [k, s] of samples.entries()) {
          const ranges = s.kept ?? [[0, s.size]];
          let newSize = 0;
          for (const [from, end] of ranges) {
            bytes.copy(bytes, to, s.at + from, s.at + end);
            to += end - from;
            newSize += end - from;
          }
          if (s.kept !== undefined) {
            moov.writeUInt32BE(newSize, stsz.start + 12 + (sample + k) * 4);
            changed++;
          }
        }
        bytes.fill(0, to);
        await file.write(bytes, 0, bytes.length, offset);
      }
      sample += inChunk;
    }
    if (sample < sampleCount) throw new NotHandled('samples no chunk holds');
    if (changed > 0) await file.write(moov, stsz.start + 12, sampleCount * 4, moovBox.box + stsz.start + 12);
    return changed;
  } finally {
    await file.close();
  }
}
