/**
 * The verifier's own reading of HEIF/AVIF (ISOBMFF `meta` items), written apart from the
 * stripper's rebuilder: one function proves a cleaned file's structure, one mines an input for
 * the values the value scan must not find again. Lenient where the stripper is strict: it never
 * throws on what it cannot read (a part it cannot read is a problem in an output, opaque bytes in
 * an input), only on a file whose tables cost more than its work budget (THREATS 35).
 */
import type { Span as Located } from './structure-image.js';
import { configBoxOf, configCodecs, itemCodecs, lengthSizeOf } from '../formats/codec-config.js';
import { isCanonicalIcc } from '../formats/icc.js';
import { checkParameterSet, ParameterSetContext, ParameterSetError } from '../formats/parameter-sets.js';
import { keptUnitTypes, UnitSplitter, type PictureCodec } from '../formats/units.js';
import { configProblems } from './picture-stream.js';
import { checkImageStructure } from './structure-image.js';
import { WorkBudget } from '../formats/work-budget.js';
import type { ValueCollector } from './values.js';

interface Span {
  type: string;
  start: number;
  /** First byte after the header. */
  data: number;
  end: number;
}

function spanAt(buf: Buffer, at: number, end: number): Span | undefined {
  if (end - at < 8) return undefined;
  const small = buf.readUInt32BE(at);
  let size = small;
  let data = at + 8;
  if (small === 1) {
    if (end - at < 16) return undefined;
    size = Number(buf.readBigUInt64BE(at + 8));
    data = at + 16;
  } else if (small === 0) {
    size = end - at;
  }
  if (size < data - at || at + size > end) return undefined;
  return { type: buf.toString('latin1', at + 4, at + 8), start: at, data, end: at + size };
}

/** The boxes filling [start, end) exactly, or undefined if they do not. */
function spans(buf: Buffer, start: number, end: number): Span[] | undefined {
  const out: Span[] = [];
  for (let at = start; at < end; ) {
    const span = spanAt(buf, at, end);
    if (!span) return undefined;
    out.push(span);
    at = span.end;
  }
  return out;
}

/** Big-endian unsigned read of 0–8 bytes; undefined past `end`. */
function uint(buf: Buffer, at: number, bytes: number, end: number): number | undefined {
  if (at + bytes > end) return undefined;
  let v = 0;
  for (let i = 0; i < bytes; i++) v = v * 256 + buf[at + i]!;
  return v;
}

interface MetaItem {
  id: number;
  type: string;
  name: string;
  mime: string;
}

interface ItemData {
  id: number;
  method: number;
  extents: Array<[number, number]>;
}

interface MetaView {
  children: Span[];
  items: MetaItem[];
  locations: ItemData[];
  /** The first location given for each item id (indexed once: THREATS 35). */
  locationOf: Map<number, ItemData>;
  refTypes: string[];
  properties: Span[];
  /** Each item's properties, as 1-based indexes into `properties` (ipma). */
  associations: Map<number, number[]>;
  idat: Span | undefined;
}

