/**
 * The verifier's structural proof for a cleaned image: walk every structure of the output and
 * refuse unless each is on the allowlist and nothing trails the end (issue 3). Written apart
 * from the strippers on purpose. Returns problems (category words, never values), the byte
 * ranges of kept coding structures and colour profiles, where a value-scan match is not a leak,
 * and where each structure lies, so that a refusal can be explained without the file.
 */
import { inflateSync } from 'node:zlib';
import { ScrubError } from '../errors.js';
import { lzwImageData } from '../formats/gif-lzw.js';
import { isCanonicalIcc, maxProfileBytes } from '../formats/icc.js';
import { pngGeometry, PngDataError, rawDataSize, zlibStreamEnd, type PngGeometry } from '../formats/png-data.js';
import { FrameWalk, huffmanLookup, readFrame, readScanHeader, walkScan, type HuffmanTable } from '../formats/jpeg-scan.js';
import type { ImageFormat } from '../media.js';
import type { RawPicture } from '../tools/sharp.js';
import { checkHeifStructure } from './heif.js';
import { tiffValues } from './tiff-values.js';

/** A JPEG scan with coded data after its last MCU (or padding bits not set). */
export const scanTailProblem = 'jpeg: scan data runs past its last MCU';

/** A structure of the output: where it lies and what it is ("jpeg DHT", "png IDAT", "icc"). */
export interface Span {
  start: number;
  end: number;
  what: string;
}

/** What a report's structures call the coded picture data of a JPEG and of a TIFF. */
const jpegScanName = 'jpeg scan data';
const tiffStripsName = 'tiff image data';

/** The structures of an image that are its coded picture data, copied by the strippers. */
export const codedStructure = (format: string): string | undefined => (format === 'jpeg' ? jpegScanName : format === 'tiff' ? tiffStripsName : undefined);

export interface StructureReport {
  problems: string[];
  /**
   * Kept structures whose bytes are not metadata: colour profiles (copied verbatim on purpose)
   * and, in JPEG, the coding segments exactly as far as their tables go (Huffman and
   * quantisation tables are byte runs every JPEG shares; any surplus byte stays scanned) and the
   * segments scrubline writes from a fixed layout. A value-scan match that lies wholly inside one
   * is not a leak (issue 16: runs mined from a maker-note preview matched the output's own DHT).
   */
  keptRanges: Span[];
  /** Every structure walked, for the operator's explanation of a match (never its value). */
  structures: Span[];
  /**
   * Byte signatures that must occur nowhere in the output outside those ranges, whatever the
   * structure around them. Looked for in the verifier's one pass over the output bytes, with the
   * value scan, rather than in a pass of their own.
   */
  forbidden: Array<{ bytes: Buffer; problem: string }>;
  /**
   * JPEG: every scan's coded data was walked to its last MCU with nothing amiss, every table it
   * needs defined, in an 8-bit Huffman frame: what a decode would have proven of the pixel data
   * (issue 30: where no preview is wanted, this walk stands in for libjpeg's).
   */
  codedDataProven?: boolean;
  /**
   * JPEG: the problems the walk of a scan's coded data found (data past its last MCU, or a scan
   * that does not decode): the stripper's own walk cuts the one and refuses the other as corrupt.
   */
  scanProblems?: string[];
  /**
   * JPEG, when asked for (`dc`) and the coded data was proven: the picture at 1/8 scale, from the
   * DC coefficients the walk read, for the preview (no second decode of every scan). RGB or grey.
   */
  dcPicture?: (RawPicture & { icc: Buffer | undefined }) | undefined;
}

/**
 * A kept ICC profile must be one scrubline wrote (formats/icc.ts): fixed text, reset header
 * fields, colour tags at their exact lengths. A profile is the one structure copied whole into
 * every format, so it is where a description like "Calibrated for Jane's iMac" would ride.
 */
function checkIcc(profile: Buffer | undefined, report: StructureReport): void {
  if (profile === undefined || !isCanonicalIcc(profile)) report.problems.push('icc: profile not written from its fields');
}

