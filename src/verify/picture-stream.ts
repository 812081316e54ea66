/**
 * The verifier's proof for a video's picture stream (issue 26). A remux copies the coded pictures,
 * and whatever else a camera put between them; the stripper filters the units, and this proves
 * the result structurally, without decoding a frame:
 *   - H.264, HEVC, AV1: the output's samples are walked unit by unit (NAL units, OBUs). Every unit
 *     must be of a type a cleaned stream keeps (coded slices and parameter sets), and the units
 *     must be the input's kept units, byte for byte and in order (a subsequence: samples outside
 *     an edit list may be left out). The input's other units are what was removed, and are
 *     counted by category. Each parameter set must end where its fields do. The decoder
 *     configuration record must be a fixed point of its canonical rebuild: parameter sets only,
 *     nothing after them.
 *   - MJPEG: every frame is walked to its end; a frame may hold no APPn or COM segment (old
 *     cameras write EXIF, with GPS and serial, into each frame: THREATS 45) but a JFIF or AVI1
 *     APP0 with nothing in its free fields.
 * MP4/MOV samples are read from the files by their sample tables, in large blocks; other
 * containers' packets come from ffmpeg's dumps as they come (a pipe, with backpressure). Either
 * way a 1 GB video costs memory for a block or a unit at a time, and the work is linear in it.
 */
import { open } from 'node:fs/promises';
import { countRemoved, type Removed } from '../context.js';
import { canonicalConfig, ConfigError, configBoxOf, pictureCodecOfEntry, pictureCodecOfMatroska } from '../formats/codec-config.js';
import { childElements, ebmlIds } from '../formats/ebml.js';
import { canonicalEsds, holdsUserData, UserDataScanner } from '../formats/mpeg-headers.js';
import { boxesIn, readAt, topLevelBoxes, videoTracks } from '../formats/isobmff.js';
import { checkParameterSet, ParameterSetContext, ParameterSetError } from '../formats/parameter-sets.js';
import { droppedCategories, keptUnitTypes, UnitSplitter, type PictureCodec, type Unit } from '../formats/units.js';
import { streamDumpArgs, type Demuxer } from '../tools/ffmpeg-args.js';
import { streamTool, type Ffmpeg } from '../tools/ffmpeg.js';

export interface StreamProof {
  problems: string[];
  /** What the input's picture stream held that the output does not. */
  dropped: Removed;
}

interface Side {
  path: string;
  demuxer: Demuxer;
  /** ffmpeg's stream specifier of the picture stream: `0:3` for the input's, `0:V:0` for the output's. */
  map: string;
  /**
   * MP4/MOV: where the stream's samples lie, in decode order (verify/isobmff-samples.ts). Read
   * here in large blocks, without an ffmpeg process; without it, ffmpeg dumps the packets.
   */
  ranges?: Array<{ start: number; end: number }> | undefined;
}

/** One side's units: taken synchronously while its current block lasts, refilled when it runs out. */
class UnitQueue {
  private units: Unit[] = [];
  private at = 0;
  private readonly chunks: AsyncIterator<Buffer>;

  constructor(
    source: AsyncIterable<Buffer>,
    readonly splitter: UnitSplitter,
  ) {
    this.chunks = source[Symbol.asyncIterator]();
  }

  /** The next unit if one is ready; undefined means fill() first. */
  take(): Unit | undefined {
    return this.at < this.units.length ? this.units[this.at++] : undefined;
  }

  /** Reads blocks until a unit is ready; false once the stream has ended. */
  async fill(): Promise<boolean> {
    while (this.at >= this.units.length) {
      const next = await this.chunks.next();
      if (next.done) return false;
      this.units = this.splitter.push(next.value);
      this.at = 0;
    }
    return true;
  }

  /** Stops reading (the source's clean-up runs: a dump's pipe is closed). */
  async close(): Promise<void> {
    await this.chunks.return?.();
  }
}

/** Block sizes are whole multiples of this, from one to `largestBlock`. */
const blockGranule = 256 * 1024;
const largestBlock = 4 * 1024 * 1024;