function readMeta(buf: Buffer, meta: Span, budget = new WorkBudget('HEIF')): MetaView | undefined {
  const children = spans(buf, meta.data + 4, meta.end);
  if (!children) return undefined;
  const find = (t: string): Span | undefined => children.find((c) => c.type === t);
  const view: MetaView = { children, items: [], locations: [], locationOf: new Map(), refTypes: [], properties: [], associations: new Map(), idat: find('idat') };

  const iinf = find('iinf');
  if (iinf) {
    const countBytes = buf[iinf.data] === 0 ? 2 : 4;
    for (const infe of spans(buf, iinf.data + 4 + countBytes, iinf.end) ?? []) {
      const version = buf[infe.data] ?? 0;
      if (version < 2) return undefined;
      const idBytes = version === 2 ? 2 : 4;
      let at = infe.data + 4;
      const id = uint(buf, at, idBytes, infe.end);
      at += idBytes + 2;
      const type = buf.toString('latin1', at, Math.min(at + 4, infe.end));
      at += 4;
      const nameEnd = buf.indexOf(0, at);
      if (id === undefined || nameEnd < 0 || nameEnd >= infe.end) return undefined;
      const name = buf.toString('utf8', at, nameEnd);
      const mimeEnd = type === 'mime' ? buf.indexOf(0, nameEnd + 1) : -1;
      const mime = mimeEnd > nameEnd && mimeEnd < infe.end ? buf.toString('latin1', nameEnd + 1, mimeEnd) : '';
      view.items.push({ id, type, name, mime });
    }
  }

  const iloc = find('iloc');
  if (iloc) {
    const version = buf[iloc.data] ?? 0;
    const sizes = uint(buf, iloc.data + 4, 2, iloc.end) ?? 0;
    const [offsetSize, lengthSize, baseSize, indexSize] = [sizes >> 12, (sizes >> 8) & 15, (sizes >> 4) & 15, version > 0 ? sizes & 15 : 0];
    const idBytes = version < 2 ? 2 : 4;
    let at = iloc.data + 6;
    const count = uint(buf, at, idBytes, iloc.end) ?? 0;
    at += idBytes;
    for (let i = 0; i < count; i++) {
      const id = uint(buf, at, idBytes, iloc.end);
      at += idBytes;
      const method = version > 0 ? (uint(buf, at, 2, iloc.end) ?? 0) & 15 : 0;
      if (version > 0) at += 2;
      at += 2; // data_reference_index
      const base = uint(buf, at, baseSize, iloc.end) ?? 0;
      at += baseSize;
      const extentCount = uint(buf, at, 2, iloc.end);
      at += 2;
      if (id === undefined || extentCount === undefined) return undefined;
      // Zero-width offset and length fields make an extent cost no bytes: its count is bounded.
      budget.spend(1 + extentCount);
      const extents: Array<[number, number]> = [];
      for (let j = 0; j < extentCount; j++) {
        at += indexSize;
        const offset = uint(buf, at, offsetSize, iloc.end);
        const length = uint(buf, at + offsetSize, lengthSize, iloc.end);
        at += offsetSize + lengthSize;
        if (offset === undefined || length === undefined) return undefined;
        extents.push([base + offset, length]);
      }
      const location = { id, method, extents };
      view.locations.push(location);
      if (!view.locationOf.has(id)) view.locationOf.set(id, location);
    }
  }

  const iref = find('iref');
  if (iref) view.refTypes = (spans(buf, iref.data + 4, iref.end) ?? []).map((r) => r.type);
  const iprp = find('iprp');
  const ipco = iprp ? spans(buf, iprp.data, iprp.end)?.find((c) => c.type === 'ipco') : undefined;
  if (ipco) view.properties = spans(buf, ipco.data, ipco.end) ?? [];
  for (const ipma of (iprp ? spans(buf, iprp.data, iprp.end) : undefined)?.filter((c) => c.type === 'ipma') ?? []) {
    const version = buf[ipma.data] ?? 0;
    const wide = ((buf[ipma.data + 3] ?? 0) & 1) === 1;
    let at = ipma.data + 4;
    const count = uint(buf, at, 4, ipma.end) ?? 0;
    at += 4;
    for (let i = 0; i < count && at < ipma.end; i++) {
      const id = uint(buf, at, version < 1 ? 2 : 4, ipma.end);
      at += version < 1 ? 2 : 4;
      const n = uint(buf, at, 1, ipma.end) ?? 0;
      at += 1;
      budget.spend(1 + n);
      const indexes: number[] = [];
      for (let j = 0; j < n; j++) {
        const entry = uint(buf, at, wide ? 2 : 1, ipma.end);
        at += wide ? 2 : 1;
        if (entry !== undefined) indexes.push(entry & (wide ? 0x7fff : 0x7f));
      }
      if (id !== undefined && !view.associations.has(id)) view.associations.set(id, indexes);
    }
  }
  return view;
}

/** Where an item's bytes lie in the file, as absolute [start, end) ranges. */
function itemRanges(buf: Buffer, view: MetaView, location: ItemData): Array<[number, number]> {
  const [base, limit] = location.method === 1 && view.idat ? [view.idat.data, view.idat.end] : [0, buf.length];
  return location.extents.map(([offset, length]) => {
    const start = Math.min(base + offset, limit);
    return [start, length === 0 ? limit : Math.min(start + length, limit)];
  });
}

// ---------------------------------------------------------------------------------------------
// Output: the structural proof

