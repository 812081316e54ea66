/**
 * Lossless JPEG rebuild from an allowlist of markers (../shared/METADATA.md, JPEG). Compressed
 * image data is copied byte for byte; only whole segments are dropped, so pixels are identical.
 *
 * Kept: SOI, DQT, DHT, DAC, SOFn, DRI, DNL, SOS + entropy-coded data, EOI, APP0 JFIF (without
 * its thumbnail), APP2 ICC_PROFILE (the profile rebuilt: formats/icc.ts), APP14 Adobe (rebuilt
 * to its canonical 12 bytes). Dropped: every other APPn, COM, bytes between segments (libjpeg
 * skips them too, with a warning) and everything after EOI. Orientation survives as a minimal
 * EXIF holding only Orientation.
 *
 * The coding segments are rebuilt from their parsed fields at their exact lengths (issue 26):
 * the quantisation and Huffman tables, frame and scan headers and restart interval are written
 * anew, bytes a writer appended to a segment go, and a Huffman table that no scan uses goes (an
 * unused table's symbol bytes can be any text: THREATS 47). Each scan is cut where its last MCU
 * ends (formats/jpeg-scan.ts): what a writer or anyone else put after it in the scan goes.
 */
import { countRemoved, type Removed, type RemovedCategory } from '../context.js';
import { reject } from '../errors.js';
import { canonicalIcc } from '../formats/icc.js';
import { frameBudget, FrameWalk, huffmanLookup, readFrame, readScanHeader, scanCost, scanExtent, walkScan, type HuffmanTable, type ScanHeader } from '../formats/jpeg-scan.js';
import { exifCategories, minimalOrientationTiff, readOrientation } from '../formats/tiff-ifd.js';
import type { WorkBudget } from '../formats/work-budget.js';
import type { ImageStripResult, ScanMode } from './strip-image.js';

const SOI = 0xd8;
const EOI = 0xd9;
const SOS = 0xda;

const startsWith = (segment: Buffer, signature: string): boolean =>
  segment.length >= signature.length && segment.toString('latin1', 0, signature.length) === signature;

/** SOFn markers: C0–CF except DHT (C4), JPG (C8) and DAC (CC). */
const isSof = (m: number): boolean => m >= 0xc0 && m <= 0xcf && m !== 0xc4 && m !== 0xc8 && m !== 0xcc;
/** Table and frame markers that rendering needs, kept as they are. */
const isCoding = (m: number): boolean => isSof(m) || m === 0xc4 || m === 0xcc || m === 0xdb || m === 0xdd || m === 0xdc;

/** APPn payloads and the category each one is reported under when dropped. */
function appCategory(marker: number, payload: Buffer): RemovedCategory {
  if (marker === 0xe1) {
    if (startsWith(payload, 'Exif\0')) return 'exif';
    if (startsWith(payload, 'http://ns.adobe.com/xap/1.0/')) return 'xmp';
    if (startsWith(payload, 'http://ns.adobe.com/xmp/extension/')) return 'xmp';
  }
  if (marker === 0xe0 && startsWith(payload, 'JFXX')) return 'thumbnail';
  if (marker === 0xe2 && startsWith(payload, 'MPF\0')) return 'mpf';
  if (marker === 0xed) return 'iptc';
  if (marker === 0xeb) return 'jumbf';
  return 'vendor';
}

/**
 * A table as parsed: a Huffman table (its class, 0 DC or 1 AC, its id and its bytes: Tc/Th,
 * counts, symbols) or a quantisation table (class 2 here: Pq/Tq and its entries).
 */
interface Table {
  tableClass: number;
  id: number;
  bytes: Buffer;
  used: boolean;
  /** A Huffman table's decoding table, made when a scan first reads it. */
  lookup?: HuffmanTable;
}

/** What the body is made of, in file order; DHT and DQT segments are written once the scans are known. */
type BodyItem = Buffer | { marker: number; tables: Table[] } | ScanItem;

/** A scan's coded data, walked (and cut) once all scans are known: see `scanParts`. */
interface ScanItem {
  from: number;
  rawEnd: number;
  header: ScanHeader;
  /** The Huffman tables in force at the scan (a later DHT may redefine them). */
  huffman: Map<number, Table>;
  restartInterval: number;
  hinted: boolean;
}