/** The block size for `ranges` (see rangeChunks). */
export function blockBytesFor(ranges: Array<{ start: number; end: number }>): number {
  let largest = 0;
  for (const range of ranges) largest = Math.max(largest, range.end - range.start);
  return Math.min(largestBlock, Math.max(1, Math.ceil(largest / blockGranule)) * blockGranule);
}

/**
 * The bytes of `ranges` of a file, in order. Ranges close together (a video's chunks between the
 * audio's) are read in one block and handed out as views of it. Blocks are read into two buffers
 * in turn (fresh memory for each would cost a page fault per 4 KiB): the walk has used every unit
 * of a block before it asks for the one after next, and the splitter copies what it keeps. A
 * block is as large as the largest range (a run of samples stored together), rounded up, so that
 * no range is split (the splitter copies a unit that crosses a block's end), and at most 4 MiB.
 * The four buffers, two a side, were the peak of a video's verify at 4 MiB each; a file that
 * interleaves its streams sample by sample (FFmpeg's muxer does) needs far less.
 */
async function* rangeChunks(path: string, ranges: Array<{ start: number; end: number }>): AsyncGenerator<Buffer> {
  const blockBytes = blockBytesFor(ranges);
  const buffers = [Buffer.allocUnsafe(blockBytes), Buffer.allocUnsafe(blockBytes)];
  let turn = 0;
  const readExactly = async (position: number, length: number): Promise<Buffer> => {
    const block = buffers[turn++ % 2]!.subarray(0, length);
    const { bytesRead } = await file.read(block, 0, length, position);
    if (bytesRead !== length) throw new Error('a sample lies past the end of the file');
    return block;
  };
  const file = await open(path, 'r');
  try {
    for (let i = 0; i < ranges.length; ) {
      const first = ranges[i]!;
      if (first.end - first.start > blockBytes) {
        // A range larger than a block: read in blocks of its own.
        for (let at = first.start; at < first.end; at += blockBytes) yield await readExactly(at, Math.min(blockBytes, first.end - at));
        i++;
        continue;
      }
      let j = i;
      while (j + 1 < ranges.length && ranges[j + 1]!.start >= ranges[j]!.end && ranges[j + 1]!.end - first.start <= blockBytes) j++;
      const block = await readExactly(first.start, ranges[j]!.end - first.start);
      for (let k = i; k <= j; k++) yield block.subarray(ranges[k]!.start - first.start, ranges[k]!.end - first.start);
      i = j + 1;
    }
  } finally {
    await file.close();
  }
}

/** A side's packets: read from its samples, or dumped by ffmpeg. */
function packetsOf(tools: Ffmpeg, side: Side, signal: AbortSignal): { stdout: AsyncIterable<Buffer>; done: Promise<{ code: number }> } {
  if (side.ranges) {
    let finished!: (result: { code: number }) => void;
    const done = new Promise<{ code: number }>((resolve) => (finished = resolve));
    // A reader that never started (the walk stopped first) settles with the abort that ends the walk.
    signal.addEventListener('abort', () => finished({ code: 1 }), { once: true });
    const ranges = side.ranges;
    const stdout = (async function* () {
      try {
        yield* rangeChunks(side.path, ranges);
        finished({ code: 0 });
      } catch {
        finished({ code: 1 });
      } finally {
        finished({ code: 1 }); // no effect after the first
      }
    })();
    return { stdout, done };
  }
  return streamTool(tools.ffmpeg.path, streamDumpArgs(side.path, side.demuxer, side.map), tools.timeoutMs, { signal });
}

/**
 * The decoder configuration record of a file's first video track, as the container holds it: for
 * the three filtered codecs their own, for `mp4v` its esds, for Matroska its CodecPrivate.
 */