/** An EXIF block is allowed only if it holds IFD0 Orientation and nothing else. */
function isOrientationOnly(tiff: Buffer): boolean {
  const tags = tiffValues(tiff, undefined);
  return tags.length === 1 && tags[0]!.tag === 0x0112 && tiff.length <= 26;
}

/**
 * How many bytes of a coding segment's payload its own syntax accounts for (T.81 B.2): the kept
 * range stops there, so bytes a writer appended to a table segment are still scanned.
 */
function codingExtent(marker: number, payload: Buffer): number {
  const n = payload.length;
  if (marker === 0xdb) {
    // DQT: tables of a precision/id byte and 64 one- or two-byte entries.
    let at = 0;
    while (at < n && at + 1 + 64 * ((payload[at]! >> 4) === 0 ? 1 : 2) <= n) at += 1 + 64 * ((payload[at]! >> 4) === 0 ? 1 : 2);
    return at;
  }
  if (marker === 0xc4) {
    // DHT: tables of a class/id byte, 16 code counts and as many symbols as they add up to.
    let at = 0;
    while (at + 17 <= n) {
      let symbols = 0;
      for (let i = 1; i <= 16; i++) symbols += payload[at + i]!;
      if (at + 17 + symbols > n) break;
      at += 17 + symbols;
    }
    return at;
  }
  if (marker === 0xda) return Math.min(n, 4 + 2 * (payload[0] ?? 0)); // SOS header: Ns, selectors, Ss/Se/Ah-Al
  if (marker === 0xdd || marker === 0xdc) return Math.min(n, 2); // DRI, DNL
  if (marker === 0xcc) return n - (n % 2); // DAC: pairs
  return Math.min(n, 6 + 3 * (payload[5] ?? 0)); // SOFn: P, Y, X, Nf, then Nf components
}

/** APP14 exactly as the stripper writes it: "Adobe", version 100, no flags, one transform byte. */
const isCanonicalAdobe = (payload: Buffer): boolean =>
  payload.length === 12 && payload.subarray(0, 11).equals(Buffer.from([0x41, 0x64, 0x6f, 0x62, 0x65, 0x00, 0x64, 0x00, 0x00, 0x00, 0x00]));

/** The Huffman tables (class << 4 | id) a DHT payload defines, in order. */
function huffmanTablesOf(payload: Buffer): number[] {
  const ids: number[] = [];
  for (let at = 0; at + 17 <= payload.length; ) {
    let symbols = 0;
    for (let i = 1; i <= 16; i++) symbols += payload[at + i]!;
    ids.push(payload[at]!);
    at += 17 + symbols;
  }
  return ids;
}

/** A step of the scan walk whose refusal becomes a problem of the report (its reason, never a value). */
function jpegStep<T>(report: StructureReport, step: () => T): T | undefined {
  try {
    return step();
  } catch (err) {
    if (!(err instanceof ScrubError)) throw err;
    report.problems.push(`jpeg: ${err.reason ?? err.code}`);
    return undefined;
  }
}

/** The quantisation tables (0x20 | id) a DQT payload defines, in order. */
function quantTablesOf(payload: Buffer): number[] {
  const ids: number[] = [];
  for (let at = 0; at < payload.length; at += 1 + 64 * ((payload[at]! >> 4) + 1)) ids.push(0x20 | (payload[at]! & 0x0f));
  return ids;
}

/**
 * `entropy`: also walk each scan's coded data, to prove it ends where its last MCU does (the
 * output's proof); without it, a scan runs to the next marker (enough to locate an input's scans).
 */
