/**
 * The one module that touches sharp/libvips. Locked down once at import (THREATS 18–20): no
 * operation cache, and every loader blocked except the formats on our allowlist, so SVG, PDF,
 * VIPS-native and friends can never be reached whatever bytes arrive.
 */
import sharp, { type Metadata } from 'sharp';
import { deflateSync } from 'node:zlib';
import { reject, ScrubError } from '../errors.js';
import { pngChunk } from '../formats/png-data.js';
import { minimalOrientationTiff } from '../formats/tiff-ifd.js';

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

/**
 * An animation's frames are composed on a canvas that the decoder allocates whole, at 4 bytes a
 * pixel, whatever the frames' own sizes: a 268-byte WebP can declare 16383x16383 and cost 1.2 GB
 * in a preview decode (THREATS 36). Real animations stay far below this.
 */
export const maxAnimationCanvasPixels = 4096 * 4096;
/** Longest side of a preview, in pixels. */
export const previewSize = 320;

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
    throw reject.pixels(width, height, maxInputPixels);
  }
  const animated = (meta.pages ?? 1) > 1 || meta.delay !== undefined;
  if (animated && width * height > maxAnimationCanvasPixels) {
    throw new ScrubError(
      'too_many_pixels',
      `The animation's canvas is ${width}x${height}; scrubline decodes animations up to ${maxAnimationCanvasPixels} pixels (e.g. 4096x4096). Send a smaller animation.`,
    );
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

/** libvips' own pixel-limit refusal during a decode, as the 413 the header check gives. */
function pixelLimitError(err: unknown, maxInputPixels: number): ScrubError | undefined {
  if (!(err instanceof Error) || !/pixel limit/i.test(err.message)) return undefined;
  return new ScrubError('too_many_pixels', `The image has more pixels than the configured limit of ${maxInputPixels}. Send a smaller image.`, { cause: err });
}

/**
 * The one decode of an image's pixels: a preview of at most previewSize px a side, as a JPEG with
 * no metadata (converted to sRGB, so not even an ICC profile), made from the first frame. Decoding
 * is what proves the pixel data is image data (THREATS 37: a PNG whose IDAT is HTML, a JPEG whose
 * scan is text), so a failure is `corrupt_media`. It decodes at reduced scale where the format
 * allows (JPEG and WebP shrink on load; PNG streams row by row), so memory stays bounded by the
 * preview, not the picture (a full decode of a 16000x16000 PNG takes 1.5 GB, this one 150 MB).
 * `strictJpeg` also fails on libjpeg's warnings: a scan that ends before the picture does
 * ("premature end of data segment") is what a text payload in place of a scan looks like.
 */
export async function decodePreview(input: Buffer | string, options: { maxInputPixels: number; format: string; strictJpeg?: boolean }): Promise<Buffer> {
  try {
    return await sharp(input, { limitInputPixels: options.maxInputPixels, failOn: options.strictJpeg ? 'warning' : 'error', pages: 1 })
      .autoOrient()
      .resize(previewSize, previewSize, { fit: 'inside', withoutEnlargement: true })
      .toColourspace('srgb')
      .jpeg({ quality: 80, mozjpeg: false })
      .toBuffer();
  } catch (err) {
    throw pixelLimitError(err, options.maxInputPixels) ?? new ScrubError('corrupt_media', `The file's ${options.format} headers are valid but its pixel data does not decode, so it was not forwarded. Send an intact image.`, { cause: err });
  }
}

/** A picture's raw pixels, 8 bits a sample, grey or RGB. */
export interface RawPicture {
  width: number;
  height: number;
  channels: 1 | 3;
  pixels: Uint8Array;
}

/**
 * The preview decodePreview would make, from a JPEG's picture at 1/8 scale (the verifier's walk of
 * its scans read their DC coefficients, which are that picture), so its scans are not decoded a
 * second time. The pixels reach libvips as a PNG that carries the JPEG's colour profile and way
 * up, and leave as decodePreview's do: turned upright, at most previewSize px, sRGB, no metadata.
 * Only for a picture at least that size (a photo of 2560 px or more a side): a smaller JPEG's
 * preview is sharper from its decode, which costs little there.
 */
export async function previewFromPicture(picture: RawPicture, icc: Buffer | undefined, orientation: number): Promise<Buffer> {
  // Brought to the preview's size first, without its colours: the profile is then applied to a
  // third of the pixels (~6 ms instead of ~15 for a 12 MP photo's 500 x 375 picture).
  const shrunk = await sharp(picture.pixels, { raw: { width: picture.width, height: picture.height, channels: picture.channels } })
    .resize(previewSize, previewSize, { fit: 'inside', withoutEnlargement: true })
    .raw()
    .toBuffer({ resolveWithObject: true });
  const { width, height } = shrunk.info;
  const { channels } = picture;
  const pixels = shrunk.data;
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, channels === 3 ? 2 : 0, 0, 0, 0], 8);
  // Rows, each after its filter byte (0: none).
  const row = width * channels;
  const rows = Buffer.alloc((row + 1) * height);
  for (let y = 0; y < height; y++) rows.set(pixels.subarray(y * row, (y + 1) * row), y * (row + 1) + 1);
  const png = Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk('IHDR', ihdr),
    ...(icc ? [pngChunk('iCCP', Buffer.concat([Buffer.from('icc\0\0', 'latin1'), deflateSync(icc)]))] : []),
    ...(orientation !== 1 ? [pngChunk('eXIf', minimalOrientationTiff(orientation))] : []),
    // Stored, not compressed: the PNG lives for one decode.
    pngChunk('IDAT', deflateSync(rows, { level: 0 })),
    pngChunk('IEND', Buffer.alloc(0)),
  ]);
  return decodePreview(png, { maxInputPixels: width * height, format: 'PNG' });
}
