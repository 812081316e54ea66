/**
 * What real cameras, phones and editors write, and scrubline once refused or mishandled
 * (issue 16): each class rebuilt here from a file the test makes itself with real tools, and
 * beside each, the check that the fix did not loosen the scan anywhere else.
 */
import assert from 'node:assert/strict';
import { canonicalIcc } from '../src/formats/icc.js';
import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import sharp, { type Sharp } from 'sharp';
import { ScrubError } from '../src/errors.js';
import type { CleanFile } from '../src/pipeline.js';
import { cleanBytes, ffmpegTools, findPlanted, fixture, pngChunk, removeDir, tempDir } from './helpers.js';

const run = promisify(execFile);
let work: string;
before(async () => {
  work = await tempDir('scrubline-real-world-');
});
after(async () => {
  await removeDir(work);
});

/** Runs the pipeline on some bytes; resolves to the report and the cleaned bytes. */
const clean = (bytes: Buffer): Promise<{ out: CleanFile; bytes: Buffer }> => cleanBytes(work, bytes);

async function refusal(bytes: Buffer): Promise<ScrubError> {
  const err = await clean(bytes).then(
    () => undefined,
    (e: unknown) => e,
  );
  assert.ok(err instanceof ScrubError, 'the file is refused');
  return err;
}

function jpegSegment(marker: number, payload: Buffer): Buffer {
  const head = Buffer.alloc(4);
  head.writeUInt16BE(0xff00 | marker, 0);
  head.writeUInt16BE(payload.length + 2, 2);
  return Buffer.concat([head, payload]);
}

/** Inserts segments right after SOI. */
const withSegments = (jpeg: Buffer, ...segments: Buffer[]): Buffer => Buffer.concat([jpeg.subarray(0, 2), ...segments, jpeg.subarray(2)]);

/** [start, end) of each segment with this marker, up to the first scan. */
function segmentsOf(jpeg: Buffer, marker: number): Buffer[] {
  const found: Buffer[] = [];
  for (let pos = 2; pos + 4 <= jpeg.length && jpeg[pos + 1] !== 0xda; pos += 2 + jpeg.readUInt16BE(pos + 2)) {
    if (jpeg[pos + 1] === marker) found.push(jpeg.subarray(pos, pos + 2 + jpeg.readUInt16BE(pos + 2)));
  }
  return found;
}

const rawPixels = async (image: Buffer): Promise<Buffer> => sharp(image).raw().toBuffer();
/** A gradient, so that orientation and pixel checks can tell the picture's way up. */
function gradient(width: number, height: number): Sharp {
  const pixels = Buffer.alloc(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) pixels.set([(x * 255) / width, (y * 255) / height, 128], (y * width + x) * 3);
  }
  return sharp(pixels, { raw: { width, height, channels: 3 } });
}