function walkJpeg(out: Buffer, report: StructureReport, entropy: boolean, dc: boolean): void {
  if (out.readUInt16BE(0) !== 0xffd8) return void report.problems.push('jpeg: no SOI');
  let pos = 2;
  let frame: FrameWalk | undefined;
  let restartInterval = 0;
  const huffman = new Map<number, HuffmanTable>();
  const definedQuant = new Set<number>();
  const iccPieces: Buffer[] = [];
  let scans = 0;
  let adobeSegments = 0;
  // Each Huffman or quantisation table defined must be used by a later scan before it is defined
  // again: an unused one carries bytes no decoder reads (THREATS 47).
  const unused = new Map<number, number>();
  let unusedTables = 0;
  /** Frame components' quantisation tables (SOF Tq), by component id; quantisation ids are kept as 0x20 | id. */
  const quantOf = new Map<number, number>();
  /** Each quantisation table's DC quantiser (0x20 | id), for the DC picture. */
  const quantDc = new Map<number, number>();
  let adobeTransform: number | undefined;
  while (pos + 2 <= out.length) {
    if (out[pos] !== 0xff) return void report.problems.push('jpeg: bytes between segments');
    const marker = out[pos + 1]!;
    if (marker === 0xd9) {
      if (pos + 2 !== out.length) report.problems.push('jpeg: data after EOI');
      if (unused.size + unusedTables > 0) report.problems.push('jpeg: a table no scan uses');
      if (iccPieces.length > 0) {
        // Pieces numbered 1..n in order, each saying n: one profile, as scrubline writes it.
        const inOrder = iccPieces.every((piece, i) => piece[12] === i + 1 && piece[13] === iccPieces.length);
        checkIcc(inOrder ? Buffer.concat(iccPieces.map((piece) => piece.subarray(14))) : undefined, report);
      }
      const frameProven = frame !== undefined && frame.frame.precision === 8 && frame.frame.coding !== 'lossless';
      report.codedDataProven = entropy && frameProven && scans > 0 && report.problems.length === 0;
      if (report.codedDataProven && dc) {
        const { components } = frame!.frame;
        // Three components are RGB when Adobe's segment says no transform, or (libjpeg's rule
        // without one) when their ids spell it; YCbCr otherwise.
        const rgb = adobeTransform !== undefined ? adobeTransform === 0 : components.map((c) => c.id).join() === '82,71,66';
        const quantisers = components.map((c) => quantDc.get(quantOf.get(c.id) ?? -1));
        const picture = quantisers.every((q) => q !== undefined) ? frame!.dcPicture(quantisers as number[], rgb ? 'rgb' : 'ycbcr') : undefined;
        const icc = iccPieces.length > 0 ? Buffer.concat(iccPieces.map((piece) => piece.subarray(14))) : undefined;
        if (picture) report.dcPicture = { ...picture, icc };
      }
      return;
    }
    if (pos + 4 > out.length) break;
    const length = out.readUInt16BE(pos + 2);
    const payload = out.subarray(pos + 4, pos + 2 + length);
    const id = payload.toString('latin1', 0, 12);
    const name = `jpeg 0xFF${marker.toString(16).toUpperCase()}`;
    const coding = (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc8) || marker === 0xdb || marker === 0xdd || marker === 0xdc || marker === 0xda; // SOFn, DHT, DAC, DQT, DRI, DNL, SOS
    const fixedLayout =
      (marker === 0xe0 && id.startsWith('JFIF\0') && length === 16) ||
      (marker === 0xe1 && id.startsWith('Exif\0\0') && isOrientationOnly(payload.subarray(6))) ||
      (marker === 0xee && isCanonicalAdobe(payload) && ++adobeSegments === 1);
    const icc = marker === 0xe2 && id === 'ICC_PROFILE\0';
    if (!coding && !fixedLayout && !icc) report.problems.push(`jpeg: segment 0xFF${marker.toString(16).toUpperCase()} not allowed`);
    // A coding segment is exactly what its syntax accounts for: written from its fields.
    if (coding && codingExtent(marker, payload) !== payload.length) report.problems.push('jpeg: a coding segment holds more than its fields');
    const tablesDefined = marker === 0xc4 ? huffmanTablesOf(payload) : marker === 0xdb ? quantTablesOf(payload) : [];
    for (const table of tablesDefined) {
      if (unused.has(table)) unusedTables++;
      unused.set(table, pos);
    }
    if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
      for (let i = 0; i < (payload[5] ?? 0); i++) quantOf.set(payload[6 + 3 * i] ?? -1, 0x20 | ((payload[8 + 3 * i] ?? 0) & 0x0f));
      if (entropy) frame = jpegStep(report, () => new FrameWalk(readFrame(marker, payload)));
      if (dc) frame?.collectDc();
    }
    if (entropy && marker === 0xc4) {
      for (let at = 0; at + 17 <= payload.length; ) {
        let symbols = 0;
        for (let i = 1; i <= 16; i++) symbols += payload[at + i]!;
        const table = payload.subarray(at, at + 17 + symbols);
        const lookup = jpegStep(report, () => huffmanLookup(table));
        if (lookup) huffman.set(payload[at]!, lookup);
        at += 17 + symbols;
      }
    }
    if (marker === 0xdd) restartInterval = payload.readUInt16BE(0);
    if (marker === 0xda) {
      const components = payload[0] ?? 0;
      const ss = payload[1 + 2 * components] ?? 0;
      const se = payload[2 + 2 * components] ?? 0;
      for (let i = 0; i < components; i++) {
        unused.delete(quantOf.get(payload[1 + 2 * i] ?? -1) ?? -1);
        const selectors = payload[2 + 2 * i] ?? 0;
        if (ss === 0) unused.delete(selectors >> 4);
        if (se > 0) unused.delete(0x10 | (selectors & 0x0f));
      }
    }
    const end = pos + 2 + length;
    report.structures.push({ start: pos, end, what: name });
    if (icc) {
      report.keptRanges.push({ start: pos + 4, end, what: 'icc' });
      iccPieces.push(payload);
    }
    else if (fixedLayout) report.keptRanges.push({ start: pos, end, what: name });
    else if (coding) report.keptRanges.push({ start: pos, end: pos + 4 + codingExtent(marker, payload), what: name });
    pos = end;
    if (marker === 0xdb) {
      for (const table of quantTablesOf(payload)) definedQuant.add(table);
      for (let at = 0; at + 1 < payload.length; at += 1 + 64 * ((payload[at]! >> 4) + 1)) {
        quantDc.set(0x20 | (payload[at]! & 0x0f), payload[at]! >> 4 === 0 ? payload[at + 1]! : payload.readUInt16BE(at + 1));
      }
    }
    if (fixedLayout && marker === 0xee) adobeTransform = payload[11];
    if (marker === 0xda && entropy) {
      for (let i = 0; i < (payload[0] ?? 0); i++) {
        if (!definedQuant.has(quantOf.get(payload[1 + 2 * i] ?? -1) ?? -1)) report.problems.push('jpeg: a quantisation table a scan needs is not defined');
      }
      // The coded data must end where its last MCU does, its padding bits set and nothing
      // after it before the next marker (THREATS 37: text appended to a scan).
      if (!frame) return void report.problems.push('jpeg: a scan before its frame');
      const walk = frame;
      const table = (tableClass: number, id: number): HuffmanTable | undefined => huffman.get((tableClass << 4) | id);
      const scan = jpegStep(report, () => walkScan(out, pos, walk, readScanHeader(walk.frame, payload), table, restartInterval));
      if (!scan) {
        // The walk's refusal is the problem jpegStep just reported.
        (report.scanProblems ??= []).push(report.problems.at(-1)!);
        return;
      }
      if (!scan.canonical) {
        report.problems.push(scanTailProblem);
        (report.scanProblems ??= []).push(scanTailProblem);
      }
      scans++;
      report.structures.push({ start: pos, end: scan.end, what: jpegScanName });
      pos = scan.end;
    } else if (marker === 0xda) {
      // Entropy-coded data runs to the first marker that is not stuffing or a restart.
      const scanStart = pos;
      for (;;) {
        pos = out.indexOf(0xff, pos);
        if (pos < 0 || pos + 1 >= out.length) return void report.problems.push('jpeg: scan without EOI');
        const next = out[pos + 1]!;
        if (next === 0x00 || (next >= 0xd0 && next <= 0xd7) || next === 0xff) pos += 1;
        else break;
      }
      report.structures.push({ start: scanStart, end: pos, what: jpegScanName });
    }
  }
  report.problems.push('jpeg: no EOI');
}