/** Class 2 stands for quantisation tables in the map of current tables. */
const QUANT = 2;

const segmentOf = (marker: number, payload: Buffer): Buffer => {
  const head = Buffer.alloc(4);
  head.writeUInt16BE(0xff00 | marker, 0);
  head.writeUInt16BE(payload.length + 2, 2);
  return Buffer.concat([head, payload]);
};

/**
 * A coding segment rebuilt from its fields (T.81 B.2), and whether the input's was longer. Throws
 * for one shorter than its own fields say.
 */
function rebuildCoding(marker: number, payload: Buffer): { segment: Buffer; surplus: boolean } | { tables: Table[]; surplus: boolean } {
  const short = (): never => {
    throw reject.corrupt('JPEG', `a 0xFF${marker.toString(16).toUpperCase()} segment is shorter than its fields`);
  };
  const n = payload.length;
  if (marker === 0xdb) {
    // DQT: tables of a precision/id byte and 64 one- or two-byte entries.
    // Tables are read while they are tables; what follows the last one is surplus (dropped). A
    // table the decoder needs and that is not there shows in the verifier's decode.
    const tables: Table[] = [];
    let at = 0;
    while (at < n) {
      const precision = payload[at]! >> 4;
      if (precision > 1 || (payload[at]! & 0x0f) > 3) break;
      const end = at + 1 + 64 * (precision + 1);
      if (end > n) break;
      tables.push({ tableClass: QUANT, id: payload[at]! & 0x0f, bytes: payload.subarray(at, end), used: false });
      at = end;
    }
    if (tables.length === 0) short();
    return { tables, surplus: at < n };
  }
  if (marker === 0xc4) {
    // DHT: tables of a class/id byte, 16 code counts and as many symbols as they add up to.
    const tables: Table[] = [];
    let at = 0;
    while (at + 17 <= n) {
      const tableClass = payload[at]! >> 4;
      const id = payload[at]! & 0x0f;
      if (tableClass > 1 || id > 3) break;
      let symbols = 0;
      for (let i = 1; i <= 16; i++) symbols += payload[at + i]!;
      if (symbols > 256 || at + 17 + symbols > n) break;
      tables.push({ tableClass, id, bytes: payload.subarray(at, at + 17 + symbols), used: false });
      at += 17 + symbols;
    }
    if (tables.length === 0) short();
    return { tables, surplus: at < n };
  }
  const exact = (length: number): { segment: Buffer; surplus: boolean } => {
    if (n < length) short();
    return { segment: segmentOf(marker, payload.subarray(0, length)), surplus: n > length };
  };
  if (marker === SOS) return exact(4 + 2 * (payload[0] ?? 0)); // Ns, selectors, Ss/Se/Ah-Al
  if (marker === 0xdd || marker === 0xdc) return exact(2); // DRI, DNL
  if (marker === 0xcc) return exact(n - (n % 2)); // DAC: pairs
  return exact(6 + 3 * (payload[5] ?? 0)); // SOFn: P, Y, X, Nf, then Nf components
}

