/**
 * Finds any of many byte patterns in one pass over the data, so the value scan costs about the
 * same whether the input carried 3 metadata values or 3,000 (issue 3: "one pass over the bytes,
 * not one pass per value"). Streams are scanned chunk by chunk.
 *
 * A multi-pattern filter in the spirit of Wu–Manber: with m the shortest pattern length, any
 * occurrence covers m-1 consecutive byte-pair positions, so looking at every (m-1)th pair is
 * enough to notice it. A 64 K table says at which offsets (0..m-2) a pair occurs in some pattern's
 * first m bytes; only then is the text from the implied start walked through a hashed trie of
 * the patterns' prefixes (a set of prefix hashes), which stops at the first byte no pattern
 * continues with. On binary data almost no pair qualifies, so the scan touches about one pair per
 * m-1 bytes instead of every byte; a start costs at most the longest pattern's length however
 * many patterns share it; and the work is counted against a budget (THREATS 48). The tables are a
 * set of a few numbers per pattern byte (a dense trie grew to 16 MiB per scan).
 */

/** Longer values are matched on their first bytes: a leaked prefix is a leak too. */
export const maxPatternBytes = 64;
/** Shorter patterns are not scanned for: two bytes match everywhere in binary data. */
export const minPatternBytes = 3;
/** Offsets are bits of a 32-bit mask, so the sampling step is at most 31. */
const maxStep = 31;

export interface Match {
  /** Index, in the array given to the constructor, of the first pattern with these bytes. */
  pattern: number;
  /** Offset of the first byte of the match in the whole stream. */
  start: number;
}

/** FNV-1a over a pattern's bytes, one byte at a time: the walk below extends it as it reads. */
const fnvStart = 0x811c9dc5;
const fnvStep = (hash: number, byte: number): number => Math.imul(hash ^ byte, 0x01000193);
/** A prefix's key: its hash mixed with its length, so prefixes of different lengths rarely collide. */
const keyOf = (hash: number, length: number): number => (hash ^ Math.imul(length, 0x9e3779b1)) >>> 0;

/** What the hot loop looks things up in, built once per PatternSet. */
interface Tables {
  /** Byte pair (b0 << 8 | b1) → bit k set when some pattern has that pair at offset k < step. */
  pairs: Uint32Array;
  /** Pairs are sampled every `step` bytes (the shortest pattern's length minus one). */
  step: number;
  /** Keys of every prefix (3 bytes or longer) of every pattern: a hashed trie, walked byte by byte. */
  prefixes: Set<number>;
  /** Key of a whole pattern → the patterns with that key (more than one only on a hash collision). */
  whole: Map<number, number[]>;
  patterns: Buffer[];
  /** Unique pattern → its index in the caller's array. */
  ids: number[];
  longest: number;
}

/**
 * The scan's work budget, in bytes compared: a few per byte scanned plus a fixed allowance. Real
 * outputs use a small fraction of it (a sampled pair rarely starts a walk, and a walk stops at the
 * first byte no pattern shares); an output built to repeat the start of thousands of values
 * everywhere (THREATS 48: 490 KB of one letter against 5,000 values that begin with 40 of it) is
 * refused once it has cost this much, instead of holding the event loop for minutes.
 */
export const scanWorkPerByte = 8;
export const scanWorkAllowance = 8_000_000;

export class ScanBudgetExceeded extends Error {
  constructor() {
    super('the value scan needed more work than its budget');
    this.name = 'ScanBudgetExceeded';
  }
}

export class PatternSet {
  readonly size: number;
  private readonly tables: Tables;

  constructor(patterns: readonly Buffer[]) {
    const unique = new Map<string, [Buffer, number]>();
    patterns.forEach((p, id) => {
      const head = p.subarray(0, maxPatternBytes);
      const key = head.toString('hex');
      if (head.length >= minPatternBytes && !unique.has(key)) unique.set(key, [head, id]);
    });
    const kept = [...unique.values()].map(([head]) => head);
    const prefixes = new Set<number>();
    const whole = new Map<number, number[]>();
    kept.forEach((p, i) => {
      let hash = fnvStart;
      for (let length = 1; length <= p.length; length++) {
        hash = fnvStep(hash, p[length - 1]!);
        if (length >= minPatternBytes) prefixes.add(keyOf(hash, length));
      }
      const key = keyOf(hash, p.length);
      const list = whole.get(key);
      if (list) list.push(i);
      else whole.set(key, [i]);
    });
    const step = Math.min(maxStep, Math.min(Infinity, ...kept.map((p) => p.length)) - 1);
    const pairs = new Uint32Array(65536);
    for (const pattern of kept) {
      for (let k = 0; k < step; k++) pairs[(pattern[k]! << 8) | pattern[k + 1]!]! |= 1 << k;
    }
    this.size = kept.length;
    const longest = Math.max(0, ...kept.map((p) => p.length));
    this.tables = { pairs, step, prefixes, whole, patterns: kept, ids: [...unique.values()].map(([, id]) => id), longest };
  }