/**
 * The orientation a PNG's first eXIf gives, wherever it lies (viewers honour one after IDAT;
 * libvips, and so the header reader, does not look there). 1 without one.
 */
export function pngOrientation(png: Buffer): number {
  for (let pos = 8; pos + 12 <= png.length; ) {
    const length = png.readUInt32BE(pos);
    if (png.toString('latin1', pos + 4, pos + 8) === 'eXIf') {
      const tiff = png.subarray(pos + 8, Math.min(png.length, pos + 8 + length));
      const entry = tiffValues(tiff, undefined).find((t) => t.tag === 0x0112 && t.size === 2);
      if (!entry) return 1;
      const value = tiff[0] === 0x49 ? tiff.readUInt16LE(entry.valueAt) : tiff.readUInt16BE(entry.valueAt);
      return value >= 1 && value <= 8 ? value : 1;
    }
    pos += 12 + length;
  }
  return 1;
}

const pngAllowed = new Set(['IHDR', 'PLTE', 'IDAT', 'IEND', 'tRNS', 'iCCP', 'sRGB', 'gAMA', 'cHRM', 'cICP', 'mDCV', 'cLLI', 'sBIT', 'pHYs', 'acTL', 'fcTL', 'fdAT']);
/** Chunks of fields only, each exactly this long (PNG 3rd edition, 11.3). */
const pngFixedLength: Record<string, number> = { IHDR: 13, sRGB: 1, gAMA: 4, cHRM: 32, cICP: 4, mDCV: 24, cLLI: 8, pHYs: 9, acTL: 8, fcTL: 26, IEND: 0 };

