/**
 * Lossless HEIC/HEIF/AVIF rebuild by ISOBMFF item surgery (../shared/METADATA.md, HEIF).
 *
 * A HEIF still is a `meta` box that lists items (coded images, grids, Exif, XMP, thumbnails,
 * depth maps …) and says where each item's bytes are (`iloc`), how items relate (`iref`) and
 * which properties each has (`iprp`). We keep the primary item, the tiles a grid is built from
 * and an alpha plane, with only the properties a decoder needs, and write a new file:
 *
 *   ftyp (as is) · meta (hdlr, pitm, iinf, iref, iprp, iloc, idat rebuilt) · mdat (kept extents)
 *
 * Coded image data is copied byte for byte, so HEVC HEIC works although sharp cannot decode it.
 * Everything else (Exif/XMP items, thumbnails, gain maps, `mpvd` motion photos, `uuid` boxes,
 * trailers) is left behind. What we cannot rebuild safely (sequences, protected or external
 * items, unknown essential properties) is refused.
 */
import { countRemoved, type Removed, type RemovedCategory } from '../context.js';
import { canonicalConfig, ConfigError, configBoxOf, configCodecs, itemCodecs, lengthSizeOf } from '../formats/codec-config.js';
import { canonicalIcc } from '../formats/icc.js';
import { checkParameterSet, ParameterSetContext, ParameterSetError } from '../formats/parameter-sets.js';
import { keptItemUnits, UnitError, type PictureCodec } from '../formats/units.js';
import { reject, ScrubError } from '../errors.js';
import { exifCategories } from '../formats/tiff-ifd.js';
import { WorkBudget } from '../formats/work-budget.js';
import type { ImageStripResult } from './strip-image.js';
import { stripJpeg } from './strip-jpeg.js';

const FORMAT = 'HEIF';

interface Box {
  type: string;
  /** Offset of the box's payload (after size, type and any 64-bit size). */
  body: number;
  end: number;
}

/** The box starting at `pos`, or undefined when its header does not fit before `end`. */
function boxAt(input: Buffer, pos: number, end: number): Box | undefined {
  if (pos + 8 > end) return undefined;
  let size = input.readUInt32BE(pos);
  const type = input.toString('latin1', pos + 4, pos + 8);
  let body = pos + 8;
  if (size === 1) {
    if (pos + 16 > end) return undefined;
    size = Number(input.readBigUInt64BE(pos + 8));
    body = pos + 16;
  } else if (size === 0) {
    size = end - pos;
  }
  if (size < body - pos || pos + size > end) return undefined;
  return { type, body, end: pos + size };
}

function boxesIn(input: Buffer, start: number, end: number): Box[] {
  const list: Box[] = [];
  for (let pos = start; pos < end; ) {
    const box = boxAt(input, pos, end);
    if (!box) throw reject.corrupt(FORMAT, 'a box runs past its parent');
    list.push(box);
    pos = box.end;
  }
  return list;
}

/**
 * Top-level boxes up to the first thing that is not a box: Samsung's SEF and other writers append
 * trailers after the last box. A trailer is dropped (and counted).
 */
function topLevelBoxes(input: Buffer, removed: Removed): Box[] {
  const list: Box[] = [];
  let pos = 0;
  for (let box = boxAt(input, 0, input.length); box && /^[\x20-\x7e]{4}$/.test(box.type); box = boxAt(input, pos, input.length)) {
    list.push(box);
    pos = box.end;
  }
  if (pos < input.length) countRemoved(removed, 'trailer');
  return list;
}