describe('issue 16: JPEG', () => {
  it('an APP14 "Adobe" longer than its 12 bytes (Photoshop, Lightroom) is rebuilt canonically; pixels identical', async () => {
    const plain = await gradient(48, 32).jpeg({ quality: 90 }).toBuffer();
    const adobe = Buffer.concat([Buffer.from('Adobe\0\x64\x80\0\0\0\x01', 'latin1'), Buffer.from('PlantedMake vendor tail of a long APP14', 'latin1')]);
    const input = withSegments(plain, jpegSegment(0xee, adobe), jpegSegment(0xfe, Buffer.from('PlantedMake', 'latin1')));
    const { out, bytes } = await clean(input);
    const app14 = segmentsOf(bytes, 0xee);
    assert.equal(app14.length, 1);
    assert.deepEqual([...app14[0]!], [0xff, 0xee, 0, 14, ...Buffer.from('Adobe'), 0, 0x64, 0, 0, 0, 0, 1]);
    assert.equal(out.removed.vendor, 1);
    assert.deepEqual(findPlanted(bytes), []);
    assert.ok((await rawPixels(bytes)).equals(await rawPixels(input)));
  });

  it('runs mined from a JPEG inside a vendor segment do not count where they match the output’s own tables', async () => {
    // Standard (Annex K) Huffman tables: the runs every such JPEG shares.
    const plain = await gradient(64, 48).jpeg({ quality: 85, optimiseCoding: false }).toBuffer();
    const preview = await gradient(16, 12).jpeg({ quality: 60, optimiseCoding: false }).toBuffer();
    const input = withSegments(plain, jpegSegment(0xe2, Buffer.concat([Buffer.from('FPXR\0', 'latin1'), preview])));
    const { out, bytes } = await clean(input);
    assert.equal(out.removed.vendor, 1);
    assert.ok((await rawPixels(bytes)).equals(await rawPixels(input)));
  });

  it('a value equal to a run of the picture\'s own scan data is not a leak: the output\'s scan is proven the input\'s (issue 26)', async () => {
    // A metadata value (an EXIF UNDEFINED blob) equal to 16 bytes of the image's own scan data, as
    // a C2PA ingredient thumbnail of the same picture is. It was refused until issue 26; the scan
    // is coded picture data the verifier proves identical to the input's, so the match is the
    // picture's, not the metadata's.
    const plain = await gradient(64, 48).jpeg({ quality: 85 }).toBuffer();
    const sos = plain.indexOf(Buffer.from([0xff, 0xda]));
    const scanBytes = plain.subarray(sos + 40, sos + 56);
    const input = withSegments(plain, jpegSegment(0xe1, Buffer.concat([Buffer.from('Exif\0\0', 'latin1'), exifBlob(0x9286, scanBytes)])));
    const { out, bytes } = await clean(input);
    assert.equal(out.removed.exif, 1);
    assert.ok(bytes.includes(scanBytes));
  });

  it('a value inside a scan the stripper cut is still a leak: a cut scan is not the input\'s, so nothing proves the run', async () => {
    // As above, but with text after the scan's last MCU: the stripper cuts it, so the output's
    // scan is no longer byte for byte the input's, and the run it still holds is excused by nothing.
    const plain = await gradient(64, 48).jpeg({ quality: 85 }).toBuffer();
    const sos = plain.indexOf(Buffer.from([0xff, 0xda]));
    const scanBytes = plain.subarray(sos + 40, sos + 56);
    const appended = Buffer.concat([plain.subarray(0, -2), Buffer.from('text after the last MCU', 'latin1'), plain.subarray(-2)]);
    const err = await refusal(withSegments(appended, jpegSegment(0xe1, Buffer.concat([Buffer.from('Exif\0\0', 'latin1'), exifBlob(0x9286, scanBytes)]))));
    assert.equal(err.code, 'verification_failed');
    assert.match(err.message, /value-scan matches: jpeg scan data at \d+/);
  });

  it('outside proven coded data the scan is as strict as ever, and the log says where a match lies', async () => {
    // The same in a PNG: its compressed image data has no identity proof yet, so the match refuses.
    const png = await gradient(64, 48).png({ compressionLevel: 0 }).toBuffer();
    const idat = png.indexOf(Buffer.from('IDAT'));
    const idatBytes = png.subarray(idat + 40, idat + 56);
    const iend = png.indexOf(Buffer.from('IEND')) - 4;
    const input = Buffer.concat([png.subarray(0, iend), pngChunk('eXIf', exifBlob(0x9286, idatBytes)), png.subarray(iend)]);
    const err = await refusal(input);
    assert.equal(err.code, 'verification_failed');
    assert.match(err.message, /value-scan matches: png IDAT at \d+/, 'the log says where, never what');
    assert.doesNotMatch(err.publicMessage, /IDAT at/);
  });
});

/** A big-endian EXIF block whose IFD0 holds one UNDEFINED tag with these bytes. */
function exifBlob(tag: number, value: Buffer): Buffer {
  const tiff = Buffer.alloc(8 + 2 + 12 + 4 + value.length);
  tiff.write('MM', 0, 'latin1');
  tiff.writeUInt16BE(42, 2);
  tiff.writeUInt32BE(8, 4);
  tiff.writeUInt16BE(1, 8);
  tiff.writeUInt16BE(tag, 10);
  tiff.writeUInt16BE(7, 12);
  tiff.writeUInt32BE(value.length, 14);
  tiff.writeUInt32BE(8 + 2 + 12 + 4, 18);
  value.copy(tiff, 8 + 2 + 12 + 4);
  return tiff;
}