function walkPng(out: Buffer, report: StructureReport, entropy: boolean): void {
  let pos = 8;
  const data = new PngDataRuns(report, entropy);
  while (pos + 12 <= out.length) {
    const length = out.readUInt32BE(pos);
    const type = out.toString('latin1', pos + 4, pos + 8);
    data.chunk(type, out.subarray(pos + 8, Math.min(out.length, pos + 8 + length)));
    const allowed = pngAllowed.has(type) || (type === 'eXIf' && isOrientationOnly(out.subarray(pos + 8, pos + 8 + length)));
    if (!allowed) report.problems.push(`png: chunk not allowed`);
    const fixed = pngFixedLength[type];
    if (fixed !== undefined && length !== fixed) report.problems.push(`png: ${type} is not its fixed length`);
    // The keyword is the writer's free text: a rebuilt iCCP has the one fixed name.
    if (type === 'iCCP' && out.toString('latin1', pos + 8, pos + 21) !== 'ICC Profile\0\0') report.problems.push('png: iCCP keyword is not the fixed one');
    report.structures.push({ start: pos, end: pos + 12 + length, what: `png ${/^[A-Za-z]{4}$/.test(type) ? type : 'chunk'}` });
    if (type === 'iCCP') {
      report.keptRanges.push({ start: pos + 8, end: pos + 8 + length, what: 'icc' });
      let profile: Buffer | undefined;
      try {
        profile = inflateSync(out.subarray(pos + 8 + 13, pos + 8 + length), { maxOutputLength: maxProfileBytes });
      } catch {
        profile = undefined;
      }
      checkIcc(profile, report);
    }
    pos += 12 + length;
    if (type === 'IEND') {
      if (pos !== out.length) report.problems.push('png: data after IEND');
      return;
    }
  }
  report.problems.push('png: no IEND');
}

/**
 * The output's image data runs (IDAT, each frame's fdAT), each one zlib stream that ends where
 * its run does and inflates to exactly its picture's rows (formats/png-data.ts). Skipped when
 * only locating an input's structures.
 */
class PngDataRuns {
  private geometry: PngGeometry | undefined;
  private image: [number, number] = [0, 0];
  private frame: [number, number] = [0, 0];
  private runType = '';
  private pieces: Buffer[] = [];

  constructor(
    private readonly report: StructureReport,
    private readonly active: boolean,
  ) {}

  chunk(type: string, data: Buffer): void {
    if (!this.active) return;
    if (type !== this.runType) this.end();
    if (type === 'IHDR' && data.length === 13) {
      this.geometry = pngGeometry(data);
      this.image = [data.readUInt32BE(0), data.readUInt32BE(4)];
    }
    if (type === 'fcTL' && data.length === 26) this.frame = [data.readUInt32BE(4), data.readUInt32BE(8)];
    if (type === 'IDAT') this.pieces.push(data);
    if (type === 'fdAT') this.pieces.push(data.subarray(4));
    this.runType = type;
  }

