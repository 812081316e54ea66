import exifr from 'exifr';
import fs from 'node:fs';
const opts = { tiff: true, ifd0: true, ifd1: true, exif: true, gps: true, interop: true, makerNote: true, userComment: true, xmp: true, iptc: true, icc: false, jfif: false, ihdr: false, multiSegment: true, mergeOutput: false, translateKeys: true, translateValues: false, reviveValues: false, sanitize: false, silentErrors: true };
for (const f of process.argv.slice(2)) {
  try { const r = await exifr.parse(fs.readFileSync(f), opts); console.log(f, JSON.stringify(r, (k,v)=> v instanceof Uint8Array ? `<bytes ${v.length}>` : v).slice(0, 1500)); } catch (e) { console.log(f, 'ERR', e.message) }
}
