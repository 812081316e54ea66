/**
 * `scrubline repro`: a file with the same technical properties as a fingerprint, made from the
 * fingerprint alone (no pixels of the original exist anywhere to make it from). Video: ffmpeg test
 * sources encoded with the same container, codecs, profile, level, pixel format, size, rotation,
 * colour tags, frame rate, duration, GOP and audio layout. Images: a generated pattern written by
 * sharp in the same format, size, channels, bit depth, alpha, interlacing, chroma subsampling,
 * ICC presence, orientation and frame count. When the tools here cannot make a codec, it says
 * which encoder is missing instead of making something different.
 */
import { readFileSync } from 'node:fs';
import { open, rm } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv2020, type ValidateFunction } from 'ajv/dist/2020.js';
import sharp, { type Sharp } from 'sharp';
import type { ImageFingerprint, StreamFingerprint, VideoFingerprint, Fingerprint } from '../steps/fingerprint.js';
import { childBox, readAt, topLevelBoxes, videoTracks } from '../formats/isobmff.js';
import { remuxArgs, synthesisArgs, type Muxer, type SynthesisPlan } from '../tools/ffmpeg-args.js';
import { probe, runTool, type Ffmpeg } from '../tools/ffmpeg.js';

export class ReproError extends Error {}

/** The fingerprint schema this scrubline writes, as shipped beside dist/ and src/. */
const schemaPath = fileURLToPath(new URL('../../schemas/fingerprint-v1.schema.json', import.meta.url));
let validateSchema: ValidateFunction | undefined;

/**
 * Sane bounds for what repro makes, on top of the schema: a fingerprint is saved JSON an engineer
 * was handed, so it is input like any upload (THREATS 43). Numbers only reach ffmpeg's filter
 * graph after these checks, and the frames x pixels an image repro holds are bounded.
 */
export const reproBounds = {
  imageSide: 65_535,
  videoSide: 16_384,
  frames: 10_000,
  framesPerSecond: 1_000,
  sampleRate: 768_000,
  audioChannels: 64,
  durationMs: 24 * 3_600_000,
};

/**
 * Parses and checks a fingerprint for repro: the shipped JSON Schema first (a frameRate carrying
 * `movie=` filter syntax is refused here, before ffmpeg runs), then the bounds above. `maxPixels`
 * bounds frames x width x height of an image (the upload pixel limit by default).
 */
export function readFingerprint(json: string, maxPixels: number): Fingerprint {
  let value: unknown;
  try {
    value = JSON.parse(json);
  } catch {
    throw new ReproError('the fingerprint is not valid JSON');
  }
  validateSchema ??= new Ajv2020({ allErrors: false, strict: false }).compile(JSON.parse(readFileSync(schemaPath, 'utf8')) as object);
  if (!validateSchema(value)) {
    const first = validateSchema.errors?.[0];
    throw new ReproError(`the fingerprint does not match schema 1 (${first ? `${first.instancePath || '/'} ${first.message ?? ''}` : 'invalid'}); pass a fingerprint as scrubline wrote it`);
  }
  const fp = value as Fingerprint;
  const over = (what: string, limit: number): never => {
    throw new ReproError(`the fingerprint's ${what} is over what repro makes (${limit}); it is not one scrubline wrote`);
  };
  if (fp.family === 'image') {
    if (fp.width > reproBounds.imageSide || fp.height > reproBounds.imageSide) over('image size', reproBounds.imageSide);
    if (fp.frames > reproBounds.frames) over('frame count', reproBounds.frames);
    if (fp.frames * fp.width * fp.height > maxPixels) {
      throw new ReproError(`the image is ${fp.width}x${fp.height} in ${fp.frames} frame(s), more pixels in all than repro makes (${maxPixels}; SCRUBLINE_MAX_INPUT_PIXELS)`);
    }
    return fp;
  }
  if ((fp.durationMs ?? 0) > reproBounds.durationMs) over('duration in ms', reproBounds.durationMs);
  for (const s of fp.streams) {
    if ((s.width ?? 0) > reproBounds.videoSide || (s.height ?? 0) > reproBounds.videoSide) over('video size', reproBounds.videoSide);
    if ((s.sampleRate ?? 1) < 1 || (s.sampleRate ?? 0) > reproBounds.sampleRate) over('sample rate', reproBounds.sampleRate);
    if ((s.channels ?? 1) < 1 || (s.channels ?? 0) > reproBounds.audioChannels) over('audio channel count', reproBounds.audioChannels);
    if (s.frameRate !== undefined) {
      const [num, den] = s.frameRate.split('/').map(Number) as [number, number];
      if (num !== 0 && (den === 0 || num / den > reproBounds.framesPerSecond || !Number.isSafeInteger(num) || !Number.isSafeInteger(den))) over('frame rate', reproBounds.framesPerSecond);
    }
  }
  return fp;
}

