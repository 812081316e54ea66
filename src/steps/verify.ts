/**
 * Step 4, verify: an independent proof that the cleaned file is clean, or the upload fails
 * closed with a 422. Three checks, none of which trusts the stripper:
 *   1. structure: every structure in the output is on the verifier's own allowlist and nothing
 *      trails the end (verify/structure-*.ts);
 *   2. tag readers: exifr (images) and ffprobe (video) find no metadata in the output;
 *   3. value scan: no value the input carried appears anywhere in the output bytes.
 * It also checks that the picture still has the right size and way up.
 */
import { createHmac } from 'node:crypto';
import { open, readFile, rm } from 'node:fs/promises';
import { crc32 } from 'node:zlib';
import { giveBack, readWhole } from '../buffers.js';
import path from 'node:path';
import { countRemoved, type Removed, type Sniffed, type Stripped, type Verified } from '../context.js';
import { ScrubError } from '../errors.js';
import { audioDecodeArgs, packetDumpArgs } from '../tools/ffmpeg-args.js';
import { probe, probeAhead, rotationOf, runTool, videoTools, type Ffmpeg, type ProbeAhead, type ProbeResult, type ProbeStream } from '../tools/ffmpeg.js';
import { readRanges, sampleLayout, unownedBytesProblems, videoSampleRanges, type SampleLayout } from '../verify/isobmff-samples.js';
import { readExifValues, type ExifBlocks } from '../tools/exifr.js';
import { decodePreview, previewFromPicture, previewSize, readImageInfo, type ImageInfo } from '../tools/sharp.js';
import { collectImageValues } from '../verify/input-values.js';
import { PatternSet, ScanBudgetExceeded } from '../verify/scan.js';
import { lengthSizeOf } from '../formats/codec-config.js';
import { mpegHeaderCodecs } from '../formats/mpeg-headers.js';
import { configProblems, configRecord, proveMjpegFrames, proveNoUserData, provePictureStream, type StreamProof } from '../verify/picture-stream.js';
import { checkImageStructure, codedStructure, pngOrientation, tiffImageData, type StructureReport } from '../verify/structure-image.js';
import { checkVideoStructure } from '../verify/structure-video.js';
import { structureOnThread } from '../verify/structure-thread.js';
import { ValueCollector } from '../verify/values.js';
import { cleanPathOf } from './strip.js';

export interface VerifyDeps {
  /** Present for video (the only family that needs it). */
  ffmpeg: Ffmpeg | undefined;
  maxInputPixels: number;
  /** The image preview: now (default), never, or where it needs no decode, on request (PipelineDeps). */
  previews?: boolean | 'later' | undefined;
  /**
   * The fingerprint's key: an image's keyed hash is then made here, while this thread waits for
   * the structure check on its own thread (VerifiedFacts.contentHmac), rather than after verify.
   */
  hashKey?: Buffer | undefined;
}

/**
 * The reason of a refusal for nothing but what the walk of a JPEG's scans found: data past a
 * scan's last MCU, or a scan that does not decode (the pipeline then strips the file again with
 * every scan walked, which cuts the one and refuses the other as corrupt).
 */
export const scanWalkReason = 'the coded data of a scan';

/** What the verifier learned about the output, handed on so the fingerprint does not re-read it. */
export type VerifiedFacts =
  /**
   * `bytes`: the cleaned image exactly as verified, so the keyed hash need not read it again.
   * `makePreview`: with previews 'later', how to make a JPEG's from what its walk read (no decode).
   * `structures`: the structure check's report of those bytes (StructureReport.structures).
   */
  | { imageInfo: ImageInfo; bytes: Buffer; structures: StructureReport['structures']; preview: Buffer | undefined; makePreview?: (() => Promise<Buffer>) | undefined; contentHmac?: string | undefined; probe?: undefined }
  | { probe: ProbeResult; imageInfo?: undefined; bytes?: undefined; structures?: undefined; preview?: undefined; makePreview?: undefined; contentHmac?: undefined };