/** An EXIF block (big-endian) with Orientation and an Artist string. */
function exifWith(orientation: number, artist: string): Buffer {
  const text = Buffer.from(artist + '\0', 'latin1');
  const tiff = Buffer.alloc(8 + 2 + 2 * 12 + 4 + text.length);
  tiff.write('MM', 0, 'latin1');
  tiff.writeUInt16BE(42, 2);
  tiff.writeUInt32BE(8, 4);
  tiff.writeUInt16BE(2, 8);
  tiff.writeUInt16BE(0x0112, 10); // Orientation, SHORT, 1
  tiff.writeUInt16BE(3, 12);
  tiff.writeUInt32BE(1, 14);
  tiff.writeUInt16BE(orientation, 18);
  tiff.writeUInt16BE(0x013b, 22); // Artist, ASCII
  tiff.writeUInt16BE(2, 24);
  tiff.writeUInt32BE(text.length, 26);
  tiff.writeUInt32BE(8 + 2 + 24 + 4, 30);
  text.copy(tiff, 8 + 2 + 24 + 4);
  return tiff;
}

/** Inserts a chunk before the first chunk of `type`. */
function pngInsertBefore(png: Buffer, type: string, chunk: Buffer): Buffer {
  for (let pos = 8; pos + 8 <= png.length; pos += 12 + png.readUInt32BE(pos)) {
    if (png.toString('latin1', pos + 4, pos + 8) === type) return Buffer.concat([png.subarray(0, pos), chunk, png.subarray(pos)]);
  }
  throw new Error(`no ${type} chunk`);
}

describe('issue 16: PNG orientation', () => {
  for (const where of ['IDAT', 'IEND'] as const) {
    it(`an eXIf ${where === 'IDAT' ? 'before' : 'after'} the image data keeps its orientation as a minimal eXIf`, async () => {
      const png = await gradient(48, 32).png().toBuffer();
      const input = pngInsertBefore(png, where, pngChunk('eXIf', exifWith(6, 'Planted Artist Quokka')));
      const { out, bytes } = await clean(input);
      assert.deepEqual(findPlanted(bytes), []);
      assert.equal((await sharp(bytes).metadata()).orientation, 6, 'decoders see the orientation');
      assert.equal(out.fingerprint.family === 'image' && out.fingerprint.orientation, 6);
      assert.ok(out.removed.exif === 1);
      assert.ok((await rawPixels(bytes)).equals(await rawPixels(png)));
    });
  }
});

describe('issue 16: phone video handler names', () => {
  it('Android’s "VideoHandle" and "SoundHandle" (prefixes of ffmpeg’s own names) do not refuse the video', async () => {
    const tools = await ffmpegTools();
    const file = path.join(work, 'android.mp4');
    await run(tools.ffmpeg.path, [
      ...['-v', 'error', '-f', 'lavfi', '-i', 'testsrc=size=64x48:rate=10:duration=1', '-f', 'lavfi', '-i', 'sine=frequency=440:duration=1'],
      ...['-c:v', 'libx264', '-pix_fmt', 'yuv420p', '-c:a', 'aac', '-shortest'],
      ...['-metadata:s:v:0', 'handler_name=VideoHandle', '-metadata:s:a:0', 'handler_name=SoundHandle', '-metadata', 'title=Planted Title Wombat', file],
    ]);
    const input = await readFile(file);
    assert.ok(input.includes(Buffer.from('VideoHandle\0')) || input.includes(Buffer.from('VideoHandle')), 'the handler name is written');
    const { out, bytes } = await clean(input);
    assert.deepEqual(findPlanted(bytes), []);
    assert.ok((out.removed.containerTags ?? 0) >= 1);
  });
});

