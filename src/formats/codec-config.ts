/**
 * The decoder configuration records a video's container holds beside the stream (MP4 `avcC`,
 * `hvcC`, `av1C`; Matroska CodecPrivate), rebuilt from their parsed fields. FFmpeg copies them as
 * they came (its `filter_units` filter passes the extradata through untouched), and they can carry
 * what the stream itself no longer may: an HEVC record holds whole arrays of SEI NAL units
 * (Android phones put one there), an AV1 record metadata OBUs, and any record trailing bytes. The
 * rebuilt record keeps the fixed fields, with reserved bits as the specification fixes them, and
 * the parameter sets (the coding tables the pictures are decoded with) byte for byte, once each is
 * proven to end where its fields do (formats/parameter-sets.ts); every other
 * unit is dropped and counted. Pure; linear in the record; throws ConfigError when the record does
 * not parse, so the caller refuses the file.
 *
 * Layouts: avcC, ISO/IEC 14496-15 5.3.3.1; hvcC, 8.3.3.1; av1C, the AV1 ISOBMFF binding 2.3.
 */
import type { RemovedCategory } from '../context.js';
import { checkParameterSet, ParameterSetContext, ParameterSetError } from './parameter-sets.js';
import { droppedCategories, leb128, nalType, type PictureCodec } from './units.js';

export class ConfigError extends Error {}

export interface CanonicalConfig {
  bytes: Buffer;
  /** What was dropped, by category (per unit or SEI message), plus trailing bytes as `streamMetadata`. */
  removed: Partial<Record<RemovedCategory, number>>;
}

