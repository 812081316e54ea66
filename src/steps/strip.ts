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
 * Writes slices in one vectored write per batch; the file is created 0600 and must be new. A
 * write may take fewer bytes than offered (a disk filling up does that before it says ENOSPC), so
 * the rest is written again until all is down or the error comes.
 */
async function writeParts(file: string, parts: Buffer[]): Promise<void> {
  const handle = await open(file, 'wx', 0o600);
  try {
    let pending = parts.filter((part) => part.length > 0);
    while (pending.length > 0) {
      // writev takes at most IOV_MAX (1024) buffers at a time.
      const batch = pending.slice(0, 1024);
      let { bytesWritten } = await handle.writev(batch);
      if (bytesWritten === 0) throw Object.assign(new Error('a write made no progress'), { code: 'EIO' });
      let done = 0;
      while (done < batch.length && bytesWritten >= batch[done]!.length) bytesWritten -= batch[done++]!.length;
      pending = done < batch.length ? [batch[done]!.subarray(bytesWritten), ...batch.slice(done + 1), ...pending.slice(1024)] : pending.slice(1024);
    }
  } finally {
    await handle.close();
  }
}
