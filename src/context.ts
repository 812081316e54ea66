/**
 * The typed per-file context the pipeline steps pass along. Each step adds what it learned, so
 * the type says which steps a file has been through: a `Tagged` file has been sniffed, stripped,
 * verified and fingerprinted.
 */
import type { MediaKind } from './media.js';
import type { Fingerprint } from './steps/fingerprint.js';
import type { ProbeResult } from './tools/ffmpeg.js';

/**
 * The fixed vocabulary of what a cleaned file's report says was removed: the same word for the
 * same kind of data in every format (a HEIC's GPS is `gps`, as a JPEG's is). Documented in the
 * README's "What is removed" table; a new word is added here and there, never made up elsewhere.
 */
export const removedCategories = [
  // Tag blocks and what they carry
  'exif', // an EXIF block (APP1, eXIf, a HEIF Exif item, a WebP EXIF chunk, a TIFF's own tags)
  'gps', // GPS coordinates: the EXIF GPS directory, or a video's location tags
  'makerNote', // the camera maker's private EXIF block
  'xmp', // XMP packets, extended XMP included
  'iptc', // IPTC / Photoshop resources
  'comment', // JPEG COM, GIF comment extension
  'text', // PNG text chunks (tEXt, zTXt, iTXt that are not XMP), GIF plain-text extension
  'time', // PNG tIME
  'description', // HEIF user description property (udes)
  // Embedded images and extra pictures
  'thumbnail', // embedded previews: EXIF IFD1, JFIF/JFXX, HEIF thmb items
  'mpf', // JPEG multi-picture (MPF) index and the pictures it names
  'motionPhoto', // the video of a motion photo
  'auxiliaryImage', // depth maps, gain maps and other non-alpha auxiliary images
  'pages', // further pages or sub-images of a TIFF
  // Signatures, provenance and vendor data
  'jumbf', // C2PA / JUMBF manifests
  'signature', // PNG dSIG
  'vendor', // vendor APPn segments (Ducky, Picture Info, FPXR, ...)
  'profileText', // an ICC profile's text tags and device, creator and date fields (its colour stays)
  // Video containers
  'containerTags', // container-level tags (title, encoder, creation time, ...)
  'streamTags', // per-stream tags that are not technical
  'chapters',
  'coverArt',
  'dataStream', // timed metadata and telemetry tracks (GoPro GPMF, camera data)
  'subtitleStream',
  'attachment',
  'extraStream', // a second video or unsupported audio stream
  // Inside the picture stream (H.264/HEVC SEI and other NAL units, AV1 metadata OBUs)
  'cameraData', // user data: camcorder date/GPS/model (MDPM), vendor markers, registered T.35 text
  'hdrMetadata', // mastering display and content light level messages (the container's colr/mdcv/clli stay)
  'hdr10plus', // HDR10+ dynamic metadata (SMPTE ST 2094-40)
  'dolbyVision', // Dolby Vision RPU and enhancement-layer units
  'streamMetadata', // any other SEI message or non-picture unit: filler, delimiters, reserved and unspecified types
  // Anything else
  'trailer', // bytes after the format's end marker
  'other', // a structure of no known metadata kind: only what decoding needs is kept
] as const;

export type RemovedCategory = (typeof removedCategories)[number];

/** Metadata category → how many structures of it were removed. Never a value. */
export type Removed = Partial<Record<RemovedCategory, number>>;

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
  /**
   * The original's bytes (images), as read once for the rebuild; strippers never write to it.
   * verify hands the buffer back to the pool once it has read the input's facts: nothing after
   * verify's start may use it.
   */
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

export function countRemoved(removed: Removed, category: RemovedCategory, n = 1): void {
  removed[category] = (removed[category] ?? 0) + n;
}
