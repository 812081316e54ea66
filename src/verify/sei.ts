/**
 * SEI "user data unregistered" messages in an H.264 or HEVC stream: where camcorders put the date,
 * time, GPS position and model of each frame (Sony and Panasonic AVCHD "MDPM", ExifTool -ee). A
 * container remux copies them with the pictures, and scrubline cannot drop them without touching
 * the bitstream, so the verifier refuses a file that keeps any but the encoders' own settings
 * strings (x264, x265), which name software and options, not a person, a place or a device.
 *
 * Input: packets as ISOBMFF and Matroska store them, each NAL unit behind a big-endian length of
 * `lengthSize` bytes (4 almost always; H.264 allows 1 and 2). Linear in the input; stops at the
 * first length that does not fit.
 */

export interface UserData {
  /** The message's UUID, as 32 hex digits. */
  uuid: string;
  /** Its payload after the UUID (with emulation-prevention bytes removed). */
  data: Buffer;
}

/** Encoder settings strings: software and options, which every re-encode writes anew. */
const encoderSettings = [Buffer.from('x264 - core', 'latin1'), Buffer.from('x265 (build', 'latin1')];

export const isEncoderSettings = (message: UserData): boolean => encoderSettings.some((prefix) => message.data.subarray(0, prefix.length).equals(prefix));

/** Removes H.264/HEVC emulation-prevention bytes (00 00 03 → 00 00). */
function unescape(nal: Buffer): Buffer {
  if (nal.indexOf(Buffer.from([0, 0, 3])) < 0) return nal;
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

/** The SEI messages' user data in a run of length-prefixed NAL units. */
export function seiUserData(stream: Buffer, codec: 'h264' | 'hevc', lengthSize: 1 | 2 | 4 = 4): UserData[] {
  const found: UserData[] = [];
  const headerBytes = codec === 'h264' ? 1 : 2;
  for (let pos = 0; pos + lengthSize <= stream.length; ) {
    const length = stream.readUIntBE(pos, lengthSize);
    const start = pos + lengthSize;
    const end = start + length;
    if (length === 0 || end > stream.length) break;
    const type = codec === 'h264' ? stream[start]! & 0x1f : (stream[start]! >> 1) & 0x3f;
    const isSei = codec === 'h264' ? type === 6 : type === 39 || type === 40;
    if (isSei) found.push(...userDataIn(unescape(stream.subarray(start + headerBytes, end))));
    pos = end;
  }
  return found;
}

/** sei_message()s of one SEI RBSP: type and size coded as runs of 0xFF plus a last byte. */
function userDataIn(rbsp: Buffer): UserData[] {
  const found: UserData[] = [];
  let pos = 0;
  while (pos < rbsp.length && rbsp[pos] !== 0x80) {
    let type = 0;
    while (pos < rbsp.length && rbsp[pos] === 0xff) type += rbsp[pos++]!;
    type += rbsp[pos++] ?? 0;
    let size = 0;
    while (pos < rbsp.length && rbsp[pos] === 0xff) size += rbsp[pos++]!;
    size += rbsp[pos++] ?? 0;
    if (pos + size > rbsp.length) break;
    if (type === 5 && size >= 16) found.push({ uuid: rbsp.toString('hex', pos, pos + 16), data: rbsp.subarray(pos + 16, pos + size) });
    pos += size;
  }
  return found;
}