// The verifier's own list of tags a clean output may carry (kept apart from the stripper's).
const cleanFormatTags = new Set(['major_brand', 'minor_version', 'compatible_brands']);
const cleanStreamTags = new Set(['language', 'vendor_id', 'rotate', 'DURATION']);
const cleanHandlerNames = new Set(['VideoHandler', 'SoundHandler', 'DataHandler']);
const cleanEncoderNames = new Set(['Lavf']);
/**
 * A handler name that is part of one ffmpeg writes itself carries nothing but that fixed word:
 * Android's "VideoHandle" and "SoundHandle" are found in every clean output's "VideoHandler"
 * and "SoundHandler", and refused every such phone video (issue 16). Any other name is scanned.
 */
const isPartOfCleanHandlerName = (name: string): boolean => {
  // QuickTime writes the name as a Pascal string: ffprobe may show its length byte in front.
  const bare = name.replace(/^[\x00-\x1f]/, '').replace(/\0+$/, '');
  return [...cleanHandlerNames].some((clean) => clean.includes(bare));
};
/** Input tags whose values ffmpeg rewrites itself or that are technical: not scanned for. */
const unscannedInputTags = new Set([...cleanFormatTags, ...cleanStreamTags, 'handler_name', 'encoder', 'ENCODER']);

const displaySize = (info: ImageInfo): string =>
  info.orientation >= 5 ? `${info.height}x${info.width}` : `${info.width}x${info.height}`;

/**
 * What the verifier starts while the stripper is still remuxing (the remux leaves the main thread
 * and a core idle): a reading of the input's own sample tables, and its ffprobe of the output,
 * which does its start-up now and reads the output once it is complete.
 */
export interface EarlyReading {
  samples: Promise<SampleLayout & { mined: Buffer[] }> | undefined;
  outputProbe: Promise<ProbeAhead>;

  /**
   * Stops what still waits for the output and resolves when everything started here has ended
   * (a failed strip or verify calls it before the work dir is removed).
   */
  abandon(): Promise<void>;
}

export function readInputEarly(file: Sniffed, deps: VerifyDeps): EarlyReading | undefined {
  if (file.kind.family !== 'video') return undefined;
  const samples = file.kind.demuxer === 'mov' ? readInputSamples(file.inputPath) : undefined;
  // Awaited by verify; a hostile table can refuse the file (work budget) before verify is reached.
  samples?.catch(() => undefined);
  const outputProbe = probeAhead(videoTools(deps), cleanPathOf(file), file.kind.demuxer, file.workDir);
  const abandon = async (): Promise<void> => {
    await Promise.allSettled([samples, outputProbe.then((p) => p.cancel())]);
  };
  return { samples, outputProbe, abandon };
}

