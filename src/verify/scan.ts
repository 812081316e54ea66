/**
 * Finds any of many byte patterns in one pass over the data, so the value scan costs about the
 * same whether the input carried 3 metadata values or 3,000 (issue 3: "one pass over the bytes,
 * not one pass per value"). Streams are scanned chunk by chunk.
 *
 * A multi-pattern filter in the spirit of Wu–Manber: with m the shortest pattern length, any
 * occurrence covers m-1 consecutive byte-pair positions, so looking at every (m-1)th pair is
 * enough to notice it. A 64 K table says at which offsets (0..m-2) a pair occurs in some pattern's
 * first m bytes; only then are the patterns that begin with the implied start's first three bytes
 * compared (a small hash table of chains). On binary data almost no pair qualifies, so the scan
 * touches about one pair per m-1 bytes instead of every byte, and the tables stay a few hundred
 * KiB however many patterns there are (a dense trie grew to 16 MiB per scan).
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

/** The chain table's slot for a pattern's (or a candidate's) first three bytes. */
const slotOf = (b0: number, b1: number, b2: number, bits: number): number => Math.imul((b0 << 16) | (b1 << 8) | b2, 0x9e3779b1) >>> (32 - bits);

/** What the hot loop looks things up in, built once per PatternSet. */
interface Tables {
  /** Byte pair (b0 << 8 | b1) → bit k set when some pattern has that pair at offset k < step. */
  pairs: Uint32Array;
  /** Pairs are sampled every `step` bytes (the shortest pattern's length minus one). */
  step: number;
  /** Slot → first pattern index in its chain, -1 if none; `chain[i]` is the next after pattern i. */
  heads: Int32Array;
  chain: Int32Array;
  bits: number;
  patterns: Buffer[];
  /** Unique pattern → its index in the caller's array. */
  ids: number[];
}

export class PatternSet {
  readonly size: number;
  private readonly tables: Tables;
  private readonly longest: number;

  constructor(patterns: readonly Buffer[]) {
    const unique = new Map<string, [Buffer, number]>();
    patterns.forEach((p, id) => {
      const head = p.subarray(0, maxPatternBytes);
      const key = head.toString('hex');
      if (head.length >= minPatternBytes && !unique.has(key)) unique.set(key, [head, id]);
    });
    const kept = [...unique.values()].map(([head]) => head);
    const bits = Math.max(4, Math.ceil(Math.log2(kept.length * 2 + 1)));
    const heads = new Int32Array(1 << bits).fill(-1);
    const chain = new Int32Array(kept.length);
    kept.forEach((p, i) => {
      const slot = slotOf(p[0]!, p[1]!, p[2]!, bits);
      chain[i] = heads[slot]!;
      heads[slot] = i;
    });
    const step = Math.min(maxStep, Math.min(Infinity, ...kept.map((p) => p.length)) - 1);
    const pairs = new Uint32Array(65536);
    for (const pattern of kept) {
      for (let k = 0; k < step; k++) pairs[(pattern[k]! << 8) | pattern[k + 1]!]! |= 1 << k;
    }
    this.size = kept.length;
    this.longest = Math.max(0, ...kept.map((p) => p.length));
    this.tables = { pairs, step, heads, chain, bits, patterns: kept, ids: [...unique.values()].map(([, id]) => id) };
  }

  /** A resumable scan; `feed` returns matches as they are found (a match may be reported twice). */
  scanner(): { feed(chunk: Uint8Array): Match[] } {
    const { tables, longest, size } = this;
    // The last longest-1 bytes before `offset`: a match may start there and end in the next chunk.
    let tail: Uint8Array = new Uint8Array(0);
    /** Stream offset of the next chunk's first byte. */
    let offset = 0;
    const scan = (bytes: Uint8Array, at: number, matches: Match[]): void => {
      const view = new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length);
      scanChunk(view, at, tables, matches);
    };
    return {
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
function scanChunk(buf: Uint8Array, base: number, tables: Tables, matches: Match[]): void {
  const { pairs, step } = tables;
  // Pairs read as big-endian 16-bit words: one bounds-checked load instead of two.
  const words = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const last = buf.length - 2;
  for (let j = (step - (base % step)) % step; j <= last; j += step) {
    const mask = pairs[words.getUint16(j)]!;
    if (mask !== 0) candidates(buf, base, j, mask, tables, matches);
  }
}

/** The rare case, kept out of the hot loop: compare the patterns a sampled pair points at. */
function candidates(buf: Uint8Array, base: number, j: number, mask: number, tables: Tables, matches: Match[]): void {
  const { heads, chain, bits, patterns, ids } = tables;
  const end = buf.length;
  for (let rest = mask; rest !== 0; ) {
    const k = 31 - Math.clz32(rest);
    rest &= ~(1 << k);
    const start = j - k;
    if (start < 0 || start + 3 > end) continue;
    // Only the patterns that share the implied start's first three bytes. One that runs past the
    // chunk is seen again from the kept tail, where it can end inside the next chunk.
    for (let i = heads[slotOf(buf[start]!, buf[start + 1]!, buf[start + 2]!, bits)]!; i !== -1; i = chain[i]!) {
      const pattern = patterns[i]!;
      if (start + pattern.length > end) continue;
      let t = 0;
      while (t < pattern.length && pattern[t] === buf[start + t]) t++;
      if (t === pattern.length) matches.push({ pattern: ids[i]!, start: base + start });
    }
  }
}
