/**
 * The one module that uses exifr. It reads every block exifr knows (TIFF/EXIF, GPS, Interop,
 * IFD1, MakerNote, XMP, IPTC) with raw values: the verifier wants the bytes as written, not
 * revived dates or translated enums. exifr throws on some real files; that is not an error
 * here, because the verifier also walks the structures itself.
 */
import exifr from 'exifr';

const everything = {
  tiff: true,
  ifd1: true,
  exif: true,
  gps: true,
  interop: true,
  makerNote: true,
  // A block of its own holding UserComment again, which the exif block already carries as bytes.
  userComment: false,
  xmp: true,
  iptc: true,
  icc: false,
  jfif: false,
  ihdr: false,
  multiSegment: true,
  mergeOutput: false,
  translateKeys: true,
  translateValues: false,
  reviveValues: false,
  sanitize: false,
  silentErrors: true,
} as const;

const strictOptions = { ...everything, silentErrors: false };

export type ExifBlocks = Record<string, Record<string, unknown>>;

/** Every block exifr finds, keyed by block name (ifd0, exif, gps, xmp namespaces, iptc …). */
export async function readExifValues(input: Buffer): Promise<ExifBlocks> {
  try {
    return blocksOf((await exifr.parse(input, everything)) as Record<string, unknown> | undefined);
  } catch {
    return {};
  }
}

/**
 * The same reading for tests, where a reader that fails must not read as "nothing found":
 * exifr's errors, thrown or collected, are thrown (issue 31).
 */
export async function readExifValuesStrict(input: Buffer): Promise<ExifBlocks> {
  const result = (await exifr.parse(input, strictOptions)) as Record<string, unknown> | undefined;
  const errors = result?.['errors'];
  if (Array.isArray(errors) && errors.length > 0) throw new Error(`exifr could not read every block: ${errors.map(String).join('; ')}`);
  return blocksOf(result);
}

/** exifr's result as blocks of tags, its error list left out. */
function blocksOf(result: Record<string, unknown> | undefined): ExifBlocks {
  const blocks: ExifBlocks = {};
  for (const [name, block] of Object.entries(result ?? {})) {
    if (name === 'errors' || block === null || typeof block !== 'object' || Array.isArray(block)) continue;
    // A bare byte block stays one value (as an object, each byte would be a "tag" of its own).
    blocks[name] = ArrayBuffer.isView(block) ? { [name]: block } : (block as Record<string, unknown>);
  }
  return blocks;
}