export async function verify(file: Stripped, deps: VerifyDeps, early?: EarlyReading): Promise<Verified & { facts: VerifiedFacts }> {
  const problems: string[] = [];
  let whereLeaks: string[] | undefined;
  let facts: VerifiedFacts;
  /** What the verifier's own walk of the input's picture stream found removed (video). */
  let dropped: Removed = {};
  /** What the walk of a JPEG's scans found wrong (StructureReport.scanProblems). */
  let scanProblems: string[] | undefined;
  const values = new ValueCollector();

  // The slow parts (tag readers, ffprobe in its own process, the value scan) run side by side.
  if (file.kind.family === 'image') {
    const format = file.kind.format;
    // The structure check (for JPEG a walk of every scan, as costly as a decode) starts as soon as
    // the output is read, on a thread of its own where there is one (verify/structure-thread.ts),
    // in the very buffer read, and runs beside everything after. A failure here waits for it: the
    // buffer is not given back (nor the work dir removed) while the thread may still read it.
    // A JPEG's walk also reads its picture at 1/8 scale (its DC coefficients), its preview's pixels.
    const dc = format === 'jpeg' && deps.previews !== false;
    let threaded: Promise<StructureReport> | undefined;
    try {
      // The pixels must decode (THREATS 37), checked once the headers passed the pixel and canvas
      // limits; the decode's preview is kept as the thumbnail. sharp cannot decode HEVC: HEIC's
      // coded items are copied byte for byte and not decoded here. A JPEG is decoded only if the
      // structure walk leaves its coded data unproven (any frame but 8-bit DCT, which the stripper
      // refuses too): walking every scan is the same proof, at the same cost, and its preview is
      // made from the picture the walk read.
      const decodable = format !== 'heif' || file.kind.mime === 'image/avif';
      const walkProves = format === 'jpeg';
      const wantsPreview = deps.previews === undefined || deps.previews === true;
      // The output is read from disk: what is proven clean is what will be forwarded. Its tag
      // reading, header and decode start as soon as it is read.
      const readOutput = async () => {
        const output = await readWhole(file.cleanPath);
        threaded = structureOnThread(format, output, { dc });
        threaded?.catch(() => undefined); // awaited below; marked handled in case a step before that throws
        const tagBlocks: Promise<ExifBlocks> = format === 'tiff' ? Promise.resolve({}) : readExifValues(output);
        const headerAfter = readImageInfo(output, deps.maxInputPixels);
        headerAfter.catch(() => undefined); // awaited below; marked handled in case a step before that throws
        const decode = (): Promise<Buffer> => decodePreview(output, { maxInputPixels: deps.maxInputPixels, format: format.toUpperCase(), strictJpeg: format === 'jpeg' });
        const preview: Promise<Buffer | undefined> = decodable && !walkProves ? headerAfter.then(decode) : Promise.resolve(undefined);
        preview.catch(() => undefined); // awaited below; marked handled in case a step before that throws
        return { output, tagBlocks, headerAfter, decode, preview };
      };
      // A decode, the longest step, starts first, on libvips' threads, and the input is read
      // beside it. Otherwise the input comes first and its buffer is handed back to serve the
      // output's read, so an upload holds one whole image in memory at a time, not two (server
      // RSS under load, issue 18: the service's JPEGs, which are not decoded).
      const early = decodable && !walkProves ? await readOutput() : undefined;
      // The input: its header, its way up and every value it carried (copied out).
      const input = file.original ?? (await readFile(file.inputPath));
      const [headerBefore] = await Promise.all([readImageInfo(input, deps.maxInputPixels), collectImageValues(format, input, values)]);
      // PNG: the orientation of an eXIf wherever it lies, as viewers read it, not only where
      // libvips looks (before IDAT).
      const before = format === 'png' ? { ...headerBefore, orientation: pngOrientation(input) } : headerBefore;
      giveBack(file.original);
      const read = early ?? (await readOutput());
      const { output, tagBlocks, headerAfter, decode } = read;
      let { preview } = read;
      // In line (a batch worker), the structure check runs once the decode has started on
      // libvips' threads, beside it rather than before it.
      await headerAfter.catch(() => undefined);
      // Used only once verify has passed (by the fingerprint).
      const contentHmac = threaded && deps.hashKey ? createHmac('sha256', deps.hashKey).update(output).digest('hex') : undefined;
      const structure = threaded ? await threaded : checkImageStructure(format, output, { dc });
      problems.push(...structure.problems);
      scanProblems = structure.scanProblems;
      let makePreview: (() => Promise<Buffer>) | undefined;
      if (walkProves && structure.problems.length === 0) {
        const picture = structure.dcPicture;
        if (!structure.codedDataProven) {
          preview = headerAfter.then(decode).then((made) => (wantsPreview ? made : undefined));
        } else if (picture && Math.max(picture.width, picture.height) >= previewSize) {
          // Made from the walk's picture (no second decode), now or, without previews, on request.
          makePreview = async () => previewFromPicture(picture, picture.icc, (await headerAfter).orientation);
          if (wantsPreview) preview = makePreview();
        } else if (deps.previews !== false) {
          // No picture from the walk (CMYK), or one smaller than a preview: decoded now (the
          // output's buffer serves the next upload once verify is done).
          preview = headerAfter.then(decode);
        }
        preview.catch(() => undefined);
      }
      // One pass over the output for both the input's values and the structure's forbidden signatures.
      const { forbidden, keptRanges } = structure;
      const patterns = [...forbidden.map((f) => f.bytes), ...values.values];
      // Coded picture data of the output proven to be the input's, byte for byte (issue 26): a
      // value of the input that is also a run of its pictures (a C2PA ingredient thumbnail of the
      // same picture, FLIR's raw thermal copy of its strips) is found there, and is not a leak.
      const coded = structure.structures.filter((s) => s.what === codedStructure(format));
      /** Per value, its first match that only proven coded data can excuse: decided after the scan. */
      const inCoded = new Map<number, number>();
      // A forbidden signature is excused only inside a colour profile; a value, inside a kept
      // structure written from fields, or inside proven coded data.
      const excused = (pattern: number, start: number): boolean => {
        const end = start + patterns[pattern]!.length;
        if (keptRanges.some((r) => start >= r.start && end <= r.end && (pattern >= forbidden.length || r.what === 'icc'))) return true;
        if (pattern < forbidden.length || !coded.some((r) => start >= r.start && end <= r.end)) return false;
        if (!inCoded.has(pattern)) inCoded.set(pattern, start);
        return true;
      };
      const found = await matchedPatterns([output], patterns, excused);
      if (inCoded.size > 0) {
        // Rare, so proven only now: the input's coded data (JPEG scans, TIFF strips) is read again
        // from its file, whose buffer went back to the pool, and the output's must be the same
        // pieces, in order (a file changed since the strip read it proves nothing: fail closed).
        const proven = provenCoded(format, output, structure.structures, codedDigests(format, await readFile(file.inputPath)));
        for (const [pattern, start] of inCoded) {
          const end = start + patterns[pattern]!.length;
          const firstFound = found.get(pattern);
          if (!proven.some((r) => start >= r.start && end <= r.end) && (firstFound === undefined || start < firstFound)) found.set(pattern, start);
        }
      }
      problems.push(...new Set([...found.keys()].filter((i) => i < forbidden.length).map((i) => forbidden[i]!.problem)));
      const leakAt = [...found].filter(([i]) => i >= forbidden.length).map(([, at]) => at);
      const leaks = leakAt.length;
      if (leaks > 0) whereLeaks = leakAt.slice(0, 8).map((at) => `${structure.structures.find((s) => at >= s.start && at < s.end)?.what ?? 'bytes'} at ${at}`);

      for (const [block, tags] of Object.entries(await tagBlocks)) {
        const onlyOrientation = block === 'ifd0' && Object.keys(tags).every((key) => key === 'Orientation');
        if (!onlyOrientation) problems.push(`tag reader: ${block} metadata present`);
      }
      // The output's eXIf must also be where libvips finds it.
      const libvipsAfter = await headerAfter;
      const after = format === 'png' ? { ...libvipsAfter, orientation: pngOrientation(output) } : libvipsAfter;
      if (after.orientation !== libvipsAfter.orientation) problems.push('image: orientation not where decoders read it');
      if (displaySize(before) !== displaySize(after)) problems.push('image: displayed size changed');
      // The way up, for the turns that keep the size (180°, mirrors).
      else if (before.orientation !== after.orientation) problems.push('image: orientation changed');
      if (before.hasIcc && !after.hasIcc) problems.push('image: colour profile lost');
      facts = { imageInfo: after, bytes: output, structures: structure.structures, preview: await preview, makePreview: deps.previews === 'later' ? makePreview : undefined, contentHmac };
      if (leaks > 0) problems.push(`value scan: ${leaks} value(s) from the input's metadata found in the output`);
    } catch (err) {
      await threaded?.catch(() => undefined);
      throw err;
    }
  } else {
    const { demuxer } = file.kind;
    const ffmpeg = videoTools(deps);
    const probed = early ? early.outputProbe.then((ahead) => ahead.open()) : probe(ffmpeg, file.cleanPath, demuxer);
    probed.catch(() => undefined); // awaited below; marked handled in case a step before that throws
    // The work dir is removed as soon as verify fails: whatever was started here that still reads
    // it (the output's audio decode above all, which can run for seconds) is stopped and waited
    // for first.
    const audioCheck = new AbortController();
    const started: unknown[] = [probed];
    try {
      const before = file.inputProbe ?? (await probe(ffmpeg, file.inputPath, demuxer));
      values.probeTags(before, unscannedInputTags);
      for (const stream of before.streams) {
        const handler = stream.tags?.handler_name;
        if (handler !== undefined && !isPartOfCleanHandlerName(handler)) values.text(handler);
      }
      const container = demuxer === 'mov' ? 'isobmff' : 'matroska';
      // Sample tables can be made to call any bytes "audio" (the fuzzer found subtitle text carried
      // that way): kept audio must decode without a single error. The output's audio packets are a
      // copy of some of the input's, so input audio that decoded (in the remux's own run) decodes
      // here; otherwise the output's audio is decoded, while this thread collects and scans.
      const hasAudio = before.streams.some((s) => s.codec_type === 'audio');
      const audioDecodes =
        !hasAudio || file.inputAudioDecodes === true
          ? true
          : runTool(ffmpeg.ffmpeg.path, audioDecodeArgs(file.cleanPath, demuxer), ffmpeg.timeoutMs, { signal: audioCheck.signal }).then(
              (r) => r.code === 0,
              () => false,
            );
      started.push(audioDecodes);
      problems.push(...(await collectVideoInputValues(ffmpeg, file, before, container, values, early)));
      const reads = [
        probed,
        checkVideoStructure(container, file.cleanPath).then(async (found) => (container === 'isobmff' ? [...found, ...(await unownedBytesProblems(file.cleanPath))] : found)),
        values.values.length === 0 ? 0 : matchedPatterns(fileChunks(file.cleanPath), values.values, () => false).then((found) => found.size),
        pictureProof(ffmpeg, file, before, container, audioCheck.signal),
      ] as const;
      started.push(...reads);
      const [after, structure, leaks, pictures] = await Promise.all(reads);
      problems.push(...pictures.problems);
      dropped = pictures.dropped;
      // Nothing the early reading started outlives verify.
      await early?.abandon();
      if (!(await audioDecodes)) problems.push('video: the audio does not decode (corrupt or foreign data in its samples)');
      problems.push(...videoTagProblems(after), ...structure);
      if (after.streams.length === 0) problems.push('video: no playable stream in the output');
      if (rotationOf(mainVideo(before)) !== rotationOf(mainVideo(after))) problems.push('video: rotation changed');
      facts = { probe: after };
      if (leaks > 0) problems.push(`value scan: ${leaks} value(s) from the input's metadata found in the output`);
    } catch (err) {
      audioCheck.abort();
      await Promise.allSettled(started);
      throw err;
    }
  }

  if (problems.length > 0) {
    // Where the scan matched (structure and offset, never the value) goes to the log with the
    // refusal, so an operator can explain it without the file.
    const where = whereLeaks ? ` [value-scan matches: ${whereLeaks.join(', ')}]` : '';
    const message = `The cleaned file did not pass verification, so it was not forwarded (${problems.join('; ')}). Report the request id; converting the file with another tool may help.`;
    // Only what the walk of a JPEG's scans found: the pipeline strips it again, walking them.
    const reason = scanProblems && problems.every((p) => scanProblems!.includes(p)) ? scanWalkReason : undefined;
    throw new ScrubError('verification_failed', message, { internal: message + where, reason });
  }
  const removed = { ...file.removed };
  for (const [category, n] of Object.entries(dropped) as Array<[keyof Removed, number]>) countRemoved(removed, category, n);
  return { ...file, removed, verified: true, facts };
}

