/**
 * Pure builders for every ffmpeg/ffprobe argument list scrubline uses. No I/O here: the
 * process side lives in ffmpeg.ts, and these are unit-tested against frozen ffprobe output.
 *
 * Every input is opened the same locked-down way (THREATS 22, 23): the demuxer is forced from the
 * sniffed type and is the only format allowed, only the `file` protocol is allowed, only the
 * decoders below may be opened, and the path is given as `file:<absolute>` so a name that looks
 * like a URL, a `concat:` list or an option is never interpreted.
 */
import path from 'node:path';

/** ffmpeg demuxer names, chosen from the sniffed type, never from the file name. */
export type Demuxer = 'mov' | 'matroska';
/** ffmpeg muxer names for the cleaned output: the same container family as the input. */
export type Muxer = 'mp4' | 'mov' | 'ipod' | '3gp' | 'webm' | 'matroska';

/**
 * The only decoders an ffmpeg or ffprobe run of ours may open. Both open a decoder for every
 * stream to read its parameters (and the audio check and thumbnails decode), so without this list
 * a crafted stream reaches any of libavcodec's hundreds of decoders, most rarely fuzzed. Listed:
 * the codecs we keep, by the names their decoders have in common builds (native and library);
 * the text subtitles and cover-art images files carry and we drop. A stream in anything else
 * makes the run fail with "not on whitelist", and the file is refused (see probe()).
 */
export const allowedDecoders: readonly string[] = [
  // video
  'h264', 'hevc', 'vp8', 'libvpx', 'vp9', 'libvpx-vp9', 'av1', 'libdav1d', 'libaom-av1', 'mpeg4', 'h263',
  'mpeg2video', 'mpeg1video', 'prores', 'mjpeg', 'dnxhd', 'theora',
  // audio
  'aac', 'aac_fixed', 'mp3', 'mp3float', 'mp2', 'mp2float', 'opus', 'libopus', 'vorbis', 'libvorbis', 'flac',
  'alac', 'ac3', 'ac3_fixed', 'eac3', 'amrnb', 'amrwb', 'libopencore_amrnb', 'libopencore_amrwb',
  'pcm_s16le', 'pcm_s16be', 'pcm_s24le', 'pcm_s24be', 'pcm_s32le', 'pcm_f32le', 'pcm_u8',
  // dropped, but probed: text subtitles (GPS tracks among them) and cover art
  'mov_text', 'subrip', 'srt', 'ass', 'ssa', 'webvtt', 'text', 'png',
];

export function lockedInput(file: string, demuxer: Demuxer): string[] {
  if (!path.isAbsolute(file)) throw new Error(`ffmpeg input must be an absolute path, got a relative one`);
  return [
    '-protocol_whitelist', 'file',
    '-format_whitelist', demuxer,
    '-codec_whitelist', allowedDecoders.join(','),
    '-f', demuxer, '-i', `file:${file}`,
  ];
}

export function probeArgs(file: string, demuxer: Demuxer): string[] {
  return [
    '-v', 'error',
    '-hide_banner',
    ...lockedInput(file, demuxer),
    '-show_format',
    '-show_streams',
    '-show_chapters',
    '-of', 'json',
  ];
}

/** What the remux keeps: stream indexes chosen from the probe, and facts the muxer needs. */
export interface RemuxPlan {
  input: string;
  demuxer: Demuxer;
  output: string;
  muxer: Muxer;
  /**
   * Input stream indexes to copy, in output order; or `usual`: the first video stream that is
   * not cover art, then every audio stream (what the plan is for almost every file, mapped by
   * ffmpeg itself so the remux can start before the probe has answered).
   */
  streams: number[] | 'usual';
  /**
   * ffmpeg before 5 carried rotation only as a `rotate` stream tag, which `-map_metadata -1`
   * drops; for those builds the rotation is written back explicitly. Newer builds carry it as
   * display-matrix side data, which a stream copy keeps. The tag value to write, 0–359.
   */
  legacyRotateDegrees: number | undefined;
  /**
   * Also decode every audio stream of the input, to nothing, and fail at the first error: the
   * verifier's check that the audio a remux copies is audio (see audioDecodeArgs), done by the
   * process that reads the input anyway rather than by one more ffmpeg start-up (~70 ms of CPU).
   */
  decodeAudio?: boolean | undefined;
  /**
   * A bitstream filter for the video stream: the `filter_units` that keeps only coded pictures
   * and parameter sets (formats/units.ts), for H.264, HEVC and AV1.
   */
  videoFilter?: string | undefined;
}