  /**
   * A resumable scan; `feed` returns matches as they are found (a match may be reported twice).
   * `work` counts the bytes compared so far; `feed` throws ScanBudgetExceeded past the budget.
   */
  scanner(): { feed(chunk: Uint8Array): Match[]; readonly work: number } {
    const { tables, size } = this;
    const { longest } = tables;
    // The last longest-1 bytes before `offset`: a match may start there and end in the next chunk.
    let tail: Uint8Array = new Uint8Array(0);
    /** Stream offset of the next chunk's first byte. */
    let offset = 0;
    const counter = { work: 0 };
    const scan = (bytes: Uint8Array, at: number, matches: Match[]): void => {
      const view = new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length);
      scanChunk(view, at, tables, matches, counter);
    };
    return {
      get work() {
        return counter.work;
      },
      feed(chunk: Uint8Array): Match[] {
        const matches: Match[] = [];
        if (size === 0) return matches;
        if (chunk.length < longest) {
          const joined = Buffer.concat([tail, chunk]);
          scan(joined, offset - tail.length, matches);
          tail = joined.subarray(joined.length - Math.min(joined.length, longest - 1));
        } else {
          // Only the seam is copied: the kept tail and the chunk's first bytes, then the chunk in place.
          if (tail.length > 0) scan(Buffer.concat([tail, chunk.subarray(0, longest - 1)]), offset - tail.length, matches);
          scan(chunk, offset, matches);
          tail = new Uint8Array(chunk.subarray(chunk.length - (longest - 1))); // a copy: the chunk's memory is not ours to keep
        }
        offset += chunk.length;
        if (counter.work > scanWorkPerByte * offset + scanWorkAllowance) throw new ScanBudgetExceeded();
        return matches;
      },
    };
  }
}

/**
 * Every occurrence of a *few* signatures (a handful of fixed markers rather than thousands of
 * values): the native memchr finds each distinct first byte, and only there are the rest
 * compared. On a photo that beats both a JavaScript pass and one native search per signature.
 * Sorted by offset.
 */
export function findSignatures(data: Uint8Array, signatures: readonly Uint8Array[]): Match[] {
  const found: Match[] = [];
  const buffer = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  for (const first of new Set(signatures.map((s) => s[0]!))) {
    const group = signatures.flatMap((signature, pattern) => (signature[0] === first ? [{ signature, pattern }] : []));
    for (let at = buffer.indexOf(first); at >= 0; at = buffer.indexOf(first, at + 1)) {
      for (const { signature, pattern } of group) {
        if (at + signature.length > buffer.length) continue;
        let t = 1;
        while (t < signature.length && signature[t] === buffer[at + t]) t++;
        if (t === signature.length) found.push({ pattern, start: at });
      }
    }
  }
  return found.sort((a, b) => a.start - b.start);
}

/**
 * The hot loop, a plain top-level function so V8 optimises it once for every scanner. `base` is
 * the stream offset of buf[0]; pairs are sampled on a grid fixed to the stream, so chunking never
 * shifts it.
 */
function scanChunk(buf: Uint8Array, base: number, tables: Tables, matches: Match[], counter: { work: number }): void {
  const { pairs, step } = tables;
  // Pairs read as big-endian 16-bit words: one bounds-checked load instead of two.
  const words = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const last = buf.length - 2;
  for (let j = (step - (base % step)) % step; j <= last; j += step) {
    const mask = pairs[words.getUint16(j)]!;
    if (mask !== 0) counter.work += candidates(buf, base, j, mask, tables, matches);
  }
}

/**
 * The rare case, kept out of the hot loop: from each start the sampled pair implies, walk the
 * hashed trie of prefixes byte by byte and report the patterns that end there. The walk stops at
 * the first byte no pattern continues with, so a start costs at most the longest pattern's length
 * whatever the number of patterns (the chain of patterns sharing three bytes it replaced cost
 * their number times their length: THREATS 48). Returns the bytes read.
 */
function candidates(buf: Uint8Array, base: number, j: number, mask: number, tables: Tables, matches: Match[]): number {
  const { prefixes, whole, patterns, ids, longest } = tables;
  const end = buf.length;
  let work = 0;
  for (let rest = mask; rest !== 0; ) {
    const k = 31 - Math.clz32(rest);
    rest &= ~(1 << k);
    const start = j - k;
    if (start < 0 || start + minPatternBytes > end) continue;
    // A pattern that runs past the chunk is seen again from the kept tail, where it can end
    // inside the next chunk.
    const limit = Math.min(longest, end - start);
    let hash = fnvStart;
    let length = 0;
    while (length < limit) {
      hash = fnvStep(hash, buf[start + length]!);
      length++;
      if (length < minPatternBytes) continue;
      const key = keyOf(hash, length);
      if (!prefixes.has(key)) break;
      const ending = whole.get(key);
      if (ending === undefined) continue;
      for (const i of ending) {
        const pattern = patterns[i]!;
        if (pattern.length !== length) continue;
        let t = 0;
        while (t < length && pattern[t] === buf[start + t]) t++;
        work += t;
        if (t === length) matches.push({ pattern: ids[i]!, start: base + start });
      }
    }
    work += length;
  }
  return work;
}
