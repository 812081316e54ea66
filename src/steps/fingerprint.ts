/**
 * Step 5, fingerprint: the technical properties a decoder cares about, and a keyed hash of the
 * cleaned bytes. Enough for engineering to reproduce a failure; nothing that identifies a person
 * or a device. Every field is either a number or a word from a closed vocabulary that ffprobe or
 * libvips defines (codec names, pixel formats, colour tags); no string from the file's metadata,
 * no file name, no date, no pixels, no perceptual hash.
 */
import { createHmac } from 'node:crypto';
import type { Verified } from '../context.js';
import { hmacFile } from '../hash-thread.js';
import { rotationOf, type ProbeResult, type ProbeStream } from '../tools/ffmpeg.js';
import type { ImageInfo } from '../tools/sharp.js';
import { imageLayout, videoLayout, type LayoutEntry, type VideoLayout } from './fingerprint-layout.js';
import type { VerifiedFacts } from './verify.js';

export const fingerprintSchemaVersion = 1;

export interface ImageFingerprint {
  schema: typeof fingerprintSchemaVersion;
  id: string;
  family: 'image';
  container: string;
  mime: string;
  bytes: number;
  width: number;
  height: number;
  channels: number;
  bitDepth: number | undefined;
  colourSpace: string | undefined;
  alpha: boolean;
  iccProfile: boolean;
  progressive: boolean;
  chromaSubsampling: string | undefined;
  orientation: number;
  frames: number;
  layout: LayoutEntry[];
  contentHmac: string;
}

export interface StreamFingerprint {
  type: string;
  codec: string | undefined;
  profile: string | undefined;
  level: number | undefined;
  width?: number | undefined;
  height?: number | undefined;
  pixelFormat?: string | undefined;
  bitDepth?: number | undefined;
  colourPrimaries?: string | undefined;
  colourTransfer?: string | undefined;
  colourMatrix?: string | undefined;
  colourRange?: string | undefined;
  fieldOrder?: string | undefined;
  rotation?: number;
  frameRate?: string | undefined;
  frames?: number | undefined;
  bFrames?: number | undefined;
  /** Sync samples and the longest distance between them, where the container indexes them (MP4/MOV). */
  keyframes?: number | undefined;
  keyframeInterval?: number | undefined;
  /** HDR side data present on the stream, from a closed list. */
  hdr?: string[] | undefined;
  sampleRate?: number | undefined;
  channels?: number | undefined;
  channelLayout?: string | undefined;
}

export interface VideoFingerprint {
  schema: typeof fingerprintSchemaVersion;
  id: string;
  family: 'video';
  container: string;
  mime: string;
  bytes: number;
  /** ISOBMFF major brand (a registered four-character code), when there is one. */
  brand: string | undefined;
  durationMs: number | undefined;
  streams: StreamFingerprint[];
  layout: LayoutEntry[];
  contentHmac: string;
}

export type Fingerprint = ImageFingerprint | VideoFingerprint;

const bitDepthOf: Record<string, number> = { uchar: 8, char: 8, ushort: 16, short: 16, uint: 32, int: 32, float: 32, double: 64 };

/** The short public id: the first 16 hex digits of the HMAC (64 bits). */
export const fingerprintId = (contentHmac: string): string => `fp_${contentHmac.slice(0, 16)}`;

const optionalNumber = (value: string | number | undefined): number | undefined => {
  const n = Number(value);
  return value === undefined || value === '' || !Number.isFinite(n) ? undefined : n;
};

const hdrSideData: Array<[RegExp, string]> = [
  [/mastering display/i, 'mastering-display'],
  [/content light level/i, 'content-light-level'],
  [/dovi|dolby vision/i, 'dolby-vision'],
  [/hdr10\+|dynamic hdr/i, 'hdr10-plus'],
];

