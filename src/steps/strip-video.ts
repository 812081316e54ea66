/**
 * The video half of the strip step: an ffmpeg remux (stream copy, never a re-encode) that keeps
 * the main video stream and the audio streams and nothing else (../shared/METADATA.md, MP4 and
 * Matroska). What goes: container and stream tags, chapters, data/timed-metadata tracks (GoPro
 * GPMF, Apple mebx, camm, tmcd), subtitles (drone GPS), attachments and cover art. Inside an
 * H.264, HEVC or AV1 picture stream, everything but the coded pictures and their parameter sets
 * goes too (SEI, Dolby Vision RPUs, AV1 metadata: issue 26): from an MP4/MOV's samples in the
 * written file (strip-video-units.ts), from Matroska's packets by the remux's `filter_units`, and
 * from the decoder configuration record by strip-video-config.ts.
 */
import { chmod, writeFile } from 'node:fs/promises';
import { countRemoved, type Removed } from '../context.js';
import { ScrubError } from '../errors.js';
import { outputKind, type MediaKind } from '../media.js';
import { keepUnitsFilter, type PictureCodec } from '../formats/units.js';
import { pictureCodecIn, rewriteCodecConfig } from './strip-video-config.js';
import { dropUnitsInPlace, NotHandled } from './strip-video-units.js';
import { mpegHeaderCodecs } from '../formats/mpeg-headers.js';
import { remuxArgs, type RemuxPlan } from '../tools/ffmpeg-args.js';
import { probe, rotationOf, runTool, type Ffmpeg, type ProbeResult, type ProbeStream } from '../tools/ffmpeg.js';

/** Codecs a render service decodes; a stream in anything else is not copied. */
export const allowedVideoCodecs = new Set(['h264', 'hevc', 'vp8', 'vp9', 'av1', 'mpeg4', 'h263', 'mpeg2video', 'mpeg1video', 'prores', 'mjpeg', 'dnxhd', 'theora']);
export const allowedAudioCodecs = new Set([
  'aac', 'mp3', 'mp2', 'opus', 'vorbis', 'flac', 'alac', 'ac3', 'eac3',
  'amr_nb', 'amr_wb', 'pcm_s16le', 'pcm_s16be', 'pcm_s24le', 'pcm_s24be', 'pcm_s32le', 'pcm_f32le', 'pcm_u8',
]);

/** Container-level tags that are technical (they describe the ftyp box), not metadata. */
export const technicalFormatTags = new Set(['major_brand', 'minor_version', 'compatible_brands']);
/** Stream tags that are technical or written by ffmpeg itself with fixed values. */
export const technicalStreamTags = new Set(['language', 'vendor_id', 'rotate', 'DURATION']);
/** Handler names ffmpeg writes itself; anything else ("Core Media Video", "GoPro AVC") is metadata. */
export const ffmpegHandlerNames = new Set(['VideoHandler', 'SoundHandler', 'DataHandler']);
const locationKeys = /location|xyz|gps/i;

/** Real recordings have a handful of streams; thousands are an attack on the demuxer's bookkeeping. */
export const maxStreams = 32;

const isCoverArt = (s: ProbeStream): boolean => s.disposition?.attached_pic === 1;

/** Picks what to keep and counts what goes. Pure: tested against frozen ffprobe output. */
export function planStreams(info: ProbeResult): { streams: number[]; removed: Removed; video: ProbeStream | undefined } {
  const removed: Removed = {};
  const videos = info.streams.filter((s) => s.codec_type === 'video' && !isCoverArt(s) && allowedVideoCodecs.has(s.codec_name ?? ''));
  const video = videos.find((s) => s.disposition?.default === 1) ?? videos[0];
  const audio = info.streams.filter((s) => s.codec_type === 'audio' && allowedAudioCodecs.has(s.codec_name ?? ''));
  const streams = [...(video ? [video.index] : []), ...audio.map((s) => s.index)];

  for (const s of info.streams) {
    if (streams.includes(s.index)) {
      for (const [key, value] of Object.entries(s.tags ?? {})) {
        if (technicalStreamTags.has(key)) continue;
        if (key === 'handler_name' && ffmpegHandlerNames.has(value)) continue;
        countRemoved(removed, locationKeys.test(key) ? 'gps' : 'streamTags');
      }
      continue;
    }
    if (isCoverArt(s)) countRemoved(removed, 'coverArt');
    else if (s.codec_type === 'data') countRemoved(removed, 'dataStream');
    else if (s.codec_type === 'subtitle') countRemoved(removed, 'subtitleStream');
    else if (s.codec_type === 'attachment') countRemoved(removed, 'attachment');
    else countRemoved(removed, 'extraStream');
  }
  for (const key of Object.keys(info.format.tags ?? {})) {
    if (technicalFormatTags.has(key)) continue;
    countRemoved(removed, locationKeys.test(key) ? 'gps' : 'containerTags');
  }
  if (info.chapters.length > 0) countRemoved(removed, 'chapters', info.chapters.length);
  return { streams, removed, video };
}