export async function configRecord(path: string, container: 'isobmff' | 'matroska'): Promise<{ codec: PictureCodec | undefined; record: Buffer | undefined }> {
  const file = await open(path, 'r');
  try {
    if (container === 'isobmff') {
      const { size } = await file.stat();
      const moovBox = (await topLevelBoxes(file, size, 10_000)).find((b) => b.type === 'moov');
      if (!moovBox || moovBox.end - moovBox.box > 64 * 1024 * 1024) return { codec: undefined, record: undefined };
      const moov = await readAt(file, moovBox.box, moovBox.end - moovBox.box);
      const trak = videoTracks(moov, 8, moov.length)[0];
      const stsd = trak && ['mdia', 'minf', 'stbl', 'stsd'].reduce<{ start: number; end: number } | undefined>((parent, type) => parent && boxesIn(moov, parent.start, parent.end).find((b) => b.type === type), trak);
      const entry = stsd && boxesIn(moov, stsd.start + 8, stsd.end)[0];
      const codec = entry && pictureCodecOfEntry(entry.type);
      // MPEG-4 Part 2 and MPEG-1/2 video in MP4 (`mp4v`) keep their headers in an esds.
      const boxType = codec ? configBoxOf[codec] : entry?.type === 'mp4v' ? 'esds' : undefined;
      const box = entry && boxType && boxesIn(moov, entry.start + 78, entry.end).find((b) => b.type === boxType);
      return { codec, record: box ? moov.subarray(box.start, box.end) : undefined };
    }
    const { size } = await file.stat();
    const segment = (await childElements(file, 0, size, 4)).find((e) => e.id === ebmlIds.segment);
    const tracks = segment && (await childElements(file, segment.dataStart, segment.dataEnd, 64)).find((e) => e.id === ebmlIds.tracks);
    for (const entry of tracks ? await childElements(file, tracks.dataStart, tracks.dataEnd, 64) : []) {
      const fields = await childElements(file, entry.dataStart, entry.dataEnd, 256);
      const type = fields.find((f) => f.id === ebmlIds.trackType);
      if (!type || (await readAt(file, type.dataStart, 1))[0] !== 1) continue;
      const id = fields.find((f) => f.id === ebmlIds.codecId);
      const codec = id && pictureCodecOfMatroska((await readAt(file, id.dataStart, Math.min(64, id.dataEnd - id.dataStart))).toString('latin1').replace(/\0+$/, ''));
      const field = fields.find((f) => f.id === ebmlIds.codecPrivate);
      return { codec, record: field ? await readAt(file, field.dataStart, field.dataEnd - field.dataStart) : undefined };
    }
    return { codec: undefined, record: undefined };
  } finally {
    await file.close();
  }
}

/** Problems of the output's configuration record: it must be exactly its own canonical rebuild. */
export function configProblems(codec: PictureCodec, record: Buffer | undefined): string[] {
  if (record === undefined) return codec === 'av1' ? [] : [`video: no ${configBoxOf[codec]} record for the ${codec} stream`];
  try {
    const rebuilt = canonicalConfig(codec, record);
    if (Object.keys(rebuilt.removed).length > 0) return [`video: the ${configBoxOf[codec]} record holds units other than parameter sets`];
    return rebuilt.bytes.equals(record) ? [] : [`video: the ${configBoxOf[codec]} record is not in its canonical form`];
  } catch (err) {
    if (err instanceof ConfigError) return [`video: the ${configBoxOf[codec]} record does not parse (${err.message})`];
    throw err;
  }
}

/**
 * Walks the input's and the output's picture streams side by side. `signal` stops both dumps (a
 * failed verify); they are stopped anyway once the walk ends.
 */
