/**
 * Step 3, strip: writes a cleaned copy of the original next to it. Images are rebuilt from an
 * allowlist of their own structures in memory; video is remuxed by ffmpeg on disk.
 */
import { open, stat } from 'node:fs/promises';
import { readWhole } from '../buffers.js';
import path from 'node:path';
import type { Removed, Sniffed, Stripped } from '../context.js';
import { ScrubError } from '../errors.js';
import { videoTools, type Ffmpeg, type ProbeResult } from '../tools/ffmpeg.js';
import { imageStrippers, type ScanMode } from './strip-image.js';
import { stripVideo } from './strip-video.js';

export interface StripDeps {
  /** Present for video (the only family that needs it). */
  ffmpeg: Ffmpeg | undefined;
  maxInputPixels: number;
  /** How a JPEG's scans are written (strip-image.ts ScanMode); default 'hinted'. */
  jpegScans?: ScanMode | undefined;
}

/** Images are rebuilt in memory; past this size a file is not an image we should hold. */
export const maxImageBytes = 512 * 1024 * 1024;

/** Where the cleaned copy is written (the verifier starts reading it ahead for video). */
export const cleanPathOf = (file: Sniffed): string => path.join(file.workDir, `clean.${file.kind.ext}`);

export async function strip(file: Sniffed, deps: StripDeps): Promise<Stripped> {
  const cleanPath = cleanPathOf(file);
  let { kind } = file;
  let removed: Removed;
  let inputProbe: ProbeResult | undefined;
  let inputAudioDecodes: boolean | undefined;
  let original: Buffer | undefined;
  if (kind.family === 'image') {
    if (file.inputBytes > maxImageBytes) {
      throw new ScrubError('too_large', `Images larger than ${maxImageBytes} bytes are not accepted. Send a smaller file.`);
    }
    original = await readWhole(file.inputPath);
    const result = await imageStrippers[kind.format](original, { maxInputPixels: deps.maxInputPixels, scans: deps.jpegScans });
    await writeParts(cleanPath, result.parts);
    removed = result.removed;
  } else {
    const result = await stripVideo(videoTools(deps), kind, file.inputPath, cleanPath);
    removed = result.removed;
    inputProbe = result.inputProbe;
    inputAudioDecodes = result.inputAudioDecodes;
    // The container written may be a sibling of the input's (outputKind); the file keeps its path.
    kind = result.kind;
  }
  const { size } = await stat(cleanPath);
  return { ...file, kind, cleanPath, cleanBytes: size, removed, inputProbe, inputAudioDecodes, original };
}

/**
 * Bytes handed to the kernel in one write call. A cleaned photo went down in one vectored write
 * of all its slices, and in a batch that call took 20-160 ms for a 5 MB JPEG, against ~2 ms for
 * the same bytes 256 KiB at a time. On this host (Linux 6.18, ext4, a microVM) a write of 2 MiB or
 * more gets 2 MiB page-cache folios, and filling fresh ones cost ~8 ms per MB against ~1 for
 * smaller writes (measured 64 KiB to whole-file, in turns). That was most of a 100-photo batch's
 * kernel time (perf: 3.5-4.0 s of sys, against ~1.0 now); ExifTool writes 8 KiB at a time and
 * never paid it. In the batch, 64-256 KiB measured alike and 512 KiB already paid; the smaller
 * calls cost ~20 thread-pool round trips per 5 MB.
 */
export const writeCallBytes = 256 * 1024;

/**
 * Writes slices in vectored writes of at most `writeCallBytes` each; the file is created 0600 and
 * must be new. A write may take fewer bytes than offered (a disk filling up does that before it
 * says ENOSPC), so the rest is offered again until all is down or the error comes.
 */
export async function writeParts(file: string, parts: Buffer[]): Promise<void> {
  const handle = await open(file, 'wx', 0o600);
  try {
    let part = 0;
    let offset = 0;
    while (part < parts.length) {
      // The next call's slices: whole parts where they fit, pieces of one where it does not, and
      // never past IOV_MAX (1024) buffers.
      const batch: Buffer[] = [];
      let bytes = 0;
      for (let i = part, at = offset; i < parts.length && bytes < writeCallBytes && batch.length < 1024; i++, at = 0) {
        const slice = parts[i]!.subarray(at, at + writeCallBytes - bytes);
        if (slice.length > 0) batch.push(slice);
        bytes += slice.length;
      }
      if (bytes === 0) break;
      const { bytesWritten } = await handle.writev(batch);
      if (bytesWritten === 0) throw Object.assign(new Error('a write made no progress'), { code: 'EIO' });
      // Move past what was written, into the part where it stopped.
      let left = bytesWritten;
      while (part < parts.length && left >= parts[part]!.length - offset) {
        left -= parts[part]!.length - offset;
        part++;
        offset = 0;
      }
      offset += left;
    }
  } finally {
    await handle.close();
  }
}
