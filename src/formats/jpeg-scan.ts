/**
 * Where a JPEG scan's coded data ends (T.81 Annex F, G, H): the entropy decoder run over a scan
 * for its code lengths only, no coefficients or pixels, so that what follows the last MCU of
 * each restart interval is known. Text appended to a scan sits after the last MCU, where every
 * viewer skips it (THREATS 37, issue 26); this walk is what tells it from picture data.
 *
 * The walk yields the scan in canonical form: each restart interval cut where its last MCU ends,
 * the unused bits of its last byte set to 1 (the fill T.81 F.1.2.3 prescribes), the restart
 * markers in order, and nothing before the next marker. A canonical scan decodes exactly as the
 * input's: every bit a decoder reads is the input's.
 *
 * Huffman coding only (baseline, extended, progressive and lossless). Arithmetic-coded and
 * hierarchical JPEGs are refused: no camera, phone or editor writes them, and an arithmetic
 * decoder's end cannot be told from the bytes without its full model.
 *
 * Linear in the scan's bytes and MCUs; the MCUs are bounded by the frame's pixels, and the work
 * across all scans by a budget per frame (a progressive file of thousands of scans, each walking
 * every block, is how a small file freezes a decoder).
 */
import { reject } from '../errors.js';
import { WorkBudget } from './work-budget.js';

export interface JpegFrame {
  coding: 'sequential' | 'progressive' | 'lossless';
  /** Bits per sample (8 for every camera JPEG; 12 and 16 exist). */
  precision: number;
  width: number;
  height: number;
  components: Array<{ id: number; h: number; v: number }>;
  hMax: number;
  vMax: number;
}

/** The frame a SOFn header describes; refuses the codings this walk does not cover. */
export function readFrame(marker: number, payload: Buffer): JpegFrame {
  if (marker >= 0xc9) throw reject.structure('JPEG', 'arithmetic-coded scans');
  if (marker >= 0xc5) throw reject.structure('JPEG', 'a hierarchical (differential) frame');
  const count = payload[5] ?? 0;
  if (payload.length < 6 + 3 * count || count === 0) throw reject.corrupt('JPEG', 'short frame header');
  const components = Array.from({ length: count }, (_, i) => ({ id: payload[6 + 3 * i]!, h: payload[7 + 3 * i]! >> 4, v: payload[7 + 3 * i]! & 15 }));
  if (components.some((c) => c.h < 1 || c.h > 4 || c.v < 1 || c.v > 4)) throw reject.corrupt('JPEG', 'a sampling factor outside 1–4');
  const height = payload.readUInt16BE(1);
  const width = payload.readUInt16BE(3);
  // A zero height is given later by a DNL marker; no writer in use does that.
  if (height === 0) throw reject.structure('JPEG', 'a height given by a DNL marker');
  if (width === 0) throw reject.corrupt('JPEG', 'a frame of width 0');
  const coding = marker === 0xc2 ? 'progressive' : marker === 0xc3 ? 'lossless' : 'sequential';
  return { coding, precision: payload[0]!, width, height, components, hMax: Math.max(...components.map((c) => c.h)), vMax: Math.max(...components.map((c) => c.v)) };
}

/**
 * A Huffman table's decoding tables (T.81 C, F.2.2.3): codes of up to 9 bits by a 512-entry
 * lookup of length << 8 | symbol (most codes; small enough to stay in cache), longer ones by the
 * largest code of each length.
 */
export interface HuffmanTable {
  fast: Uint16Array;
  /**
   * The sequential walk's shortcut: for the next `skipBits` bits, when a code and its extra bits
   * fit in them, how many bits they take (low 5 bits), an AC code's zero run (next 4) and whether
   * it ends the block (`endOfBlock`); 0 when they do not fit. The walk needs where each
   * coefficient ends, never its value, so it takes both in one step.
   */
  skip: Uint16Array;
  /** AC tables, made when a sequential scan first uses them: see `acRunsOf`. */
  runs?: Uint16Array;
  /** The DHT table's bytes, as `acRunsOf` finds tables it made before. */
  source: string;
  maxCode: Int32Array;
  /** Per length, the index in `symbols` of its first code, less that code. */
  offset: Int32Array;
  symbols: Buffer;
}

const fastBits = 9;
const skipBits = 12;
const skipMask = (1 << skipBits) - 1;
const endOfBlock = 1 << 9;

/** The decoding tables of a DHT table: its class/id byte, 16 counts, then its symbols. */
export function huffmanLookup(table: Buffer): HuffmanTable {
  const fast = new Uint16Array(1 << fastBits);
  const skip = new Uint16Array(1 << skipBits);
  const isAc = table[0]! >> 4 === 1;
  const maxCode = new Int32Array(17).fill(-1);
  const offset = new Int32Array(17);
  const symbols = table.subarray(17);
  let code = 0;
  let at = 0;
  for (let length = 1; length <= 16; length++) {
    const count = table[length]!;
    offset[length] = at - code;
    for (let n = 0; n < count; n++, code++, at++) {
      if (code >= 1 << length) throw reject.corrupt('JPEG', 'a Huffman table with more codes than its lengths allow');
      const symbol = symbols[at]!;
      if (length <= fastBits) fast.fill((length << 8) | symbol, code << (fastBits - length), (code + 1) << (fastBits - length));
      // DC: the symbol is the number of extra bits (16: none, lossless's 32768; above: invalid,
      // left to the slow path, which refuses it). AC: run and size, EOB for a size of 0 but ZRL.
      const extra = isAc ? symbol & 15 : symbol === 16 ? 0 : symbol;
      const entry = isAc ? (length + extra) | ((symbol >> 4) << 5) | (extra === 0 && symbol !== 0xf0 ? endOfBlock : 0) : length + extra;
      if (length + extra <= skipBits && (isAc || symbol <= 16)) skip.fill(entry, code << (skipBits - length), (code + 1) << (skipBits - length));
    }
    if (count > 0) maxCode[length] = code - 1;
    code <<= 1;
  }
  return { fast, skip, maxCode, offset, symbols, source: table.toString('latin1') };
}

