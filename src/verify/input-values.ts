/**
 * The verifier's walk of an *input* image: every metadata structure it holds, handed to the
 * value collector. Deliberately its own parser (not the strippers'), so that one mistake in a
 * stripper's allowlist is not repeated here.
 */
import { crc32, inflateSync } from 'node:zlib';
import type { ImageFormat } from '../media.js';
import { heifValues } from './heif.js';
import { findSignatures } from './scan.js';
import type { ValueCollector } from './values.js';

/** Opaque payloads bigger than this are not mined for printable runs (they are removed whole). */
const maxOpaqueBytes = 64 * 1024;
/** Bound on the structures one signature sweep reads per signature (a file of repeated signatures is not a reason to stall). */
const maxSignatureHits = 1000;

function opaque(into: ValueCollector, payload: Buffer): void {
  into.printableRuns(payload.subarray(0, maxOpaqueBytes));
}

/**
 * After EOI: MPF secondary images, gain maps and motion photos are often whole JPEGs. Those are
 * walked as JPEGs (their Huffman and quantisation tables are not metadata and would otherwise
 * be mined as printable runs that every JPEG shares); anything else is opaque.
 */
function jpegTrailer(trailer: Buffer, into: ValueCollector, depth: number): void {
  const soi = trailer.indexOf('\xff\xd8\xff', 0, 'latin1');
  if (depth > 8 || soi < 0) return opaque(into, trailer);
  opaque(into, trailer.subarray(0, soi));
  jpegValues(trailer.subarray(soi), into, depth + 1);
}

function jpegValues(input: Buffer, into: ValueCollector, depth = 0): void {
  let pos = 2;
  while (pos + 4 <= input.length) {
    if (input[pos] !== 0xff) return;
    const marker = input[pos + 1]!;
    if (marker === 0xff) {
      pos++;
      continue;
    }
    if (marker === 0xd9) return jpegTrailer(input.subarray(pos + 2), into, depth);
    const length = input.readUInt16BE(pos + 2);
    const payload = input.subarray(pos + 4, pos + 2 + length);
    pos += 2 + length;
    const text = payload.toString('latin1', 0, 40);
    if (marker === 0xda) {
      // Skip entropy-coded data to the next real marker.
      // Skip entropy-coded data to the next real marker (not stuffing, not a restart), jumping
      // from 0xFF to 0xFF with the native indexOf: this runs over megabytes per photo.
      for (pos = input.indexOf(0xff, pos); pos >= 0 && pos + 1 < input.length; pos = input.indexOf(0xff, pos + 1)) {
        const next = input[pos + 1]!;
        if (next !== 0 && next !== 0xff && (next < 0xd0 || next > 0xd7)) break;
      }
      if (pos < 0) return;
    } else if (marker === 0xe1 && text.startsWith('Exif')) {
      into.tiff(payload.subarray(6));
    } else if (marker === 0xe1 && text.startsWith('http://ns.adobe.com/xap/1.0/')) {
      into.xml(payload.toString('utf8'));
    } else if (marker === 0xe1 && text.startsWith('http://ns.adobe.com/xmp/extension/')) {
      into.xml(payload.toString('utf8', 75));
    } else if (marker === 0xfe) {
      into.text(payload.toString('utf8'));
      opaque(into, payload);
    } else if (marker >= 0xe0 && marker <= 0xef && !text.startsWith('ICC_PROFILE') && !text.startsWith('JFIF') && !text.startsWith('Adobe')) {
      opaque(into, payload);
    }
  }
}

