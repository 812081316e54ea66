/**
 * The units a coded picture stream is made of: H.264 and HEVC NAL units, AV1 OBUs. What a cleaned
 * stream keeps is the coded pictures and the parameter sets they are decoded with, nothing else
 * (issue 26): SEI messages of every payload type (camcorder MDPM data, Apple's marker, registered
 * T.35 text, HDR10+), Dolby Vision RPUs, filler, reserved and unspecified types, AV1 metadata and
 * padding OBUs all go. Pure and linear in the input: every reader here moves forward by a length
 * it has checked against the end.
 */
import type { RemovedCategory } from '../context.js';

export type PictureCodec = 'h264' | 'hevc' | 'av1';

/**
 * Unit types a cleaned stream may hold, per codec:
 *   H.264 (ITU-T H.264, table 7-1): 1-5 coded slices and data partitions, 7 SPS, 8 PPS.
 *   HEVC (ITU-T H.265, table 7-1): 0-9 and 16-21 coded slices, 32 VPS, 33 SPS, 34 PPS.
 *   AV1 (section 6.2.2): 1 sequence header, 2 temporal delimiter, 3 frame header, 4 tile
 *   group, 6 frame, 7 redundant frame header, 8 tile list.
 * Access unit delimiters, end-of-sequence markers and filler carry no picture and are dropped too.
 */
export const keptUnitTypes: Record<PictureCodec, ReadonlySet<number>> = {
  h264: new Set([1, 2, 3, 4, 5, 7, 8]),
  hevc: new Set([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17, 18, 19, 20, 21, 32, 33, 34]),
  av1: new Set([1, 2, 3, 4, 6, 7, 8]),
};

/** The `filter_units` bitstream filter that keeps those types and drops every other unit. Pure. */
export function keepUnitsFilter(codec: PictureCodec): string {
  const types = [...keptUnitTypes[codec]].sort((a, b) => a - b);
  const ranges: string[] = [];
  for (let i = 0; i < types.length; ) {
    let j = i;
    while (j + 1 < types.length && types[j + 1] === types[j]! + 1) j++;
    ranges.push(i === j ? String(types[i]) : `${types[i]}-${types[j]}`);
    i = j + 1;
  }
  return `filter_units=pass_types=${ranges.join('|')}`;
}

export const nalType = (codec: 'h264' | 'hevc', firstByte: number): number => (codec === 'h264' ? firstByte & 0x1f : (firstByte >> 1) & 0x3f);

/** Removes H.264/HEVC emulation-prevention bytes (00 00 03 → 00 00). */
export function unescapeRbsp(nal: Uint8Array): Buffer {
  const out = Buffer.alloc(nal.length);
  let n = 0;
  let zeros = 0;
  for (const byte of nal) {
    if (zeros >= 2 && byte === 3) {
      zeros = 0;
      continue;
    }
    zeros = byte === 0 ? zeros + 1 : 0;
    out[n++] = byte;
  }
  return out.subarray(0, n);
}

/** The payload types of an SEI NAL's messages (type and size coded as runs of 0xFF plus a last byte). */
export function seiMessages(nal: Uint8Array, codec: 'h264' | 'hevc'): Array<{ type: number; payload: Buffer }> {
  const rbsp = unescapeRbsp(nal.subarray(codec === 'h264' ? 1 : 2));
  const found: Array<{ type: number; payload: Buffer }> = [];
  let pos = 0;
  while (pos < rbsp.length && rbsp[pos] !== 0x80) {
    let type = 0;
    while (pos < rbsp.length && rbsp[pos] === 0xff) type += rbsp[pos++]!;
    type += rbsp[pos++] ?? 0;
    let size = 0;
    while (pos < rbsp.length && rbsp[pos] === 0xff) size += rbsp[pos++]!;
    size += rbsp[pos++] ?? 0;
    if (pos + size > rbsp.length) break;
    found.push({ type, payload: rbsp.subarray(pos, pos + size) });
    pos += size;
  }
  return found;
}

/**
 * ITU-T T.35 payloads that are HDR dynamic metadata, not a person's: SMPTE ST 2094-40 (HDR10+,
 * country 0xB5, provider 0x003C, oriented code 0x0001) and Dolby Vision's (provider 0x003B).
 */