const runBits = 16;
const runMask = (1 << runBits) - 1;
const runEnds = 1 << 12;

/**
 * The sequential walk's AC shortcut: for the next `runBits` bits, as many whole codes with their
 * extra bits as fit in them, taken greedily up to the first end of block: the bits they take (low
 * 5 bits), how many coefficient positions they take (next 7; at most 64, an end of block counting
 * one) and whether the last one ends the block (`runEnds`); 127 positions when not even one fits,
 * so that one test, index + positions <= 64, says whether the step may be taken. A photo's AC
 * codes and extra bits average a few bits each, so one lookup takes three or four of them.
 */
function acRunsOf(table: HuffmanTable): Uint16Array {
  if (table.runs) return table.runs;
  const made = madeRuns.get(table.source);
  if (made) return (table.runs = made);
  const runs = new Uint16Array(1 << runBits);
  const skip = table.skip;
  for (let window = 0; window <= runMask; window++) {
    let used = 0;
    let advance = 0;
    let ends = 0;
    for (;;) {
      const left = runBits - used;
      // The next skipBits bits of the window (zeros past its end: a step using them does not fit).
      const next = left >= skipBits ? (window >> (left - skipBits)) & skipMask : (window << (skipBits - left)) & skipMask;
      const quick = skip[next]!;
      if (quick === 0 || (quick & 31) > left) break;
      if (quick & endOfBlock) {
        used += quick & 31;
        ends = runEnds;
        break;
      }
      const step = ((quick >> 5) & 15) + 1;
      if (advance + step > 64) break;
      used += quick & 31;
      advance += step;
    }
    runs[window] = used === 0 ? 127 << 5 : used | ((advance + (ends ? 1 : 0)) << 5) | ends;
  }
  // Most photos of a batch or a service come from a few encoders, which use the same tables.
  madeRuns.set(table.source, runs);
  if (madeRuns.size > keptRuns) madeRuns.delete(madeRuns.keys().next().value!);
  return (table.runs = runs);
}

/**
 * The run tables made last, by their DHT table's bytes: 128 KiB each, ~1 ms to make once
 * compiled (~40 ms the first time).
 */
const madeRuns = new Map<string, Uint16Array>();
const keptRuns = 8;

/** The run table of a unit the sequential walk reads no AC for (lossless), or that it does not walk (progressive). */
const emptyRuns = new Uint16Array(0);

/** What the walk of a frame's scans carries from one scan to the next. */
export class FrameWalk {
  /** Progressive AC: which coefficients of each block are already non-zero, 64 bits a block. */
  private readonly nonZero: Uint32Array[] = [];
  readonly budget: WorkBudget;

  constructor(readonly frame: JpegFrame) {
    this.budget = frameBudget(frame);
  }

  /** Progressive: per component, the point transform each coefficient was last coded to (-1: not yet). */
  private readonly coded: Int8Array[] = [];

  /**
   * A scan's place in the frame's sequence, as libjpeg checks it (T.81 G.1.1.1): sequential scans
   * code everything at once; a progressive band needs the DC coefficients first, and a refinement
   * of a coefficient follows the pass that left it at that precision. libjpeg decodes a file that
   * breaks this with a warning, into wrong pixels; it is corrupt here.
   */
  sequence(scan: ScanHeader): void {
    const { frame } = this;
    if (frame.coding !== 'progressive') {
      if (frame.coding === 'sequential' && (scan.ss !== 0 || scan.se !== 63 || scan.ah !== 0 || scan.al !== 0)) throw reject.corrupt('JPEG', 'a sequential scan with progressive parameters');
      return;
    }
    const band = scan.ss === 0 ? scan.se === 0 : scan.ss <= scan.se && scan.se <= 63 && scan.components.length === 1;
    if (!band || (scan.ah !== 0 && scan.al !== scan.ah - 1) || scan.al > 13) throw reject.corrupt('JPEG', 'a progressive scan header out of range');
    for (const c of scan.components) {
      const coded = (this.coded[c.index] ??= new Int8Array(64).fill(-1));
      if (scan.ss > 0 && coded[0]! < 0) throw reject.corrupt('JPEG', 'an AC scan before its DC scan');
      for (let k = scan.ss; k <= scan.se; k++) {
        if (scan.ah !== Math.max(0, coded[k]!)) throw reject.corrupt('JPEG', 'a progressive scan out of sequence');
        coded[k] = scan.al;
      }
    }
  }

  history(component: number): Uint32Array {
    const { x, y } = blocksOf(this.frame, this.frame.components[component]!);
    return (this.nonZero[component] ??= new Uint32Array(2 * x * y));
  }

  /**
   * Each component's DC coefficients in its grid of blocks (padded to whole MCUs), once
   * `collectDc` asked for them: the picture at 1/8 scale, which is all a preview needs. An 8-bit
   * DCT frame only.
   */
  dc: Array<{ width: number; height: number; values: Int16Array }> | undefined;