const isSpace = (c: number): boolean => c === 0x20 || (c >= 0x09 && c <= 0x0d);
const isWord = (c: number): boolean => (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c === 0x5f;
const hexValue = (c: number): number => (c >= 0x30 && c <= 0x39 ? c - 0x30 : c >= 0x61 && c <= 0x66 ? c - 0x57 : c >= 0x41 && c <= 0x46 ? c - 0x37 : -1);

/**
 * ImageMagick's "Raw profile type exif/iptc/xmp" text: whitespace, a profile name, a length, then
 * a hex dump with line breaks. Returns the dump's bytes, or undefined when the text is not one.
 * A single pass over the text (a regular expression with adjacent `\s` quantifiers here took
 * 40 s on 200,000 spaces: THREATS 34).
 */
export function rawProfile(text: string): Buffer | undefined {
  let at = 0;
  const skip = (accept: (c: number) => boolean): number => {
    const from = at;
    while (at < text.length && accept(text.charCodeAt(at))) at++;
    return at - from;
  };
  skip(isSpace);
  if (skip(isWord) === 0 || skip(isSpace) === 0) return undefined;
  if (skip((c) => c >= 0x30 && c <= 0x39) === 0 || skip(isSpace) === 0) return undefined;
  const out = Buffer.allocUnsafe((text.length - at) >> 1);
  let length = 0;
  let high = -1;
  for (; at < text.length; at++) {
    const c = text.charCodeAt(at);
    if (isSpace(c)) continue;
    const nibble = hexValue(c);
    if (nibble < 0) return undefined;
    if (high < 0) high = nibble;
    else {
      out[length++] = (high << 4) | nibble;
      high = -1;
    }
  }
  return length > 0 ? out.subarray(0, length) : undefined;
}

function pngText(type: string, data: Buffer, into: ValueCollector): void {
  const nul = data.indexOf(0);
  if (nul < 0) return opaque(into, data);
  into.text(data.toString('latin1', 0, nul));
  let text: Buffer;
  try {
    if (type === 'tEXt') text = data.subarray(nul + 1);
    else if (type === 'zTXt') text = inflateSync(data.subarray(nul + 2), { maxOutputLength: 16 * 1024 * 1024 });
    else {
      const compressed = data[nul + 1] === 1;
      let at = nul + 3;
      at = data.indexOf(0, at) + 1; // language tag
      at = data.indexOf(0, at) + 1; // translated keyword
      if (at <= 0) return opaque(into, data);
      text = compressed ? inflateSync(data.subarray(at), { maxOutputLength: 16 * 1024 * 1024 }) : data.subarray(at);
    }
  } catch {
    return opaque(into, data);
  }
  const string = text.toString('utf8');
  if (string.includes('<x:xmpmeta') || string.includes('<rdf:RDF')) into.xml(string);
  else into.text(string);
  const raw = rawProfile(string);
  if (raw) {
    const exif = raw.indexOf('Exif\0\0');
    if (exif >= 0) into.tiff(raw.subarray(exif + 6));
    else if (raw.includes('<x:xmpmeta')) into.xml(raw.toString('utf8'));
    else opaque(into, raw);
  }
  into.printableRuns(text.subarray(0, maxOpaqueBytes));
}

const pngRendering = new Set(['IHDR', 'PLTE', 'IDAT', 'IEND', 'tRNS', 'iCCP', 'sRGB', 'gAMA', 'cHRM', 'cICP', 'mDCV', 'cLLI', 'sBIT', 'pHYs', 'acTL', 'fcTL', 'fdAT']);

function pngValues(input: Buffer, into: ValueCollector): void {
  let pos = 8;
  while (pos + 12 <= input.length) {
    const length = input.readUInt32BE(pos);
    const type = input.toString('latin1', pos + 4, pos + 8);
    const data = input.subarray(pos + 8, Math.min(pos + 8 + length, input.length));
    pos += 12 + length;
    if (type === 'tEXt' || type === 'zTXt' || type === 'iTXt') pngText(type, data, into);
    else if (type === 'eXIf') into.tiff(data);
    else if (type === 'IEND') return opaque(into, input.subarray(pos));
    else if (!pngRendering.has(type)) opaque(into, data);
  }
}

function webpValues(input: Buffer, into: ValueCollector): void {
  let pos = 12;
  while (pos + 8 <= input.length) {
    const fourcc = input.toString('latin1', pos, pos + 4);
    const size = input.readUInt32LE(pos + 4);
    const data = input.subarray(pos + 8, Math.min(pos + 8 + size, input.length));
    pos += 8 + size + (size % 2);
    if (fourcc === 'EXIF') into.tiff(data.toString('latin1', 0, 6) === 'Exif\0\0' ? data.subarray(6) : data);
    else if (fourcc === 'XMP ') into.xml(data.toString('utf8'));
    else if (!['VP8 ', 'VP8L', 'VP8X', 'ALPH', 'ANIM', 'ANMF', 'ICCP'].includes(fourcc)) opaque(into, data);
  }
}

function gifValues(input: Buffer, into: ValueCollector): void {
  const packed = input[10] ?? 0;
  let pos = 13 + (packed & 0x80 ? 3 * 2 ** ((packed & 0x07) + 1) : 0);
  const subBlocks = (from: number): { data: Buffer; end: number } => {
    const pieces: Buffer[] = [];
    let at = from;
    while (at < input.length && input[at] !== 0) {
      pieces.push(input.subarray(at + 1, at + 1 + input[at]!));
      at += 1 + input[at]!;
    }
    return { data: Buffer.concat(pieces), end: at + 1 };
  };
  while (pos < input.length) {
    const introducer = input[pos];
    if (introducer === 0x3b) return opaque(into, input.subarray(pos + 1));
    if (introducer === 0x2c) {
      const flags = input[pos + 9] ?? 0;
      pos = subBlocks(pos + 10 + (flags & 0x80 ? 3 * 2 ** ((flags & 0x07) + 1) : 0) + 1).end;
      continue;
    }
    if (introducer !== 0x21) return;
    const label = input[pos + 1];
    const { data, end } = subBlocks(pos + 2);
    if (label === 0xfe || label === 0x01) into.text(data.toString('latin1'));
    if (label === 0xff) {
      // XMP's application data is stored raw, not as real sub-blocks: read the bytes as they lie.
      const raw = input.subarray(pos + 14, end);
      if (raw.includes('<x:xmpmeta')) into.xml(raw.toString('utf8'));
    }
    const looping = label === 0xff && ['NETSCAPE2.0', 'ANIMEXTS1.0'].includes(input.toString('latin1', pos + 3, pos + 14));
    if (label !== 0xf9 && !looping) opaque(into, data);
    pos = end;
  }
}

/**
 * Metadata found by its signature wherever it lies, whatever the structure walk made of the
 * bytes around it. A damaged header (a GIF whose colour-table size bit flipped, say) can make a
 * structure walk read a comment or an XMP packet as pixels, and a stripper that makes the same
 * reading keeps it; this sweep does not depend on any reading of the structure.
 */
function signatureSweep(format: ImageFormat, input: Buffer, into: ValueCollector): void {
  let xmpEnd = -1;
  const onXmp = (at: number): void => {
    const end = input.indexOf('</x:xmpmeta>', at, 'latin1');
    xmpEnd = end > at ? end + 12 : Math.min(input.length, at + maxOpaqueBytes);
    into.xml(input.toString('utf8', at, xmpEnd));
  };
  // Hits come in file order: an RDF inside the packet just read needs no second reading.
  const onRdf = (at: number): void => {
    if (at >= xmpEnd) into.xml(input.toString('utf8', at, Math.min(input.length, at + maxOpaqueBytes)));
  };
  const onExif = (at: number): void => {
    const tiff = input.subarray(at + 6);
    if (tiff.toString('latin1', 0, 2) === 'II' || tiff.toString('latin1', 0, 2) === 'MM') into.tiff(tiff);
  };
  // PNG text chunks anywhere, recognised by a valid CRC (a chance match has none).
  const onPngText = (type: string) => (at: number): void => {
    if (at < 4) return;
    const length = input.readUInt32BE(at - 4);
    const end = at + 4 + length;
    if (length === 0 || end + 4 > input.length || crc32(input.subarray(at, end)) !== input.readUInt32BE(end)) return;
    pngText(type, input.subarray(at + 4, end), into);
  };
  // GIF comment extensions: introducer, label, then length-prefixed sub-blocks. The pair also
  // occurs by chance in compressed pixels, so only what reads as text counts.
  const onGifComment = (at: number): void => {
    const pieces: Buffer[] = [];
    for (let pos = at + 2; pos < input.length && input[pos] !== 0 && pieces.length < 256; pos += 1 + input[pos]!) pieces.push(input.subarray(pos + 1, pos + 1 + input[pos]!));
    const text = Buffer.concat(pieces);
    const printable = text.filter((b) => (b >= 0x20 && b < 0x7f) || b === 0x0a || b === 0x0d || b === 0x09).length;
    if (text.length >= 8 && printable >= 0.9 * text.length) into.printableWords(text);
  };
  // Format-specific containers of text only where they can occur: the fewer the signatures (and
  // the rarer their first bytes), the faster the one pass over the file.
  const signatures: Array<[string, (at: number) => void]> = [
    ['<x:xmpmeta', onXmp],
    ['<rdf:RDF', onRdf],
    ['Exif\0\0', onExif],
    ...(format === 'png' ? (['tEXt', 'zTXt', 'iTXt'] as const).map((type): [string, (at: number) => void] => [type, onPngText(type)]) : []),
    ...(format === 'gif' ? [['\x21\xfe', onGifComment] as [string, (at: number) => void]] : []),
  ];
  const seen = signatures.map(() => 0);
  for (const { pattern, start } of findSignatures(input, signatures.map(([needle]) => Buffer.from(needle, 'latin1')))) {
    if (seen[pattern]!++ < maxSignatureHits) signatures[pattern]![1](start);
  }
}

/** Every value the input image carried, by the verifier's own reading plus exifr's. */
export async function collectImageValues(format: ImageFormat, input: Buffer, into: ValueCollector): Promise<void> {
  signatureSweep(format, input, into);
  if (format === 'jpeg') jpegValues(input, into);
  else if (format === 'png') pngValues(input, into);
  else if (format === 'webp') webpValues(input, into);
  else if (format === 'gif') gifValues(input, into);
  else if (format === 'tiff') into.tiff(input);
  else heifValues(input, into, (data) => opaque(into, data));
  await into.exifr(input);
}