/** Decoder name (as ffprobe reports it) → the ffmpeg encoder that writes it. */
const videoEncoders: Record<string, string> = {
  h264: 'libx264', hevc: 'libx265', vp8: 'libvpx', vp9: 'libvpx-vp9', av1: 'libaom-av1', mpeg4: 'mpeg4', h263: 'h263',
  mpeg2video: 'mpeg2video', mpeg1video: 'mpeg1video', mjpeg: 'mjpeg', prores: 'prores_ks', dnxhd: 'dnxhd', theora: 'libtheora',
};
const audioEncoders: Record<string, string> = {
  aac: 'aac', mp3: 'libmp3lame', mp2: 'mp2', opus: 'libopus', vorbis: 'libvorbis', flac: 'flac', alac: 'alac', ac3: 'ac3', eac3: 'eac3',
  amr_nb: 'libopencore_amrnb', amr_wb: 'libvo_amrwbenc', pcm_s16le: 'pcm_s16le', pcm_s16be: 'pcm_s16be', pcm_s24le: 'pcm_s24le',
  pcm_s24be: 'pcm_s24be', pcm_s32le: 'pcm_s32le', pcm_f32le: 'pcm_f32le', pcm_u8: 'pcm_u8',
};
const muxers: Record<string, Muxer> = {
  'video/mp4': 'mp4', 'video/quicktime': 'mov', 'video/x-m4v': 'ipod', 'video/3gpp': '3gp', 'video/3gpp2': '3gp',
  'video/webm': 'webm', 'video/matroska': 'matroska', 'video/x-matroska': 'matroska',
};
/** ffprobe's profile names → the encoders' -profile values. */
const profiles: Record<string, Record<string, string>> = {
  libx264: { Baseline: 'baseline', 'Constrained Baseline': 'baseline', Main: 'main', High: 'high', 'High 10': 'high10', 'High 4:2:2': 'high422', 'High 4:4:4 Predictive': 'high444' },
  libx265: { Main: 'main', 'Main 10': 'main10', 'Main Still Picture': 'mainstillpicture' },
  'libvpx-vp9': { 'Profile 0': '0', 'Profile 1': '1', 'Profile 2': '2', 'Profile 3': '3' },
  aac: { LC: 'aac_low', HE: 'aac_he', 'HE-AACv2': 'aac_he_v2' },
};
const known = (value: string | undefined): string | undefined => (value && value !== 'unknown' ? value : undefined);

/** `ffmpeg -encoders`, once per binary. */
const encoderLists = new Map<string, Promise<string>>();
async function hasEncoder(tools: Ffmpeg, name: string): Promise<boolean> {
  let list = encoderLists.get(tools.ffmpeg.path);
  if (!list) encoderLists.set(tools.ffmpeg.path, (list = runTool(tools.ffmpeg.path, ['-hide_banner', '-encoders'], tools.timeoutMs).then((r) => r.stdout)));
  return new RegExp(`^\\s*[VAS][.A-Z]{5}\\s+${name.replace(/[-+]/g, '\\$&')}\\s`, 'm').test(await list);
}

async function encoderFor(tools: Ffmpeg, stream: StreamFingerprint, table: Record<string, string>): Promise<string> {
  const encoder = stream.codec ? table[stream.codec] : undefined;
  if (!encoder) throw new ReproError(`no known encoder for ${stream.type} codec "${stream.codec ?? 'unknown'}"`);
  if (!(await hasEncoder(tools, encoder))) throw new ReproError(`this ffmpeg cannot encode ${stream.codec}: it has no "${encoder}" encoder (${tools.ffmpeg.path}, ${tools.ffmpegVersion})`);
  return encoder;
}