export async function provePictureStream(
  tools: Ffmpeg,
  codec: PictureCodec,
  input: Side & { lengthSize: 1 | 2 | 4 },
  output: Side & { lengthSize: 1 | 2 | 4 },
  signal?: AbortSignal,
): Promise<StreamProof> {
  const problems: string[] = [];
  const dropped: Removed = {};
  const count = (category: Parameters<typeof countRemoved>[1]): void => countRemoved(dropped, category);
  const kept = keptUnitTypes[codec];
  const parameterSets = new ParameterSetContext();
  const stop = new AbortController();
  const stopBoth = (): void => stop.abort();
  signal?.addEventListener('abort', stopBoth, { once: true });
  const inRun = packetsOf(tools, input, stop.signal);
  const outRun = packetsOf(tools, output, stop.signal);
  const inUnits = new UnitQueue(inRun.stdout, new UnitSplitter(codec, input.lengthSize, input.ranges !== undefined));
  const outUnits = new UnitQueue(outRun.stdout, new UnitSplitter(codec, output.lengthSize, output.ranges !== undefined));
  /** The input's next unit, or undefined at its end; a unit of a type the output may not keep is counted as removed. */
  const nextInput = async (): Promise<Unit | undefined> => inUnits.take() ?? ((await inUnits.fill()) ? inUnits.take() : undefined);
  try {
    // Units are taken without awaiting while a side's current block lasts: a per-unit await
    // cost more than the comparison (thousands of units a minute of video).
    for (;;) {
      const unit = outUnits.take() ?? ((await outUnits.fill()) ? outUnits.take() : undefined);
      if (!unit) break;
      if (!kept.has(unit.type)) {
        problems.push(`video: a unit of type ${unit.type} in the picture stream, which a cleaned stream does not keep`);
        break;
      }
      const parameterSet = parameterSetProblem(codec, unit.bytes, parameterSets);
      if (parameterSet) {
        problems.push(parameterSet);
        break;
      }
      // The input's next kept unit that is this one. Kept units before it were left out by the
      // remux (a demuxer applies the edit list, and skips samples outside it): picture data, which
      // may go. So the proof is that the output is a subsequence of the input's coded units,
      // found greedily (which finds one if there is one), in one pass over each.
      let found = false;
      for (let expected = await nextInput(); expected !== undefined; expected = await nextInput()) {
        if (!kept.has(expected.type)) droppedCategories(codec, expected.type, expected.bytes, count);
        else if (sameCodedUnit(expected.bytes, unit.bytes)) {
          found = true;
          break;
        }
      }
      if (!found) {
        problems.push('video: the picture stream is not the input\'s coded pictures, unit for unit');
        break;
      }
    }
    if (problems.length === 0) {
      // The rest of the input: what it held beside its pictures is counted too.
      for (let rest = await nextInput(); rest !== undefined; rest = await nextInput()) {
        if (!kept.has(rest.type)) droppedCategories(codec, rest.type, rest.bytes, count);
      }
      const [inDone, outDone] = await Promise.all([inRun.done, outRun.done]);
      if (inDone.code !== 0 || outDone.code !== 0 || !inUnits.splitter.end() || !outUnits.splitter.end()) {
        problems.push(`video: the picture stream could not be read unit by unit (${inUnits.splitter.error ?? outUnits.splitter.error ?? 'ffmpeg failed'})`);
      }
    }
  } finally {
    stop.abort();
    signal?.removeEventListener('abort', stopBoth);
    await Promise.allSettled([inUnits.close(), outUnits.close(), inRun.done, outRun.done]);
  }
  const splitError = inUnits.splitter.error ?? outUnits.splitter.error;
  if (splitError) problems.push(`video: the picture stream could not be read unit by unit (${splitError})`);
  return { problems: [...new Set(problems)], dropped };
}

/** An in-band parameter set (AV1: sequence header) of the output must end where its fields do (formats/parameter-sets.ts). */
function parameterSetProblem(codec: PictureCodec, unit: Buffer, context: ParameterSetContext): string | undefined {
  try {
    checkParameterSet(codec, unit, context);
  } catch (err) {
    if (err instanceof ParameterSetError) return `video: a parameter set in the picture stream: ${err.message}`;
    throw err;
  }
  return undefined;
}

/**
 * The output's unit is the input's, byte for byte, but for zero bytes the input had after its last
 * byte: H.264/HEVC allow trailing_zero_8bits and cabac_zero_words there (they carry nothing), and
 * FFmpeg's unit splitter drops them. Nothing else may differ.
 */
