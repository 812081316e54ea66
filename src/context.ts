/**
 * The typed per-file context the pipeline steps pass along. Each step adds what it learned, so
 * the type says which steps a file has been through: a `Tagged` file has been sniffed, stripped,
 * verified and fingerprinted.
 */
import type { MediaKind } from './media.js';
import type { Fingerprint } from './steps/fingerprint.js';
import type { ProbeResult } from './tools/ffmpeg.js';

/** Metadata category → how many structures of it were removed. Never a value. */
export type Removed = Record<string, number>;

export type Retention = 'standard' | 'extended';

export interface Received {
  /** Random id; names every file scrubline writes for this upload. Never the client's name. */
  id: string;
  /** The original as multer stored it (0600, in the temp dir). Deleted when the request ends. */
  inputPath: string;
  inputBytes: number;
  /** Where this file's intermediate outputs go; removed with the request. */
  workDir: string;
}

export interface Sniffed extends Received {
  kind: MediaKind;
}

export interface Stripped extends Sniffed {
  cleanPath: string;
  cleanBytes: number;
  removed: Removed;
  /** ffprobe's reading of the original (video): raw tool output, reused so it runs once. */
  inputProbe?: ProbeResult | undefined;
  /**
   * True when the remux also decoded every audio stream of the original without an error (video;
   * see RemuxPlan.decodeAudio); otherwise the verifier decodes the output's audio itself.
   */
  inputAudioDecodes?: boolean | undefined;
  /** The original's bytes (images), as read once for the rebuild; strippers never write to it. */
  original?: Buffer | undefined;
}

export interface Verified extends Stripped {
  verified: true;
}

export interface Fingerprinted extends Verified {
  fingerprint: Fingerprint;
}

export interface Tagged extends Fingerprinted {
  retention: Retention;
  expiresAt: string;
}

export function countRemoved(removed: Removed, category: string, n = 1): void {
  removed[category] = (removed[category] ?? 0) + n;
}
