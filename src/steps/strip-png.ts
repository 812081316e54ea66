/**
 * Lossless PNG rebuild from an allowlist of chunks (../shared/METADATA.md, PNG). Kept chunks'
 * CRCs are checked (a corrupt chunk is not rebuilt). Chunks of a fixed layout are written anew
 * from their fields at their exact length (issue 26: nine bytes after a valid pHYs were copied
 * along); iCCP gets a fixed keyword (it can hold any text) and its profile recompressed by us;
 * image data and palettes are the input's, the image data cut where its zlib stream ends
 * (formats/png-data.ts). The orientation is written anew as a minimal eXIf.
 */
import { crc32, deflateSync, inflateSync } from 'node:zlib';
import { countRemoved, type Removed, type RemovedCategory } from '../context.js';
import { canonicalIcc, maxProfileBytes } from '../formats/icc.js';
import { pngChunk, pngGeometry, PngDataError, rawDataSize, zlibStreamEnd, type PngGeometry } from '../formats/png-data.js';
import { exifCategories, minimalOrientationTiff, readOrientation } from '../formats/tiff-ifd.js';
import { reject } from '../errors.js';
import type { ImageStripResult } from './strip-image.js';

const signature = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/** What rendering needs: image data, palette/transparency, colour, density, APNG animation. */
const keep = new Set(['IHDR', 'PLTE', 'IDAT', 'IEND', 'tRNS', 'iCCP', 'sRGB', 'gAMA', 'cHRM', 'cICP', 'mDCV', 'cLLI', 'sBIT', 'pHYs', 'acTL', 'fcTL', 'fdAT']);

/** Chunks whose data is a fixed number of bytes of fields (PNG 3rd edition, 11.3). */
const fixedLength: Record<string, number> = { IHDR: 13, sRGB: 1, gAMA: 4, cHRM: 32, cICP: 4, mDCV: 24, cLLI: 8, pHYs: 9, acTL: 8, fcTL: 26 };

const dropCategory: Record<string, RemovedCategory> = {
  tEXt: 'text',
  zTXt: 'text',
  iTXt: 'text',
  tIME: 'time',
  dSIG: 'signature',
  caBX: 'jumbf',
};

/** XMP in PNG is an iTXt chunk with this keyword (XMP spec part 3). */
const isXmpKeyword = (chunk: Buffer): boolean => chunk.toString('latin1', 8, 26) === 'XML:com.adobe.xmp\0';

export function stripPng(input: Buffer, limits: { maxInputPixels: number }): ImageStripResult {
  if (input.length < signature.length || !input.subarray(0, 8).equals(signature)) throw reject.corrupt('PNG', 'bad signature');
  const removed: Removed = {};
  const parts: Buffer[] = [input.subarray(0, 8)];
  let orientation: number | undefined;
  let pos = 8;
  let first = true;
  let geometry: PngGeometry | undefined;
  let imageSize: [number, number] = [0, 0];
  let frameSize: [number, number] = [0, 0];
  /** The image data chunks read so far of the current run (IDAT, or one frame's fdAT). */
  let run: Buffer[] = [];
  const endRun = (): void => {
    if (run.length === 0) return;
    const idat = run[0]!.toString('latin1', 4, 8) === 'IDAT';
    parts.push(...imageDataRun(run, geometry!, idat ? imageSize : frameSize, removed));
    run = [];
  };
  for (;;) {
    if (pos + 12 > input.length) throw reject.corrupt('PNG', 'truncated before IEND');
    const length = input.readUInt32BE(pos);
    const type = input.toString('latin1', pos + 4, pos + 8);
    const end = pos + 12 + length;
    if (length > 0x7fffffff || end > input.length) throw reject.corrupt('PNG', 'chunk runs past the end of the file');
    if (!/^[A-Za-z]{4}$/.test(type)) throw reject.corrupt('PNG', 'invalid chunk type');
    if (first && type !== 'IHDR') throw reject.corrupt('PNG', 'first chunk is not IHDR');
    first = false;
    const chunk = input.subarray(pos, end);
    pos = end;
    if (run.length > 0 && type !== run[0]!.toString('latin1', 4, 8)) endRun();

    if (keep.has(type)) {
      const stored = chunk.readUInt32BE(chunk.length - 4);
      if (crc32(chunk.subarray(4, chunk.length - 4)) !== stored) throw reject.corrupt('PNG', `${type} chunk fails its CRC`);
      const data = chunk.subarray(8, chunk.length - 4);
      if (type === 'IDAT' || type === 'fdAT') {
        run.push(chunk);
        continue;
      }
      const size = fixedLength[type];
      if (size !== undefined) {
        if (data.length < size) throw reject.corrupt('PNG', `${type} chunk shorter than its fields`);
        if (data.length > size) countRemoved(removed, 'other');
        parts.push(pngChunk(type, data.subarray(0, size)));
        if (type === 'IHDR') {
          geometry = pngGeometry(data);
          if (!geometry) throw reject.corrupt('PNG', 'IHDR holds an invalid colour type or bit depth');
          imageSize = [data.readUInt32BE(0), data.readUInt32BE(4)];
          // Before any image data inflates: its size follows from these.
          if (imageSize[0] * imageSize[1] > limits.maxInputPixels) throw reject.pixels(imageSize[0], imageSize[1], limits.maxInputPixels);
        }
        if (type === 'fcTL') {
          frameSize = [data.readUInt32BE(4), data.readUInt32BE(8)];
          if (frameSize[0] * frameSize[1] > imageSize[0] * imageSize[1]) throw reject.corrupt('PNG', 'an animation frame is larger than the image');
        }
      } else if (type === 'iCCP') {
        const rebuilt = iccpChunk(data, removed);
        if (rebuilt) parts.push(rebuilt);
        else countRemoved(removed, 'other');
      } else if (type === 'IEND') {
        if (data.length > 0) countRemoved(removed, 'other');
        parts.push(pngChunk('IEND', Buffer.alloc(0)));
        break;
      } else parts.push(chunk);
      continue;
    }
    // Bit 5 of the first letter: uppercase = critical. An unknown critical chunk changes how the
    // image decodes, so it cannot be dropped and cannot be trusted.
    if ((type.charCodeAt(0) & 0x20) === 0) throw reject.structure('PNG', `unknown critical chunk ${type}`);
    if (type === 'eXIf') {
      const tiff = chunk.subarray(8, chunk.length - 4);
      // Viewers honour the first eXIf wherever it lies, even after IDAT.
      orientation ??= readOrientation(tiff);
      for (const found of exifCategories(tiff)) countRemoved(removed, found);
    } else countRemoved(removed, type === 'iTXt' && isXmpKeyword(chunk) ? 'xmp' : (dropCategory[type] ?? 'other'));
  }
  if (pos < input.length) countRemoved(removed, 'trailer');
  // The orientation survives as a minimal eXIf right after IHDR, before any image data, as
  // JPEG and WebP keep theirs (PNG 3rd edition: eXIf comes before IDAT).
  if (orientation !== undefined && orientation !== 1) parts.splice(2, 0, pngChunk('eXIf', minimalOrientationTiff(orientation)));
  return { parts, removed, orientation: orientation ?? 1 };
}