function t35Category(payload: Uint8Array): RemovedCategory {
  if (payload[0] === 0xb5 && payload[1] === 0x00 && payload[2] === 0x3c && payload[3] === 0x00 && payload[4] === 0x01) return 'hdr10plus';
  if (payload[0] === 0xb5 && payload[1] === 0x00 && payload[2] === 0x3b) return 'dolbyVision';
  return 'cameraData';
}

/** H.264/HEVC SEI payload types 137 and 144 (mastering display, content light level), 147 (alternative transfer). */
const hdrSeiTypes = new Set([137, 144, 147]);

/** What a dropped unit was, in the report's vocabulary; SEI NALs count once per message. */
export function droppedCategories(codec: PictureCodec, type: number, unit: Uint8Array, count: (category: RemovedCategory) => void): void {
  if (codec === 'av1') {
    // AV1 metadata OBU (5): metadata_type leb128 after the header; 1 HDR CLL, 2 HDR MDCV, 4 ITU-T T.35.
    if (type === 5) {
      const header = unit[0]! & 0x04 ? 2 : 1;
      const body = obuPayload(unit, header);
      const metadataType = body?.[0];
      count(metadataType === 1 || metadataType === 2 ? 'hdrMetadata' : metadataType === 4 && body ? t35Category(body.subarray(1)) : 'streamMetadata');
    } else count('streamMetadata');
    return;
  }
  const isSei = codec === 'h264' ? type === 6 : type === 39 || type === 40;
  if (isSei) {
    const messages = seiMessages(unit, codec);
    if (messages.length === 0) count('streamMetadata');
    for (const m of messages) {
      if (m.type === 4) count(t35Category(m.payload));
      else if (m.type === 5) count('cameraData');
      else if (hdrSeiTypes.has(m.type)) count('hdrMetadata');
      else count('streamMetadata');
    }
    return;
  }
  // HEVC 62 and 63 are unspecified in H.265; Dolby Vision puts its RPU and enhancement layer there.
  if (codec === 'hevc' && (type === 62 || type === 63)) return count('dolbyVision');
  count('streamMetadata');
}

/** An OBU's payload after its header (and its leb128 size, when it has one); undefined if malformed. */
function obuPayload(unit: Uint8Array, headerBytes: number): Uint8Array | undefined {
  if (!(unit[0]! & 0x02)) return unit.subarray(headerBytes);
  const size = leb128(unit, headerBytes);
  return size ? unit.subarray(size.next, size.next + size.value) : undefined;
}

/** An unsigned LEB128 of at most 8 bytes at `pos`: its value and the position after it. */
export function leb128(buf: Uint8Array, pos: number): { value: number; next: number } | undefined {
  let value = 0;
  for (let i = 0; i < 8; i++) {
    const byte = buf[pos + i];
    if (byte === undefined) return undefined;
    value += (byte & 0x7f) * 2 ** (7 * i);
    if (!(byte & 0x80)) return { value, next: pos + i + 1 };
  }
  return undefined;
}

/** One unit of a stream: its type and its bytes (header included). */
export interface Unit {
  type: number;
  bytes: Buffer;
}

/**
 * Splits a stream of units arriving in chunks (a packet dump on a pipe): H.264/HEVC as stored in
 * MP4 and Matroska, each NAL behind a big-endian length of `lengthSize` bytes; AV1 as low-overhead
 * OBUs, each with its size field (an OBU without one cannot be delimited in a dump, and is an
 * error). Only a unit that straddles two chunks is copied; the units returned are views of the
 * chunk (valid until the caller reuses its memory, if it does: `chunksReused`). `end()` says
 * whether the stream stopped on a unit boundary.
 */
export class UnitSplitter {
  /** Chunks not yet split, and how many bytes the unit they start needs before it can be (linear: no re-copying). */
  private chunks: Buffer[] = [];
  private buffered = 0;
  private need = 1;
  error: string | undefined;

  constructor(
    private readonly codec: PictureCodec,
    private readonly lengthSize: 1 | 2 | 4 = 4,
    /** The caller reuses a chunk's memory once its units are used: keep copies of what outlives a push. */
    private readonly chunksReused = false,
  ) {}

  private kept(bytes: Buffer): Buffer {
    return this.chunksReused ? Buffer.from(bytes) : bytes;
  }

