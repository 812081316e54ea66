/**
 * Lossless PNG rebuild from an allowlist of chunks (../shared/METADATA.md, PNG). Kept chunks are
 * copied with their CRCs (which are checked: a corrupt chunk is not rebuilt); nothing kept is
 * recomputed. The orientation is written anew as a minimal eXIf holding Orientation alone.
 */
import { crc32 } from 'node:zlib';
import { countRemoved, type Removed, type RemovedCategory } from '../context.js';
import { exifCategories, minimalOrientationTiff, readOrientation } from '../formats/tiff-ifd.js';
import { reject } from '../errors.js';
import type { ImageStripResult } from './strip-image.js';

const signature = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/** What rendering needs: image data, palette/transparency, colour, density, APNG animation. */
const keep = new Set(['IHDR', 'PLTE', 'IDAT', 'IEND', 'tRNS', 'iCCP', 'sRGB', 'gAMA', 'cHRM', 'cICP', 'mDCV', 'cLLI', 'sBIT', 'pHYs', 'acTL', 'fcTL', 'fdAT']);

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

export function stripPng(input: Buffer): ImageStripResult {
  if (input.length < signature.length || !input.subarray(0, 8).equals(signature)) throw reject.corrupt('PNG', 'bad signature');
  const removed: Removed = {};
  const parts: Buffer[] = [input.subarray(0, 8)];
  let orientation: number | undefined;
  let pos = 8;
  let first = true;
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

    if (keep.has(type)) {
      const stored = chunk.readUInt32BE(chunk.length - 4);
      if (crc32(chunk.subarray(4, chunk.length - 4)) !== stored) throw reject.corrupt('PNG', `${type} chunk fails its CRC`);
      parts.push(chunk);
      if (type === 'IEND') break;
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

function pngChunk(type: string, data: Buffer): Buffer {
  const chunk = Buffer.alloc(12 + data.length);
  chunk.writeUInt32BE(data.length, 0);
  chunk.write(type, 4, 'latin1');
  data.copy(chunk, 8);
  chunk.writeUInt32BE(crc32(chunk.subarray(4, 8 + data.length)), 8 + data.length);
  return chunk;
}
