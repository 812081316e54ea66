/**
 * An ICC profile rebuilt from its parsed fields (ICC.1:2010 and v4.4; issue 26): colour tags kept,
 * text tags rewritten or dropped, identifying header fields reset. A monitor profile can say
 * "Calibrated for Jane's iMac" in its description, name its maker and model in its header and
 * carry a calibration date; none of that changes how a pixel converts.
 *
 * - Header: size, version, class, colour space, PCS, rendering intent, PCS illuminant and the
 *   ICC-defined flag and attribute bits are kept; the CMM, platform, manufacturer, model and
 *   creator signatures, the creation date, the profile ID and the vendor bits are zeroed.
 * - Tags: the colour tags (matrices, curves, LUTs, white and black points, chromatic adaptation,
 *   measurement and viewing conditions) are rewritten at their types' exact lengths, reserved
 *   and padding bytes zeroed; `desc` and `cprt` get fixed text (a well-known profile's own name,
 *   else the colour space); every other tag (device and model descriptions, calibration date
 *   and target, profile sequences, metadata, vendor tags) goes.
 *
 * Linear in the profile; a tag whose type cannot be measured here refuses the file rather than
 * being copied blind.
 */
import { reject } from '../errors.js';

/** Tags whose data a colour conversion reads. */
const colourTags = new Set([
  'wtpt', 'bkpt', 'rXYZ', 'gXYZ', 'bXYZ', 'rTRC', 'gTRC', 'bTRC', 'kTRC', 'chad', 'chrm', 'lumi',
  'A2B0', 'A2B1', 'A2B2', 'B2A0', 'B2A1', 'B2A2', 'gamt', 'pre0', 'pre1', 'pre2',
  'tech', 'meas', 'view', 'rig0', 'rig2', 'ciis', 'cicp',
]); // prettier-ignore

/** Descriptions kept as they are, because they name a standard profile and nothing else. */
const wellKnown = new Set([
  'sRGB IEC61966-2.1', 'sRGB IEC61966-2-1 black scaled', 'sRGB', 'sRGB built-in', 'Display P3', 'Adobe RGB (1998)',
  'ProPhoto RGB', 'ROMM RGB', 'Apple RGB', 'ColorMatch RGB', 'Generic Gray Gamma 2.2 Profile', 'Gray Gamma 2.2',
  'Dot Gain 20%', 'U.S. Web Coated (SWOP) v2', 'Coated FOGRA39 (ISO 12647-2:2004)', 'Rec. ITU-R BT.2020-1',
  'ITU-R BT.2020', 'Rec2020', 'DCI-P3', 'Linear sRGB', 'scRGB', 'Generic RGB Profile', 'Generic Gray Profile',
]); // prettier-ignore

/** Profile classes (ICC.1 7.2.5) and colour spaces, also the PCS's (7.2.6, 7.2.7). */
const classes = new Set(['scnr', 'mntr', 'prtr', 'link', 'spac', 'abst', 'nmcl']);
const spaces = new Set([
  'XYZ ', 'Lab ', 'Luv ', 'YCbr', 'Yxy ', 'RGB ', 'GRAY', 'HSV ', 'HLS ', 'CMYK', 'CMY ',
  ...Array.from('23456789ABCDEF', (n) => `${n}CLR`),
]); // prettier-ignore

export interface CanonicalIcc {
  profile: Buffer;
  /** Whether anything was dropped, rewritten or reset (false when the input was already canonical). */
  changed: boolean;
}

/** A decompressed colour profile larger than this is not a real one (PNG's iCCP is deflated). */
export const maxProfileBytes = 16 * 1024 * 1024;

/** Why a profile cannot be rebuilt; canonicalIcc turns it into the container's refusal. */
class IccError extends Error {}
const fail = (why: string): never => {
  throw new IccError(why);
};

/**
 * The profile rebuilt; throws (415 `unsupported_structure`) for one that does not parse, since
 * dropping it would change the picture's colours and copying it would keep what it says.
 */