  private end(): void {
    if (this.pieces.length === 0) return;
    const [width, height] = this.runType === 'IDAT' ? this.image : this.frame;
    const stream = Buffer.concat(this.pieces);
    this.pieces = [];
    if (!this.geometry || width * height > this.image[0] * this.image[1]) return void this.report.problems.push('png: image data without a valid IHDR or fcTL');
    try {
      if (zlibStreamEnd(stream, rawDataSize(this.geometry, width, height)) !== stream.length) this.report.problems.push('png: image data runs past its zlib stream');
    } catch (err) {
      if (!(err instanceof PngDataError)) throw err;
      this.report.problems.push(`png: ${err.message.replace(/^its /, '')}`);
    }
  }
}

function walkWebp(out: Buffer, report: StructureReport): void {
  if (out.toString('latin1', 0, 4) !== 'RIFF' || 8 + out.readUInt32LE(4) !== out.length) {
    return void report.problems.push('webp: RIFF size does not match the file');
  }
  let pos = 12;
  while (pos + 8 <= out.length) {
    const fourcc = out.toString('latin1', pos, pos + 4);
    const size = out.readUInt32LE(pos + 4);
    const data = out.subarray(pos + 8, pos + 8 + size);
    const allowed = ['VP8 ', 'VP8L', 'VP8X', 'ALPH', 'ANIM', 'ANMF', 'ICCP'].includes(fourcc) || (fourcc === 'EXIF' && isOrientationOnly(data));
    if (!allowed) report.problems.push('webp: chunk not allowed');
    report.structures.push({ start: pos, end: pos + 8 + size, what: `webp ${/^[A-Za-z0-9 ]{4}$/.test(fourcc) ? fourcc.trim() : 'chunk'}` });
    if (fourcc === 'VP8X' && (data[0]! & 0x04) !== 0) report.problems.push('webp: VP8X declares XMP');
    // Written from their fields: VP8X ten bytes, no reserved bit set; ANIM six; a frame's own
    // chunks image data only (THREATS 47: an EXIF chunk rode inside an ANMF).
    if (fourcc === 'VP8X' && (size !== 10 || (data[0]! & 0xc1) !== 0 || data[1] !== 0 || data[2] !== 0 || data[3] !== 0)) report.problems.push('webp: VP8X not in its fixed form');
    if (fourcc === 'ANIM' && size !== 6) report.problems.push('webp: ANIM not in its fixed form');
    if (fourcc === 'ALPH' && (data[0]! & 0xc0) !== 0) report.problems.push('webp: ALPH reserved bits set');
    if (fourcc === 'ANMF') {
      if (size < 16 || (data[15]! & 0xfc) !== 0) report.problems.push('webp: ANMF header not in its fixed form');
      for (let at = 16; at + 8 <= data.length; ) {
        const inner = data.toString('latin1', at, at + 4);
        const innerSize = data.readUInt32LE(at + 4);
        if (!['ALPH', 'VP8 ', 'VP8L'].includes(inner)) report.problems.push('webp: a frame holds a chunk other than image data');
        if (inner === 'ALPH' && (data[at + 8]! & 0xc0) !== 0) report.problems.push('webp: ALPH reserved bits set');
        at += 8 + innerSize + (innerSize % 2);
      }
    }
    if (fourcc === 'ICCP') {
      report.keptRanges.push({ start: pos + 8, end: pos + 8 + size, what: 'icc' });
      checkIcc(out.subarray(pos + 8, pos + 8 + size), report);
    }
    pos += 8 + size + (size % 2);
  }
  if (pos !== out.length) report.problems.push('webp: chunks do not fill the RIFF');
}