const topAllowed = new Set(['ftyp', 'meta', 'mdat']);
const metaAllowed = new Set(['hdlr', 'pitm', 'iinf', 'iloc', 'iprp', 'iref', 'idat', 'dinf']);
const itemTypesAllowed = new Set(['hvc1', 'av01', 'avc1', 'jpeg', 'j2k1', 'grid', 'iden', 'iovl']);
const refTypesAllowed = new Set(['dimg', 'auxl', 'prem']);
const propertiesAllowed = new Set([
  'hvcC', 'av1C', 'avcC', 'jpgC', 'j2kH', 'ispe', 'pixi', 'colr', 'irot', 'imir', 'clap', 'pasp', 'auxC', 'rloc', 'lsel',
  'a1op', 'a1lx', 'clli', 'mdcv', 'cclv', 'amve',
]);
const alphaAux = /^urn:mpeg:(mpegB:cicp:systems:auxiliary:alpha|hevc:2015:auxid:1|avc:2015:auxid:1)\0/;

export function checkHeifStructure(out: Buffer, problems: string[], keptRanges: Located[]): void {
  const top = spans(out, 0, out.length);
  if (!top) return void problems.push('heif: boxes do not fill the file');
  if (top[0]?.type !== 'ftyp') problems.push('heif: no ftyp first');
  if (top.some((b) => !topAllowed.has(b.type))) problems.push('heif: top-level box not allowed');
  const metas = top.filter((b) => b.type === 'meta');
  const mdats = top.filter((b) => b.type === 'mdat');
  if (metas.length !== 1 || mdats.length > 1) return void problems.push('heif: not one meta and at most one mdat');
  const view = readMeta(out, metas[0]!);
  if (!view) return void problems.push('heif: meta box unreadable');

  if (view.children.some((c) => !metaAllowed.has(c.type))) problems.push('heif: meta child box not allowed');
  const hdlr = view.children.find((c) => c.type === 'hdlr');
  if (!hdlr || out.toString('latin1', hdlr.data + 8, hdlr.data + 12) !== 'pict' || out.subarray(hdlr.data + 24, hdlr.end).some((b) => b !== 0)) {
    problems.push('heif: handler missing or named');
  }
  for (const item of view.items) {
    if (!itemTypesAllowed.has(item.type)) problems.push('heif: item type not allowed (metadata item)');
    if (item.name !== '') problems.push('heif: item carries a name');
  }
  if (view.refTypes.some((t) => !refTypesAllowed.has(t))) problems.push('heif: item reference not allowed');
  for (const prop of view.properties) {
    if (!propertiesAllowed.has(prop.type)) problems.push('heif: item property not allowed');
    if (prop.type === 'auxC' && !alphaAux.test(out.toString('latin1', prop.data + 4, Math.min(prop.end, prop.data + 60)))) {
      problems.push('heif: auxiliary image other than alpha');
    }
    const configured = configCodecs[prop.type];
    if (configured) problems.push(...configProblems(configured, out.subarray(prop.data, prop.end)).map((p) => p.replace(/^video:/, 'heif:')));
    if (prop.type === 'colr' && ['prof', 'rICC'].includes(out.toString('latin1', prop.data, prop.data + 4))) {
      keptRanges.push({ start: prop.data + 4, end: prop.end, what: 'icc' });
      // Written by scrubline from its fields (formats/icc.ts), like every format's profile.
      if (!isCanonicalIcc(out.subarray(prop.data + 4, prop.end))) problems.push('icc: profile not written from its fields');
    }
  }

  // A coded item holds coded slices and parameter sets only (formats/units.ts), each parameter set
  // ending where its fields do: no SEI or metadata OBU rides inside the picture.
  for (const item of view.items) {
    const codec = itemCodecs[item.type];
    const location = view.locationOf.get(item.id);
    if (item.type === 'jpeg' && location) {
      // A JPEG item is held to every rule of a cleaned JPEG (verify/structure-image.ts).
      const jpeg = Buffer.concat(itemRanges(out, view, location).map(([s, e]) => out.subarray(s, e)));
      problems.push(...checkImageStructure('jpeg', jpeg).problems.map((p) => `heif: a JPEG item: ${p}`));
    }
    if (!codec || !location) continue;
    const config = (view.associations.get(item.id) ?? []).map((i) => view.properties[i - 1]).find((p) => p?.type === configBoxOf[codec]);
    const lengthSize = config && lengthSizeOf(codec, out.subarray(config.data, config.end));
    if (!lengthSize) {
      problems.push('heif: a coded item without a readable decoder configuration');
      continue;
    }
    problems.push(...codedItemProblems(codec, Buffer.concat(itemRanges(out, view, location).map(([s, e]) => out.subarray(s, e))), lengthSize));
  }

  // Every byte of mdat and idat must belong to an item we kept: nothing can hide unreferenced.
  const ids = new Set(view.items.map((i) => i.id));
  const covered = (from: number, to: number, ranges: Array<[number, number]>): boolean => {
    let at = from;
    for (const [s, e] of ranges.sort((a, b) => a[0] - b[0])) {
      if (s > at) return false;
      at = Math.max(at, e);
    }
    return at >= to;
  };
  const fileRanges: Array<[number, number]> = [];
  const idatRanges: Array<[number, number]> = [];
  for (const location of view.locations) {
    if (!ids.has(location.id)) problems.push('heif: data located for an unlisted item');
    if (location.method > 1) problems.push('heif: item data built from other items');
    for (const [s, e] of itemRanges(out, view, location)) (location.method === 1 ? idatRanges : fileRanges).push([s, e]);
  }
  const mdat = mdats[0];
  if (mdat && (fileRanges.some(([s, e]) => s < mdat.data || e > mdat.end) || !covered(mdat.data, mdat.end, fileRanges))) {
    problems.push('heif: mdat holds bytes no kept item uses');
  }
  if (!mdat && fileRanges.length > 0) problems.push('heif: item data outside mdat');
  if (view.idat && !covered(view.idat.data, view.idat.end, idatRanges)) problems.push('heif: idat holds bytes no kept item uses');
}