export async function videoPlan(fp: VideoFingerprint, output: string, tools: Ffmpeg): Promise<SynthesisPlan> {
  const muxer = muxers[fp.mime];
  if (!muxer) throw new ReproError(`no container for ${fp.mime}`);
  const videoStream = fp.streams.find((s) => s.type === 'video');
  const audioStream = fp.streams.find((s) => s.type === 'audio');
  if (fp.streams.filter((s) => s.type === 'video').length > 1 || fp.streams.filter((s) => s.type === 'audio').length > 1) {
    throw new ReproError('repro makes at most one video and one audio stream');
  }
  const seconds = (fp.durationMs ?? 1000) / 1000;
  const plan: SynthesisPlan = { output, muxer, seconds };
  if (videoStream) {
    const encoder = await encoderFor(tools, videoStream, videoEncoders);
    const level = videoStream.level !== undefined && videoStream.level > 0 && encoder === 'libx264' ? (videoStream.level / 10).toFixed(1) : undefined;
    plan.video = {
      encoder,
      width: videoStream.width ?? 320,
      height: videoStream.height ?? 240,
      rate: videoStream.frameRate && videoStream.frameRate !== '0/0' ? videoStream.frameRate : '25',
      pixelFormat: known(videoStream.pixelFormat),
      profile: videoStream.profile ? profiles[encoder]?.[videoStream.profile] : undefined,
      level,
      gop: videoStream.keyframeInterval,
      bFrames: videoStream.bFrames === 0 ? 0 : undefined,
      colour: {
        primaries: known(videoStream.colourPrimaries),
        transfer: known(videoStream.colourTransfer),
        matrix: known(videoStream.colourMatrix),
        range: known(videoStream.colourRange),
      },
      rotation: videoStream.rotation ?? 0,
    };
  }
  if (audioStream) {
    const encoder = await encoderFor(tools, audioStream, audioEncoders);
    plan.audio = {
      encoder,
      sampleRate: audioStream.sampleRate ?? 48_000,
      channels: audioStream.channels ?? 2,
      layout: known(audioStream.channelLayout),
      profile: audioStream.profile ? profiles[encoder]?.[audioStream.profile] : undefined,
    };
  }
  return plan;
}

/** A smooth pattern with some texture, in as many channels as the original had. */
function pattern(width: number, height: number, channels: number, frame: number): Buffer {
  const pixels = Buffer.alloc(width * height * channels);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const at = (y * width + x) * channels;
      const values = [(x * 255) / Math.max(1, width - 1), (y * 255) / Math.max(1, height - 1), ((x + y + frame * 40) * 7) % 256, 255 - ((x * y) % 64)];
      for (let c = 0; c < channels; c++) pixels[at + c] = values[c]! & 255;
    }
  }
  return pixels;
}

async function imageRepro(fp: ImageFingerprint, output: string): Promise<void> {
  // One frame's raw pattern at a time: only the encoded frames are held (readFingerprint bounded
  // frames x pixels; a 9 KB GIF's fingerprint can say 400 frames of 1000x1000).
  if (fp.container === 'heif' && fp.mime !== 'image/avif') {
    throw new ReproError('this build cannot encode HEIC: sharp\'s libvips has no HEVC encoder (AVIF works; libheif\'s heif-enc can make HEIC by hand)');
  }
  const channels = Math.min(4, Math.max(1, fp.channels));
  const frames: Buffer[] = [];
  for (let i = 0; i < Math.max(1, fp.frames); i++) {
    frames.push(await sharp(pattern(fp.width, fp.height, channels, i), { raw: { width: fp.width, height: fp.height, channels: channels as 1 | 2 | 3 | 4 } }).png().toBuffer());
  }
  let image: Sharp = frames.length > 1 ? sharp(frames, { join: { animated: true } }) : sharp(frames[0]!);
  if (fp.iccProfile) image = image.withIccProfile('srgb');
  if (fp.orientation !== 1) image = image.withMetadata({ orientation: fp.orientation });
  const sixteen = fp.bitDepth === 16;
  if (sixteen) image = image.toColourspace(channels >= 3 ? 'rgb16' : 'grey16');
  switch (fp.container) {
    case 'jpeg':
      image = image.jpeg({ quality: 90, progressive: fp.progressive, chromaSubsampling: fp.chromaSubsampling === '4:4:4' ? '4:4:4' : '4:2:0' });
      break;
    case 'png':
      image = image.png({ progressive: fp.progressive });
      break;
    case 'webp':
      // The layout says which WebP it was: VP8L is the lossless bitstream, VP8 the lossy one.
      image = image.webp(fp.layout.some((l) => l.type === 'VP8L') ? { lossless: true } : { quality: 90 });
      break;
    case 'gif':
      image = image.gif();
      break;
    case 'tiff':
      image = image.tiff({ compression: 'deflate' });
      break;
    case 'heif':
      image = image.avif({ quality: 60, bitdepth: (fp.bitDepth ?? 8) as 8 });
      break;
    default:
      throw new ReproError(`no image writer for container "${fp.container}"`);
  }
  await image.toFile(output);
}

/**
 * ffmpeg 5 has no option to write a display matrix (6.0 added -display_rotation), so the video
 * track header's matrix is set in place: the same transform a phone writes for a turned camera.
 */