function walkGif(out: Buffer, report: StructureReport): void {
  const packed = out[10] ?? 0;
  let pos = 13 + (packed & 0x80 ? 3 * 2 ** ((packed & 0x07) + 1) : 0);
  const skip = (at: number): number => {
    while (at < out.length && out[at] !== 0) at += 1 + out[at]!;
    return at + 1;
  };
  while (pos < out.length) {
    const introducer = out[pos];
    if (introducer === 0x3b) {
      if (pos + 1 !== out.length) report.problems.push('gif: data after trailer');
      return;
    }
    if (introducer === 0x2c) {
      const flags = out[pos + 9] ?? 0;
      const dataAt = pos + 10 + (flags & 0x80 ? 3 * 2 ** ((flags & 0x07) + 1) : 0) + 1;
      const end = skip(dataAt);
      // The LZW data must stop at its end code, in canonical sub-blocks (formats/gif-lzw.ts).
      try {
        const pixels = out.readUInt16LE(pos + 5) * out.readUInt16LE(pos + 7);
        if (!lzwImageData(out.subarray(dataAt, end), out[dataAt - 1] ?? 0, pixels).canonical) report.problems.push('gif: image data runs past its end code');
      } catch {
        report.problems.push('gif: image data does not decode');
      }
      pos = end;
      continue;
    }
    const label = out[pos + 1];
    const app = out.toString('latin1', pos + 3, pos + 14);
    if (introducer !== 0x21 || !(label === 0xf9 || (label === 0xff && ['NETSCAPE2.0', 'ANIMEXTS1.0', 'ICCRGBG1012'].includes(app)))) {
      report.problems.push('gif: block not allowed');
    }
    if (label === 0xff && app === 'ICCRGBG1012') {
      report.keptRanges.push({ start: pos, end: skip(pos + 2), what: 'icc' });
      const blocks: Buffer[] = [];
      for (let at = pos + 14; at < out.length && out[at] !== 0; at += 1 + out[at]!) blocks.push(out.subarray(at + 1, at + 1 + out[at]!));
      checkIcc(Buffer.concat(blocks), report);
    }
    // Written from their fields: a GCE is one 4-byte sub-block, the loop extension one 3-byte one.
    if (label === 0xf9 && !(out[pos + 2] === 4 && out[pos + 7] === 0)) report.problems.push('gif: graphic control extension not in its fixed form');
    if (label === 0xff && app !== 'ICCRGBG1012' && !(app === 'NETSCAPE2.0' && out[pos + 14] === 3 && out[pos + 15] === 1 && out[pos + 18] === 0)) {
      report.problems.push('gif: loop extension not in its fixed form');
    }
    pos = skip(pos + 2);
  }
  report.problems.push('gif: no trailer');
}

/** Baseline TIFF tags that describe pixels, layout and colour; anything else is metadata. */
const tiffTechnicalTags = new Set([
  0x00fe, 0x0100, 0x0101, 0x0102, 0x0103, 0x0106, 0x010a, 0x0111, 0x0112, 0x0115, 0x0116, 0x0117, 0x011a, 0x011b, 0x011c, 0x0128,
  0x012d, 0x013d, 0x013e, 0x013f, 0x0140, 0x0142, 0x0143, 0x0144, 0x0145, 0x014c, 0x0152, 0x0153, 0x0154, 0x0155, 0x015b,
  0x0211, 0x0212, 0x0213, 0x0214, 0x8773,
]);

/** The strips or tiles of a TIFF's first IFD, in order (StripOffsets/ByteCounts, TileOffsets/ByteCounts). */
function imageDataOf(out: Buffer, tags: ReturnType<typeof tiffValues>): Span[] {
  const little = out[0] === 0x49;
  const array = (tag: number): number[] => {
    const t = tags.find((x) => x.tag === tag);
    if (!t || (t.type !== 3 && t.type !== 4) || t.valueAt + t.size > out.length) return [];
    const read = (i: number): number =>
      t.type === 3 ? (little ? out.readUInt16LE(t.valueAt + 2 * i) : out.readUInt16BE(t.valueAt + 2 * i)) : little ? out.readUInt32LE(t.valueAt + 4 * i) : out.readUInt32BE(t.valueAt + 4 * i);
    return Array.from({ length: t.count }, (_, i) => read(i));
  };
  const spans: Span[] = [];
  for (const [offsetsTag, countsTag] of [
    [0x0111, 0x0117],
    [0x0144, 0x0145],
  ] as const) {
    const counts = array(countsTag);
    array(offsetsTag).forEach((offset, i) => spans.push({ start: offset, end: offset + (counts[i] ?? 0), what: tiffStripsName }));
  }
  return spans;
}

