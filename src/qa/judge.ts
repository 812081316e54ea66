/**
 * What happened to one file, and whether that is what the suite expected. Pure, so the rules
 * are unit-tested apart from the pipeline.
 */
import type { Expectation } from './suite.js';

export interface Geometry {
  width: number | undefined;
  height: number | undefined;
  /** EXIF-style orientation (images) or clockwise rotation in degrees (video). */
  orientation?: number | undefined;
  rotation?: number | undefined;
}

export interface Observed {
  outcome: 'clean' | 'reject' | 'error';
  code?: string | undefined;
  message?: string | undefined;
  mime?: string | undefined;
  removed?: Record<string, number> | undefined;
  before?: Geometry | undefined;
  after?: Geometry | undefined;
  fingerprint?: Record<string, unknown> | undefined;
  /** Metadata an independent reader still found in the output (categories only). */
  dirty?: string[] | undefined;
  ms: number;
  /** A small JPEG of the cleaned output, as a data: URI. */
  preview?: string | undefined;
}

export interface Verdict {
  pass: boolean;
  problems: string[];
}

/** The displayed size of a geometry (orientations 5–8 swap width and height). */
export function displayed(g: Geometry | undefined): { width?: number | undefined; height?: number | undefined } {
  if (!g) return {};
  const swap = (g.orientation ?? 1) >= 5 || g.rotation === 90 || g.rotation === 270;
  return swap ? { width: g.height, height: g.width } : { width: g.width, height: g.height };
}

export function judge(expect: Expectation | undefined, seen: Observed): Verdict {
  const problems: string[] = [];
  if (seen.outcome === 'error') problems.push(`internal error (${seen.code ?? 'unknown'})`);
  if (seen.dirty && seen.dirty.length > 0) problems.push(`DIRTY: ${seen.dirty.join(', ')} still present`);
  if (expect === undefined) return { pass: problems.length === 0, problems };

  if (expect.outcome === 'reject') {
    if (seen.outcome === 'clean') problems.push(`expected a rejection${expect.code ? ` (${expect.code})` : ''}, but it came out clean`);
    else if (seen.outcome === 'reject' && expect.code && seen.code !== expect.code) problems.push(`rejected with ${seen.code}, expected ${expect.code}`);
    return { pass: problems.length === 0, problems };
  }
  if (seen.outcome !== 'clean') {
    if (seen.outcome === 'reject') problems.push(`expected clean, but rejected (${seen.code})`);
    return { pass: false, problems };
  }
  for (const category of expect.removed ?? []) {
    if (!seen.removed?.[category]) problems.push(`expected ${category} to be removed`);
  }
  // Stored (coded) dimensions, as a tag reader reports them; orientation/rotation are separate.
  const { width, height } = seen.after ?? {};
  if (expect.width !== undefined && width !== expect.width) problems.push(`width ${width}, expected ${expect.width}`);
  if (expect.height !== undefined && height !== expect.height) problems.push(`height ${height}, expected ${expect.height}`);
  if (expect.orientation !== undefined && (seen.after?.orientation ?? 1) !== expect.orientation) {
    problems.push(`orientation ${seen.after?.orientation ?? 1}, expected ${expect.orientation}`);
  }
  for (const [field, value] of Object.entries(expect.fingerprint ?? {})) {
    if (JSON.stringify(seen.fingerprint?.[field]) !== JSON.stringify(value)) problems.push(`fingerprint ${field} is ${JSON.stringify(seen.fingerprint?.[field])}, expected ${JSON.stringify(value)}`);
  }
  return { pass: problems.length === 0, problems };
}
