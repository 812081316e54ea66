/**
 * The image half of the strip step: one lossless rebuilder per format, chosen by the sniffed
 * format. Each takes the whole original and returns the cleaned file as a list of slices
 * (mostly views into the original, so nothing is copied until it is written).
 */
import type { Removed } from '../context.js';
import type { ImageFormat } from '../media.js';
import { stripGif } from './strip-gif.js';
import { stripHeif } from './strip-heif.js';
import { stripJpeg } from './strip-jpeg.js';
import { stripPng } from './strip-png.js';
import { stripTiff } from './strip-tiff.js';
import { stripWebp } from './strip-webp.js';

export interface ImageStripResult {
  parts: Buffer[];
  removed: Removed;
  /** Orientation the cleaned file carries (1 when pixels were rotated or there was none). */
  orientation: number;
}

/**
 * How a JPEG's scans are written: copied as they are, walked and cut past their last MCU where
 * their bytes hint at it (the default), or all walked and cut (strip-jpeg.ts `scanParts`).
 */
export type ScanMode = 'copy' | 'hinted' | 'all';

export type ImageStripper = (input: Buffer, limits: { maxInputPixels: number; scans?: ScanMode | undefined }) => ImageStripResult | Promise<ImageStripResult>;

export const imageStrippers: Record<ImageFormat, ImageStripper> = {
  jpeg: stripJpeg,
  png: stripPng,
  webp: stripWebp,
  gif: stripGif,
  tiff: stripTiff,
  heif: stripHeif,
};