export function canonicalIcc(input: Buffer, container: string): CanonicalIcc {
  try {
    return rebuild(input);
  } catch (err) {
    if (err instanceof IccError) throw reject.structure(container, `an ICC profile ${err.message}`);
    throw err;
  }
}

function rebuild(input: Buffer): CanonicalIcc {
  if (input.length < 132 || input.toString('latin1', 36, 40) !== 'acsp') fail('without its header');
  const declared = input.readUInt32BE(0);
  const profile = declared <= input.length && declared >= 132 ? input.subarray(0, declared) : fail('longer than its data');
  const version = profile[8]!;
  const count = profile.readUInt32BE(128);
  if (count > 100 || 132 + 12 * count > profile.length) fail('with a tag table past its end');

  // The class, colour space and PCS are signatures from ICC's lists; any other four letters
  // would be four bytes of free text copied into every output.
  if (!classes.has(profile.toString('latin1', 12, 16)) || !spaces.has(profile.toString('latin1', 16, 20)) || !spaces.has(profile.toString('latin1', 20, 24))) {
    fail('with a class or colour space ICC does not define');
  }
  const header = Buffer.alloc(128);
  profile.copy(header, 8, 8, 24); // version, class, colour space, PCS
  header.write('acsp', 36, 'latin1');
  header.writeUInt16BE(profile.readUInt16BE(46) & 0x0003, 46); // embedded, dependent: the ICC's two flag bits
  header[63] = profile[63]! & 0x0f; // reflective, matte, negative, black and white
  header.writeUInt16BE(profile.readUInt16BE(66), 66); // rendering intent
  profile.copy(header, 68, 68, 80); // PCS illuminant
  const space = profile.toString('latin1', 16, 20).trim();

  // The kept tags, each with its data rebuilt; tags sharing data keep sharing it.
  const built = new Map<string, Buffer>();
  const tags: Array<{ signature: string; key: string }> = [];
  let description = `${space} profile`;
  const seen = new Set<string>();
  for (let i = 0; i < count; i++) {
    const entry = 132 + 12 * i;
    const signature = profile.toString('latin1', entry, entry + 4);
    const offset = profile.readUInt32BE(entry + 4);
    const size = profile.readUInt32BE(entry + 8);
    if (offset + size > profile.length || size < 8) fail('with a tag past its end');
    const data = profile.subarray(offset, offset + size);
    if (seen.has(signature)) continue; // a tag given twice: decoders read the first
    seen.add(signature);
    if (signature === 'desc') {
      const text = descriptionText(data);
      if (text !== undefined && wellKnown.has(text)) description = text;
      continue;
    }
    if (signature === 'cprt') continue;
    if (!colourTags.has(signature)) continue;
    const key = `${offset}:${size}`;
    if (!built.has(key)) built.set(key, tagData(data));
    tags.push({ signature, key });
  }
  // Required of every profile, so always present: written here, from our own text.
  built.set('desc', version >= 4 ? mluc(description) : textDescription(description));
  built.set('cprt', version >= 4 ? mluc('No copyright') : textType('No copyright'));
  tags.unshift({ signature: 'desc', key: 'desc' }, { signature: 'cprt', key: 'cprt' });

  // Layout: header, tag table, then each distinct data block, 4-byte aligned.
  const table = Buffer.alloc(4 + 12 * tags.length);
  table.writeUInt32BE(tags.length, 0);
  const blocks: Buffer[] = [];
  const placed = new Map<string, number>();
  let at = 128 + table.length;
  tags.forEach((tag, i) => {
    const data = built.get(tag.key)!;
    let offset = placed.get(tag.key);
    if (offset === undefined) {
      offset = at;
      placed.set(tag.key, at);
      const padded = Buffer.alloc(data.length + ((4 - (data.length % 4)) % 4));
      data.copy(padded);
      blocks.push(padded);
      at += padded.length;
    }
    table.write(tag.signature, 4 + 12 * i, 'latin1');
    table.writeUInt32BE(offset, 8 + 12 * i);
    table.writeUInt32BE(data.length, 12 + 12 * i);
  });
  const rebuilt = Buffer.concat([header, table, ...blocks]);
  rebuilt.writeUInt32BE(rebuilt.length, 0);
  return { profile: rebuilt, changed: !rebuilt.equals(input) };
}