/** A cursor over one box payload; every read is bounds-checked against the box end. */
class Reader {
  constructor(
    private readonly input: Buffer,
    public pos: number,
    private readonly end: number,
  ) {}
  private need(n: number): void {
    if (this.pos + n > this.end) throw reject.corrupt(FORMAT, 'a box is shorter than its fields');
  }
  u8(): number {
    this.need(1);
    return this.input[this.pos++]!;
  }
  u16(): number {
    this.need(2);
    const v = this.input.readUInt16BE(this.pos);
    this.pos += 2;
    return v;
  }
  u32(): number {
    this.need(4);
    const v = this.input.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }
  /** An unsigned integer of 0, 4 or 8 bytes (iloc's field sizes). */
  sized(bytes: number): number {
    if (bytes === 0) return 0;
    if (bytes === 4) return this.u32();
    if (bytes === 8) {
      this.need(8);
      const v = this.input.readBigUInt64BE(this.pos);
      this.pos += 8;
      if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw reject.corrupt(FORMAT, 'offset out of range');
      return Number(v);
    }
    throw reject.corrupt(FORMAT, 'iloc field size is not 0, 4 or 8');
  }
  fourcc(): string {
    this.need(4);
    const v = this.input.toString('latin1', this.pos, this.pos + 4);
    this.pos += 4;
    return v;
  }
  cstring(): string {
    const nul = this.input.indexOf(0, this.pos);
    if (nul < 0 || nul >= this.end) throw reject.corrupt(FORMAT, 'unterminated string');
    const v = this.input.toString('utf8', this.pos, nul);
    this.pos = nul + 1;
    return v;
  }
  /** Version and flags of a FullBox. */
  full(): { version: number; flags: number } {
    const word = this.u32();
    return { version: word >>> 24, flags: word & 0xffffff };
  }
}

interface Item {
  id: number;
  type: string;
  hidden: boolean;
  contentType?: string;
}

interface Extent {
  offset: number;
  length: number;
}

interface Location {
  id: number;
  method: number;
  extents: Extent[];
}

interface Association {
  essential: boolean;
  /** 1-based index into ipco; 0 means "no property". */
  index: number;
}

/** Coded or derived image items we know how to carry. */
const imageItemTypes = new Set(['hvc1', 'av01', 'avc1', 'jpeg', 'j2k1', 'grid', 'iden', 'iovl']);
/** Properties a decoder needs to show the picture as it was: codec config, size, colour, geometry, alpha. */
const keptProperties = new Set([
  'hvcC', 'av1C', 'avcC', 'jpgC', 'j2kH', 'ispe', 'pixi', 'colr', 'irot', 'imir', 'clap', 'pasp', 'auxC', 'rloc', 'lsel',
  'a1op', 'a1lx', 'clli', 'mdcv', 'cclv', 'amve',
]);
const alphaUrns = new Set(['urn:mpeg:mpegB:cicp:systems:auxiliary:alpha', 'urn:mpeg:hevc:2015:auxid:1', 'urn:mpeg:avc:2015:auxid:1']);

function parseItems(input: Buffer, box: Box): Item[] {
  const r = new Reader(input, box.body, box.end);
  const { version } = r.full();
  const count = version === 0 ? r.u16() : r.u32();
  const entries = boxesIn(input, r.pos, box.end).filter((b) => b.type === 'infe');
  if (entries.length !== count) throw reject.corrupt(FORMAT, 'iinf entry count does not match');
  return entries.map((infe) => {
    const e = new Reader(input, infe.body, infe.end);
    const { version: v, flags } = e.full();
    if (v < 2) throw reject.structure(FORMAT, 'item info of a version before 2');
    const id = v === 2 ? e.u16() : e.u32();
    if (e.u16() !== 0) throw reject.structure(FORMAT, 'a protected item');
    const type = e.fourcc();
    e.cstring(); // item_name: free text, never copied
    const item: Item = { id, type, hidden: (flags & 1) === 1 };
    if (type === 'mime') item.contentType = e.cstring();
    return item;
  });
}

