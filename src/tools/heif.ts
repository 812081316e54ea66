/**
 * The one module that starts libheif's decoder, for previews of HEIC/HEIF, which sharp's libvips
 * cannot decode (no HEVC). Debian ships it as `heif-dec` (libheif ≥ 1.17) or `heif-convert`
 * (older, package libheif-examples). Spawned like ffmpeg: an argument array, no shell, a time
 * limit that kills its process group, and only ever on a file the verifier has passed.
 */
import { onPath, runTool } from './ffmpeg.js';

export interface HeifDecoder {
  path: string;
  source: 'config' | 'PATH';
}

/** The configured decoder, else heif-dec or heif-convert on PATH; undefined = HEIC has no preview. */
export function findHeifDecoder(configured: string | undefined): HeifDecoder | undefined {
  if (configured !== undefined) return { path: configured, source: 'config' };
  const found = onPath('heif-dec') ?? onPath('heif-convert');
  return found === undefined ? undefined : { path: found, source: 'PATH' };
}

/**
 * Decodes the primary image (with its rotation and mirroring applied) of `input` into a PNG at
 * `output`; both absolute paths chosen by scrubline, so neither can be read as an option.
 */
export function heifDecodeArgs(input: string, output: string): string[] {
  if (!input.startsWith('/') || !output.startsWith('/') || !output.endsWith('.png')) throw new Error('heif decoder paths must be absolute, the output a .png');
  return ['--quiet', input, output];
}

/** True when the decoder wrote the PNG. A failure or a timeout means "no preview", never an error. */
export async function decodeHeif(decoder: HeifDecoder, input: string, output: string, timeoutMs: number, memoryLimitBytes?: number): Promise<boolean> {
  const result = await runTool(decoder.path, heifDecodeArgs(input, output), timeoutMs, { memoryLimitBytes }).catch(() => undefined);
  return result?.code === 0;
}