describe('issue 16: phone HEIF', () => {
  it('an ipma association with property index 0 ("no property", as HMD Nokia phones write) is skipped, not refused', async () => {
    const input = Buffer.from(await readFile(fixture('media/heic-exif-xmp-thumbnail.heic')));
    // ipma version 0, flags 0: entry_count, then per item a 16-bit id, a count and 1-byte indices.
    const ipma = input.indexOf('ipma', 0, 'latin1') - 4;
    assert.equal(input[ipma + 8], 0, 'version 0');
    const primary = input.readUInt16BE(input.indexOf('pitm', 0, 'latin1') + 8);
    let at = ipma + 16;
    for (let i = 0; i < input.readUInt32BE(ipma + 12); i++) {
      const id = input.readUInt16BE(at);
      const count = input[at + 2]!;
      // The primary's last association (its pixi, not essential) becomes "no property".
      if (id === primary) input[at + 2 + count] = 0x00;
      at += 3 + count;
    }
    const { out, bytes } = await clean(input);
    assert.deepEqual(findPlanted(bytes), []);
    assert.equal(out.removed.gps, 1);
  });
});

/** A little-endian TIFF built by hand: the entries in the order given (unsorted if asked), then the values. */
function handTiff(entries: Array<{ tag: number; type: number; values: Buffer; count: number }>, pixels: Buffer): Buffer {
  const ifdSize = 2 + entries.length * 12 + 4;
  const extra = entries.reduce((n, e) => n + (e.values.length > 4 ? e.values.length + (e.values.length % 2) : 0), 0);
  const out = Buffer.alloc(8 + ifdSize + extra + pixels.length);
  out.write('II', 0, 'latin1');
  out.writeUInt16LE(42, 2);
  out.writeUInt32LE(8, 4);
  out.writeUInt16LE(entries.length, 8);
  let valueAt = 8 + ifdSize;
  const pixelsAt = 8 + ifdSize + extra;
  entries.forEach((e, i) => {
    const at = 10 + 12 * i;
    out.writeUInt16LE(e.tag, at);
    out.writeUInt16LE(e.type, at + 2);
    out.writeUInt32LE(e.count, at + 4);
    const values = e.tag === 273 ? Buffer.from(new Uint32Array([pixelsAt]).buffer) : e.values;
    if (values.length <= 4) values.copy(out, at + 8);
    else {
      out.writeUInt32LE(valueAt, at + 8);
      values.copy(out, valueAt);
      valueAt += values.length + (values.length % 2);
    }
  });
  pixels.copy(out, pixelsAt);
  return out;
}

const short = (v: number) => ({ type: 3, count: 1, values: Buffer.from(new Uint16Array([v]).buffer) });
const long = (v: number) => ({ type: 4, count: 1, values: Buffer.from(new Uint32Array([v]).buffer) });
const ascii = (s: string) => ({ type: 2, count: s.length + 1, values: Buffer.from(s + '\0', 'latin1') });