/** The image data of a TIFF's first IFD, whatever other IFDs it has (an input's): for the proof that the output's is the same. */
export function tiffImageData(image: Buffer): Span[] {
  const tags = tiffValues(image, undefined);
  const first = tags[0]?.ifd;
  return imageDataOf(image, tags.filter((t) => t.ifd === first));
}

function walkTiff(out: Buffer, report: StructureReport): void {
  const tags = tiffValues(out, undefined);
  const ifds = new Set(tags.map((t) => t.ifd));
  if (ifds.size !== 1) return void report.problems.push('tiff: not exactly one IFD');
  const ifd = [...ifds][0]!;
  // Every byte must be the header, the IFD, a tag's value or image data: nothing unowned.
  const owned: Array<[number, number]> = [
    [0, 8],
    [ifd, ifd + 2 + 12 * tags.length + 4],
  ];
  for (const { tag, valueAt, size } of tags) {
    if (!tiffTechnicalTags.has(tag)) report.problems.push('tiff: metadata tag present');
    if (size > 4) owned.push([valueAt, valueAt + size]);
    if (tag === 0x8773) {
      report.keptRanges.push({ start: valueAt, end: valueAt + size, what: 'icc' });
      checkIcc(out.subarray(valueAt, valueAt + size), report);
    }
    if (tag === 0x015b && !isTablesOnly(out.subarray(valueAt, valueAt + size))) report.problems.push('tiff: JPEGTables holds more than tables');
    report.structures.push({ start: valueAt, end: valueAt + size, what: `tiff tag ${tag}` });
  }
  for (const span of imageDataOf(out, tags)) {
    owned.push([span.start, span.end]);
    report.structures.push(span);
  }
  owned.sort((a, b) => a[0] - b[0]);
  let covered = 0;
  for (const [start, end] of owned) {
    // A value may be followed by one pad byte to keep the next word-aligned.
    if (start > covered + 1 || (start === covered + 1 && out[covered] !== 0)) return void report.problems.push('tiff: bytes no structure owns');
    covered = Math.max(covered, end);
  }
  if (covered !== out.length) report.problems.push('tiff: bytes no structure owns');
}

/** An abbreviated JPEG stream of SOI, quantisation/Huffman/restart segments and EOI only. */
function isTablesOnly(stream: Buffer): boolean {
  if (stream.length < 4 || stream.readUInt16BE(0) !== 0xffd8) return false;
  let pos = 2;
  while (pos + 4 <= stream.length && stream[pos] === 0xff && [0xdb, 0xc4, 0xdd].includes(stream[pos + 1]!)) pos += 2 + stream.readUInt16BE(pos + 2);
  return pos + 2 === stream.length && stream.readUInt16BE(pos) === 0xffd9;
}

/** XMP's own markers: in no clean image, whatever its format (outside a kept ICC profile). */
const xmpMarkers = ['<x:xmpmeta', '<rdf:RDF', 'http://ns.adobe.com/xap/1.0/'].map((marker) => ({ bytes: Buffer.from(marker, 'latin1'), problem: 'image: an XMP packet is present' }));

/**
 * `entropy: false` skips the walk of JPEG scans' coded data and the inflate of PNG image data,
 * for locating an input's structures only: an output's proof always walks them.
 */
export function checkImageStructure(format: ImageFormat, out: Buffer, { entropy = true, dc = false } = {}): StructureReport {
  const report: StructureReport = { problems: [], keptRanges: [], structures: [], forbidden: xmpMarkers };
  if (format === 'jpeg') walkJpeg(out, report, entropy, dc);
  else if (format === 'png') walkPng(out, report, entropy);
  else if (format === 'webp') walkWebp(out, report);
  else if (format === 'gif') walkGif(out, report);
  else if (format === 'tiff') walkTiff(out, report);
  else checkHeifStructure(out, report.problems, report.keptRanges);
  return report;
}