export function remuxArgs(plan: RemuxPlan): string[] {
  if (!path.isAbsolute(plan.output)) throw new Error('ffmpeg output must be an absolute path');
  const args = [
    '-nostdin',
    '-hide_banner',
    '-v', 'error',
    ...(plan.decodeAudio ? ['-xerror'] : []),
    ...lockedInput(plan.input, plan.demuxer),
  ];
  if (plan.streams === 'usual') args.push('-map', '0:V:0?', '-map', '0:a?');
  else for (const index of plan.streams) args.push('-map', `0:${index}`);
  args.push(
    '-c', 'copy',
    '-map_metadata', '-1',
    '-map_chapters', '-1',
    // Output-side bitexact: no encoder/version tag (ffmpeg writes ©too "Lavf…" otherwise), no
    // random UIDs, no wall-clock times. It must follow -i to apply to the output.
    '-fflags', '+bitexact',
    '-flags:v', '+bitexact',
    '-flags:a', '+bitexact',
  );
  if (plan.legacyRotateDegrees !== undefined) {
    args.push('-metadata:s:v:0', `rotate=${plan.legacyRotateDegrees}`);
  }
  if (plan.videoFilter !== undefined) args.push('-bsf:v', plan.videoFilter);
  args.push('-f', plan.muxer, '-y', `file:${plan.output}`);
  // A second output that discards: the video copied (so a file without audio still has a stream
  // for it), the audio decoded.
  if (plan.decodeAudio) args.push('-map', '0:V:0?', '-c:v', 'copy', '-map', '0:a?', '-f', 'null', '-');
  return args;
}

/**
 * One frame of the main video stream at `seconds`, as a PNG: the source of a preview thumbnail.
 * Output-side seek (decode up to the frame) so the position is exact, not the nearest keyframe.
 */
/** 8K UHD with room to spare. */
export const maxFramePixels = 8192 * 8192;

export function frameArgs(input: string, demuxer: Demuxer, seconds: number, output: string): string[] {
  if (!path.isAbsolute(output)) throw new Error('ffmpeg output must be an absolute path');
  return [
    '-nostdin',
    '-hide_banner',
    '-v', 'error',
    // The only place scrubline decodes video: a frame larger than any real one is refused.
    '-max_pixels', String(maxFramePixels),
    ...lockedInput(input, demuxer),
    '-ss', seconds.toFixed(3),
    '-map', '0:V:0',
    '-frames:v', '1',
    '-map_metadata', '-1',
    '-fflags', '+bitexact',
    '-f', 'image2',
    '-c:v', 'png',
    '-y', `file:${output}`,
  ];
}

/** A synthetic stand-in for a file, from its fingerprint (see cli/repro.ts): test sources, encoded alike. */
export interface SynthesisPlan {
  output: string;
  muxer: Muxer;
  seconds: number;
  video?: {
    encoder: string;
    width: number;
    height: number;
    rate: string;
    pixelFormat?: string | undefined;
    profile?: string | undefined;
    level?: string | undefined;
    gop?: number | undefined;
    bFrames?: number | undefined;
    colour: { primaries?: string | undefined; transfer?: string | undefined; matrix?: string | undefined; range?: string | undefined };
    rotation: number;
  };
  audio?: { encoder: string; sampleRate: number; channels: number; layout?: string | undefined; profile?: string | undefined };
}