export function stripJpeg(input: Buffer, limits: { maxInputPixels: number; scans?: ScanMode | undefined }): ImageStripResult {
  if (input.length < 4 || input[0] !== 0xff || input[1] !== SOI) throw reject.corrupt('JPEG', 'no start-of-image marker');
  const removed: Removed = {};
  const head: Buffer[] = [];
  const body: BodyItem[] = [];
  /** The table each (class, id) names now: a scan uses the one defined last before it. */
  const current = new Map<number, Table>();
  /** Each frame component's quantisation table id (SOF), by component id. */
  const quantOf = new Map<number, number>();
  /** APP2 ICC_PROFILE payloads, in file order: one profile in numbered pieces. */
  const iccPieces: Buffer[] = [];
  let strayBytes = false;
  let orientation: number | undefined;
  let adobeTransform: number | undefined;
  let frame: FrameWalk | undefined;
  let scanBudget: WorkBudget | undefined;
  let restartInterval = 0;
  let sawScan = false;
  let pos = 2;

  for (;;) {
    // Bytes between segments are not JPEG: a trail camera and an editor write a few, and libjpeg
    // skips them to the next marker with a warning; so do we, and they are not kept.
    if (pos < input.length && input[pos] !== 0xff) {
      const next = input.indexOf(0xff, pos);
      if (next < 0) throw reject.corrupt('JPEG', 'truncated or malformed marker stream');
      strayBytes = true;
      pos = next;
    }
    // Markers may be preceded by any number of 0xFF fill bytes (T.81 B.1.1.2).
    if (pos >= input.length || input[pos] !== 0xff) throw reject.corrupt('JPEG', 'truncated or malformed marker stream');
    while (pos < input.length && input[pos] === 0xff) pos++;
    if (pos >= input.length) throw reject.corrupt('JPEG', 'truncated before end-of-image');
    const marker = input[pos++]!;

    if (marker === EOI) {
      body.push(input.subarray(pos - 2, pos));
      if (pos < input.length) countRemoved(removed, 'trailer');
      break;
    }
    if (marker === 0x00 || marker === SOI || (marker >= 0xd0 && marker <= 0xd7) || marker === 0x01) {
      throw reject.corrupt('JPEG', 'unexpected marker outside a scan');
    }
    if (pos + 2 > input.length) throw reject.corrupt('JPEG', 'truncated segment header');
    const length = input.readUInt16BE(pos);
    const end = pos + length;
    if (length < 2 || end > input.length) throw reject.corrupt('JPEG', 'segment runs past the end of the file');
    const payload = input.subarray(pos + 2, end);
    pos = end;

    if (isCoding(marker) || marker === SOS) {
      if (marker === SOS && !frame) throw reject.corrupt('JPEG', 'scan before frame header');
      if (isSof(marker)) {
        if (frame) throw reject.structure('JPEG', 'a second frame header');
        const header = readFrame(marker, payload);
        // The verifier proves a JPEG's pixels with libjpeg's decode or its own walk, which stands in
        // for one only for 8-bit DCT frames; sharp's libjpeg (mozjpeg) decodes nothing else. Such
        // a file was refused after all the work, as an unreadable header or a failed verification
        // of an intact file: refused here instead, saying why.
        if (header.coding === 'lossless') throw reject.structure('JPEG', 'lossless (SOF3) coding, which no decoder here reads to prove its pixels; PNG or TIFF keep it lossless');
        if (header.precision !== 8) throw reject.structure('JPEG', `${header.precision}-bit samples, which no decoder here reads to prove its pixels`);
        // Before anything is allocated for its blocks.
        if (header.width * header.height > limits.maxInputPixels) throw reject.pixels(header.width, header.height, limits.maxInputPixels);
        frame = new FrameWalk(header);
        scanBudget = frameBudget(header);
        for (let i = 0; i < (payload[5] ?? 0) && 8 + 3 * i < payload.length; i++) quantOf.set(payload[6 + 3 * i]!, payload[8 + 3 * i]!);
      }
      const rebuilt = rebuildCoding(marker, payload);
      if (rebuilt.surplus) countRemoved(removed, 'other');
      if ('tables' in rebuilt) {
        for (const table of rebuilt.tables) current.set((table.tableClass << 4) | table.id, table);
        body.push({ marker, tables: rebuilt.tables });
        continue;
      }
      body.push(rebuilt.segment);
      if (marker === 0xdd) restartInterval = payload.readUInt16BE(0);
      if (marker === SOS) {
        sawScan = true;
        markUsedTables(payload, current, quantOf);
        const header = readScanHeader(frame!.frame, payload);
        // Charged from the headers, walked or not: a file of thousands of scans stops here.
        scanBudget!.spend(scanCost(frame!.frame, header));
        const { end: rawEnd, canonical } = scanExtent(input, pos, frame!.frame, header, restartInterval); // fill bytes before the next marker go
        const hinted = !canonical;
        body.push({ from: pos, rawEnd, header, huffman: new Map(current), restartInterval, hinted });
        pos = rawEnd;
      }
      continue;
    }
    if (marker === 0xfe) {
      countRemoved(removed, 'comment');
      continue;
    }
    if (marker < 0xe0 || marker > 0xef) {
      // JPG extensions (F0–FD) and reserved markers: we do not know what they carry.
      throw reject.structure('JPEG', `marker 0xFF${marker.toString(16).toUpperCase()}`);
    }

    // APPn
    if (marker === 0xe0 && startsWith(payload, 'JFIF\0')) {
      head.push(jfifWithoutThumbnail(payload, removed));
      continue;
    }
    if (marker === 0xe2 && startsWith(payload, 'ICC_PROFILE\0')) {
      iccPieces.push(payload);
      continue;
    }
    if (marker === 0xee && startsWith(payload, 'Adobe')) {
      // Photoshop and Lightroom write it longer than its 12 bytes; only the transform decides
      // how a decoder reads the colour. libjpeg ignores one shorter than 12 bytes, and the last
      // one wins: one canonical segment with that transform is written.
      // What goes beyond that (a longer payload, a short or an earlier segment) is reported.
      if (payload.length !== 12 || adobeTransform !== undefined) countRemoved(removed, 'vendor');
      if (payload.length >= 12) adobeTransform = payload[11]!;
      continue;
    }
    const category = appCategory(marker, payload);
    if (category === 'exif') {
      const tiff = payload.subarray(6);
      // The first EXIF block is the one decoders read orientation from.
      orientation ??= readOrientation(tiff);
      for (const found of exifCategories(tiff)) countRemoved(removed, found);
    } else {
      countRemoved(removed, category);
    }
  }

  if (!frame || !sawScan) throw reject.corrupt('JPEG', 'no frame or no scan');
  if (strayBytes) countRemoved(removed, 'other');
  const parts = [input.subarray(0, 2), ...head];
  if (orientation !== undefined && orientation !== 1) parts.push(orientationApp1(orientation));
  if (adobeTransform !== undefined) parts.push(adobeApp14(adobeTransform));
  if (iccPieces.length > 0) parts.push(...iccSegments(iccPieces, removed));
  const scans = scanParts(input, frame, body.filter((item): item is ScanItem => 'hinted' in item), removed, limits.scans ?? 'hinted');
  let scan = 0;
  for (const item of body) {
    if (Buffer.isBuffer(item)) {
      parts.push(item);
      continue;
    }
    if ('hinted' in item) {
      parts.push(...scans[scan++]!);
      continue;
    }
    const used = item.tables.filter((table) => table.used);
    if (used.length < item.tables.length) countRemoved(removed, 'other', item.tables.length - used.length);
    if (used.length > 0) parts.push(segmentOf(item.marker, Buffer.concat(used.map((table) => table.bytes))));
  }
  return { parts, removed, orientation: orientation ?? 1 };
}