describe('issue 16: TIFF, rebuilt byte for byte', () => {
  it('a 16-bit LZW TIFF stays 16-bit with identical samples, ICC kept, XMP gone; a profile name found inside the kept profile is no leak', async () => {
    const width = 40;
    const height = 30;
    const samples = Buffer.alloc(width * height * 3 * 2);
    for (let i = 0; i < width * height * 3; i++) samples.writeUInt16LE((i * 997) % 65536, i * 2);
    // The XMP names the colour profile by words its header holds, as Photoshop's photoshop:ICCProfile does.
    const xmp = '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/" dc:title="Planted Title Wombat" photoshop:ICCProfile="mntrRGB XYZ"/></rdf:RDF></x:xmpmeta>';
    // A Uint16Array tells sharp the samples are 16-bit.
    const input = await sharp(new Uint16Array(samples.buffer, samples.byteOffset, samples.length / 2), { raw: { width, height, channels: 3 } })
      .toColourspace('rgb16')
      .withIccProfile('srgb')
      .withXmp(xmp)
      .tiff({ compression: 'lzw', predictor: 'horizontal' })
      .toBuffer();
    const { out, bytes } = await clean(input);
    assert.deepEqual(findPlanted(bytes), []);
    assert.equal(out.removed.xmp, 1);
    const [a, b] = await Promise.all([input, bytes].map((x) => sharp(x).raw({ depth: 'ushort' }).toBuffer()));
    assert.ok(a!.equals(b!), 'the same 16-bit samples');
    const [inMeta, outMeta] = await Promise.all([sharp(input).metadata(), sharp(bytes).metadata()]);
    assert.equal(outMeta.depth, 'ushort');
    assert.ok(outMeta.icc?.equals(canonicalIcc(inMeta.icc!, 'test').profile), 'ICC kept, rebuilt from its fields');
  });

  it('a tiled, two-page TIFF keeps its first page’s tiles and drops the second page', async () => {
    const page = await gradient(64, 64).tiff({ tile: true, tileWidth: 16, tileHeight: 16, compression: 'deflate' }).toBuffer();
    // A second IFD: a copy of the first, appended and linked from the first's next pointer.
    const ifd = page.readUInt32LE(4);
    const count = page.readUInt16LE(ifd);
    const copy = Buffer.from(page.subarray(ifd, ifd + 2 + count * 12 + 4));
    copy.writeUInt32LE(0, 2 + count * 12);
    const input = Buffer.concat([page, copy]);
    input.writeUInt32LE(page.length, ifd + 2 + count * 12);
    const { out, bytes } = await clean(input);
    assert.equal(out.removed.pages, 1);
    assert.equal(bytes.readUInt32LE(bytes.readUInt32LE(4) + 2 + bytes.readUInt16LE(bytes.readUInt32LE(4)) * 12), 0, 'one IFD');
    assert.ok((await rawPixels(bytes)).equals(await rawPixels(page)));
  });

  it('an Olympus TIFF whose first tag is PrintIM (file-type calls it a Sony ARW) is cleaned as the TIFF it is', async () => {
    const pixels = Buffer.from([0, 64, 128, 255]);
    const input = handTiff(
      [
        { tag: 50341, type: 7, count: 8, values: Buffer.from('PrintIM\0', 'latin1') },
        { tag: 256, ...short(2) },
        { tag: 257, ...short(2) },
        { tag: 258, ...short(8) },
        { tag: 259, ...short(1) },
        { tag: 262, ...short(1) },
        { tag: 271, ...ascii('OLYMPUS IMAGING CORP.') },
        { tag: 272, ...ascii('PlantedModel X9') },
        { tag: 273, ...long(0) },
        { tag: 277, ...short(1) },
        { tag: 278, ...short(2) },
        { tag: 279, ...long(4) },
      ],
      pixels,
    );
    const { out, bytes } = await clean(input);
    assert.equal(out.mime, 'image/tiff');
    assert.deepEqual(findPlanted(bytes), []);
    // libtiff warns of the unsorted directory the camera wrote; the rebuilt one is sorted.
    assert.ok((await rawPixels(bytes)).equals(await sharp(input, { failOn: 'none' }).raw().toBuffer()));
  });
});

/** Per-stream packet hashes (ffmpeg's framemd5 of a stream copy): equal means a lossless remux. */
/** MD5 of each decoded picture of the first video stream. */
async function pictureHashes(file: string): Promise<string[]> {
  const tools = await ffmpegTools();
  const { stdout } = await run(tools.ffmpeg.path, ['-v', 'error', '-i', file, '-map', '0:V:0', '-f', 'framemd5', '-']);
  return stdout.split('\n').filter((l) => l && !l.startsWith('#')).map((l) => l.split(',').at(-1)!.trim());
}

async function packetHashes(file: string): Promise<string[]> {
  const tools = await ffmpegTools();
  const { stdout } = await run(tools.ffmpeg.path, ['-v', 'error', '-i', file, '-map', '0:v', '-map', '0:a', '-c', 'copy', '-f', 'framemd5', '-']);
  return stdout.split('\n').filter((l) => l && !l.startsWith('#')).map((l) => l.split(',').slice(0, 2).concat(l.split(',').slice(-1)).join(','));
}

describe('issue 16: camera raw built on TIFF', () => {
  it('a TIFF whose first picture is a reduced preview with the photo in a SubIFD (NEF, ARW) is refused as raw, not cleaned into its preview', async () => {
    const input = handTiff(
      [
        { tag: 254, ...long(1) },
        { tag: 256, ...short(2) },
        { tag: 257, ...short(2) },
        { tag: 258, ...short(8) },
        { tag: 259, ...short(1) },
        { tag: 262, ...short(1) },
        { tag: 271, ...ascii('NIKON CORPORATION') },
        { tag: 273, ...long(0) },
        { tag: 277, ...short(1) },
        { tag: 278, ...short(2) },
        { tag: 279, ...long(4) },
        { tag: 330, ...long(8) },
      ],
      Buffer.from([0, 64, 128, 255]),
    );
    const err = await refusal(input);
    assert.equal(err.code, 'unsupported_type');
    assert.match(err.publicMessage, /camera raw image/);
  });
});