export function synthesisArgs(plan: SynthesisPlan): string[] {
  if (!path.isAbsolute(plan.output)) throw new Error('ffmpeg output must be an absolute path');
  const seconds = plan.seconds.toFixed(3);
  const args = ['-nostdin', '-hide_banner', '-v', 'error'];
  const { video, audio } = plan;
  // The graphs are built from numbers only (the rate as two integers: readFingerprint checked it),
  // and the inputs get the protocol whitelist uploads have (THREATS 43).
  if (video && !/^\d+(\/\d+)?$/.test(video.rate)) throw new Error('synthesis: the frame rate must be "N/D" or "N"');
  const source = (graph: string): string[] => ['-protocol_whitelist', 'file', '-f', 'lavfi', '-i', graph];
  if (video) args.push(...source(`testsrc2=size=${Math.trunc(video.width)}x${Math.trunc(video.height)}:rate=${video.rate}:duration=${seconds}`));
  if (audio) args.push(...source(`sine=frequency=440:sample_rate=${Math.trunc(audio.sampleRate)}:duration=${seconds}`));
  let input = 0;
  if (video) {
    args.push('-map', `${input++}:v`, '-c:v', video.encoder);
    if (video.pixelFormat) args.push('-pix_fmt', video.pixelFormat);
    if (video.profile) args.push('-profile:v', video.profile);
    if (video.level) args.push('-level:v', video.level);
    if (video.gop !== undefined) args.push('-g', String(video.gop));
    if (video.bFrames !== undefined) args.push('-bf', String(video.bFrames));
    const c = video.colour;
    if (c.primaries) args.push('-color_primaries', c.primaries);
    if (c.transfer) args.push('-color_trc', c.transfer);
    if (c.matrix) args.push('-colorspace', c.matrix);
    if (c.range) args.push('-color_range', c.range);
    // ffmpeg 5 writes a display matrix from this tag (6+ dropped it for -display_rotation).
    if (video.rotation) args.push('-metadata:s:v:0', `rotate=${video.rotation}`);
  }
  if (audio) {
    args.push('-map', `${input++}:a`, '-c:a', audio.encoder, '-ar', String(audio.sampleRate), '-ac', String(audio.channels));
    if (audio.layout) args.push('-channel_layout', audio.layout);
    if (audio.profile) args.push('-profile:a', audio.profile);
  }
  args.push('-map_metadata', '-1', '-fflags', '+bitexact', '-flags:v', '+bitexact', '-flags:a', '+bitexact', '-f', plan.muxer, '-y', `file:${plan.output}`);
  return args;
}

/**
 * The raw packets of one stream a remux leaves behind (a subtitle or data track), for the
 * verifier to learn their text. Capped at `maxBytes`: enough for the text, not a copy of a film.
 */
export function packetDumpArgs(input: string, demuxer: Demuxer, stream: number, output: string, maxBytes: number): string[] {
  if (!path.isAbsolute(output)) throw new Error('ffmpeg output must be an absolute path');
  return ['-nostdin', '-hide_banner', '-v', 'error', ...lockedInput(input, demuxer), '-map', `0:${stream}`, '-c', 'copy', '-fs', String(maxBytes), '-f', 'data', '-y', `file:${output}`];
}

/**
 * Every packet of one stream, as stored (length-prefixed NAL units, OBUs, JPEG frames), written to
 * stdout for the verifier's walk of the picture stream. `map` is a stream specifier we build:
 * `0:<index>` or `0:V:0`.
 */
export function streamDumpArgs(input: string, demuxer: Demuxer, map: string): string[] {
  if (!/^0:(?:\d+|V:0)$/.test(map)) throw new Error('a stream specifier of the form 0:N or 0:V:0');
  return ['-nostdin', '-hide_banner', '-nostats', '-v', 'error', ...lockedInput(input, demuxer), '-map', map, '-c', 'copy', '-f', 'data', 'pipe:1'];
}

/**
 * Decodes every audio stream of a file and stops at the first error: the samples a remux copies
 * must be audio. (Audio decodes at hundreds of times real time; video is not decoded here.)
 */
export function audioDecodeArgs(file: string, demuxer: Demuxer): string[] {
  // `0:a?`: a file without audio fails with "no stream" rather than a mapping error; callers ask only when there is audio.
  return ['-nostdin', '-hide_banner', '-v', 'error', '-xerror', ...lockedInput(file, demuxer), '-map', '0:a?', '-f', 'null', '-'];
}