/**
 * A digest of each piece of coded picture data of an image, in file order (the verifier's own
 * walk): its length and CRC-32. It tells the output's pieces from the input's if a stripper
 * changed them; the input's author does not choose the output, so a collision is not theirs to
 * make, and CRC-32 costs a fifth of SHA-256 (1.6 ms against 8.5 for an 8 MB photo).
 */
export function codedDigests(format: string, image: Buffer): string[] {
  const what = codedStructure(format);
  if (!what) return [];
  // A TIFF input has more IFDs than the output's one: its first IFD's strips are what is kept.
  const pieces = format === 'tiff' ? tiffImageData(image) : checkImageStructure('jpeg', image, { entropy: false }).structures.filter((s) => s.what === what);
  return pieces.map((s) => digest(image.subarray(s.start, s.end)));
}

const digest = (bytes: Buffer): string => `${bytes.length}:${crc32(bytes)}`;

/** The output's coded picture data, when every piece of it is the input's, in order; else none. */
export function provenCoded(format: string, output: Buffer, structures: ReadonlyArray<{ start: number; end: number; what: string }>, input: string[]): Array<{ start: number; end: number }> {
  const what = codedStructure(format);
  const pieces = structures.filter((s) => s.what === what);
  if (!what || pieces.length === 0 || pieces.length !== input.length) return [];
  const same = pieces.every((s, i) => digest(output.subarray(s.start, s.end)) === input[i]);
  return same ? pieces : [];
}