async function setRotation(file: string, degrees: number, width: number, height: number): Promise<void> {
  const one = 0x10000;
  const [a, b, c, d, x, y] =
    degrees === 90 ? [0, one, -one, 0, height, 0] : degrees === 180 ? [-one, 0, 0, -one, width, height] : degrees === 270 ? [0, -one, one, 0, 0, width] : [one, 0, 0, one, 0, 0];
  // Only the moov is read and only the 36-byte matrix is written back: a long repro stays on disk.
  const handle = await open(file, 'r+');
  try {
    const moovBox = (await topLevelBoxes(handle, (await handle.stat()).size)).find((box) => box.type === 'moov');
    const moov = moovBox ? await readAt(handle, moovBox.start, moovBox.end - moovBox.start) : Buffer.alloc(0);
    const trak = videoTracks(moov, 0, moov.length)[0];
    const tkhd = trak && childBox(moov, trak, 'tkhd');
    if (moovBox && tkhd) {
      const matrix = Buffer.alloc(36);
      [a, b, 0, c, d, 0, x * one, y * one, 0x40000000].forEach((value, i) => matrix.writeInt32BE(value, i * 4));
      await handle.write(matrix, 0, 36, moovBox.start + tkhd.start + (moov[tkhd.start] === 1 ? 52 : 40));
      return;
    }
  } finally {
    await handle.close();
  }
  throw new ReproError('the synthesised file has no video track header to rotate');
}

const encodingExt = (fp: VideoFingerprint): string => (fp.mime.includes('webm') ? 'webm' : fp.mime.includes('matroska') ? 'mkv' : 'mp4');

/**
 * How long to make the test sources. A container's duration is where its longest stream ends,
 * after the encoder's framing (AAC frames, whole video frames), so the fingerprint's duration is
 * tried first and then the whole-frame durations around it; the first that lands exactly wins.
 */
function durationCandidates(fp: VideoFingerprint): number[] {
  const seconds = (fp.durationMs ?? 1000) / 1000;
  const rate = fp.streams.find((s) => s.type === 'video')?.frameRate?.split('/').map(Number);
  const fps = rate && rate[0]! > 0 && rate[1]! > 0 ? rate[0]! / rate[1]! : undefined;
  if (!fps) return [seconds];
  const frames = fp.streams.find((s) => s.type === 'video')?.frames ?? Math.round(seconds * fps);
  return [...new Set([seconds, frames / fps, (frames - 1) / fps, (frames + 1) / fps, Math.floor(seconds * fps) / fps])].filter((s) => s > 0);
}

export async function repro(fp: Fingerprint, output: string, tools: Ffmpeg): Promise<void> {
  if (fp.schema !== 1) throw new ReproError(`fingerprint schema ${String(fp.schema)} is not one this scrubline reads (1)`);
  const target = path.resolve(output);
  if (fp.family === 'image') return imageRepro(fp, target);
  // Synthesised next to the target, then remuxed exactly as scrubline remuxes an upload, so the
  // repro has the container layout and timing of a cleaned file, not of a fresh encode.
  const encoded = `${target}.encoding.${encodingExt(fp)}`;
  try {
    for (const seconds of durationCandidates(fp)) {
      const plan = { ...(await videoPlan(fp, encoded, tools)), seconds };
      const made = await runTool(tools.ffmpeg.path, synthesisArgs(plan), Math.max(tools.timeoutMs, 600_000));
      if (made.code !== 0) throw new ReproError(`ffmpeg could not make the file: ${made.stderr.trim().split('\n').at(-1) ?? `exit ${made.code}`}`);
      const demuxer = plan.muxer === 'webm' || plan.muxer === 'matroska' ? 'matroska' : 'mov';
      const legacyRotateDegrees = tools.legacyRotateTag && plan.video?.rotation ? (360 - plan.video.rotation) % 360 : undefined;
      const remuxed = await runTool(tools.ffmpeg.path, remuxArgs({ input: encoded, demuxer, output: target, muxer: plan.muxer, streams: 'usual', legacyRotateDegrees }), tools.timeoutMs);
      if (remuxed.code !== 0) throw new ReproError(`ffmpeg could not remux the synthesised file (exit ${remuxed.code})`);
      if (plan.video?.rotation && demuxer === 'mov' && !tools.legacyRotateTag) await setRotation(target, plan.video.rotation, plan.video.width, plan.video.height);
      const duration = Number((await probe(tools, target, demuxer)).format.duration);
      if (fp.durationMs === undefined || Math.round(duration * 1000) === fp.durationMs) return;
    }
    // None landed exactly: the last attempt stands, and the difference is the container's framing.
  } finally {
    await rm(encoded, { force: true });
  }
}