  /** Asks for the DC planes; not for frames over `dcPixelsAtMost`, whose preview is decoded. */
  collectDc(): void {
    const { frame } = this;
    if (frame.precision !== 8 || frame.coding === 'lossless' || frame.width * frame.height > dcPixelsAtMost) return;
    const mcus = { x: Math.ceil(frame.width / (8 * frame.hMax)), y: Math.ceil(frame.height / (8 * frame.vMax)) };
    this.dc = frame.components.map((c) => ({ width: mcus.x * c.h, height: mcus.y * c.v, values: new Int16Array(mcus.x * c.h * mcus.y * c.v) }));
  }

  /**
   * Where a scan's blocks of a component go in its DC plane: MCU `g` lies in row g / across,
   * column g % across; its block b at (row * v + b / h, column * h + b % h) when the scan is
   * interleaved, else (one block an MCU) at (row, column). Undefined when DC is not collected.
   */
  dcLayout(scan: ScanHeader, component: number): DcLayout | undefined {
    const plane = this.dc?.[component];
    if (!plane) return undefined;
    const { frame } = this;
    const c = frame.components[component]!;
    if (scan.components.length === 1) return { plane: plane.values, stride: plane.width, across: blocksOf(frame, c).x, h: 1, v: 1, blocks: Int32Array.of(0) };
    const blocks = Int32Array.from({ length: c.h * c.v }, (_, b) => Math.floor(b / c.h) * plane.width + (b % c.h));
    return { plane: plane.values, stride: plane.width, across: Math.ceil(frame.width / (8 * frame.hMax)), h: c.h, v: c.v, blocks };
  }

  /**
   * The picture at 1/8 scale from the DC coefficients collected, as libjpeg's 1/8 decode makes
   * it (a block's mean: its DC times its quantiser over 8, plus 128), chroma repeated over the
   * blocks it covers and YCbCr turned to RGB. `quantDc`: each component's DC quantiser; `colour`:
   * how 3 components are coded. Undefined without a DC plane for each of 1 or 3 components.
   */
  dcPicture(quantDc: number[], colour: 'ycbcr' | 'rgb'): { width: number; height: number; channels: 1 | 3; pixels: Buffer } | undefined {
    const { frame, dc } = this;
    const channels = frame.components.length;
    if (!dc || (channels !== 1 && channels !== 3) || quantDc.length !== channels) return undefined;
    const width = Math.ceil(frame.width / 8);
    const height = Math.ceil(frame.height / 8);
    const pixels = Buffer.alloc(width * height * channels);
    // Per component, the plane column under each picture column; per row, the plane row's start.
    const columns = frame.components.map((c) => Int32Array.from({ length: width }, (_, x) => Math.floor((x * c.h) / frame.hMax)));
    const scale = quantDc.map((q) => q / 8);
    const byte = (v: number): number => (v <= 0 ? 0 : v >= 255 ? 255 : (v + 0.5) | 0);
    for (let y = 0, out = 0; y < height; y++) {
      const rows = frame.components.map((c, i) => Math.floor((y * c.v) / frame.vMax) * dc[i]!.width);
      if (channels === 1) {
        const [values, row, column, q] = [dc[0]!.values, rows[0]!, columns[0]!, scale[0]!];
        for (let x = 0; x < width; x++) pixels[out++] = byte(values[row + column[x]!]! * q + 128);
        continue;
      }
      const [v0, v1, v2] = [dc[0]!.values, dc[1]!.values, dc[2]!.values];
      const [r0, r1, r2] = rows as [number, number, number];
      const [c0, c1, c2] = columns as [Int32Array, Int32Array, Int32Array];
      const [q0, q1, q2] = scale as [number, number, number];
      for (let x = 0; x < width; x++) {
        const a = v0[r0 + c0[x]!]! * q0 + 128;
        const b = v1[r1 + c1[x]!]! * q1;
        const c = v2[r2 + c2[x]!]! * q2;
        if (colour === 'rgb') {
          pixels[out++] = byte(a);
          pixels[out++] = byte(b + 128);
          pixels[out++] = byte(c + 128);
        } else {
          // JFIF's YCbCr to RGB (b and c are already centred on 0).
          pixels[out++] = byte(a + 1.402 * c);
          pixels[out++] = byte(a - 0.344136 * b - 0.714136 * c);
          pixels[out++] = byte(a + 1.772 * b);
        }
      }
    }
    return { width, height, channels, pixels };
  }
}

/** See FrameWalk.dcLayout; `blocks`: each block's place in the plane from its MCU's first. */
interface DcLayout {
  plane: Int16Array;
  stride: number;
  across: number;
  h: number;
  v: number;
  blocks: Int32Array;
}

/** Where the first block of MCU `mcu` goes in a DC plane. */
const dcAt = (layout: DcLayout, mcu: number): number => {
  const row = (mcu / layout.across) | 0;
  return row * layout.v * layout.stride + (mcu - row * layout.across) * layout.h;
};

/** The largest frame whose DC planes are collected (2 bytes a block a component: ~3 MB at 100 MP). */
const dcPixelsAtMost = 100_000_000;

/** A DC difference from its size category and extra bits (T.81 F.2.2.1, EXTEND). */
const extend = (bits: number, size: number): number => (size === 0 ? 0 : bits < 1 << (size - 1) ? bits - (1 << size) + 1 : bits);

/**
 * The work a frame's scans may cost, in coefficient positions visited: a real progressive file
 * visits each a few times (about 200 per block for libjpeg's default script); 512 per block
 * leaves room and stops a file of thousands of scans that each walk every block.
 */