function codedItemProblems(codec: PictureCodec, data: Buffer, lengthSize: 1 | 2 | 4): string[] {
  const splitter = new UnitSplitter(codec, lengthSize);
  const units = splitter.push(data);
  if (!splitter.end()) return [`heif: a coded item does not split into units (${splitter.error ?? 'unknown'})`];
  const parameterSets = new ParameterSetContext();
  for (const unit of units) {
    if (!keptUnitTypes[codec].has(unit.type)) return [`heif: a coded item holds a unit of type ${unit.type}, which a cleaned picture does not keep`];
    try {
      checkParameterSet(codec, unit.bytes, parameterSets);
    } catch (err) {
      if (err instanceof ParameterSetError) return [`heif: a parameter set in a coded item: ${err.message}`];
      throw err;
    }
  }
  return [];
}

// ---------------------------------------------------------------------------------------------
// Input: every value a HEIF carried

export function heifValues(input: Buffer, into: ValueCollector, opaque: (data: Buffer) => void): void {
  // Boxes up to the first bytes that are not one; those (a trailer) are opaque.
  const top: Span[] = [];
  let at = 0;
  for (let span = spanAt(input, 0, input.length); span; span = spanAt(input, at, input.length)) {
    top.push(span);
    at = span.end;
  }
  if (at < input.length) opaque(input.subarray(at));
  for (const b of top) {
    if (b.type !== 'ftyp' && b.type !== 'meta' && b.type !== 'mdat') opaque(input.subarray(b.data, b.end));
  }
  const meta = top.find((b) => b.type === 'meta');
  const view = meta ? readMeta(input, meta) : undefined;
  if (!view) return;
  for (const c of view.children) if (c.type === 'hdlr') into.text(input.toString('utf8', c.data + 24, c.end));
  for (const item of view.items) {
    into.text(item.name);
    if (itemTypesAllowed.has(item.type)) continue;
    const location = view.locationOf.get(item.id);
    const data = location ? Buffer.concat(itemRanges(input, view, location).map(([s, e]) => input.subarray(s, e))) : Buffer.alloc(0);
    if (item.type === 'Exif' && data.length >= 4) {
      // ExifDataBlock: a 32-bit offset to the TIFF header, usually past "Exif\0\0".
      into.tiff(data.subarray(4 + data.readUInt32BE(0)));
    } else if (item.type === 'mime' && data.includes('<x:xmpmeta')) {
      into.xml(data.toString('utf8'));
    } else {
      opaque(data);
    }
  }
  for (const prop of view.properties) {
    if (!propertiesAllowed.has(prop.type)) opaque(input.subarray(prop.data, prop.end));
  }
}

/** Each item's type and bytes, in iinf order (for tests and tools that compare coded data). */
export function heifItems(buf: Buffer): Array<{ id: number; type: string; data: Buffer }> {
  const meta = spans(buf, 0, buf.length)?.find((b) => b.type === 'meta');
  const view = meta ? readMeta(buf, meta) : undefined;
  if (!view) return [];
  return view.items.map((item) => {
    const location = view.locationOf.get(item.id);
    const data = location ? Buffer.concat(itemRanges(buf, view, location).map(([s, e]) => buf.subarray(s, e))) : Buffer.alloc(0);
    return { id: item.id, type: item.type, data };
  });
}