class Cursor {
  pos = 0;
  constructor(private readonly buf: Buffer) {}
  get left(): number {
    return this.buf.length - this.pos;
  }
  u8(): number {
    if (this.pos + 1 > this.buf.length) throw new ConfigError('the record is shorter than its fields');
    return this.buf[this.pos++]!;
  }
  u16(): number {
    return (this.u8() << 8) | this.u8();
  }
  bytes(n: number): Buffer {
    if (this.pos + n > this.buf.length) throw new ConfigError('a unit runs past the record');
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
}

const u16 = (n: number): Buffer => Buffer.from([n >> 8, n & 0xff]);
const withLength = (nal: Buffer): Buffer => Buffer.concat([u16(nal.length), nal]);

function counter(): { removed: CanonicalConfig['removed']; count: (c: RemovedCategory) => void } {
  const removed: CanonicalConfig['removed'] = {};
  return { removed, count: (c) => void (removed[c] = (removed[c] ?? 0) + 1) };
}

/**
 * Keeps a parameter-set NAL of the expected type, once it is proven to hold its fields and nothing
 * after them (formats/parameter-sets.ts); anything else is counted as dropped.
 */
function keepNal(codec: 'h264' | 'hevc', nal: Buffer, expected: ReadonlySet<number>, count: (c: RemovedCategory) => void, context: ParameterSetContext): boolean {
  if (nal.length === 0) throw new ConfigError('an empty unit');
  const type = nalType(codec, nal[0]!);
  if (expected.has(type) && !(nal[0]! & 0x80)) {
    try {
      checkParameterSet(codec, nal, context);
    } catch (err) {
      if (err instanceof ParameterSetError) throw new ConfigError(`a parameter set: ${err.message}`);
      throw err;
    }
    return true;
  }
  droppedCategories(codec, type, nal, count);
  return false;
}

export function canonicalAvcC(record: Buffer): CanonicalConfig {
  const { removed, count } = counter();
  const c = new Cursor(record);
  const context = new ParameterSetContext();
  if (c.u8() !== 1) throw new ConfigError('avcC version is not 1');
  const profile = c.u8();
  const compatibility = c.u8();
  const level = c.u8();
  const lengthSizeMinusOne = c.u8() & 0x03;
  const sps: Buffer[] = [];
  const pps: Buffer[] = [];
  const spsCount = c.u8() & 0x1f;
  for (let i = 0; i < spsCount; i++) {
    const nal = c.bytes(c.u16());
    if (keepNal('h264', nal, new Set([7]), count, context)) sps.push(nal);
  }
  const ppsCount = c.u8();
  for (let i = 0; i < ppsCount; i++) {
    const nal = c.bytes(c.u16());
    if (keepNal('h264', nal, new Set([8]), count, context)) pps.push(nal);
  }
  const parts = [Buffer.from([1, profile, compatibility, level, 0xfc | lengthSizeMinusOne, 0xe0 | sps.length]), ...sps.map(withLength), Buffer.from([pps.length]), ...pps.map(withLength)];
  // High profiles add chroma format, bit depths and SPS extensions; many writers leave them out.
  if ([100, 110, 122, 144].includes(profile) && c.left >= 4) {
    const chroma = c.u8() & 0x03;
    const lumaDepth = c.u8() & 0x07;
    const chromaDepth = c.u8() & 0x07;
    const extensions: Buffer[] = [];
    const extCount = c.u8();
    for (let i = 0; i < extCount; i++) {
      const nal = c.bytes(c.u16());
      if (keepNal('h264', nal, new Set([13]), count, context)) extensions.push(nal);
    }
    parts.push(Buffer.from([0xfc | chroma, 0xf8 | lumaDepth, 0xf8 | chromaDepth, extensions.length]), ...extensions.map(withLength));
  }
  if (c.left > 0) count('streamMetadata');
  return { bytes: Buffer.concat(parts), removed };
}

export function canonicalHvcC(record: Buffer): CanonicalConfig {
  const { removed, count } = counter();
  const c = new Cursor(record);
  const context = new ParameterSetContext();
  if (c.u8() !== 1) throw new ConfigError('hvcC version is not 1');
  // profile space, tier, profile idc; 4 bytes of compatibility flags; 6 of constraint flags; level.
  const general = c.bytes(12);
  const segmentation = c.u16() & 0x0fff;
  const parallelism = c.u8() & 0x03;
  const chroma = c.u8() & 0x03;
  const lumaDepth = c.u8() & 0x07;
  const chromaDepth = c.u8() & 0x07;
  const frameRate = c.u16();
  const timing = c.u8();
  const arrays: Buffer[] = [];
  let keptArrays = 0;
  const arrayCount = c.u8();
  for (let i = 0; i < arrayCount; i++) {
    const head = c.u8();
    const type = head & 0x3f;
    const nals: Buffer[] = [];
    const nalCount = c.u16();
    for (let n = 0; n < nalCount; n++) {
      const nal = c.bytes(c.u16());
      if (keepNal('hevc', nal, type === 32 || type === 33 || type === 34 ? new Set([type]) : new Set(), count, context)) nals.push(nal);
    }
    // array_completeness kept, the reserved bit 0 as the specification fixes it.
    if (nals.length === 0) continue;
    keptArrays++;
    arrays.push(Buffer.from([(head & 0x80) | type]), u16(nals.length), ...nals.map(withLength));
  }
  if (c.left > 0) count('streamMetadata');
  const header = Buffer.concat([
    Buffer.from([1]),
    general,
    u16(0xf000 | segmentation),
    Buffer.from([0xfc | parallelism, 0xfc | chroma, 0xf8 | lumaDepth, 0xf8 | chromaDepth]),
    u16(frameRate),
    Buffer.from([timing]),
  ]);
  return { bytes: Buffer.concat([header, Buffer.from([keptArrays]), ...arrays]), removed };
}

export function canonicalAv1C(record: Buffer): CanonicalConfig {
  const { removed, count } = counter();
  const c = new Cursor(record);
  const first = c.u8();
  if (first !== 0x81) throw new ConfigError('av1C marker or version is not 1');
  const profileLevel = c.u8();
  const format = c.u8();
  const delay = c.u8() & 0x1f; // 3 reserved bits, then the presentation delay flag and value
  const obus: Buffer[] = [];
  // configOBUs: the sequence header is kept; metadata and anything else dropped.
  while (c.left > 0) {
    const start = c.pos;
    const header = c.u8();
    if (header & 0x80 || !(header & 0x02)) throw new ConfigError('a config OBU without a size field');
    if (header & 0x04) c.u8();
    const size = leb128(record, c.pos);
    if (!size) throw new ConfigError('an OBU size that does not end');
    c.pos = size.next;
    c.bytes(size.value);
    const obu = record.subarray(start, c.pos);
    const type = (header >> 3) & 0x0f;
    if (type === 1) {
      try {
        checkParameterSet('av1', obu, new ParameterSetContext());
      } catch (err) {
        if (err instanceof ParameterSetError) throw new ConfigError(`a sequence header: ${err.message}`);
        throw err;
      }
      obus.push(obu);
    }
    else droppedCategories('av1', type, obu, count);
  }
  return { bytes: Buffer.concat([Buffer.from([0x81, profileLevel, format, delay]), ...obus]), removed };
}

export function canonicalConfig(codec: PictureCodec, record: Buffer): CanonicalConfig {
  return codec === 'h264' ? canonicalAvcC(record) : codec === 'hevc' ? canonicalHvcC(record) : canonicalAv1C(record);
}

/** The NAL length size a record declares (1, 2 or 4), or undefined. AV1 has none. */
export function lengthSizeOf(codec: PictureCodec, record: Buffer | undefined): 1 | 2 | 4 | undefined {
  if (codec === 'av1') return 4;
  const byte = codec === 'h264' ? record?.[4] : record?.[21];
  if (byte === undefined) return undefined;
  const size = (byte & 0x03) + 1;
  return size === 1 || size === 2 || size === 4 ? size : undefined;
}

/** The MP4 sample-entry child that holds each codec's record. */
export const configBoxOf: Record<PictureCodec, string> = { h264: 'avcC', hevc: 'hvcC', av1: 'av1C' };

/** HEIF coded item types, and the property that holds each codec's record (the inverse of configBoxOf). */
export const itemCodecs: Readonly<Record<string, PictureCodec>> = { hvc1: 'hevc', avc1: 'h264', av01: 'av1' };
export const configCodecs: Readonly<Record<string, PictureCodec>> = Object.fromEntries(Object.entries(configBoxOf).map(([codec, box]) => [box, codec as PictureCodec]));

/** MP4 sample-entry types and Matroska codec ids of the three codecs. */
export function pictureCodecOfEntry(fourcc: string): PictureCodec | undefined {
  if (fourcc === 'avc1' || fourcc === 'avc3') return 'h264';
  if (fourcc === 'hvc1' || fourcc === 'hev1') return 'hevc';
  if (fourcc === 'av01') return 'av1';
  return undefined;
}
export function pictureCodecOfMatroska(codecId: string): PictureCodec | undefined {
  if (codecId === 'V_MPEG4/ISO/AVC') return 'h264';
  if (codecId === 'V_MPEGH/ISO/HEVC') return 'hevc';
  if (codecId === 'V_AV1') return 'av1';
  return undefined;
}