export function frameBudget(frame: JpegFrame): WorkBudget {
  const blocks = frame.components.reduce((sum, c) => sum + blocksOf(frame, c).x * blocksOf(frame, c).y, 0);
  return new WorkBudget('JPEG', 512 * blocks + 1_000_000);
}

/** What walking a scan costs against `frameBudget`, known from the headers alone. */
export function scanCost(frame: JpegFrame, scan: ScanHeader): number {
  const blocksPerMcu = scan.components.length > 1 ? scan.components.reduce((sum, c) => sum + frame.components[c.index]!.h * frame.components[c.index]!.v, 0) : 1;
  const positions = frame.coding === 'progressive' ? scan.se - scan.ss + 1 : frame.coding === 'sequential' ? 64 : 1;
  return scanMcus(frame, scan) * blocksPerMcu * positions;
}

/** A component's blocks (or samples, for lossless) when its scan is not interleaved (T.81 A.2). */
function blocksOf(frame: JpegFrame, c: { h: number; v: number }): { x: number; y: number } {
  const unit = frame.coding === 'lossless' ? 1 : 8;
  return { x: Math.ceil(Math.ceil((frame.width * c.h) / frame.hMax) / unit), y: Math.ceil(Math.ceil((frame.height * c.v) / frame.vMax) / unit) };
}

export interface ScanHeader {
  /** Per scan component: its index in the frame and its DC and AC table selectors. */
  components: Array<{ index: number; dc: number; ac: number }>;
  ss: number;
  se: number;
  ah: number;
  al: number;
}

export function readScanHeader(frame: JpegFrame, sos: Buffer): ScanHeader {
  const count = sos[0] ?? 0;
  if (count === 0 || count > 4 || sos.length < 4 + 2 * count) throw reject.corrupt('JPEG', 'short scan header');
  const components = Array.from({ length: count }, (_, i) => {
    const index = frame.components.findIndex((c) => c.id === sos[1 + 2 * i]);
    if (index < 0) throw reject.corrupt('JPEG', 'a scan names a component the frame does not have');
    return { index, dc: sos[2 + 2 * i]! >> 4, ac: sos[2 + 2 * i]! & 15 };
  });
  // libjpeg's limit on the blocks of an interleaved MCU (T.81 B.2.3 allows no more than 10).
  if (count > 1 && frame.coding !== 'lossless' && components.reduce((sum, c) => sum + frame.components[c.index]!.h * frame.components[c.index]!.v, 0) > 10) {
    throw reject.corrupt('JPEG', 'more than 10 blocks in an MCU');
  }
  const approximation = sos[3 + 2 * count]!;
  return { components, ss: sos[1 + 2 * count]!, se: sos[2 + 2 * count]!, ah: approximation >> 4, al: approximation & 15 };
}

/** How many MCUs a scan codes (T.81 A.2): the frame's in an interleaved scan, else its component's blocks. */
export function scanMcus(frame: JpegFrame, scan: ScanHeader): number {
  const unit = frame.coding === 'lossless' ? 1 : 8;
  if (scan.components.length > 1) return Math.ceil(frame.width / (unit * frame.hMax)) * Math.ceil(frame.height / (unit * frame.vMax));
  const { x, y } = blocksOf(frame, frame.components[scan.components[0]!.index]!);
  return x * y;
}

/**
 * Where a scan's coded data ends, and whether its bytes show none of the signs of data past its
 * MCUs that can be seen without decoding it, in one pass over them (native searches from 0xFF to
 * 0xFF: a scan is most of a photo's bytes).
 *
 * `end` is the first 0xFF before the marker that follows the scan: stuffed bytes (FF00) and
 * restart markers are inside the scan, and the fill bytes a writer may put before a marker
 * (T.81 B.1.1.2) are not.
 *
 * `canonical`: each restart interval's last byte ends in a 1 bit (padding is 1 bits; a byte
 * with no padding ends in a 1 half the time), no fill bytes inside the scan or empty intervals,
 * and as many restart markers as the scan has intervals, in order. Text after the MCUs ends in a
 * 1 bit half the time too: this is a hint for when to walk, never a proof (the verifier walks
 * every scan).
 */
export function scanExtent(data: Buffer, from: number, frame: JpegFrame, scan: ScanHeader, restartInterval: number): { end: number; canonical: boolean } {
  const intervals = restartInterval > 0 ? Math.ceil(scanMcus(frame, scan) / restartInterval) : 1;
  let restarts = 0;
  let start = from;
  let canonical = true;
  for (let pos = from; ; ) {
    const { ff, at } = nextFf(data, pos);
    const code = data[at]!;
    const filled = at > ff + 1;
    const restart = code >= 0xd0 && code <= 0xd7;
    // Fill bytes inside the scan (before a stuffed byte or a restart); before the marker after
    // it they are the writer's, and are not copied.
    if (filled && (code === 0x00 || restart)) canonical = false;
    else if (code !== 0x00 && canonical) {
      // A marker (a restart, or the one after the scan): the byte before it closes an interval.
      const last = data[ff - 1]!;
      const stuffedFf = last === 0x00 && ff - 2 >= start && data[ff - 2] === 0xff;
      if (ff === start || last === 0xff || (!stuffedFf && (last & 1) === 0)) canonical = false;
      else if (restart ? code !== 0xd0 + (restarts & 7) : restarts !== intervals - 1) canonical = false;
    }
    if (code === 0x00) {
      pos = at + 1;
      continue;
    }
    if (!restart) return { end: ff, canonical };
    restarts++;
    start = pos = at + 1;
  }
}