/** The streams a `usual` remux copies (see RemuxPlan), by input index. */
export function usualStreams(info: ProbeResult): number[] {
  const video = info.streams.find((s) => s.codec_type === 'video' && !isCoverArt(s));
  return [...(video ? [video.index] : []), ...info.streams.filter((s) => s.codec_type === 'audio').map((s) => s.index)];
}

/**
 * Probes and remuxes. The probe (~70 ms of ffprobe start-up alone) and a `usual` remux run at
 * once; when the probe's plan turns out to be that usual mapping, which it is for almost every
 * file, its output stands, otherwise the file is remuxed again with the exact plan. Builds that
 * need the rotation written back (legacy tag) always wait for the probe.
 *
 * The `usual` remux also decodes the input's audio for the verifier (RemuxPlan.decodeAudio). When
 * that run fails, which may be the audio check alone, the file is remuxed again without it and
 * the verifier decodes the output's audio instead.
 */
export async function stripVideo(
  tools: Ffmpeg,
  kind: Extract<MediaKind, { family: 'video' }>,
  input: string,
  output: string,
): Promise<{ removed: Removed; inputProbe: ProbeResult; inputAudioDecodes: boolean; kind: Extract<MediaKind, { family: 'video' }> }> {
  const container = kind.demuxer === 'mov' ? 'isobmff' : 'matroska';
  // The picture codec, from the container itself: a Matroska remux starts with its filter at
  // once. An MP4/MOV's remux has none (its units are dropped after), so it waits for nothing.
  const guessed = container === 'matroska' ? await pictureCodecIn(input, container).catch(() => undefined) : undefined;
  const base = { input, demuxer: kind.demuxer, output, muxer: kind.muxer, legacyRotateDegrees: undefined };
  const speculate = !tools.legacyRotateTag;
  // ffmpeg creates its output with the process umask; made here first, it is private from its
  // first byte (a crash mid-remux leaves a 0600 file, which the next start removes).
  await writeFile(output, '', { mode: 0o600 });
  // The remux is spawned first: it is the long run, and each spawn holds this thread for a while
  // (fork copies the page tables: ~6 ms per 100 MB of this process). Settle both before acting: a
  // failed probe must not leave ffmpeg writing into a work dir that is being removed.
  const remuxing = speculate ? runTool(tools.ffmpeg.path, remuxArgs({ ...base, streams: 'usual', decodeAudio: true, videoFilter: remuxFilter(guessed, container) }), tools.timeoutMs) : undefined;
  const [probed, remuxed] = await Promise.allSettled([probe(tools, input, kind.demuxer), remuxing]);
  if (probed.status === 'rejected') throw probed.reason;
  if (remuxed.status === 'rejected') throw remuxed.reason;
  const info = probed.value;
  const early = remuxed.value;
  if (info.streams.length > maxStreams) {
    throw new ScrubError('unsupported_structure', `The file has ${info.streams.length} streams; scrubline accepts at most ${maxStreams}. It was not forwarded.`);
  }
  const { streams, removed, video } = planStreams(info);
  if (video === undefined && streams.length === 0) {
    throw new ScrubError('unsupported_structure', 'The file has no video or audio stream in a codec scrubline can keep. It was not forwarded.');
  }
  const codec = pictureCodecOf(video);
  const filter = codec ? remuxFilter(codec, container) : videoFilterOf(video);
  const planned = streams.join() === usualStreams(info).join() && filter === remuxFilter(guessed, container);
  const inputAudioDecodes = early?.code === 0;
  const written = outputKind(kind, streams.map((i) => info.streams.find((s) => s.index === i)?.codec_name ?? ''));
  let result = written === kind ? early : undefined;
  const rotation = rotationOf(video);
  const plan: RemuxPlan = {
    ...base,
    muxer: written.muxer,
    streams,
    // Measured with the 2018 npm build: its `rotate` tag turns the picture the other way from the
    // clockwise figure we keep, so the tag is the complement. verify() re-checks the result.
    legacyRotateDegrees: tools.legacyRotateTag && rotation !== 0 ? (360 - rotation) % 360 : undefined,
    videoFilter: filter,
  };
  if (!planned || result === undefined || result.code !== 0) result = await runTool(tools.ffmpeg.path, remuxArgs(plan), tools.timeoutMs);
  if (result.code !== 0) {
    throw new ScrubError('corrupt_media', 'The video could not be remuxed without re-encoding (damaged, or a codec its container cannot hold). It was not forwarded.', {
      internal: `ffmpeg exited ${result.code}`,
    });
  }
  // ffmpeg creates its output with the process umask; cleaned files are private like originals.
  await chmod(output, 0o600);
  // The picture stream's units, filtered in the file (strip-video-units.ts); a file that pass
  // does not handle is remuxed again with ffmpeg's filter instead.
  if (codec && filter === undefined) {
    await dropUnitsInPlace(output, codec).catch(async (err: unknown) => {
      if (!(err instanceof NotHandled)) throw err;
      const again = await runTool(tools.ffmpeg.path, remuxArgs({ ...plan, videoFilter: keepUnitsFilter(codec) }), tools.timeoutMs);
      if (again.code !== 0) throw new ScrubError('corrupt_media', 'The video could not be remuxed without re-encoding (damaged, or a codec its container cannot hold). It was not forwarded.', { internal: `ffmpeg exited ${again.code}` });
      await chmod(output, 0o600);
    });
  }
  // The records of the three filtered codecs, and the MPEG-1/2/4 headers an esds or CodecPrivate holds.
  if (codec || mpegHeaderCodecs.has(video?.codec_name ?? '')) for (const [category, n] of Object.entries(await rewriteCodecConfig(output, container))) countRemoved(removed, category as keyof Removed, n);
  return { removed, inputProbe: info, inputAudioDecodes, kind: written };
}

