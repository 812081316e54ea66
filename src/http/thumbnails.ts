/**
 * Preview thumbnails for the render service's preview panel, made from the *cleaned* file only:
 * images by a plain resize that fits the whole picture inside a box (no attention or saliency
 * crop, no face anything), video by one frame at a fixed position. sharp writes the JPEG without
 * any metadata (no EXIF, XMP or ICC: it is converted to sRGB), so a thumbnail carries nothing
 * but pixels. HEIC, which sharp's libvips cannot decode, is decoded by libheif's own decoder
 * when one is installed (tools/heif.ts) and then resized the same way; without it, no preview.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';
import type { CleanFile } from '../pipeline.js';
import { frameArgs } from '../tools/ffmpeg-args.js';
import { runTool, type Ffmpeg } from '../tools/ffmpeg.js';
import { decodeHeif, type HeifDecoder } from '../tools/heif.js';
import { decodePreview } from '../tools/sharp.js';

/**
 * libheif's decoder has no reduced-size decode, so a HEIC preview is a full decode in a child:
 * up to this size (a 48 MP phone photo fits), and none for anything larger (THREATS 49).
 */
export const maxHeifPreviewPixels = 50_000_000;
/**
 * The address-space limit of a decoder child: a 50 MP decode stays within it with room; a bomb
 * that got past the header checks dies in the child instead of taking the machine's memory.
 */
export const decoderMemoryLimitBytes = 1536 * 1024 * 1024;

/**
 * A directory of its own for one decoder run, removed whole afterwards, whatever the child wrote
 * in it: a HEIC with two top-level images made the decoder write `-1.png` and `-2.png` beside the
 * name it was given, and those full-size plaintext images outlived the job (THREATS 50).
 */
async function inOwnDir<T>(near: string, work: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(path.join(path.dirname(near), 'decode-'));
  try {
    return await work(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Where in a video the preview frame is taken: 1 s in, or the middle of a shorter clip. */
export const frameSeconds = (durationMs: number | undefined): number => Math.min(1, (durationMs ?? 0) / 2000);

/**
 * The thumbnail's JPEG bytes, or undefined when this format has no preview. An image's preview
 * was made by the verifier's decode of its pixels (`file.preview`), or a JPEG's is made now from
 * the picture the verifier's walk read (`file.makePreview`); a video's is one frame.
 */
export async function makeThumbnail(file: CleanFile, tools: Ffmpeg, maxInputPixels: number, heif?: HeifDecoder): Promise<Buffer | undefined> {
  const { kind } = file;
  if (kind.family === 'image') {
    if (file.preview === undefined && file.makePreview) return file.makePreview();
    if (file.preview !== undefined || kind.format !== 'heif' || heif === undefined) return file.preview;
    const { fingerprint } = file;
    const pixels = fingerprint.family === 'image' ? fingerprint.width * fingerprint.height : Infinity;
    if (!(pixels <= maxHeifPreviewPixels)) return undefined;
    return inOwnDir(file.path, async (dir) => {
      const decoded = path.join(dir, 'decoded.png');
      const made = await decodeHeif(heif, file.path, decoded, tools.timeoutMs, decoderMemoryLimitBytes);
      return made ? await decodePreview(decoded, { maxInputPixels, format: 'PNG' }) : undefined;
    });
  }
  const seconds = frameSeconds(file.fingerprint.family === 'video' ? file.fingerprint.durationMs : undefined);
  return inOwnDir(file.path, async (dir) => {
    const frame = path.join(dir, 'frame.png');
    const result = await runTool(tools.ffmpeg.path, frameArgs(file.path, kind.demuxer, seconds, frame), tools.timeoutMs, { memoryLimitBytes: decoderMemoryLimitBytes });
    return result.code === 0 ? await decodePreview(frame, { maxInputPixels, format: 'PNG' }) : undefined;
  });
}