export interface CodedScan {
  /** Where the marker that follows the scan starts. */
  end: number;
  /** The scan in canonical form, to write in place of [from, end). */
  pieces: Buffer[];
  /** The input's bytes already were the canonical form. */
  canonical: boolean;
}

/** Entropy-coded bytes read a bit at a time, stuffing removed; past a marker it reads zeros and counts them. */
class BitReader {
  acc = 0;
  bits = 0;
  /** Zero bytes read past the marker that ends the data. */
  padding = 0;
  atMarker = false;

  constructor(
    readonly data: Buffer,
    /** Where this interval's data starts, and the next byte to read. */
    readonly start: number,
    public pos: number = start,
  ) {}

  fill(): void {
    const data = this.data;
    while (this.bits < 16) {
      // At most 23 bits are held, so the accumulator stays a small integer (no heap numbers).
      let byte = 0;
      if (this.atMarker) this.padding++;
      else {
        const p = this.pos;
        byte = p < data.length ? data[p]! : 0xff;
        if (byte !== 0xff) this.pos = p + 1;
        else if (data[p + 1] === 0x00) this.pos = p + 2;
        else {
          this.atMarker = true;
          this.padding++;
          byte = 0;
        }
      }
      this.acc = ((this.acc & ((1 << this.bits) - 1)) << 8) | byte;
      this.bits += 8;
    }
  }

  /**
   * Where the byte holding the last bit read starts, and how many bits of it were not read; the
   * start of the interval when nothing was read. Found by stepping back from the next byte to
   * read over the whole bytes still held (a stuffed 0xFF is the only byte followed by 0x00 there).
   */
  lastByte(): { at: number; spare: number } {
    const unread = this.bits - this.padding * 8;
    if (unread < 0) throw reject.corrupt('JPEG', 'scan data ends before its last MCU');
    const back = (q: number): number => (q - 2 >= this.start && this.data[q - 1] === 0x00 && this.data[q - 2] === 0xff ? q - 2 : q - 1);
    let end = this.pos;
    for (let i = unread >> 3; i > 0; i--) end = back(end);
    return end === this.start ? { at: -1, spare: 0 } : { at: back(end), spare: unread & 7 };
  }

  /** The next Huffman symbol of `table`. */
  symbol(table: HuffmanTable): number {
    if (this.bits < 16) this.fill();
    const entry = table.fast[(this.acc >> (this.bits - fastBits)) & ((1 << fastBits) - 1)]!;
    if (entry !== 0) {
      this.bits -= entry >> 8;
      return entry & 0xff;
    }
    for (let length = fastBits + 1; length <= 16; length++) {
      const code = (this.acc >> (this.bits - length)) & ((1 << length) - 1);
      if (code <= table.maxCode[length]!) {
        this.bits -= length;
        return table.symbols[table.offset[length]! + code]!;
      }
    }
    throw reject.corrupt('JPEG', 'scan data holds a code its Huffman table does not define');
  }

  skip(n: number): void {
    if (this.bits < n) this.fill();
    this.bits -= n;
  }

  take(n: number): number {
    if (n === 0) return 0;
    if (this.bits < n) this.fill();
    this.bits -= n;
    return (this.acc >>> this.bits) & ((1 << n) - 1);
  }

  /** Throws if the walk has read past the data, into the zeros after its marker. */
  checkInside(): void {
    if (this.bits < this.padding * 8) throw reject.corrupt('JPEG', 'scan data ends before its last MCU');
  }
}

/**
 * The next marker at or after `from` in entropy-coded data, skipping stuffed bytes (FF00) and,
 * with `overRestarts`, restart markers: `fill` is its first 0xFF, `at` the 0xFF just before its
 * code (they differ by the fill bytes a writer may put before a marker, T.81 B.1.1.2).
 */
export function findMarker(data: Buffer, from: number, overRestarts: boolean): { fill: number; at: number } {
  for (let pos = from; ; ) {
    const { ff, at } = nextFf(data, pos);
    const code = data[at]!;
    if (code !== 0x00 && !(overRestarts && code >= 0xd0 && code <= 0xd7)) return { fill: ff, at: at - 1 };
    pos = at + 1;
  }
}

/**
 * In entropy-coded data, the next 0xFF at or after `pos` (`ff`) and the byte after it and any fill
 * bytes that follow it (`at`): 0x00 for a stuffed 0xFF, else a marker's code.
 */
function nextFf(data: Buffer, pos: number): { ff: number; at: number } {
  const ff = data.indexOf(0xff, pos);
  if (ff < 0 || ff + 1 >= data.length) throw reject.corrupt('JPEG', 'scan data is truncated (no end-of-image)');
  let at = ff + 1;
  while (at < data.length && data[at] === 0xff) at++;
  if (at >= data.length) throw reject.corrupt('JPEG', 'scan data is truncated (no end-of-image)');
  return { ff, at };
}

/**
 * Walks the scan whose coded data starts at `from`, and returns its canonical form. `huffman`
 * gives a defined table by class (0 DC, 1 AC) and id; `restartInterval` is the DRI in force.
 */