function streamFingerprint(s: ProbeStream): StreamFingerprint {
  const common = { type: s.codec_type ?? 'unknown', codec: s.codec_name, profile: s.profile, level: s.level };
  if (s.codec_type === 'video') {
    return {
      ...common,
      width: s.width,
      height: s.height,
      pixelFormat: s.pix_fmt,
      bitDepth: optionalNumber(s.bits_per_raw_sample),
      colourPrimaries: s.color_primaries,
      colourTransfer: s.color_transfer,
      colourMatrix: s.color_space,
      colourRange: s.color_range,
      fieldOrder: s.field_order,
      rotation: rotationOf(s),
      frameRate: s.avg_frame_rate,
      frames: optionalNumber(s.nb_frames),
      bFrames: s.has_b_frames,
      hdr: hdrSideData.filter(([pattern]) => (s.side_data_list ?? []).some((d) => pattern.test(String(d.side_data_type ?? '')))).map(([, name]) => name),
    };
  }
  return { ...common, sampleRate: optionalNumber(s.sample_rate), channels: s.channels, channelLayout: s.channel_layout };
}

export function imageFingerprint(info: ImageInfo, mime: string, bytes: number, contentHmac: string, layout: LayoutEntry[]): ImageFingerprint {
  return {
    schema: fingerprintSchemaVersion,
    id: fingerprintId(contentHmac),
    family: 'image',
    container: info.format,
    mime,
    bytes,
    width: info.width,
    height: info.height,
    channels: info.channels,
    bitDepth: info.bitsPerSample ?? bitDepthOf[info.depth],
    colourSpace: info.space,
    alpha: info.hasAlpha,
    iccProfile: info.hasIcc,
    progressive: info.progressive,
    chromaSubsampling: info.chromaSubsampling,
    orientation: info.orientation,
    frames: info.pages,
    layout,
    contentHmac,
  };
}

export function videoFingerprint(info: ProbeResult, mime: string, bytes: number, contentHmac: string, structure: VideoLayout): VideoFingerprint {
  const seconds = optionalNumber(info.format.duration);
  const brand = info.format.tags?.major_brand;
  // The container's keyframe tables are per video track, in the same order as ffprobe's streams.
  let videoTrack = 0;
  const streams = info.streams.map((s) => {
    const stream = streamFingerprint(s);
    if (s.codec_type !== 'video') return stream;
    const table = structure.keyframes[videoTrack++];
    return table ? { ...stream, keyframes: table.keyframes, keyframeInterval: table.interval } : stream;
  });
  return {
    schema: fingerprintSchemaVersion,
    id: fingerprintId(contentHmac),
    family: 'video',
    container: info.format.format_name ?? 'unknown',
    mime,
    bytes,
    brand: brand && /^[A-Za-z0-9 ]{4}$/.test(brand) ? brand : undefined,
    durationMs: seconds === undefined ? undefined : Math.round(seconds * 1000),
    streams,
    layout: structure.layout,
    contentHmac,
  };
}

/**
 * The keyed hash covers the cleaned bytes: an image's as verify read them (and hashed them
 * already, while it waited: facts.contentHmac); a video's read from disk on the hash thread,
 * or handed in as `contentHmac` when the caller started that already (the pipeline does, while
 * verify runs).
 */
async function keyedHash(file: Verified & { facts: VerifiedFacts }, key: Buffer, contentHmac: Promise<string> | undefined): Promise<string> {
  if (file.facts.contentHmac) return file.facts.contentHmac;
  if (contentHmac) return contentHmac;
  if (file.facts.bytes) return createHmac('sha256', key).update(file.facts.bytes).digest('hex');
  return hmacFile(file.cleanPath, key);
}

export async function fingerprint<T extends Verified & { facts: VerifiedFacts }>(
  file: T,
  key: Buffer,
  contentHmac?: Promise<string>,
): Promise<T & { fingerprint: Fingerprint }> {
  const hmac = await keyedHash(file, key, contentHmac);
  const { facts } = file;
  const { kind } = file;
  const result =
    facts.imageInfo !== undefined
      ? imageFingerprint(facts.imageInfo, kind.mime, file.cleanBytes, hmac, kind.family === 'image' ? imageLayout(kind.format, facts.bytes, facts.structures) : [])
      : videoFingerprint(facts.probe, kind.mime, file.cleanBytes, hmac, await videoLayout(kind.family === 'video' && kind.demuxer === 'matroska' ? 'matroska' : 'isobmff', file.cleanPath));
  return { ...file, fingerprint: result };
}
