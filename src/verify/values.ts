/**
 * Collects the metadata values an input carried, as byte patterns for the value scan. This is
 * the verifier's own reading of the input, written apart from the strippers (issue 3): exifr's
 * reading, plus our walk of every metadata structure it may have missed (exifr throws on some
 * real PNG, HEIC and TIFF files), plus ffprobe's tags for video.
 */
import type { ProbeResult } from '../tools/ffmpeg.js';
import { readExifValues } from '../tools/exifr.js';
import { tiffValues } from './tiff-values.js';
import { maxPatternBytes } from './scan.js';

/** Values shorter than this match random bytes too often to mean anything (see README). */
export const minValueChars = 5;
const minRunChars = 6;

export class ValueCollector {
  private readonly patterns = new Map<string, Buffer>();
  private readonly packets = new Set<string>();

  /** A string value: scanned as UTF-8 and, for non-ASCII-free text too, as UTF-16LE (EXIF XP* tags). */
  text(value: string): void {
    const trimmed = withoutTrailingNuls(value).trim();
    if (trimmed.length < minValueChars) return;
    if (/^\d+$/.test(trimmed) && trimmed.length < 8) return; // widths, ISO speeds, counts
    // The scan matches at most the first maxPatternBytes of a value: a long caption costs no more.
    const head = trimmed.slice(0, maxPatternBytes);
    if (new Set(head).size < 3) return; // "     ", "00000": present in any binary
    this.bytes(Buffer.from(head, 'utf8'));
    this.bytes(Buffer.from(head, 'utf16le'));
  }

  /**
   * A byte value, kept as a copy of the head the scan matches on: the input's buffer is reused
   * once its values are collected, and a thousand values pointing into one big region of it cost
   * a thousand small copies, not a thousand big ones.
   */
  bytes(value: Uint8Array): void {
    if (value.length < minValueChars) return;
    const head = Buffer.from(value.subarray(0, maxPatternBytes));
    if (new Set(head).size < 3) return;
    this.patterns.set(head.toString('hex'), head);
  }

  /** A coordinate in decimal degrees: the forms text metadata writes it in. */
  coordinate(degrees: number): void {
    if (!Number.isFinite(degrees) || degrees === 0) return;
    const magnitude = Math.abs(degrees);
    for (const digits of [4, 5]) {
      this.text(magnitude.toFixed(digits));
      this.text((Math.trunc(magnitude * 10 ** digits) / 10 ** digits).toFixed(digits));
    }
  }