function parseLocations(input: Buffer, box: Box, budget: WorkBudget): Location[] {
  const r = new Reader(input, box.body, box.end);
  const { version } = r.full();
  if (version > 2) throw reject.structure(FORMAT, 'iloc of an unknown version');
  const sizes = r.u16();
  const offsetSize = sizes >> 12;
  const lengthSize = (sizes >> 8) & 0xf;
  const baseSize = (sizes >> 4) & 0xf;
  const indexSize = version > 0 ? sizes & 0xf : 0;
  const count = version < 2 ? r.u16() : r.u32();
  const locations: Location[] = [];
  for (let i = 0; i < count; i++) {
    const id = version < 2 ? r.u16() : r.u32();
    const method = version > 0 ? r.u16() & 0xf : 0;
    if (r.u16() !== 0) throw reject.structure(FORMAT, 'an item stored in another file');
    const base = r.sized(baseSize);
    const extentCount = r.u16();
    // With zero-width offset and length fields an extent costs no bytes: count, not size, bounds it.
    budget.spend(1 + extentCount);
    const extents: Extent[] = [];
    for (let j = 0; j < extentCount; j++) {
      if (indexSize > 0) r.sized(indexSize);
      extents.push({ offset: base + r.sized(offsetSize), length: r.sized(lengthSize) });
    }
    locations.push({ id, method, extents });
  }
  return locations;
}

function parseReferences(input: Buffer, box: Box): Array<{ type: string; from: number; to: number[] }> {
  const r = new Reader(input, box.body, box.end);
  const { version } = r.full();
  const id = (x: Reader): number => (version === 0 ? x.u16() : x.u32());
  return boxesIn(input, r.pos, box.end).map((ref) => {
    const x = new Reader(input, ref.body, ref.end);
    const from = id(x);
    const n = x.u16();
    const to: number[] = [];
    for (let i = 0; i < n; i++) to.push(id(x));
    return { type: ref.type, from, to };
  });
}

function parseAssociations(input: Buffer, box: Box, into: Map<number, Association[]>): void {
  const r = new Reader(input, box.body, box.end);
  const { version, flags } = r.full();
  const count = r.u32();
  for (let i = 0; i < count; i++) {
    const id = version < 1 ? r.u16() : r.u32();
    const n = r.u8();
    const list = into.get(id) ?? [];
    for (let j = 0; j < n; j++) {
      if (flags & 1) {
        const v = r.u16();
        list.push({ essential: (v & 0x8000) !== 0, index: v & 0x7fff });
      } else {
        const v = r.u8();
        list.push({ essential: (v & 0x80) !== 0, index: v & 0x7f });
      }
    }
    into.set(id, list);
  }
}

// ---------------------------------------------------------------------------------------------
// Writing

function box(type: string, ...payload: Buffer[]): Buffer {
  const size = 8 + payload.reduce((n, p) => n + p.length, 0);
  const header = Buffer.alloc(8);
  header.writeUInt32BE(size, 0);
  header.write(type, 4, 'latin1');
  return Buffer.concat([header, ...payload]);
}

function fullBox(type: string, version: number, flags: number, ...payload: Buffer[]): Buffer {
  const vf = Buffer.alloc(4);
  vf.writeUInt32BE(((version << 24) | flags) >>> 0, 0);
  return box(type, vf, ...payload);
}

function u16(v: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(v, 0);
  return b;
}

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v, 0);
  return b;
}

const wide = (ids: number[]): boolean => ids.some((id) => id > 0xffff);

function writeItems(items: Item[]): Buffer {
  const v3 = wide(items.map((i) => i.id));
  const entries = items.map((item) =>
    fullBox('infe', v3 ? 3 : 2, item.hidden ? 1 : 0, v3 ? u32(item.id) : u16(item.id), u16(0), Buffer.from(item.type, 'latin1'), Buffer.alloc(1)),
  );
  return fullBox('iinf', 0, 0, u16(items.length), ...entries);
}

function writeReferences(refs: Array<{ type: string; from: number; to: number[] }>): Buffer | undefined {
  if (refs.length === 0) return undefined;
  const v1 = wide(refs.flatMap((r) => [r.from, ...r.to]));
  const id = v1 ? u32 : u16;
  return fullBox('iref', v1 ? 1 : 0, 0, ...refs.map((r) => box(r.type, id(r.from), u16(r.to.length), ...r.to.map(id))));
}