function sameCodedUnit(input: Buffer, output: Buffer): boolean {
  if (output.length > input.length) return false;
  for (let i = output.length; i < input.length; i++) if (input[i] !== 0) return false;
  return input.subarray(0, output.length).equals(output);
}

/**
 * MPEG-1/2 and MPEG-4 Part 2: no user data in the output's headers or packets (formats/mpeg-headers.ts).
 * The record must be its own canonical rebuild; every packet is scanned for a user_data start code.
 */
export async function proveNoUserData(tools: Ffmpeg, output: Side, container: 'isobmff' | 'matroska', signal?: AbortSignal): Promise<string[]> {
  const problems: string[] = [];
  const { record } = await configRecord(output.path, container);
  if (record && container === 'isobmff') {
    try {
      const rebuilt = canonicalEsds(record);
      if (!rebuilt.bytes.equals(record) || Object.keys(rebuilt.removed).length > 0) problems.push('video: the esds record is not in its canonical form');
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      problems.push(`video: the esds record does not parse (${err.message})`);
    }
  }
  if (record && holdsUserData(record)) problems.push('video: user data in the decoder configuration');
  const scanner = new UserDataScanner();
  const read = await eachPacketChunk(tools, output, signal, (chunk) => {
    scanner.push(chunk);
    return scanner.found;
  });
  if (!read) problems.push('video: the picture stream could not be read');
  // MPEG-4 Part 2 and MPEG-1 have no filter that removes it from the packets: such a file is refused.
  if (scanner.found) problems.push('video: user data (an encoder\'s or camera\'s text) in the picture stream, which a remux cannot remove from this codec');
  return problems;
}

/**
 * MJPEG: every frame of the output, walked from SOI to EOI. APP0 may only be JFIF (16 bytes, no
 * thumbnail) or AVI1 (its reserved bytes zero); any other APPn and every COM is refused.
 */
export async function proveMjpegFrames(tools: Ffmpeg, output: Side, signal?: AbortSignal): Promise<string[]> {
  const walker = new MjpegWalker();
  const read = await eachPacketChunk(tools, output, signal, (chunk) => {
    walker.push(chunk);
    return walker.problem !== undefined;
  });
  if (!read) return ['video: the MJPEG frames could not be read'];
  return walker.problem ? [`video: an MJPEG frame ${walker.problem}`] : walker.end();
}

/**
 * Hands each chunk of the output's picture packets, as ffmpeg dumps them, to `push` until it
 * returns true (a problem found: the dump is stopped). False when ffmpeg could not read them all.
 */
async function eachPacketChunk(tools: Ffmpeg, output: Side, signal: AbortSignal | undefined, push: (chunk: Buffer) => boolean): Promise<boolean> {
  const stop = new AbortController();
  const stopIt = (): void => stop.abort();
  signal?.addEventListener('abort', stopIt, { once: true });
  const run = streamTool(tools.ffmpeg.path, streamDumpArgs(output.path, output.demuxer, output.map), tools.timeoutMs, { signal: stop.signal });
  try {
    for await (const chunk of run.stdout) if (push(chunk)) return true;
    return (await run.done).code === 0;
  } finally {
    stop.abort();
    signal?.removeEventListener('abort', stopIt);
    await run.done.catch(() => undefined);
  }
}

/**
 * A byte-at-a-time state machine over concatenated JPEG frames (chunks may split anything), so
 * its memory is one segment header. Segments before the scan are skipped by their lengths (APP0
 * bodies, at most 16 bytes, are kept to check); entropy-coded data is skipped to its next marker.
 */
export class MjpegWalker {
  problem: string | undefined;
  frames = 0;
  /** Where the walk is; `entropy` and bodies other than APP0's are consumed in push(), not step(). */
  private state: 'soi' | 'marker' | 'code' | 'length' | 'body' | 'entropy' | 'entropyFF' = 'soi';
  private soiBytes = 0;
  private marker = 0;
  private lengthBytes: number[] = [];
  private remaining = 0;
  private app0: number[] = [];

