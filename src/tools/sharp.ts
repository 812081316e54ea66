/**
 * The one module that touches sharp/libvips. Locked down once at import (THREATS 18–20): no
 * operation cache, and every loader blocked except the formats on our allowlist, so SVG, PDF,
 * VIPS-native and friends can never be reached whatever bytes arrive.
 */
import sharp, { type Metadata } from 'sharp';
import { ScrubError, reject } from '../errors.js';

sharp.cache(false);
sharp.block({ operation: ['VipsForeignLoad'] });
sharp.unblock({
  operation: ['Jpeg', 'Png', 'Webp', 'Nsgif', 'Tiff', 'Heif'].flatMap((name) => [
    `VipsForeignLoad${name}File`,
    `VipsForeignLoad${name}Buffer`,
  ]),
});

export interface ImageInfo {
  format: string;
  width: number;
  height: number;
  channels: number;
  /** libvips band format: uchar, ushort, float … */
  depth: string;
  space: string | undefined;
  hasAlpha: boolean;
  hasIcc: boolean;
  progressive: boolean;
  chromaSubsampling: string | undefined;
  orientation: number;
  pages: number;
  bitsPerSample: number | undefined;
}

/** Header-only read (no decode). Limits apply before anything is decoded. */
export async function readImageInfo(input: Buffer, maxInputPixels: number): Promise<ImageInfo> {
  let meta: Metadata;
  try {
    // metadata() reads the header only, so the pixel limit is checked here, before any decode.
    meta = await sharp(input, { limitInputPixels: false, failOn: 'error' }).metadata();
  } catch (err) {
    throw new ScrubError('corrupt_media', 'The image header could not be read. Send an intact file.', { cause: err });
  }
  const width = meta.width ?? 0;
  const height = meta.height ?? 0;
  if (width * height > maxInputPixels) {
    throw new ScrubError('too_many_pixels', `The image is ${width}x${height}, more pixels than the configured limit of ${maxInputPixels}. Send a smaller image.`);
  }
  return {
    format: meta.format ?? 'unknown',
    width,
    height,
    channels: meta.channels ?? 0,
    depth: meta.depth ?? 'unknown',
    space: meta.space,
    hasAlpha: meta.hasAlpha ?? false,
    hasIcc: meta.icc !== undefined,
    progressive: meta.isProgressive ?? false,
    chromaSubsampling: meta.chromaSubsampling,
    orientation: meta.orientation ?? 1,
    pages: meta.pages ?? 1,
    bitsPerSample: meta.bitsPerSample,
  };
}

/**
 * TIFF has no safe byte-level rebuild (IFDs point anywhere), so it is re-written pixel-losslessly:
 * first page only, pixels rotated upright, ICC kept, deflate compression, no other metadata.
 */
export async function rewriteTiff(input: Buffer, maxInputPixels: number): Promise<Buffer> {
  try {
    return await sharp(input, { limitInputPixels: maxInputPixels, failOn: 'error', pages: 1 })
      .autoOrient()
      .keepIccProfile()
      .tiff({ compression: 'deflate', predictor: 'horizontal' })
      .toBuffer();
  } catch (err) {
    if (err instanceof Error && /pixel limit/i.test(err.message)) {
      throw new ScrubError('too_many_pixels', `The image has more pixels than the configured limit of ${maxInputPixels}. Send a smaller image.`, { cause: err });
    }
    throw reject.corrupt('TIFF', 'the image data does not decode');
  }
}