function writeAssociations(items: Item[], associations: Map<number, Association[]>): Buffer {
  const all = items.flatMap((item) => associations.get(item.id) ?? []);
  const big = all.some((a) => a.index > 0x7f);
  const v1 = wide(items.map((i) => i.id));
  const entries = items.map((item) => {
    const list = associations.get(item.id) ?? [];
    const assoc = list.map((a) => {
      if (big) return u16((a.essential ? 0x8000 : 0) | a.index);
      return Buffer.from([(a.essential ? 0x80 : 0) | a.index]);
    });
    return Buffer.concat([v1 ? u32(item.id) : u16(item.id), Buffer.from([list.length]), ...assoc]);
  });
  return fullBox('ipma', v1 ? 1 : 0, big ? 1 : 0, u32(items.length), ...entries);
}

/**
 * iloc version 1 with 32- or 64-bit offsets, no base offset, no extent index. Offsets point into
 * our new mdat (method 0) or idat (method 1), filled in once the meta box's size is known.
 */
function writeLocations(locations: Location[], offsetBytes: 4 | 8): Buffer {
  const v2 = wide(locations.map((l) => l.id));
  const field = (v: number): Buffer => {
    if (offsetBytes === 4) return u32(v);
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(BigInt(v), 0);
    return b;
  };
  const sizes = u16((offsetBytes << 12) | (offsetBytes << 8));
  const entries = locations.map((l) =>
    Buffer.concat([v2 ? u32(l.id) : u16(l.id), u16(l.method), u16(0), u16(l.extents.length), ...l.extents.flatMap((e) => [field(e.offset), field(e.length)])]),
  );
  return fullBox('iloc', v2 ? 2 : 1, 0, sizes, v2 ? u32(locations.length) : u16(locations.length), ...entries);
}

/**
 * What a dropped Exif item carried, for the report (GPS is reported as `gps` here as in JPEG).
 * Its data is one extent in practice: a 4-byte offset, then the TIFF block. Anything unusual is
 * simply reported as `exif`; the item goes either way.
 */
function exifItemCategories(input: Buffer, location: Location | undefined, idat: Box | undefined): RemovedCategory[] {
  const data = location?.extents.length === 1 ? extentBytes(input, location, location.extents[0]!, idat) : undefined;
  if (!data || data.length < 4) return ['exif'];
  const tiffStart = 4 + data.readUInt32BE(0);
  return tiffStart < data.length ? exifCategories(data.subarray(tiffStart)) : ['exif'];
}

/**
 * The bytes of one extent of an item: in the file (construction method 0) or in idat (1).
 * Undefined when it lies outside its container or the item is built another way.
 */
function canonicalRecord(codec: PictureCodec, record: Buffer, removed: Removed): Buffer {
  try {
    const rebuilt = canonicalConfig(codec, record);
    for (const [category, n] of Object.entries(rebuilt.removed)) countRemoved(removed, category as RemovedCategory, n);
    return rebuilt.bytes;
  } catch (err) {
    if (err instanceof ConfigError) throw reject.structure(FORMAT, `a decoder configuration that does not parse (${err.message})`);
    throw err;
  }
}

/**
 * A coded item's units: SEI NALs and metadata OBUs dropped and counted, parameter sets proven to end
 * at their fields (formats/units.ts, formats/parameter-sets.ts).
 */
function codedItem(input: Buffer, codec: PictureCodec, data: Buffer, properties: Box[], removed: Removed): Buffer {
  const config = properties.find((p) => p.type === configBoxOf[codec]);
  const lengthSize = codec === 'av1' ? 4 : config && lengthSizeOf(codec, input.subarray(config.body, config.end));
  if (!lengthSize) throw reject.corrupt(FORMAT, 'a coded item without a readable decoder configuration');
  const parameterSets = new ParameterSetContext();
  try {
    return keptItemUnits(codec, data, lengthSize, (category) => countRemoved(removed, category), (unit) => checkParameterSet(codec, unit.bytes, parameterSets));
  } catch (err) {
    if (err instanceof UnitError) throw reject.corrupt(FORMAT, `an item's coded data does not split into units: ${err.message}`);
    if (err instanceof ParameterSetError) throw reject.structure(FORMAT, `a parameter set in an item: ${err.message}`);
    throw err;
  }
}

