/**
 * The allowlist of media scrubline accepts, keyed by what file-type reads from the bytes.
 * The client's Content-Type and file extension never appear here (THREATS 12, 16).
 */
import type { Demuxer, Muxer } from './tools/ffmpeg-args.js';

export type ImageFormat = 'jpeg' | 'png' | 'webp' | 'gif' | 'tiff' | 'heif';
export type VideoFormat = 'mp4' | 'mov' | 'm4v' | '3gp' | '3g2' | 'webm' | 'mkv';

export type MediaKind =
  | { family: 'image'; format: ImageFormat; mime: string; ext: string }
  | { family: 'video'; format: VideoFormat; mime: string; ext: string; demuxer: Demuxer; muxer: Muxer };

const image = (format: ImageFormat, mime: string, ext: string): MediaKind => ({ family: 'image', format, mime, ext });
const video = (format: VideoFormat, mime: string, ext: string, demuxer: Demuxer, muxer: Muxer): MediaKind => ({
  family: 'video',
  format,
  mime,
  ext,
  demuxer,
  muxer,
});

/** file-type's `mime` → what scrubline does with it. Anything missing here is a 415. */
export const allowedKinds: ReadonlyMap<string, MediaKind> = new Map([
  ['image/jpeg', image('jpeg', 'image/jpeg', 'jpg')],
  ['image/png', image('png', 'image/png', 'png')],
  ['image/apng', image('png', 'image/apng', 'png')],
  ['image/webp', image('webp', 'image/webp', 'webp')],
  ['image/gif', image('gif', 'image/gif', 'gif')],
  ['image/tiff', image('tiff', 'image/tiff', 'tif')],
  ['image/heic', image('heif', 'image/heic', 'heic')],
  ['image/heif', image('heif', 'image/heif', 'heif')],
  ['image/avif', image('heif', 'image/avif', 'avif')],
  ['video/mp4', video('mp4', 'video/mp4', 'mp4', 'mov', 'mp4')],
  ['video/quicktime', video('mov', 'video/quicktime', 'mov', 'mov', 'mov')],
  ['video/x-m4v', video('m4v', 'video/x-m4v', 'm4v', 'mov', 'ipod')],
  ['video/3gpp', video('3gp', 'video/3gpp', '3gp', 'mov', '3gp')],
  ['video/3gpp2', video('3g2', 'video/3gpp2', '3g2', 'mov', '3gp')],
  ['video/webm', video('webm', 'video/webm', 'webm', 'matroska', 'webm')],
  ['video/matroska', video('mkv', 'video/matroska', 'mkv', 'matroska', 'matroska')],
  ['video/x-matroska', video('mkv', 'video/x-matroska', 'mkv', 'matroska', 'matroska')],
]);

type VideoKind = Extract<MediaKind, { family: 'video' }>;

/**
 * The container a cleaned video is written in: its own family's, unless that muxer cannot hold a
 * stream it keeps. A Sony XAVC S MP4 carries PCM audio, which only QuickTime's muxer takes; a phone
 * file branded MP4 can carry AMR, which only 3GP's takes. Both stay lossless (stream copy) in the
 * sibling container, and the report's mime and extension say which one it is.
 */
export function outputKind(kind: VideoKind, keptCodecs: readonly string[]): VideoKind {
  const family = kind.muxer === 'mp4' || kind.muxer === 'ipod' || kind.muxer === '3gp';
  if (family && keptCodecs.some((c) => c.startsWith('pcm_'))) return allowedKinds.get('video/quicktime') as VideoKind;
  if ((kind.muxer === 'mp4' || kind.muxer === 'ipod') && keptCodecs.some((c) => c === 'amr_nb' || c === 'amr_wb')) return allowedKinds.get('video/3gpp') as VideoKind;
  return kind;
}

/** Human names for the README, `--help` and 415 messages. */
export const acceptedFormatsText = 'JPEG, PNG, WebP, GIF, TIFF, HEIC/HEIF, AVIF, MP4, MOV, M4V, 3GP, WebM, MKV';