  push(chunk: Buffer): Unit[] {
    if (this.error || chunk.length === 0) return [];
    if (this.buffered + chunk.length < this.need) {
      this.chunks.push(this.kept(chunk));
      this.buffered += chunk.length;
      return [];
    }
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const data = this.chunks.length === 1 ? chunk : Buffer.concat(this.chunks, this.buffered);
    const units: Unit[] = [];
    let pos = 0;
    for (;;) {
      const next = this.codec === 'av1' ? this.obuAt(data, pos) : this.nalAt(data, pos);
      if (typeof next === 'number' || this.error) {
        this.need = typeof next === 'number' ? next : 1;
        break;
      }
      units.push(next.unit);
      pos = next.end;
    }
    // What is left starts a unit, kept for the next push.
    const rest = data.subarray(pos);
    this.chunks = rest.length > 0 ? [this.kept(rest)] : [];
    this.buffered = rest.length;
    return units;
  }

  /** True when the stream ended exactly after a unit. */
  end(): boolean {
    if (this.buffered > 0 && !this.error) this.error = 'the stream ends inside a unit';
    return this.error === undefined;
  }

  /** The unit at `pos`, or how many bytes from `pos` it needs to be complete. */
  private nalAt(data: Buffer, pos: number): { unit: Unit; end: number } | number {
    if (pos + this.lengthSize > data.length) return this.lengthSize;
    const length = data.readUIntBE(pos, this.lengthSize);
    if (length === 0) {
      this.error = 'a unit of length 0';
      return 1;
    }
    const start = pos + this.lengthSize;
    if (start + length > data.length) return this.lengthSize + length;
    const bytes = data.subarray(start, start + length);
    if (bytes[0]! & 0x80) {
      this.error = 'a unit whose forbidden bit is set';
      return 1;
    }
    return { unit: { type: nalType(this.codec as 'h264' | 'hevc', bytes[0]!), bytes }, end: start + length };
  }

  private obuAt(data: Buffer, pos: number): { unit: Unit; end: number } | number {
    const header = data[pos];
    if (header === undefined) return 1;
    if (header & 0x80) {
      this.error = 'an OBU whose forbidden bit is set';
      return 1;
    }
    if (!(header & 0x02)) {
      this.error = 'an OBU without a size field';
      return 1;
    }
    const headerBytes = header & 0x04 ? 2 : 1;
    const size = leb128(data, pos + headerBytes);
    if (size === undefined) {
      if (data.length - (pos + headerBytes) >= 8) this.error = 'an OBU size that does not end';
      return headerBytes + 8;
    }
    if (size.next + size.value > data.length) return size.next - pos + size.value;
    return { unit: { type: (header >> 3) & 0x0f, bytes: data.subarray(pos, size.next + size.value) }, end: size.next + size.value };
  }
}

/**
 * A coded image item's bytes (HEIF `hvc1`/`avc1`, AVIF `av01`), with only the units a cleaned
 * stream keeps: the item copies the coded picture, and may carry SEI or metadata OBUs beside it as
 * a video sample can. NAL units are written back behind lengths of the record's size; parameter
 * sets are handed to `checkUnit`, which throws to refuse one. Throws UnitError when the item does
 * not split into units.
 */
export class UnitError extends Error {}

export function keptItemUnits(
  codec: PictureCodec,
  data: Buffer,
  lengthSize: 1 | 2 | 4,
  count: (category: RemovedCategory) => void,
  checkUnit: (unit: Unit) => void = () => undefined,
): Buffer {
  const splitter = new UnitSplitter(codec, lengthSize);
  const units = splitter.push(data);
  if (!splitter.end()) throw new UnitError(splitter.error ?? 'the item does not split into units');
  const kept: Buffer[] = [];
  for (const unit of units) {
    if (!keptUnitTypes[codec].has(unit.type)) {
      droppedCategories(codec, unit.type, unit.bytes, count);
      continue;
    }
    checkUnit(unit);
    if (codec !== 'av1') {
      const length = Buffer.alloc(lengthSize);
      length.writeUIntBE(unit.bytes.length, 0, lengthSize);
      kept.push(length);
    }
    kept.push(unit.bytes);
  }
  return Buffer.concat(kept);
}