function jpegItem(data: Buffer, limits: { maxInputPixels: number }, removed: Removed): Buffer {
  const cleaned = stripJpeg(data, limits);
  for (const [category, n] of Object.entries(cleaned.removed)) countRemoved(removed, category as RemovedCategory, n);
  return Buffer.concat(cleaned.parts);
}

function extentBytes(input: Buffer, location: Location, extent: Extent, idat: Box | undefined): Buffer | undefined {
  if (location.method > 1) return undefined;
  const [from, to] = location.method === 0 ? [0, input.length] : idat ? [idat.body, idat.end] : [0, 0];
  const start = from + extent.offset;
  // A length of 0 means "to the end of the container".
  const end = extent.length === 0 ? to : start + extent.length;
  return start < from || end > to || end < start ? undefined : input.subarray(start, end);
}

/**
 * What a decode of the kept items allocates, read from the headers before anything is decoded
 * (THREATS 49): each grid's canvas (its ImageGrid output size, or its `ispe` if larger) plus every
 * tile it names, once per reference (a decoder decodes a tile each time the grid names it), and
 * each other coded item at its own size. A 3.7 KB AVIF whose 15360x15360 grid named one 960x960
 * tile 256 times cost 1 GB in a decode: 472 M pixels counted so. A grid may name a tile twice
 * (libavif's own test files do), within the limit.
 */
function pixelsToDecode(
  input: Buffer,
  keep: ReadonlySet<number>,
  tilesOf: ReadonlyMap<number, number[]>,
  propertiesOf: (id: number) => Box[],
  locations: ReadonlyMap<number, Location>,
  idat: Box | undefined,
  budget: WorkBudget,
): number {
  const ispeOf = (id: number): number => {
    const ispe = propertiesOf(id).find((prop) => prop.type === 'ispe');
    if (!ispe) return 0;
    const r = new Reader(input, ispe.body, ispe.end);
    r.full();
    return r.u32() * r.u32();
  };
  const tiles = new Set([...keep].flatMap((id) => tilesOf.get(id) ?? []));
  let pixels = 0;
  for (const id of keep) {
    const named = tilesOf.get(id) ?? [];
    budget.spend(1 + named.length);
    if (named.length === 0) {
      // A tile is counted with each reference below; anything else once.
      if (!tiles.has(id)) pixels += ispeOf(id);
      continue;
    }
    // ImageGrid (ISO/IEC 23008-12, 6.6.2.3.2): version, flags, rows-1, columns-1, then the
    // output width and height in 16 bits, or 32 where flags & 1.
    const location = locations.get(id);
    const extent = location?.extents[0];
    const data = location && extent ? extentBytes(input, location, extent, idat) : undefined;
    if (!data) throw reject.corrupt(FORMAT, 'a grid without its description');
    const r = new Reader(data, 0, data.length);
    r.u8();
    const wide = (r.u8() & 1) === 1;
    r.u8();
    r.u8();
    pixels += Math.max(ispeOf(id), wide ? r.u32() * r.u32() : r.u16() * r.u16());
    for (const tile of named) pixels += ispeOf(tile);
  }
  return pixels;
}

// ---------------------------------------------------------------------------------------------

