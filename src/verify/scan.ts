/**
 * Finds any of many byte patterns in one pass over the data, so the value scan costs about the
 * same whether the input carried 3 metadata values or 3,000 (issue 3: "one pass over the bytes,
 * not one pass per value"). Streams are scanned chunk by chunk.
 *
 * A multi-pattern filter in the spirit of Wu–Manber: with m the shortest pattern length, any
 * occurrence covers m-1 consecutive byte-pair positions, so looking at every (m-1)th pair is
 * enough to notice it. A 64 K table says at which offsets (0..m-2) a pair occurs in some pattern's
 * first m bytes; only then is the trie of patterns walked from the implied start. On binary data
 * almost no pair qualifies, so the scan touches about one pair per m-1 bytes instead of every byte.
 */

/** Longer values are matched on their first bytes: a leaked prefix is a leak too. */
export const maxPatternBytes = 64;
/** Shorter patterns are not scanned for: two bytes match everywhere in binary data. */
export const minPatternBytes = 3;
/** Bound on the trie (states x 256 x 4 bytes): ~16 MiB at this many states. */
const maxStates = 16_384;
/** Offsets are bits of a 32-bit mask, so the sampling step is at most 31. */
const maxStep = 31;

export interface Match {
  pattern: number;
  /** Offset of the first byte of the match in the whole stream. */
  start: number;
}

export class PatternSet {
  readonly size: number;
  /** Trie transitions, state * 256 + byte → next state, -1 where none. */
  private readonly trie: Int32Array;
  /** For each state, the index of the pattern ending there, -1 if none. */
  private readonly output: Int32Array;
  /** Byte pair (b0 << 8 | b1) → bit k set when some pattern has that pair at offset k < step. */
  private readonly pairs = new Uint32Array(65536);
  /** Pairs are sampled every `step` bytes (the shortest pattern's length minus one). */
  private readonly step: number;
  private readonly longest: number;

  constructor(patterns: readonly Buffer[]) {
    const unique = [
      ...new Map(
        patterns
          .map((p) => p.subarray(0, maxPatternBytes))
          .filter((p) => p.length >= minPatternBytes)
          .map((p) => [p.toString('hex'), p]),
      ).values(),
    ];
    const capacity = Math.min(unique.reduce((n, p) => n + p.length, 0) + 1, maxStates);
    const trie = new Int32Array(capacity * 256).fill(-1);
    const output = new Int32Array(capacity).fill(-1);
    const kept: Buffer[] = [];
    let states = 1;
    for (const pattern of unique) {
      if (states + pattern.length > capacity) break; // over budget: the remaining patterns are not scanned
      let state = 0;
      for (const byte of pattern) {
        const at = state * 256 + byte;
        if (trie[at] === -1) trie[at] = states++;
        state = trie[at]!;
      }
      output[state] = kept.length;
      kept.push(pattern);
    }
    this.size = kept.length;
    this.trie = trie.subarray(0, states * 256);
    this.output = output.subarray(0, states);
    this.longest = Math.max(0, ...kept.map((p) => p.length));
    this.step = Math.min(maxStep, Math.min(Infinity, ...kept.map((p) => p.length)) - 1);
    for (const pattern of kept) {
      for (let k = 0; k < this.step; k++) this.pairs[(pattern[k]! << 8) | pattern[k + 1]!]! |= 1 << k;
    }
  }

  /** A resumable scan; `feed` returns matches as they are found (a match may be reported twice). */
  scanner(): { feed(chunk: Uint8Array): Match[] } {
    const { trie, output, pairs, step, longest, size } = this;
    // The last longest-1 bytes of what came before: a match may start there and end in the next chunk.
    let tail: Uint8Array = new Uint8Array(0);
    /** Stream offset of the first byte of tail + chunk. */
    let base = 0;
    return {
      feed(chunk: Uint8Array): Match[] {
        const matches: Match[] = [];
        if (size === 0) return matches;
        const joined = tail.length === 0 ? chunk : Buffer.concat([tail, chunk]);
        const buf = new Uint8Array(joined.buffer, joined.byteOffset, joined.length);
        // Sample pair positions on a grid fixed to the stream, so chunking never shifts it.
        scanChunk(buf, (step - (base % step)) % step, step, pairs, trie, output, base, matches);
        const keep = Math.min(buf.length, longest - 1);
        tail = buf.slice(buf.length - keep);
        base += buf.length - keep;
        return matches;
      },
    };
  }
}

/** The hot loop, a plain top-level function so V8 optimises it once for every scanner. */
function scanChunk(buf: Uint8Array, first: number, step: number, pairs: Uint32Array, trie: Int32Array, output: Int32Array, base: number, matches: Match[]): void {
  const end = buf.length;
  for (let j = first; j + 1 < end; j += step) {
    let mask = pairs[(buf[j]! << 8) | buf[j + 1]!]!;
    while (mask !== 0) {
      const k = 31 - Math.clz32(mask);
      mask &= ~(1 << k);
      const start = j - k;
      if (start < 0) continue;
      // Walk the trie from the implied start; every pattern ending on the way is a match.
      let state = 0;
      for (let t = start; t < end; t++) {
        state = trie[(state << 8) | buf[t]!]!;
        if (state === -1) break;
        if (output[state] !== -1) matches.push({ pattern: output[state]!, start: base + start });
      }
    }
  }
}
