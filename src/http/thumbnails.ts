/**
 * Preview thumbnails for the render service's preview panel, made from the *cleaned* file only:
 * images by a plain resize that fits the whole picture inside a box (no attention or saliency
 * crop, no face anything), video by one frame at a fixed position. sharp writes the JPEG without
 * any metadata (no EXIF, XMP or ICC: it is converted to sRGB), so a thumbnail carries nothing
 * but pixels. HEIC, which sharp's libvips cannot decode, is decoded by libheif's own decoder
 * when one is installed (tools/heif.ts) and then resized the same way; without it, no preview.
 */
import { rm } from 'node:fs/promises';
import path from 'node:path';
import type { CleanFile } from '../pipeline.js';
import { frameArgs } from '../tools/ffmpeg-args.js';
import { runTool, type Ffmpeg } from '../tools/ffmpeg.js';
import { decodeHeif, type HeifDecoder } from '../tools/heif.js';
import { decodePreview } from '../tools/sharp.js';

/** Where in a video the preview frame is taken: 1 s in, or the middle of a shorter clip. */
export const frameSeconds = (durationMs: number | undefined): number => Math.min(1, (durationMs ?? 0) / 2000);

/**
 * The thumbnail's JPEG bytes, or undefined when this format has no preview. An image's preview
 * was made by the verifier's decode of its pixels (`file.preview`); a video's is one frame.
 */
export async function makeThumbnail(file: CleanFile, tools: Ffmpeg, maxInputPixels: number, heif?: HeifDecoder): Promise<Buffer | undefined> {
  const { kind } = file;
  if (kind.family === 'image') {
    if (file.preview !== undefined || kind.format !== 'heif' || heif === undefined) return file.preview;
    const decoded = path.join(path.dirname(file.path), `${file.id}.decoded.png`);
    try {
      return (await decodeHeif(heif, file.path, decoded, tools.timeoutMs)) ? await decodePreview(decoded, { maxInputPixels, format: 'PNG' }) : undefined;
    } finally {
      await rm(decoded, { force: true });
    }
  }
  const frame = path.join(path.dirname(file.path), `${file.id}.frame.png`);
  const seconds = frameSeconds(file.fingerprint.family === 'video' ? file.fingerprint.durationMs : undefined);
  try {
    const result = await runTool(tools.ffmpeg.path, frameArgs(file.path, kind.demuxer, seconds, frame), tools.timeoutMs);
    return result.code === 0 ? await decodePreview(frame, { maxInputPixels, format: 'PNG' }) : undefined;
  } finally {
    await rm(frame, { force: true });
  }
}