/** The ASCII text of a v2 `desc` or the first record of a v4 `mluc`, if it reads as one. */
function descriptionText(data: Buffer): string | undefined {
  const type = data.toString('latin1', 0, 4);
  if (type === 'desc' && data.length >= 12) {
    const length = data.readUInt32BE(8);
    if (length >= 1 && 12 + length <= data.length) return data.toString('latin1', 12, 12 + length - 1);
  }
  if (type === 'mluc' && data.length >= 28) {
    const length = data.readUInt32BE(20);
    const offset = data.readUInt32BE(24);
    if (offset + length <= data.length && length % 2 === 0) return Buffer.from(data.subarray(offset, offset + length)).swap16().toString('utf16le');
  }
  return undefined;
}

/** A tag's data at its type's exact length, reserved and padding bytes zeroed. */
function tagData(data: Buffer): Buffer {
  const type = data.toString('latin1', 0, 4);
  const exact = (length: number): Buffer => {
    if (length > data.length) fail(`with a "${type.trim()}" tag shorter than its fields`);
    const out = Buffer.from(data.subarray(0, length));
    out.fill(0, 4, 8); // reserved
    return out;
  };
  switch (type) {
    // Every XYZ tag kept holds one XYZ number (white and black points, primaries, luminance),
    // and the one sf32 tag the 3x3 adaptation matrix: anything after them is not colour.
    case 'XYZ ':
      return exact(20);
    case 'sf32':
      return exact(44);
    case 'sig ':
    case 'cicp':
      return exact(12);
    case 'meas':
    case 'view':
      return exact(36);
    case 'chrm':
      return exact(12 + 8 * (data.length >= 10 ? data.readUInt16BE(8) : 0));
    case 'curv':
    case 'para': {
      const out = exact(curveLength(data, 0));
      if (type === 'para') out.fill(0, 10, 12);
      return out;
    }
    case 'mft1':
    case 'mft2':
      return exact(lutLength(data, type));
    case 'mAB ':
    case 'mBA ':
      return lutAB(data, type);
    default:
      return fail(`with a colour tag of type "${type.replace(/[^\x20-\x7e]/g, '?')}"`);
  }
}

/** Length of the `curv` or `para` curve at `at`, without padding. */
function curveLength(data: Buffer, at: number): number {
  if (at + 12 > data.length) fail('with a curve past its end');
  const type = data.toString('latin1', at, at + 4);
  if (type === 'curv') return 12 + 2 * data.readUInt32BE(at + 8);
  if (type === 'para') {
    const parameters = [1, 3, 4, 5, 7][data.readUInt16BE(at + 8)];
    return parameters === undefined ? fail('with a parametric curve of an unknown kind') : 12 + 4 * parameters;
  }
  return fail('with a curve of an unknown type');
}

/** `lut8Type` and `lut16Type`: header, input tables, CLUT, output tables (ICC.1 10.8, 10.9). */
function lutLength(data: Buffer, type: string): number {
  if (data.length < 52) fail('with a LUT shorter than its header');
  const inputs = data[8]!;
  const outputs = data[9]!;
  const grid = data[10]!;
  const clut = grid ** inputs * outputs;
  if (type === 'mft1') return 48 + 256 * inputs + clut + 256 * outputs;
  return 52 + 2 * (data.readUInt16BE(48) * inputs + clut + data.readUInt16BE(50) * outputs);
}

/**
 * `lutAtoBType` and `lutBtoAType` (ICC.1 10.10, 10.11): a header naming where each element lies.
 * Each element is copied at its offset, at its exact length; the gaps between them are zeroed.
 */
