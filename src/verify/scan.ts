/**
 * Finds any of many byte patterns in one pass over the data (Aho–Corasick compiled to a dense
 * DFA), so the value scan costs the same whether the input carried 3 metadata values or 3,000
 * (issue 3: "one pass over the bytes, not one pass per value"). It scans streams chunk by chunk
 * with the automaton state carried across chunk boundaries.
 */

/** Longer values are matched on their first bytes: a leaked prefix is a leak too. */
export const maxPatternBytes = 64;
/** Bound on the automaton (states x 256 x 4 bytes): ~16 MiB at this many states. */
const maxStates = 16_384;

export interface Match {
  pattern: number;
  /** Offset of the first byte of the match in the whole stream. */
  start: number;
}

export class PatternSet {
  readonly size: number;
  private readonly delta: Int32Array;
  /** For each state, the index of a pattern ending there (-1 if none), and that pattern's length. */
  private readonly output: Int32Array;
  private readonly lengths: number[];

  constructor(patterns: readonly Buffer[]) {
    const unique = [...new Map(patterns.map((p) => p.subarray(0, maxPatternBytes)).filter((p) => p.length > 0).map((p) => [p.toString('hex'), p])).values()];
    const totalBytes = unique.reduce((n, p) => n + p.length, 0);
    const capacity = Math.min(totalBytes + 1, maxStates);
    const goto = new Int32Array(capacity * 256).fill(-1);
    const output = new Int32Array(capacity).fill(-1);
    this.lengths = [];
    let states = 1;
    unique.forEach((pattern, index) => {
      if (states + pattern.length > capacity) return; // over budget: the remaining patterns are not scanned
      let state = 0;
      for (const byte of pattern) {
        const at = state * 256 + byte;
        if (goto[at] === -1) goto[at] = states++;
        state = goto[at]!;
      }
      if (output[state] === -1) output[state] = index;
      this.lengths[index] = pattern.length;
    });
    this.size = this.lengths.filter((n) => n !== undefined).length;

    // Breadth-first: failure links folded into a complete transition table.
    const fail = new Int32Array(states);
    const queue: number[] = [];
    for (let byte = 0; byte < 256; byte++) {
      const next = goto[byte]!;
      if (next === -1) goto[byte] = 0;
      else {
        fail[next] = 0;
        queue.push(next);
      }
    }
    for (let head = 0; head < queue.length; head++) {
      const state = queue[head]!;
      if (output[state] === -1) output[state] = output[fail[state]!]!;
      for (let byte = 0; byte < 256; byte++) {
        const at = state * 256 + byte;
        const next = goto[at]!;
        if (next === -1) goto[at] = goto[fail[state]! * 256 + byte]!;
        else {
          fail[next] = goto[fail[state]! * 256 + byte]!;
          queue.push(next);
        }
      }
    }
    this.delta = goto.subarray(0, states * 256);
    this.output = output.subarray(0, states);
  }

  /** A resumable scan; `feed` returns every match that ends in the chunk. */
  scanner(): { feed(chunk: Uint8Array): Match[] } {
    let state = 0;
    let offset = 0;
    const { delta, output, lengths } = this;
    return {
      feed(chunk: Uint8Array): Match[] {
        const matches: Match[] = [];
        if (lengths.length === 0) {
          offset += chunk.length;
          return matches;
        }
        for (let i = 0; i < chunk.length; i++) {
          state = delta[(state << 8) | chunk[i]!]!;
          const hit = output[state]!;
          if (hit !== -1) matches.push({ pattern: hit, start: offset + i + 1 - lengths[hit]! });
        }
        offset += chunk.length;
        return matches;
      },
    };
  }
}
