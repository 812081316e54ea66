/**
 * Step 2, sniff: the real type from the bytes (file-type), checked against the allowlist. The
 * client's Content-Type and extension are never consulted. Magic bytes alone do not admit a
 * file: the strip step parses the whole structure and refuses what does not parse (THREATS 13).
 */
import { open } from 'node:fs/promises';
import { fileTypeFromFile } from 'file-type';
import type { Received, Sniffed } from '../context.js';
import { ScrubError } from '../errors.js';
import { readerFor, readIfd } from '../formats/tiff-ifd.js';
import { acceptedFormatsText, allowedKinds } from '../media.js';

export async function sniff(file: Received): Promise<Sniffed> {
  if (file.inputBytes === 0) {
    throw new ScrubError('unsupported_type', `The file is empty. Send one of: ${acceptedFormatsText}.`);
  }
  const detected = await fileTypeFromFile(file.inputPath);
  let mime = detected?.mime;
  if (mime === 'video/mp4' && (await isHeifBrand(file.inputPath))) mime = 'image/heif';
  else if (mime === 'image/x-sony-arw' && !(await isSonyRaw(file.inputPath))) mime = 'image/tiff';
  const kind = mime ? allowedKinds.get(mime) : undefined;
  if (!kind) {
    const what = detected ? `${detected.mime} content` : 'content of no recognised media type';
    throw new ScrubError('unsupported_type', `The file contains ${what}, which scrubline does not accept. Send one of: ${acceptedFormatsText}.`);
  }
  return { ...file, kind };
}

/**
 * file-type calls any TIFF whose first directory opens with tag 50341 a Sony ARW, but that tag is
 * PrintIM, which Olympus, Epson and other cameras write into ordinary TIFFs. A raw file says so in
 * its Make; anything else is a TIFF, and the strip step decides whether it can be rebuilt.
 */
async function isSonyRaw(path: string): Promise<boolean> {
  const handle = await open(path, 'r');
  try {
    const head = Buffer.alloc(64 * 1024);
    const { bytesRead } = await handle.read(head, 0, head.length, 0);
    const tiff = head.subarray(0, bytesRead);
    const reader = readerFor(tiff);
    const make = reader && readIfd(reader, reader.u32(4))?.entries.find((e) => e.tag === 271 && e.type === 2);
    if (!reader || !make) return true;
    const at = make.count <= 4 ? make.valueAt : reader.u32(make.valueAt);
    return tiff.toString('latin1', at, Math.min(at + make.count, tiff.length)).toUpperCase().startsWith('SONY');
  } finally {
    await handle.close();
  }
}

/** HEIF brands file-type does not know (mif2, mif3, msf1 …) fall through to its generic "mp4". */
const heifBrands = /^(mif[1-3]|msf1|heic|heix|heim|heis|hevc|hevx|avif|avis|avio)$/;

async function isHeifBrand(path: string): Promise<boolean> {
  const handle = await open(path, 'r');
  try {
    const head = Buffer.alloc(64);
    const { bytesRead } = await handle.read(head, 0, 64, 0);
    if (bytesRead < 16 || head.toString('latin1', 4, 8) !== 'ftyp') return false;
    const end = Math.min(head.readUInt32BE(0), bytesRead);
    // Major brand at 8, minor version at 12, compatible brands from 16.
    const brands = [head.toString('latin1', 8, 12)];
    for (let at = 16; at + 4 <= end; at += 4) brands.push(head.toString('latin1', at, at + 4));
    return brands.some((b) => heifBrands.test(b)) && !brands.some((b) => /^(isom|iso[2-9]|mp4[12]|avc1|qt  |M4V |3gp\d)$/.test(b));
  } finally {
    await handle.close();
  }
}