/** How much of an input's subtitle/data packets and unowned media bytes is mined for values. */
const maxMinedBytes = 4 * 1024 * 1024;

/** The verifier's own reading of an ISOBMFF input's sample tables, and the bytes they leave unowned. */
async function readInputSamples(path: string): Promise<SampleLayout & { mined: Buffer[] }> {
  const layout = await sampleLayout(path);
  return { ...layout, mined: await readRanges(path, layout.metadataRanges, maxMinedBytes) };
}

/**
 * Values carried in a video input's *samples* rather than its tags: the text of subtitle and data
 * tracks (drone GPS lines, telemetry), and, for ISOBMFF, whatever the sample tables leave
 * unowned; plus the structural check that no audio/video sample points into either (a corrupted
 * table would otherwise smuggle them into the output as "audio").
 */
async function collectVideoInputValues(
  tools: Ffmpeg,
  file: Stripped,
  before: ProbeResult,
  container: 'isobmff' | 'matroska',
  values: ValueCollector,
  early: EarlyReading | undefined,
): Promise<string[]> {
  const problems: string[] = [];
  if (file.kind.family !== 'video') return problems;
  if (container === 'isobmff') {
    const samples = await (early?.samples ?? readInputSamples(file.inputPath));
    problems.push(...samples.problems);
    for (const chunk of samples.mined) values.printableWords(chunk);
  }
  // Matroska keeps a track's packets inside its own blocks: ask ffmpeg for them, one stream per run
  // (its raw "data" muxer takes one). For ISOBMFF the sample tables above already located them.
  const dropped = container === 'matroska' ? before.streams.filter((s) => s.codec_type === 'subtitle' || s.codec_type === 'data').map((s) => s.index) : [];
  for (const index of dropped) {
    const dump = path.join(file.workDir, `dropped-${index}.bin`);
    const result = await runTool(tools.ffmpeg.path, packetDumpArgs(file.inputPath, file.kind.demuxer, index, dump, maxMinedBytes), tools.timeoutMs);
    // A stream ffmpeg cannot copy out is still metadata: without its text, refuse rather than guess.
    if (result.code !== 0) problems.push('video: a subtitle/data stream of the input could not be read');
    else values.printableWords((await readFile(dump)).subarray(0, maxMinedBytes));
    await rm(dump, { force: true });
  }
  return problems;
}