export function walkScan(
  data: Buffer,
  from: number,
  walk: FrameWalk,
  scan: ScanHeader,
  huffman: (tableClass: number, id: number) => HuffmanTable | undefined,
  restartInterval: number,
): CodedScan {
  const { frame } = walk;
  const table = (tableClass: number, id: number): HuffmanTable => {
    const found = huffman(tableClass, id);
    if (!found) throw reject.corrupt('JPEG', 'a scan uses a Huffman table that is not defined');
    return found;
  };
  const progressive = frame.coding === 'progressive';
  // Which tables the scan reads: sequential DCT both; lossless its DC (difference) table only;
  // progressive its DC table on a first DC pass and its AC table on AC passes.
  const usesDc = !progressive || (scan.ss === 0 && scan.ah === 0);
  const acScan = progressive ? scan.ss > 0 : frame.coding === 'sequential';
  walk.sequence(scan);
  const units = scan.components.map((c) => {
    const component = frame.components[c.index]!;
    const interleaved = scan.components.length > 1;
    return {
      index: c.index,
      blocksPerMcu: interleaved ? component.h * component.v : 1,
      dc: usesDc ? table(0, c.dc) : undefined,
      ac: acScan ? table(1, c.ac) : undefined,
      runs: frame.coding === 'sequential' ? acRunsOf(table(1, c.ac)) : emptyRuns,
      layout: scan.ss === 0 ? walk.dcLayout(scan, c.index) : undefined,
    };
  });
  const mcus = scanMcus(frame, scan);
  walk.budget.spend(scanCost(frame, scan));
  const history = progressive && scan.ss > 0 ? walk.history(units[0]!.index) : undefined;
  const interval = restartInterval > 0 ? restartInterval : mcus;

  const pieces: Buffer[] = [];
  let canonical = true;
  let bits = new BitReader(data, from);
  let intervalStart = from;
  let eobRun = 0;
  // The DC predictors, when DC values are collected; each interval codes its differences afresh.
  const predictors = new Int32Array(units.length);
  for (let mcu = 0; mcu < mcus; ) {
    const last = Math.min(mcus, mcu + interval);
    predictors.fill(0);
    if (!progressive) {
      sequentialMcus(bits, units, last - mcu, mcu, predictors);
      mcu = last;
    }
    for (; mcu < last; mcu++) {
      for (let i = 0; i < units.length; i++) {
        const u = units[i]!;
        for (let b = 0; b < u.blocksPerMcu; b++) {
          if (scan.ss === 0) {
            // Progressive DC: a difference on the first pass, one bit on each refinement.
            if (!u.layout) {
              if (scan.ah === 0) bits.skip(bits.symbol(u.dc!));
              else bits.skip(1);
              continue;
            }
            const at = dcAt(u.layout, mcu) + u.layout.blocks[b]!;
            if (scan.ah === 0) {
              const size = bits.symbol(u.dc!);
              predictors[i]! += extend(bits.take(size), size);
              u.layout.plane[at] = predictors[i]! * (1 << scan.al);
            } else if (bits.take(1)) {
              u.layout.plane[at]! |= 1 << scan.al;
            }
          } else if (scan.ah === 0) {
            eobRun = acFirst(bits, u.ac!, scan, history!, mcu, eobRun);
          } else {
            eobRun = acRefine(bits, u.ac!, scan, history!, mcu, eobRun);
          }
        }
      }
      bits.checkInside();
    }

    // The interval's coded data ends in the byte holding its last bit.
    const { at, spare } = bits.lastByte();
    let codedEnd = intervalStart;
    if (at >= 0) {
      const byte = data[at]!;
      const filled = byte | ((1 << spare) - 1);
      codedEnd = at + (byte === 0xff ? 2 : 1);
      if (filled !== byte) {
        canonical = false;
        pieces.push(data.subarray(intervalStart, at), Buffer.from(filled === 0xff ? [0xff, 0x00] : [filled]));
      } else {
        pieces.push(data.subarray(intervalStart, codedEnd));
      }
    }
    const marker = findMarker(data, codedEnd, false).at;
    if (marker !== codedEnd) canonical = false;
    if (mcu < mcus) {
      const expected = 0xd0 + (((mcu / interval) - 1) & 7);
      if (data[marker + 1] !== expected) throw reject.corrupt('JPEG', 'a restart marker is missing or out of order');
      pieces.push(data.subarray(marker, marker + 2));
      intervalStart = marker + 2;
      bits = new BitReader(data, intervalStart);
      eobRun = 0;
      continue;
    }
    // After the last MCU: restart markers with nothing to restart, and whatever lies between, go.
    let end = marker;
    while (data[end + 1]! >= 0xd0 && data[end + 1]! <= 0xd7) {
      canonical = false;
      end = findMarker(data, end + 2, false).at;
    }
    return { end, pieces: canonical ? [data.subarray(from, end)] : pieces, canonical };
  }
  throw reject.corrupt('JPEG', 'a scan with no MCUs');
}

interface Unit {
  blocksPerMcu: number;
  dc: HuffmanTable | undefined;
  ac: HuffmanTable | undefined;
  /** The sequential walk's AC run table (`acRunsOf`); empty where no AC is coded. */
  runs: Uint16Array;
  /** Where the DC coefficients go, when they are collected (FrameWalk.collectDc). */
  layout: DcLayout | undefined;
}