export function stripHeif(input: Buffer, limits: { maxInputPixels: number } = { maxInputPixels: Number.MAX_SAFE_INTEGER }): ImageStripResult {
  const removed: Removed = {};
  const top = topLevelBoxes(input, removed);
  const ftyp = top[0];
  if (ftyp?.type !== 'ftyp') throw reject.corrupt(FORMAT, 'no ftyp box first');
  if (top.some((b) => b.type === 'mini')) throw reject.structure(FORMAT, 'a compact "mini" HEIF, which scrubline cannot rebuild yet');
  const metas = top.filter((b) => b.type === 'meta');
  if (metas.length !== 1) throw reject.corrupt(FORMAT, 'not exactly one meta box');
  if (top.some((b) => b.type === 'moov')) {
    throw reject.structure(FORMAT, 'an image sequence or animation; only still HEIF/AVIF images are supported');
  }
  for (const b of top) {
    if (b.type === 'mpvd' || b.type === 'sefd') countRemoved(removed, 'motionPhoto');
    else if (!['ftyp', 'meta', 'mdat', 'free', 'skip'].includes(b.type)) countRemoved(removed, 'other');
  }

  const meta = metas[0]!;
  const children = boxesIn(input, meta.body + 4, meta.end);
  const one = (type: string): Box | undefined => {
    const found = children.filter((c) => c.type === type);
    if (found.length > 1) throw reject.corrupt(FORMAT, `more than one ${type} box`);
    return found[0];
  };
  const hdlr = one('hdlr');
  if (!hdlr || input.toString('latin1', hdlr.body + 8, hdlr.body + 12) !== 'pict') throw reject.corrupt(FORMAT, 'meta is not a picture handler');
  const pitm = one('pitm');
  const iinf = one('iinf');
  const iloc = one('iloc');
  const iprp = one('iprp');
  if (!pitm || !iinf || !iloc || !iprp) throw reject.corrupt(FORMAT, 'meta lacks pitm, iinf, iloc or iprp');
  if (one('ipro')) throw reject.structure(FORMAT, 'protected items');
  for (const c of children) {
    if (!['hdlr', 'pitm', 'iinf', 'iloc', 'iprp', 'iref', 'idat', 'dinf'].includes(c.type)) countRemoved(removed, 'other');
  }

  const budget = new WorkBudget(FORMAT);
  const p = new Reader(input, pitm.body, pitm.end);
  const primary = p.full().version === 0 ? p.u16() : p.u32();
  const items = parseItems(input, iinf);
  const byId = new Map(items.map((i) => [i.id, i]));
  const locations = new Map(parseLocations(input, iloc, budget).map((l) => [l.id, l]));
  const iref = one('iref');
  const refs = iref ? parseReferences(input, iref) : [];

  const iprpChildren = boxesIn(input, iprp.body, iprp.end);
  const ipco = iprpChildren.find((b) => b.type === 'ipco');
  if (!ipco) throw reject.corrupt(FORMAT, 'iprp without ipco');
  const properties = boxesIn(input, ipco.body, ipco.end);
  const associations = new Map<number, Association[]>();
  for (const ipma of iprpChildren.filter((b) => b.type === 'ipma')) parseAssociations(input, ipma, associations);
  const propertiesOf = (id: number): Box[] => {
    const list = associations.get(id) ?? [];
    budget.spend(list.length);
    return list.flatMap((a) => (a.index > 0 && properties[a.index - 1] ? [properties[a.index - 1]!] : []));
  };
  const isAlpha = (id: number): boolean =>
    propertiesOf(id).some((prop) => prop.type === 'auxC' && alphaUrns.has(new Reader(input, prop.body + 4, prop.end).cstring()));

  // The items to keep: the primary, what it is derived from (grid tiles), and its alpha planes.
  if (!byId.has(primary)) throw reject.corrupt(FORMAT, 'the primary item is not listed');
  // References indexed once, so following them is linear in their number (THREATS 35).
  const tilesOf = new Map<number, number[]>();
  const auxiliariesOf = new Map<number, number[]>();
  const add = (index: Map<number, number[]>, key: number, ...ids: number[]): void => {
    const list = index.get(key);
    if (list) list.push(...ids);
    else index.set(key, ids);
  };
  for (const r of refs) {
    budget.spend(1 + r.to.length);
    if (r.type === 'dimg') add(tilesOf, r.from, ...r.to);
    if (r.type === 'auxl') for (const to of new Set(r.to)) add(auxiliariesOf, to, r.from);
  }
  const keep = new Set<number>([primary]);
  for (const id of keep) {
    for (const tile of tilesOf.get(id) ?? []) keep.add(tile);
    for (const from of auxiliariesOf.get(id) ?? []) if (isAlpha(from)) keep.add(from);
  }
  for (const id of keep) {
    const item = byId.get(id);
    if (!item) throw reject.corrupt(FORMAT, 'a reference to an item that is not listed');
    if (!imageItemTypes.has(item.type)) throw reject.structure(FORMAT, 'an image item of a type scrubline does not know');
  }
  const decodedPixels = pixelsToDecode(input, keep, tilesOf, propertiesOf, locations, one('idat'), budget);
  if (decodedPixels > limits.maxInputPixels) {
    throw new ScrubError(
      'too_many_pixels',
      `Decoding this ${FORMAT} image takes ${decodedPixels} pixels (its grid's canvas and every tile), more than the configured limit of ${limits.maxInputPixels}. Send a smaller image.`,
    );
  }
  const thumbnails = new Set(refs.filter((r) => r.type === 'thmb').map((r) => r.from));
  // Tiles of a removed grid (a thumbnail's, a gain map's) are counted as part of that grid.
  const tilesOfRemoved = new Set(refs.filter((r) => r.type === 'dimg' && !keep.has(r.from)).flatMap((r) => r.to));
  for (const item of items) {
    if (keep.has(item.id) || tilesOfRemoved.has(item.id)) continue;
    if (item.type === 'Exif') for (const found of exifItemCategories(input, locations.get(item.id), one('idat'))) countRemoved(removed, found);
    else if (item.type === 'mime') countRemoved(removed, item.contentType?.includes('xmp') || item.contentType?.includes('rdf') ? 'xmp' : 'other');
    else if (thumbnails.has(item.id)) countRemoved(removed, 'thumbnail');
    else if (imageItemTypes.has(item.type)) countRemoved(removed, 'auxiliaryImage');
    else countRemoved(removed, 'other');
  }

  // Properties: keep the allowlisted ones used by kept items, renumbered in first-use order.
  const newIndex = new Map<number, number>();
  const keptProps: Box[] = [];
  const keptAssociations = new Map<number, Association[]>();
  for (const id of keep) {
    const list: Association[] = [];
    for (const a of associations.get(id) ?? []) {
      // Index 0 means "no property" (ISO/IEC 23008-12, ipma); HMD Nokia phones write it. Nothing to keep.
      if (a.index === 0) continue;
      const prop = properties[a.index - 1];
      if (!prop) throw reject.corrupt(FORMAT, 'an item property index out of range');
      if (!keptProperties.has(prop.type)) {
        if (a.essential) throw reject.structure(FORMAT, 'an essential item property scrubline does not know');
        countRemoved(removed, prop.type === 'udes' ? 'description' : 'other');
        continue;
      }
      if (!newIndex.has(a.index)) {
        keptProps.push(prop);
        newIndex.set(a.index, keptProps.length);
      }
      list.push({ essential: a.essential, index: newIndex.get(a.index)! });
    }
    keptAssociations.set(id, list);
  }

  // Item data: copied byte for byte into one new mdat (file offsets) or a new idat.
  const idat = one('idat');
  const mdatParts: Buffer[] = [];
  const idatParts: Buffer[] = [];
  let mdatSize = 0;
  let idatSize = 0;
  const keptItems = items.filter((i) => keep.has(i.id));
  const keptLocations: Location[] = [];
  for (const item of keptItems) {
    const location = locations.get(item.id);
    if (!location) throw reject.corrupt(FORMAT, 'an image item without a location');
    if (location.method > 1) throw reject.structure(FORMAT, 'item data built from other items');
    const pieces = location.extents.map((e) => {
      const data = extentBytes(input, location, e, idat);
      if (!data) throw reject.corrupt(FORMAT, 'item data outside the file');
      return data;
    });
    // A coded item is rebuilt from its kept units, a JPEG item as any JPEG is (its own APPn and COM
    // segments, EXIF among them, go), each in one extent; others are copied as they are.
    const codec = itemCodecs[item.type];
    const written = codec
      ? [codedItem(input, codec, Buffer.concat(pieces), propertiesOf(item.id), removed)]
      : item.type === 'jpeg'
        ? [jpegItem(Buffer.concat(pieces), limits, removed)]
        : pieces;
    const extents = written.map((data) => {
      if (location.method === 0) {
        mdatParts.push(data);
        mdatSize += data.length;
        return { offset: mdatSize - data.length, length: data.length };
      }
      idatParts.push(data);
      idatSize += data.length;
      return { offset: idatSize - data.length, length: data.length };
    });
    keptLocations.push({ id: item.id, method: location.method, extents });
  }

  const keptRefs = refs
    .filter((r) => keep.has(r.from) && (r.type === 'dimg' || r.type === 'auxl' || r.type === 'prem'))
    .map((r) => ({ ...r, to: r.to.filter((t) => keep.has(t)) }))
    .filter((r) => r.to.length > 0);

  // A colour property holding an ICC profile gets the profile rebuilt from its fields (formats/icc.ts),
  // a decoder configuration its record (formats/codec-config.ts).
  const writtenProps = keptProps.map((prop) => {
    const configured = configCodecs[prop.type];
    if (configured) return box(prop.type, canonicalRecord(configured, input.subarray(prop.body, prop.end), removed));
    const colourType = prop.type === 'colr' ? input.toString('latin1', prop.body, prop.body + 4) : '';
    if (colourType !== 'prof' && colourType !== 'rICC') return input.subarray(prop.body - 8, prop.end);
    const rebuilt = canonicalIcc(input.subarray(prop.body + 4, prop.end), 'HEIF');
    if (rebuilt.changed) countRemoved(removed, 'profileText');
    return box('colr', Buffer.from(colourType, 'latin1'), rebuilt.profile);
  });

  const mdatHeader = mdatSize + 16 > 0xffffffff ? 16 : 8;
  const offsetBytes = input.length + 1024 > 0xffffffff ? 8 : 4;
  const buildMeta = (mdatDataStart: number): Buffer => {
    const located = keptLocations.map((l) => (l.method === 0 ? { ...l, extents: l.extents.map((e) => ({ ...e, offset: e.offset + mdatDataStart })) } : l));
    const parts = [
      fullBox('hdlr', 0, 0, u32(0), Buffer.from('pict', 'latin1'), Buffer.alloc(12), Buffer.alloc(1)),
      primary > 0xffff ? fullBox('pitm', 1, 0, u32(primary)) : fullBox('pitm', 0, 0, u16(primary)),
      writeItems(keptItems),
      writeReferences(keptRefs),
      box('iprp', box('ipco', ...writtenProps), writeAssociations(keptItems, keptAssociations)),
      writeLocations(located, offsetBytes),
      idatParts.length > 0 ? box('idat', ...idatParts) : undefined,
    ];
    return fullBox('meta', 0, 0, ...parts.filter((x): x is Buffer => x !== undefined));
  };
  const ftypBytes = input.subarray(ftyp.body - 8, ftyp.end);
  if (ftyp.body - 8 !== 0 || input.readUInt32BE(0) === 1) throw reject.corrupt(FORMAT, 'unusual ftyp');
  // Field widths are fixed, so the meta box's size does not depend on the offsets written in it.
  const metaSize = buildMeta(0).length;
  const meta2 = buildMeta(ftypBytes.length + metaSize + mdatHeader);
  const mdat = Buffer.alloc(mdatHeader);
  if (mdatHeader === 8) {
    mdat.writeUInt32BE(8 + mdatSize, 0);
    mdat.write('mdat', 4, 'latin1');
  } else {
    mdat.writeUInt32BE(1, 0);
    mdat.write('mdat', 4, 'latin1');
    mdat.writeBigUInt64BE(BigInt(16 + mdatSize), 8);
  }
  return { parts: [ftypBytes, meta2, mdat, ...mdatParts], removed, orientation: 1 };
}
