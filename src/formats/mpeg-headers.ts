/**
 * MPEG-1, MPEG-2 and MPEG-4 Part 2 video: the start-code streams whose headers (sequence, GOP,
 * VOS/VOL) sit in a container's decoder configuration and in the packets. Each may carry
 * user_data (start code 0x000001B2): encoders write their name and version there ("Lavc59.37.100",
 * "XviD0064"), cameras their model, broadcast gear captions. It is not picture data, and decoders
 * skip it, so it is dropped from the headers a record holds, and the packets are proven free of it
 * (issue 26). Pure; linear in the bytes.
 *
 * Layouts: ISO/IEC 11172-2 and 13818-2 (user_data), 14496-2 6.2 (user_data in VOS/VO/VOL/GOV);
 * the MP4 `esds` box, ISO/IEC 14496-1 7.2.6 (ES_Descriptor and what it holds).
 */
import { ConfigError, type CanonicalConfig } from './codec-config.js';

const userDataCode = 0xb2;

/** FFmpeg's names of the codecs whose headers may carry user data. */
export const mpegHeaderCodecs: ReadonlySet<string> = new Set(['mpeg4', 'mpeg1video', 'mpeg2video']);

/** Where each start code begins (the first 0x00 of 00 00 01). */
function startCodes(data: Uint8Array): number[] {
  const found: number[] = [];
  for (let i = 0; i + 3 < data.length; i++) {
    if (data[i + 2]! > 1) i += 2;
    else if (data[i] === 0 && data[i + 1] === 0 && data[i + 2] === 1) {
      found.push(i);
      i += 2;
    }
  }
  return found;
}

/** Headers with every user_data section (its start code up to the next one) left out, and how many went. */
export function withoutUserData(headers: Buffer): { bytes: Buffer; dropped: number } {
  const codes = startCodes(headers);
  const kept: Buffer[] = [];
  let dropped = 0;
  let from = 0;
  for (const [k, at] of codes.entries()) {
    if (headers[at + 3] !== userDataCode) continue;
    kept.push(headers.subarray(from, at));
    from = codes[k + 1] ?? headers.length;
    dropped++;
  }
  kept.push(headers.subarray(from));
  return { bytes: dropped === 0 ? headers : Buffer.concat(kept), dropped };
}

/** Whether user data begins anywhere in these bytes. */
export const holdsUserData = (data: Uint8Array): boolean => startCodes(data).some((at) => data[at + 3] === userDataCode);

/**
 * Finds user_data start codes in a stream read in chunks: the three bytes before each chunk are
 * carried over, so a start code split across two chunks is found.
 */
export class UserDataScanner {
  found = false;
  private tail = Buffer.alloc(0);

  push(chunk: Buffer): void {
    if (this.found) return;
    const joined = this.tail.length > 0 ? Buffer.concat([this.tail, chunk.subarray(0, 3)]) : Buffer.alloc(0);
    if (holdsUserData(joined) || holdsUserData(chunk)) this.found = true;
    this.tail = Buffer.from(chunk.subarray(Math.max(0, chunk.length - 3)));
  }
}

/** An MPEG-4 Systems descriptor length: 1-4 bytes of 7 bits, the top bit saying another follows. */
function descriptorAt(data: Buffer, pos: number): { tag: number; body: number; end: number } {
  const tag = data[pos];
  if (tag === undefined) throw new ConfigError('a descriptor runs past the record');
  let size = 0;
  let at = pos + 1;
  for (let i = 0; i < 4; i++) {
    const byte = data[at++];
    if (byte === undefined) throw new ConfigError('a descriptor runs past the record');
    size = size * 128 + (byte & 0x7f);
    if (!(byte & 0x80)) break;
    if (i === 3) throw new ConfigError('a descriptor length longer than four bytes');
  }
  if (at + size > data.length) throw new ConfigError('a descriptor runs past the record');
  return { tag, body: at, end: at + size };
}

/** A descriptor written with the four-byte length FFmpeg uses, so rebuilding is a fixed point. */
function descriptor(tag: number, ...body: Buffer[]): Buffer {
  const length = body.reduce((n, b) => n + b.length, 0);
  return Buffer.concat([Buffer.from([tag, 0x80 | ((length >> 21) & 0x7f), 0x80 | ((length >> 14) & 0x7f), 0x80 | ((length >> 7) & 0x7f), length & 0x7f]), ...body]);
}

/**
 * An `esds` payload (version and flags, then the ES_Descriptor), rebuilt from its fields: the
 * stream id; the decoder configuration's fixed fields (object type, stream type, buffer size and
 * bit rates); its decoder-specific headers without user data; and the MP4 sync-layer preset. The
 * ES_Descriptor's optional parts (a URL, which is free text, a dependency, an OCR stream) and any
 * other descriptor are dropped.
 */
export function canonicalEsds(record: Buffer): CanonicalConfig {
  if (record.length < 4 || record.readUInt32BE(0) !== 0) throw new ConfigError('esds version is not 0');
  const es = descriptorAt(record, 4);
  if (es.tag !== 0x03 || es.body + 3 > es.end) throw new ConfigError('esds does not hold an ES_Descriptor');
  const esId = record.subarray(es.body, es.body + 2);
  const flags = record[es.body + 2]!;
  let at = es.body + 3;
  if (flags & 0x80) at += 2; // dependsOn_ES_ID
  if (flags & 0x40) at += 1 + (record[at] ?? 0); // URL
  if (flags & 0x20) at += 2; // OCR_ES_Id
  let dropped = flags & 0xe0 ? 1 : 0;
  let config: Buffer | undefined;
  let headers: Buffer | undefined;
  while (at < es.end) {
    const d = descriptorAt(record, at);
    if (d.tag === 0x04 && !config) {
      if (d.end - d.body < 13) throw new ConfigError('a DecoderConfigDescriptor shorter than its fields');
      config = record.subarray(d.body, d.body + 13);
      for (let inner = d.body + 13; inner < d.end; ) {
        const child = descriptorAt(record, inner);
        if (child.tag === 0x05 && !headers) headers = record.subarray(child.body, child.end);
        else dropped++;
        inner = child.end;
      }
    } else if (d.tag !== 0x06) dropped++;
    at = d.end;
  }
  if (!config) throw new ConfigError('esds has no DecoderConfigDescriptor');
  const cleaned = headers && withoutUserData(headers);
  const removed: CanonicalConfig['removed'] = {};
  if (cleaned && cleaned.dropped > 0) removed.cameraData = cleaned.dropped;
  if (dropped > 0) removed.streamMetadata = dropped;
  // streamType's reserved bit is 1 (14496-1 7.2.6.6).
  const fixed = Buffer.from(config);
  fixed[1] = fixed[1]! | 0x01;
  const decoderConfig = descriptor(0x04, fixed, ...(cleaned ? [descriptor(0x05, cleaned.bytes)] : []));
  const bytes = Buffer.concat([Buffer.alloc(4), descriptor(0x03, esId, Buffer.from([0]), decoderConfig, descriptor(0x06, Buffer.from([0x02])))]);
  return { bytes, removed };
}

/** Matroska's CodecPrivate for these codecs: the headers themselves, without user data. */
export function canonicalMpegHeaders(record: Buffer): CanonicalConfig {
  const cleaned = withoutUserData(record);
  return { bytes: cleaned.bytes, removed: cleaned.dropped > 0 ? { cameraData: cleaned.dropped } : {} };
}