/**
 * Sequential and lossless MCUs: per block a DC (or sample) difference, then, for DCT, up to 63 AC
 * coefficients, each a Huffman code and that many extra bits. This is where a photo's time goes,
 * so the bit state lives in locals (V8 keeps them in registers) and is refilled in line, two
 * bytes a step where it can, to at least 16 bits: the most `acRunsOf` looks at, and as long as a
 * code gets; a code whose extra bits do not fit too takes a second round. (A 12 MP, 4.9 MB photo
 * here: 67 ms a code at a time, 45 with `acRunsOf`, 39 with two bytes a refill, ~35 with one
 * test a run step and one a refill, ~31 with the run steps in a loop of their own; libjpeg-turbo's
 * scaled decode of it takes 47. A WebAssembly version of this function measured ~31 too.) What
 * sets the pace is the chain of operations from one step's bits to the next step's lookup, not
 * the lookup's load: a 12-bit run table (8 KiB, always in L1) took as long as the 128 KiB one.
 * So the bits are held left-aligned: a step is a shift to look up, a load, and a shift to take,
 * with no mask (8-11 % faster than bits right-aligned, in turns on the same photos). Each
 * block's DC difference is taken in one step before its AC runs: through the general path
 * below, it cost a dozen tests a block (4-9 % more, collecting DC or not). Tried and dropped
 * (issue 30, measured on the same photos in turns): a refill without a branch (masks instead of
 * `bits < 16`; 1.3x faster in a bare loop of run steps, no faster here); and a second chain
 * walking from the middle of the scan in the same loop, joined to the first where an MCU of each
 * starts at the same bit (they always met, yet a photo took 1.3x as long). That loop took a step
 * of each chain per turn, and with the second chain off it was as slow: the nesting below, with
 * its own loop for runs of AC codes, is worth more than a second chain gained.
 */
function sequentialMcus(reader: BitReader, units: Unit[], count: number, firstMcu: number, predictors: Int32Array): void {
  const data = reader.data;
  const length = data.length;
  let { bits, pos, padding, atMarker } = reader;
  // The bits held, left-aligned: the next one to read is bit 31, so peeking n bits is one shift
  // and taking them another (no mask on the chain from one code to the next).
  let acc = bits === 0 ? 0 : (reader.acc & ((1 << bits) - 1)) << (32 - bits);
  // Pairs are read while pos + 1 < pairsBefore: not past the data, nor past a marker reached.
  let pairsBefore = atMarker ? 0 : length;
  for (let m = 0; m < count; m++) {
    for (let u = 0; u < units.length; u++) {
      const unit = units[u]!;
      const dc = unit.dc!;
      const ac = unit.ac;
      const runs = unit.runs;
      const layout = unit.layout;
      const plane = layout?.plane;
      const first = layout ? dcAt(layout, firstMcu + m) : 0;
      for (let b = 0; b < unit.blocksPerMcu; b++) {
        // k: the coefficient read next, 0 the DC difference; `next`: what k becomes after a code
        // and its `extra` bits.
        let k = 0;
        let table = dc;
        if (ac) {
          // The block's DC difference in one step when its code and extra bits are in the bits
          // held (nearly always), then straight on to the AC runs; otherwise the general path.
          if (bits < 16 && pos + 1 < pairsBefore) {
            const pair = (data[pos]! << 8) | data[pos + 1]!;
            if ((pair & 0xff00) !== 0xff00 && (pair & 0xff) !== 0xff) {
              acc |= pair << (16 - bits);
              bits += 16;
              pos += 2;
            }
          }
          if (bits >= 16) {
            if (!plane) {
              const quick = dc.skip[acc >>> (32 - skipBits)]!;
              if (quick !== 0) {
                acc <<= quick & 31;
                bits -= quick & 31;
                k = 1;
              }
            } else {
              // Collected: its size category from the code, then its value from the extra bits.
              const entry = dc.fast[acc >>> (32 - fastBits)]!;
              const size = entry & 0xff;
              if (entry !== 0 && size < 16 && (entry >> 8) + size <= bits) {
                acc <<= entry >> 8;
                predictors[u]! += extend(size === 0 ? 0 : acc >>> (32 - size), size);
                plane[first + layout!.blocks[b]!] = predictors[u]!;
                acc <<= size;
                bits -= (entry >> 8) + size;
                k = 1;
              }
            }
            if (k === 1) table = ac;
          }
        }
        for (;;) {
          if (k !== 0) {
            // The common case in a loop of its own, small enough for V8 to keep in registers:
            // runs of AC codes while they fit in the block and two bytes refill the bits.
            for (;;) {
              if (bits < 16) {
                if (pos + 1 >= pairsBefore) break;
                const pair = (data[pos]! << 8) | data[pos + 1]!;
                if ((pair & 0xff00) === 0xff00 || (pair & 0xff) === 0xff) break;
                acc |= pair << (16 - bits);
                bits += 16;
                pos += 2;
              }
              const run = runs[acc >>> (32 - runBits)]!;
              const to = k + ((run >> 5) & 127);
              if (to > 64) break;
              acc <<= run & 31;
              bits -= run & 31;
              k = run & runEnds ? 64 : to;
              if (k >= 64) break;
            }
            if (k >= 64) break;
          }
          // Two rounds at most: a code, then (rarely) a refill for a long code's extra bits.
          let extra = -1;
          let next = 0;
          for (;;) {
            while (bits < 16) {
              // Two bytes in one step when neither is 0xFF (no stuffing, no marker): most of them.
              if (pos + 1 < pairsBefore) {
                const pair = (data[pos]! << 8) | data[pos + 1]!;
                if ((pair & 0xff00) !== 0xff00 && (pair & 0xff) !== 0xff) {
                  acc |= pair << (16 - bits);
                  bits += 16;
                  pos += 2;
                  continue;
                }
              }
              let byte = 0;
              if (atMarker) padding++;
              else {
                byte = pos < length ? data[pos]! : 0xff;
                if (byte !== 0xff) pos++;
                else if (data[pos + 1] === 0x00) pos += 2;
                else {
                  atMarker = true;
                  pairsBefore = 0;
                  padding++;
                  byte = 0;
                }
              }
              acc |= byte << (24 - bits);
              bits += 8;
            }
            if (extra >= 0) break;
            // AC: several codes with their extra bits in one step, unless they would run past the
            // block's last coefficient (then one at a time, below): one test, as the table holds
            // how many positions the codes take (the end of block counting one).
            if (k !== 0) {
              const run = runs[acc >>> (32 - runBits)]!;
              if (k + ((run >> 5) & 127) <= 64) {
                acc <<= run & 31;
                bits -= run & 31;
                next = run & runEnds ? 64 : k + ((run >> 5) & 127);
                extra = 0;
                break;
              }
            }
            // Most codes and their extra bits fit in the next 12 bits: one step for both (but a DC
            // difference that is collected is read below).
            const quick = k === 0 && plane ? 0 : table.skip[acc >>> (32 - skipBits)]!;
            if (quick !== 0) {
              acc <<= quick & 31;
              bits -= quick & 31;
              next = k === 0 ? 1 : quick & endOfBlock ? 64 : k + ((quick >> 5) & 15) + 1;
              extra = 0;
              break;
            }
            let codeLength: number;
            let symbol: number;
            const entry = table.fast[acc >>> (32 - fastBits)]!;
            if (entry !== 0) {
              codeLength = entry >> 8;
              symbol = entry & 0xff;
            } else {
              for (codeLength = fastBits + 1; ; codeLength++) {
                if (codeLength > 16) throw reject.corrupt('JPEG', 'scan data holds a code its Huffman table does not define');
                const code = acc >>> (32 - codeLength);
                if (code <= table.maxCode[codeLength]!) {
                  symbol = table.symbols[table.offset[codeLength]! + code]!;
                  break;
                }
              }
            }
            acc <<= codeLength;
            bits -= codeLength;
            if (k === 0) {
              if (symbol > 16) throw reject.corrupt('JPEG', 'a DC difference out of range');
              extra = symbol === 16 ? 0 : symbol; // 16: lossless's difference of 32768, no extra bits
              next = 1;
            } else {
              extra = symbol & 15;
              next = extra === 0 && symbol !== 0xf0 ? 64 : k + (symbol >> 4) + 1; // 64: end of block
            }
            // At least 16 bits were held before the code: a long one, or one with many extra bits,
            // can leave too few, and takes a second round.
            if (bits >= extra) break;
          }
          if (k === 0 && plane) {
            predictors[u]! += extend(extra === 0 ? 0 : acc >>> (32 - extra), extra);
            plane[first + layout!.blocks[b]!] = predictors[u]!;
          }
          acc <<= extra;
          bits -= extra;
          if (next >= 64 || (next === 1 && !ac)) break;
          k = next;
          table = ac!;
        }
      }
    }
    if (bits < padding * 8) throw reject.corrupt('JPEG', 'scan data ends before its last MCU');
  }
  Object.assign(reader, { acc: bits === 0 ? 0 : acc >>> (32 - bits), bits, pos, padding, atMarker });
}