/**
 * A run of image data chunks, as written: the chunks as they came while the zlib stream lasts, the
 * one it ends in cut at its end, and any after it emptied (an fdAT keeps its sequence number, which
 * APNG's numbering needs). Refused when the stream is damaged or holds other than the picture's rows.
 */
function imageDataRun(chunks: Buffer[], geometry: PngGeometry, [width, height]: [number, number], removed: Removed): Buffer[] {
  const type = chunks[0]!.toString('latin1', 4, 8);
  const skip = type === 'fdAT' ? 4 : 0; // an fdAT's sequence number precedes its share of the stream
  if (chunks.some((c) => c.length < 12 + skip)) throw reject.corrupt('PNG', 'an fdAT chunk has no sequence number');
  const pieces = chunks.map((c) => c.subarray(8 + skip, c.length - 4));
  let end: number;
  try {
    end = zlibStreamEnd(Buffer.concat(pieces), rawDataSize(geometry, width, height));
  } catch (err) {
    if (err instanceof PngDataError) throw reject.corrupt('PNG', err.message);
    throw err;
  }
  const out: Buffer[] = [];
  let at = 0;
  for (const [i, piece] of pieces.entries()) {
    const chunk = chunks[i]!;
    if (at + piece.length <= end) out.push(chunk);
    else out.push(pngChunk(type, Buffer.concat([chunk.subarray(8, 8 + skip), piece.subarray(0, Math.max(0, end - at))])));
    at += piece.length;
  }
  if (at > end) countRemoved(removed, 'other');
  return out;
}

/** The keyword every rebuilt iCCP carries (the one libpng writes). */
const iccKeyword = 'ICC Profile';

/**
 * iCCP: a keyword (1-79 Latin-1 characters of the writer's choice, so any text), compression
 * method 0, a zlib stream of the profile. Rebuilt with a fixed keyword and the profile deflated by
 * us, the profile itself rebuilt from its fields (formats/icc.ts); undefined for an empty or
 * undeflatable profile, which is dropped (no decoder can read a colour from it).
 */
function iccpChunk(data: Buffer, removed: Removed): Buffer | undefined {
  const nul = data.indexOf(0);
  if (nul < 1 || nul > 79 || data[nul + 1] !== 0) return undefined;
  let profile: Buffer;
  try {
    profile = inflateSync(data.subarray(nul + 2), { maxOutputLength: maxProfileBytes });
  } catch {
    return undefined;
  }
  if (profile.length < 128) return undefined;
  const rebuilt = canonicalIcc(profile, 'PNG');
  if (rebuilt.changed) countRemoved(removed, 'profileText');
  return pngChunk('iCCP', Buffer.concat([Buffer.from(`${iccKeyword}\0\0`, 'latin1'), deflateSync(rebuilt.profile)]));
}