describe('issue 16: camera and phone video in a sibling container', () => {
  it('a Sony XAVC S-style MP4 with PCM audio is remuxed losslessly into QuickTime', async () => {
    const tools = await ffmpegTools();
    const file = path.join(work, 'xavc.mp4');
    await run(tools.ffmpeg.path, [
      ...['-v', 'error', '-f', 'lavfi', '-i', 'testsrc=size=64x48:rate=10:duration=1', '-f', 'lavfi', '-i', 'sine=duration=1'],
      ...['-c:v', 'libx264', '-c:a', 'pcm_s16be', '-metadata', 'title=Planted Title Wombat', '-f', 'mov', '-brand', 'XAVC', file],
    ]);
    const { out, bytes } = await clean(await readFile(file));
    assert.equal(out.mime, 'video/quicktime');
    assert.deepEqual(findPlanted(bytes), []);
    // Audio packet for packet; the video's first packet lost x264's settings SEI (issue 26), and
    // decodes to the same pictures.
    const [after, before] = [await packetHashes(out.path), await packetHashes(file)];
    assert.deepEqual(after.filter((p) => p.startsWith('1,')), before.filter((p) => p.startsWith('1,')));
    assert.deepEqual(await pictureHashes(out.path), await pictureHashes(file));
    assert.equal((out.removed.cameraData ?? 0) >= 1, true, JSON.stringify(out.removed));
  });

  it('a phone file branded MP4 that carries AMR audio is remuxed losslessly into 3GP', async () => {
    const tools = await ffmpegTools();
    // AMR-NB frames written by hand (Debian's ffmpeg has no AMR encoder): 12.2 kbit/s, silence.
    const amr = path.join(work, 'speech.amr');
    await writeFile(amr, Buffer.concat([Buffer.from('#!AMR\n', 'latin1'), ...Array.from({ length: 50 }, () => Buffer.concat([Buffer.from([0x3c]), Buffer.alloc(31)]))]));
    const file = path.join(work, 'phone.mp4');
    await run(tools.ffmpeg.path, [
      ...['-v', 'error', '-f', 'lavfi', '-i', 'testsrc=size=176x144:rate=10:duration=1', '-i', amr],
      ...['-c:v', 'h263', '-c:a', 'copy', '-metadata', 'title=Planted Title Wombat', '-f', '3gp', '-brand', 'isom', file],
    ]);
    const { out, bytes } = await clean(await readFile(file));
    assert.equal(out.mime, 'video/3gpp');
    assert.deepEqual(findPlanted(bytes), []);
    assert.deepEqual(await packetHashes(out.path), await packetHashes(file));
  });
});

describe('issue 16, then 26: camcorder data in the picture stream', () => {
  it('H.264 with a camcorder SEI user-data message (MDPM) is cleaned, the message counted and gone (it was refused before issue 26)', async () => {
    const tools = await ffmpegTools();
    const file = path.join(work, 'camcorder.mp4');
    await run(tools.ffmpeg.path, [
      ...['-v', 'error', '-f', 'lavfi', '-i', 'testsrc=size=64x48:rate=10:duration=1', '-c:v', 'libx264'],
      // Sony's MDPM UUID, then bytes a camcorder would fill with date, place and model.
      ...['-bsf:v', 'h264_metadata=sei_user_data=17ee8c60-f84d-11d9-8cd6-0800200c9a66+MDPMPlantedModel X9', file],
    ]);
    const input = await readFile(file);
    assert.ok(input.includes(Buffer.from('PlantedModel X9')));
    const { out, bytes } = await clean(input);
    assert.deepEqual(findPlanted(bytes), []);
    assert.ok(!bytes.includes(Buffer.from('x264 - core')), 'x264’s settings string went with the other SEI');
    assert.ok((out.removed.cameraData ?? 0) >= 2, JSON.stringify(out.removed));
  });
});