/**
 * Each scan's bytes: the input's as they are, or walked and cut after its last MCU. Walking a
 * photo's scans costs about as much as libjpeg's decode of it, and the verifier walks every scan
 * of the output, so `mode` says which are walked: none ('copy': the pipeline strips a JPEG file
 * that way first, and again with 'all' only if the verifier's walk finds data past a last MCU),
 * those whose bytes hint at such data ('hinted', formats/jpeg-scan.ts `scanExtent`: a JPEG
 * inside a HEIF), or all. A progressive scan is read against what the earlier scans coded, so
 * one walk there walks them all.
 */
function scanParts(input: Buffer, frame: FrameWalk, scans: ScanItem[], removed: Removed, mode: ScanMode): Buffer[][] {
  const walked = (item: ScanItem): boolean => mode === 'all' || (mode === 'hinted' && item.hinted);
  const walkAll = mode === 'all' || (frame.frame.coding === 'progressive' && scans.some(walked));
  return scans.map((item) => {
    if (!walkAll && !walked(item)) return [input.subarray(item.from, item.rawEnd)];
    const huffman = (tableClass: number, id: number): HuffmanTable | undefined => {
      const table = item.huffman.get((tableClass << 4) | id);
      return table && (table.lookup ??= huffmanLookup(table.bytes));
    };
    const scan = walkScan(input, item.from, frame, item.header, huffman, item.restartInterval);
    if (!scan.canonical) countRemoved(removed, 'other');
    return scan.pieces;
  });
}

/**
 * The tables a scan uses (T.81 B.2.3): each component's DC Huffman table (Td) when the scan codes
 * DC coefficients (Ss = 0), its AC one (Ta) when it codes AC ones (Se > 0), and the quantisation
 * table its frame header names (a decoder latches it when the component's first scan starts).
 */