const mainVideo = (info: ProbeResult): ProbeStream | undefined =>
  info.streams.find((s) => s.codec_type === 'video' && s.disposition?.attached_pic !== 1 && s.disposition?.default === 1) ??
  info.streams.find((s) => s.codec_type === 'video' && s.disposition?.attached_pic !== 1);

/**
 * The picture stream's proof (verify/picture-stream.ts): for H.264, HEVC and AV1, the output's
 * units are the input's coded pictures and parameter sets, unit for unit, and its configuration
 * record is canonical; for MJPEG, no frame carries an APPn or COM segment. Other codecs have no
 * units scrubline removes.
 */
async function pictureProof(tools: Ffmpeg, file: Stripped, before: ProbeResult, container: 'isobmff' | 'matroska', signal: AbortSignal): Promise<StreamProof> {
  if (file.kind.family !== 'video') return { problems: [], dropped: {} };
  const { demuxer } = file.kind;
  const video = mainVideo(before);
  const codec = video?.codec_name;
  if (video && codec === 'mjpeg') return { problems: await proveMjpegFrames(tools, { path: file.cleanPath, demuxer, map: '0:V:0' }, signal), dropped: {} };
  if (video && mpegHeaderCodecs.has(codec ?? '')) return { problems: await proveNoUserData(tools, { path: file.cleanPath, demuxer, map: '0:V:0' }, container, signal), dropped: {} };
  if (!video || (codec !== 'h264' && codec !== 'hevc' && codec !== 'av1')) return { problems: [], dropped: {} };
  const [input, output] = await Promise.all([configRecord(file.inputPath, container), configRecord(file.cleanPath, container)]);
  const problems = configProblems(codec, output.record);
  // ffprobe states H.264's NAL length size; HEVC's is in its record. A size this reader does not
  // know is refused rather than read wrongly.
  const inLength = codec === 'h264' && video.nal_length_size !== undefined ? Number(video.nal_length_size) : lengthSizeOf(codec, input.record);
  const outLength = lengthSizeOf(codec, output.record);
  if ((inLength !== 1 && inLength !== 2 && inLength !== 4) || outLength === undefined) return { problems: [...problems, 'video: the picture stream\'s unit length size could not be read'], dropped: {} };
  // MP4/MOV: both files are read from their own sample tables, every byte of every sample each
  // holds (whatever a player would skip). Other containers: ffmpeg dumps the packets.
  const [inRanges, outRanges] = container === 'isobmff' ? await Promise.all([videoSampleRanges(file.inputPath, video.index), videoSampleRanges(file.cleanPath, 0)]) : [undefined, undefined];
  if (container === 'isobmff' && !outRanges) return { problems: [...problems, 'video: the cleaned file\'s sample tables could not be read'], dropped: {} };
  const proof = await provePictureStream(
    tools,
    codec,
    { path: file.inputPath, demuxer, map: `0:${video.index}`, lengthSize: inLength, ranges: inRanges },
    { path: file.cleanPath, demuxer, map: '0:V:0', lengthSize: outLength, ranges: outRanges },
    signal,
  );
  return { problems: [...problems, ...proof.problems], dropped: proof.dropped };
}

