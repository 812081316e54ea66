/**
 * Step 2, sniff: the real type from the bytes (file-type), checked against the allowlist. The
 * client's Content-Type and extension are never consulted. Magic bytes alone do not admit a
 * file: the strip step parses the whole structure and refuses what does not parse (THREATS 13).
 */
import { fileTypeFromFile } from 'file-type';
import type { Received, Sniffed } from '../context.js';
import { ScrubError } from '../errors.js';
import { acceptedFormatsText, allowedKinds } from '../media.js';

export async function sniff(file: Received): Promise<Sniffed> {
  if (file.inputBytes === 0) {
    throw new ScrubError('unsupported_type', `The file is empty. Send one of: ${acceptedFormatsText}.`);
  }
  const detected = await fileTypeFromFile(file.inputPath);
  const kind = detected ? allowedKinds.get(detected.mime) : undefined;
  if (!kind) {
    const what = detected ? `${detected.mime} content` : 'content of no recognised media type';
    throw new ScrubError('unsupported_type', `The file contains ${what}, which scrubline does not accept. Send one of: ${acceptedFormatsText}.`);
  }
  return { ...file, kind };
}