/** Tests and sets coefficient `k`'s bit in a block's 64-bit history. */
const isSet = (history: Uint32Array, block: number, k: number): boolean => (history[2 * block + (k >> 5)]! & (1 << (k & 31))) !== 0;
const set = (history: Uint32Array, block: number, k: number): void => void (history[2 * block + (k >> 5)]! |= 1 << (k & 31));

/** A first AC pass of a progressive scan over one block (T.81 G.1.2.2); returns the EOB run left. */
function acFirst(bits: BitReader, ac: HuffmanTable, scan: ScanHeader, history: Uint32Array, block: number, eobRun: number): number {
  if (eobRun > 0) return eobRun - 1;
  for (let k = scan.ss; k <= scan.se; k++) {
    const rs = bits.symbol(ac);
    const r = rs >> 4;
    const s = rs & 15;
    if (s !== 0) {
      k += r;
      bits.skip(s);
      if (k <= 63) set(history, block, k);
    } else if (r < 15) {
      return (1 << r) - 1 + bits.take(r);
    } else {
      k += 15;
    }
  }
  return 0;
}

/**
 * A refinement AC pass over one block (T.81 G.1.2.3): a correction bit for every coefficient
 * already non-zero, and new coefficients placed among the zero ones; returns the EOB run left.
 */
function acRefine(bits: BitReader, ac: HuffmanTable, scan: ScanHeader, history: Uint32Array, block: number, eobRun: number): number {
  let k = scan.ss;
  let run = eobRun;
  if (run === 0) {
    for (; k <= scan.se; k++) {
      const rs = bits.symbol(ac);
      let r = rs >> 4;
      const s = rs & 15;
      if (s !== 0) {
        if (s !== 1) throw reject.corrupt('JPEG', 'a refinement coefficient larger than one bit');
        bits.skip(1);
      } else if (r < 15) {
        run = (1 << r) + bits.take(r);
        break;
      }
      for (; k <= scan.se; k++) {
        if (isSet(history, block, k)) bits.skip(1);
        else if (--r < 0) break;
      }
      if (s !== 0 && k <= 63) set(history, block, k);
    }
  }
  if (run > 0) {
    for (; k <= scan.se; k++) if (isSet(history, block, k)) bits.skip(1);
    run--;
  }
  return run;
}