/**
 * The filter the remux applies to a stream of one of the three unit-filtered codecs: none for an
 * MP4/MOV, whose units are filtered in the written file (strip-video-units.ts), `filter_units`
 * for Matroska. Pure.
 */
function remuxFilter(codec: PictureCodec | undefined, container: 'isobmff' | 'matroska'): string | undefined {
  return codec && container === 'matroska' ? keepUnitsFilter(codec) : undefined;
}

/**
 * The remux's filter of any other picture stream: MPEG-2's user data (start code 0xB2 = 178) is
 * removed by `filter_units`, which reads MPEG-2 too. MPEG-4 Part 2 has no such filter, but an
 * encoder that repeats its headers in the packets (VOL, then its name as user data) puts them
 * before the first GOV or VOP, where `remove_extra` cuts, when the container holds the same
 * headers. User data left (MPEG-1, or MPEG-4 elsewhere in a packet) is refused by the verifier.
 */
function videoFilterOf(video: ProbeStream | undefined): string | undefined {
  if (video?.codec_name === 'mpeg2video') return 'filter_units=remove_types=178';
  if (video?.codec_name === 'mpeg4' && (video.extradata_size ?? 0) > 0) return 'remove_extra=freq=all';
  return undefined;
}

/** The three codecs whose streams are filtered unit by unit; others are copied as they are. */
function pictureCodecOf(video: ProbeStream | undefined): PictureCodec | undefined {
  const name = video?.codec_name;
  return name === 'h264' || name === 'hevc' || name === 'av1' ? name : undefined;
}