function markUsedTables(sos: Buffer, current: Map<number, Table>, quantOf: Map<number, number>): void {
  const components = sos[0] ?? 0;
  const ss = sos[1 + 2 * components] ?? 0;
  const se = sos[2 + 2 * components] ?? 0;
  for (let i = 0; i < components; i++) {
    const quant = current.get((QUANT << 4) | (quantOf.get(sos[1 + 2 * i] ?? -1) ?? -1));
    if (quant) quant.used = true;
    const selectors = sos[2 + 2 * i] ?? 0;
    if (ss === 0) {
      const dc = current.get(selectors >> 4);
      if (dc) dc.used = true;
    }
    if (se > 0) {
      const ac = current.get(0x10 | (selectors & 0x0f));
      if (ac) ac.used = true;
    }
  }
}

/** The most profile bytes one APP2 segment holds: 65,535 less its length, name, number and count. */
const iccPieceBytes = 65535 - 2 - 14;

/**
 * The ICC profile, put together from its numbered APP2 pieces (ICC.1 B.4), rebuilt from its
 * fields (formats/icc.ts) and cut into pieces again. Pieces that do not make one profile (a
 * number missing or twice, counts that differ) are refused: decoders disagree on what they mean.
 */
function iccSegments(pieces: Buffer[], removed: Removed): Buffer[] {
  const total = pieces[0]![13]!;
  const ordered = [...pieces].sort((a, b) => a[12]! - b[12]!);
  if (pieces.length !== total || ordered.some((piece, i) => piece.length < 14 || piece[12] !== i + 1 || piece[13] !== total)) {
    throw reject.structure('JPEG', 'an ICC profile in pieces that do not fit together');
  }
  const { profile, changed } = canonicalIcc(Buffer.concat(ordered.map((piece) => piece.subarray(14))), 'JPEG');
  if (changed) countRemoved(removed, 'profileText');
  const count = Math.ceil(profile.length / iccPieceBytes);
  return Array.from({ length: count }, (_, i) => {
    const name = Buffer.from([...Buffer.from('ICC_PROFILE\0', 'latin1'), i + 1, count]);
    return segmentOf(0xe2, Buffer.concat([name, profile.subarray(i * iccPieceBytes, (i + 1) * iccPieceBytes)]));
  });
}

/**
 * APP0 JFIF, rebuilt from its fields: version 1.0x, density units (0-2) and densities, and no
 * thumbnail (an uncompressed one can follow the 14 header bytes: its pixels go).
 */
function jfifWithoutThumbnail(payload: Buffer, removed: Removed): Buffer {
  if (payload.length < 14) throw reject.corrupt('JPEG', 'short JFIF header');
  const thumbnailBytes = payload.length - 14;
  if (thumbnailBytes > 0 || payload[12] !== 0 || payload[13] !== 0) countRemoved(removed, 'thumbnail');
  const segment = Buffer.alloc(4 + 14);
  segment.writeUInt16BE(0xffe0, 0);
  segment.writeUInt16BE(2 + 14, 2);
  segment.write('JFIF\0', 4, 'latin1');
  segment[9] = 1;
  segment[10] = payload[6]! <= 2 ? payload[6]! : 1;
  segment[11] = payload[7]! <= 2 ? payload[7]! : 0;
  segment.writeUInt16BE(payload.readUInt16BE(8) || 1, 12);
  segment.writeUInt16BE(payload.readUInt16BE(10) || 1, 14);
  // Xthumbnail = Ythumbnail = 0 (already zero from alloc).
  return segment;
}

/**
 * APP14 "Adobe" as the DCT filters write it: version 100, no flags, then the colour transform
 * (0 none/CMYK, 1 YCbCr, 2 YCCK). The only byte of it a decoder reads is the transform.
 */
export function adobeApp14(transform: number): Buffer {
  const segment = Buffer.from([0xff, 0xee, 0x00, 0x0e, 0x41, 0x64, 0x6f, 0x62, 0x65, 0x00, 0x64, 0x00, 0x00, 0x00, 0x00, 0x00]);
  segment[15] = transform;
  return segment;
}

function orientationApp1(orientation: number): Buffer {
  const tiff = minimalOrientationTiff(orientation);
  const header = Buffer.alloc(4 + 6);
  header.writeUInt16BE(0xffe1, 0);
  header.writeUInt16BE(2 + 6 + tiff.length, 2);
  header.write('Exif\0\0', 4, 'latin1');
  return Buffer.concat([header, tiff]);
}