function videoTagProblems(info: ProbeResult): string[] {
  const problems: string[] = [];
  for (const [key, value] of Object.entries(info.format.tags ?? {})) {
    const fine = cleanFormatTags.has(key) || ((key === 'encoder' || key === 'ENCODER') && cleanEncoderNames.has(value));
    if (!fine) problems.push('ffprobe: container tag present');
  }
  for (const stream of info.streams) {
    if (stream.codec_type !== 'video' && stream.codec_type !== 'audio') problems.push(`ffprobe: ${stream.codec_type ?? 'unknown'} stream present`);
    if (stream.disposition?.attached_pic === 1) problems.push('ffprobe: cover art present');
    for (const [key, value] of Object.entries(stream.tags ?? {})) {
      const fine = cleanStreamTags.has(key) || (key === 'handler_name' && cleanHandlerNames.has(value)) || (key === 'ENCODER' && cleanEncoderNames.has(value));
      if (!fine) problems.push('ffprobe: stream tag present');
    }
  }
  if (info.chapters.length > 0) problems.push('ffprobe: chapters present');
  return problems;
}

/**
 * One pass over the output's bytes (a buffer already read, or a stream for video). Resolves to
 * each pattern found at least once where it is not `excused`, with the offset of that match.
 */
async function matchedPatterns(
  chunks: Iterable<Buffer> | AsyncIterable<Buffer>,
  patterns: Buffer[],
  excused: (pattern: number, start: number) => boolean,
): Promise<Map<number, number>> {
  const set = new PatternSet(patterns);
  if (set.size === 0) return new Map();
  const scanner = set.scanner();
  const found = new Map<number, number>();
  try {
    for await (const chunk of chunks) {
      for (const match of scanner.feed(chunk)) {
        if (!found.has(match.pattern) && !excused(match.pattern, match.start)) found.set(match.pattern, match.start);
      }
    }
  } catch (err) {
    if (!(err instanceof ScanBudgetExceeded)) throw err;
    // Not proven clean, so not forwarded (fail closed).
    throw new ScrubError('verification_failed', 'The cleaned file could not be checked for the input\'s metadata values within the work budget (its bytes repeat the start of many of them), so it was not forwarded. Converting the file with another tool may help.', { cause: err });
  }
  return found;
}

/**
 * A file's bytes through one reused 1 MiB buffer: each chunk is valid until the next is asked
 * for (the scanner copies what it keeps across a seam), and a 100 MB video makes no garbage.
 */
async function* fileChunks(path: string): AsyncGenerator<Buffer> {
  const buffer = Buffer.allocUnsafe(1024 * 1024);
  const file = await open(path, 'r');
  try {
    for (;;) {
      const { bytesRead } = await file.read(buffer, 0, buffer.length, null);
      if (bytesRead === 0) return;
      yield buffer.subarray(0, bytesRead);
    }
  } finally {
    await file.close();
  }
}