  push(chunk: Buffer): void {
    for (let i = 0; i < chunk.length && !this.problem; ) {
      // The two long stretches go at native speed: a segment body skipped by its length, and
      // entropy-coded data up to its next 0xFF.
      if (this.state === 'body' && this.marker !== 0xe0) {
        const take = Math.min(this.remaining, chunk.length - i);
        this.remaining -= take;
        i += take;
        if (this.remaining === 0) this.state = this.afterSegment();
        continue;
      }
      if (this.state === 'entropy') {
        const at = chunk.indexOf(0xff, i);
        if (at < 0) return;
        this.state = 'entropyFF';
        i = at + 1;
        continue;
      }
      this.step(chunk[i]!);
      i++;
    }
  }

  end(): string[] {
    if (this.problem) return [`video: an MJPEG frame ${this.problem}`];
    return this.state === 'soi' && this.soiBytes === 0 ? [] : ['video: the MJPEG stream ends inside a frame'];
  }

  private step(byte: number): void {
    switch (this.state) {
      case 'soi':
        if ((this.soiBytes === 0 && byte !== 0xff) || (this.soiBytes === 1 && byte !== 0xd8)) return void (this.problem = 'does not start with SOI');
        if (++this.soiBytes === 2) {
          this.soiBytes = 0;
          this.state = 'marker';
        }
        return;
      case 'marker':
        if (byte !== 0xff) return void (this.problem = 'has bytes between its segments');
        this.state = 'code';
        return;
      case 'code':
        if (byte === 0xff) return; // fill bytes before a marker
        this.marker = byte;
        if (byte === 0xd9) {
          this.frames++;
          this.state = 'soi';
          return;
        }
        if ((byte >= 0xe1 && byte <= 0xef) || byte === 0xfe) return void (this.problem = `holds an ${byte === 0xfe ? 'COM' : `APP${byte - 0xe0}`} segment`);
        this.lengthBytes = [];
        this.state = 'length';
        return;
      case 'length':
        this.lengthBytes.push(byte);
        if (this.lengthBytes.length < 2) return;
        this.remaining = ((this.lengthBytes[0]! << 8) | this.lengthBytes[1]!) - 2;
        if (this.remaining < 0) return void (this.problem = 'has a segment shorter than its length field');
        this.app0 = [];
        this.state = this.remaining === 0 ? this.afterSegment() : 'body';
        return;
      case 'body': {
        // APP0 only: other bodies are skipped in push().
        this.app0.push(byte);
        if (this.app0.length > 14) return void (this.problem = 'holds an APP0 segment longer than JFIF\'s');
        if (--this.remaining === 0) {
          if (this.marker === 0xe0 && !canonicalApp0(this.app0)) return void (this.problem = 'holds an APP0 segment with more than JFIF\'s or AVI1\'s fields');
          this.state = this.afterSegment();
        }
        return;
      }
      case 'entropyFF':
        if (byte === 0x00 || (byte >= 0xd0 && byte <= 0xd7)) this.state = 'entropy';
        else if (byte === 0xff) this.state = 'entropyFF';
        else {
          // A marker after the scan: the next scan's tables, another SOS, or EOI.
          this.state = 'code';
          this.step(byte);
        }
        return;
    }
  }

  private afterSegment(): 'entropy' | 'marker' {
    return this.marker === 0xda ? 'entropy' : 'marker';
  }
}

/** JFIF (version, units, densities, a 0x0 thumbnail) or AVI1 (a field polarity, then zeros). */
function canonicalApp0(body: number[]): boolean {
  if (String.fromCharCode(...body.slice(0, 5)) === 'JFIF\0') return body.length === 14 && body[12] === 0 && body[13] === 0;
  if (String.fromCharCode(...body.slice(0, 4)) === 'AVI1') return (body[4] ?? 0) <= 2 && body.slice(5).every((b) => b === 0);
  return false;
}