function lutAB(data: Buffer, type: string): Buffer {
  if (data.length < 32) fail('with a LUT shorter than its header');
  const inputs = data[8]!;
  const outputs = data[9]!;
  const out = Buffer.alloc(data.length);
  data.copy(out, 0, 0, 4);
  data.copy(out, 8, 8, 10);
  data.copy(out, 12, 12, 32);
  let end = 32;
  const keep = (from: number, length: number): void => {
    if (from < 32 || from + length > data.length) fail('with a LUT element past its end');
    data.copy(out, from, from, from + length);
    end = Math.max(end, from + length);
  };
  const curves = (from: number, channels: number): void => {
    let at = from;
    for (let i = 0; i < channels; i++) {
      const length = curveLength(data, at);
      keep(at, length);
      out.fill(0, at + 4, at + 8);
      if (data.toString('latin1', at, at + 4) === 'para') out.fill(0, at + 10, at + 12);
      at += length + ((4 - (length % 4)) % 4);
    }
  };
  const [b, matrix, m, clut, a] = [12, 16, 20, 24, 28].map((at) => data.readUInt32BE(at)) as [number, number, number, number, number];
  // mAB: A curves (inputs) → CLUT → M curves (outputs) → matrix → B curves (outputs); mBA the reverse.
  const [aChannels, mChannels, bChannels] = type === 'mAB ' ? [inputs, outputs, outputs] : [outputs, inputs, inputs];
  if (b === 0) fail('with a LUT missing its B curves');
  curves(b, bChannels);
  if (matrix) keep(matrix, 48);
  if (m) curves(m, mChannels);
  if (a) curves(a, aChannels);
  if (clut) {
    // A CLUT maps the LUT's inputs to its outputs, in either direction.
    if (clut + 20 > data.length || inputs > 16) fail('with a CLUT past its end');
    let points = 1;
    for (let i = 0; i < inputs; i++) points *= data[clut + i]!;
    const precision = data[clut + 16]!;
    if (precision !== 1 && precision !== 2) fail('with a CLUT of an unknown precision');
    keep(clut, 20 + points * outputs * precision);
    out.fill(0, clut + inputs, clut + 16); // grid entries of channels the LUT does not have
    out.fill(0, clut + 17, clut + 20); // padding after the precision byte
  }
  return out.subarray(0, end);
}

/** A v2 `textDescriptionType` holding `text` (ASCII), with empty Unicode and ScriptCode parts. */
function textDescription(text: string): Buffer {
  const ascii = Buffer.from(`${text}\0`, 'latin1');
  const out = Buffer.alloc(12 + ascii.length + 8 + 3 + 67);
  out.write('desc', 0, 'latin1');
  out.writeUInt32BE(ascii.length, 8);
  ascii.copy(out, 12);
  return out;
}

/** A v2 `textType` holding `text`. */
function textType(text: string): Buffer {
  return Buffer.concat([Buffer.from('text\0\0\0\0', 'latin1'), Buffer.from(`${text}\0`, 'latin1')]);
}

/** A v4 `multiLocalizedUnicodeType` with one en-US record. */
function mluc(text: string): Buffer {
  const utf16 = Buffer.from(text, 'utf16le').swap16();
  const out = Buffer.alloc(28 + utf16.length);
  out.write('mluc', 0, 'latin1');
  out.writeUInt32BE(1, 8);
  out.writeUInt32BE(12, 12);
  out.write('enUS', 16, 'latin1');
  out.writeUInt32BE(utf16.length, 20);
  out.writeUInt32BE(28, 24);
  utf16.copy(out, 28);
  return out;
}

/** The verifier's check: a profile is canonical when rebuilding it changes nothing. */
export function isCanonicalIcc(profile: Buffer): boolean {
  try {
    return rebuild(profile).profile.equals(profile);
  } catch {
    return false; // a profile that does not even parse is not one scrubline wrote
  }
}