  /** Printable runs of an opaque binary payload (MakerNotes, vendor segments, IPTC). */
  printableRuns(payload: Uint8Array): void {
    const text = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength).toString('latin1');
    for (const match of text.matchAll(new RegExp(`[\\x20-\\x7e]{${minRunChars},}`, 'g'))) this.text(match[0]);
  }

  /**
   * Printable runs and the words in them: subtitle and telemetry text (a drone's "GPS 51.50721,
   * -0.12758 SN-…" line) whose pieces can travel on their own when a sample is cut apart.
   */
  printableWords(payload: Uint8Array): void {
    const text = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength).toString('latin1');
    for (const match of text.matchAll(new RegExp(`[\\x20-\\x7e]{${minRunChars},}`, 'g'))) {
      this.text(match[0]);
      for (const word of match[0].split(/[\s,;]+/)) this.text(word);
    }
  }

  /** Text nodes and attribute values of an XML packet (XMP). */
  xml(text: string): void {
    // The same packet is often met twice (by the structure walk and by its signature): read once.
    const start = text.indexOf('<x:xmpmeta');
    const end = start >= 0 ? text.indexOf('</x:xmpmeta>', start) : -1;
    const packet = start >= 0 && end > start ? text.slice(start, end + 12) : text;
    if (this.packets.has(packet)) return;
    this.packets.add(packet);
    const decode = (s: string): string =>
      s.replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&quot;/g, '"').replace(/&apos;/g, "'").replace(/&amp;/g, '&');
    forEachTextNode(packet, (node) => this.text(decode(node)));
    for (const match of packet.matchAll(/="([^"]*)"/g)) this.text(decode(match[1]!));
    for (const match of packet.matchAll(/='([^']*)'/g)) this.text(decode(match[1]!));
  }

  /** Every value of an EXIF/TIFF block. */
  tiff(block: Uint8Array): void {
    tiffValues(block, this);
  }

  /** Any value exifr reads (strings, byte arrays, GPS numbers), best effort. */
  async exifr(input: Buffer): Promise<void> {
    const blocks = await readExifValues(input);
    for (const [block, tags] of Object.entries(blocks)) {
      for (const [key, value] of Object.entries(tags)) this.exifrValue(block, key, value);
    }
  }

  private exifrValue(block: string, key: string, value: unknown): void {
    if (excludedExifrKeys.has(key)) return;
    if (typeof value === 'string') this.text(value);
    else if (value instanceof Uint8Array) this.bytes(value);
    else if (Array.isArray(value)) {
      if (block === 'gps' && (key === 'GPSLatitude' || key === 'GPSLongitude') && value.length === 3) {
        const [d, m, s] = value as number[];
        this.coordinate((d ?? 0) + (m ?? 0) / 60 + (s ?? 0) / 3600);
      }
      for (const item of value) if (typeof item === 'string') this.text(item);
    } else if (value !== null && typeof value === 'object') {
      for (const [k, v] of Object.entries(value)) this.exifrValue(block, k, v);
    }
  }

  /** Container, stream and chapter tags from ffprobe, bar the technical ones ffmpeg rewrites itself. */
  probeTags(info: ProbeResult, technicalKeys: ReadonlySet<string>): void {
    const all = [info.format.tags, ...info.streams.map((s) => s.tags), ...info.chapters.map((c) => c.tags)];
    for (const tags of all) {
      for (const [key, value] of Object.entries(tags ?? {})) {
        if (technicalKeys.has(key)) continue;
        this.text(value);
        const iso6709 = /^([+-]\d+(?:\.\d+)?)([+-]\d+(?:\.\d+)?)/.exec(value);
        if (/location|xyz/i.test(key) && iso6709) {
          this.coordinate(Number(iso6709[1]));
          this.coordinate(Number(iso6709[2]));
        }
      }
    }
  }

  get values(): Buffer[] {
    return [...this.patterns.values()];
  }
}

/**
 * Parsers over untrusted text are scanners, not regular expressions with unbounded quantifiers
 * that can backtrack: `/\0+$/` and `/>([^<]+)</g` take time quadratic in a run of NULs or of `>`
 * (THREATS 34: 150,000 `>` in a 289-byte compressed XMP held the event loop for 40 s). Each of
 * these reads every character once.
 */
export function withoutTrailingNuls(value: string): string {
  let end = value.length;
  while (end > 0 && value.charCodeAt(end - 1) === 0) end--;
  return end === value.length ? value : value.slice(0, end);
}

/** Calls `visit` with the text between each `>` and the next `<` (XML text nodes), in order. */
export function forEachTextNode(xml: string, visit: (text: string) => void): void {
  for (let open = xml.indexOf('>'); open >= 0; ) {
    const close = xml.indexOf('<', open + 1);
    // No `<` after this `>` means none after any later `>` either: done.
    if (close < 0) return;
    if (close > open + 1) visit(xml.slice(open + 1, close));
    open = xml.indexOf('>', close + 1);
  }
}

/**
 * Values that describe what we keep (the colour profile's name, the orientation) or that every
 * file has; they legitimately appear in a clean output. JPEGTables: a JPEG-compressed TIFF's
 * coding tables (libtiff's default for sharp's TIFF), which the output shares by design.
 */
const excludedExifrKeys = new Set(['ICCProfile', 'JPEGTables', 'ICCProfileName', 'ProfileDescription', 'ColorSpace', 'ColorMode', 'Orientation', 'ExifVersion', 'FlashpixVersion', 'InteropVersion', 'InteropIndex', 'ComponentsConfiguration']);
