/**
 * Issue 26, ICC profiles: a profile is rebuilt from its fields in every format that carries one.
 * The profile here is written by hand as a calibration tool would write a monitor's: its maker
 * and model in the header, a calibration date, a description and copyright naming the owner, a
 * device model description, and text appended to a colour tag. sharp embeds it; each cleaned
 * file must keep the colour (pixels convert to sRGB identically) and lose everything else.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import sharp from 'sharp';
import { canonicalIcc, isCanonicalIcc } from '../src/formats/icc.js';
import { checkImageStructure } from '../src/verify/structure-image.js';
import { cleanBytes, removeDir, tempDir } from './helpers.js';

const owner = "Calibrated for Jane Example's iMac, serial C02XK1";
let work: string;
let profilePath: string;
before(async () => {
  work = await tempDir();
  profilePath = path.join(work, 'monitor.icc');
  await writeFile(profilePath, monitorProfile());
});
after(() => removeDir(work));

const s15 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeInt32BE(Math.round(n * 65536));
  return b;
};
const xyz = (x: number, y: number, z: number): Buffer => Buffer.concat([Buffer.from('XYZ \0\0\0\0', 'latin1'), s15(x), s15(y), s15(z)]);
const textDesc = (text: string): Buffer => {
  const ascii = Buffer.from(`${text}\0`, 'latin1');
  const out = Buffer.alloc(12 + ascii.length + 78);
  out.write('desc', 0, 'latin1');
  out.writeUInt32BE(ascii.length, 8);
  ascii.copy(out, 12);
  return out;
};

/** A v2 monitor profile (sRGB-like primaries, gamma 2.2) carrying its owner's details everywhere it can. */
function monitorProfile(): Buffer {
  const gamma = Buffer.from([...Buffer.from('curv\0\0\0\0', 'latin1'), 0, 0, 0, 1, 0x02, 0x33]);
  const tags: Array<[string, Buffer]> = [
    ['desc', textDesc(owner)],
    ['cprt', Buffer.concat([Buffer.from('text\0\0\0\0', 'latin1'), Buffer.from(`${owner}\0`, 'latin1')])],
    ['wtpt', xyz(0.9642, 1, 0.8249)],
    ['rXYZ', xyz(0.4361, 0.2225, 0.0139)],
    ['gXYZ', xyz(0.3851, 0.7169, 0.0971)],
    // Text appended after the one XYZ number the tag holds.
    ['bXYZ', Buffer.concat([xyz(0.1431, 0.0606, 0.7141), Buffer.from('owner Jane Ex')])],
    ['rTRC', gamma],
    ['gTRC', gamma],
    ['bTRC', gamma],
    ['dmdd', textDesc(owner)],
    ['calt', Buffer.from('dtim\0\0\0\0\x07\xe8\0\x03\0\x0e\0\x0c\0\0\0\0', 'latin1')],
  ];
  const header = Buffer.alloc(128);
  header.write('lcms', 4, 'latin1');
  header.writeUInt32BE(0x02100000, 8);
  header.write('mntrRGB XYZ ', 12, 'latin1');
  header.writeUInt16BE(2024, 24);
  header.write('acspAPPL', 36, 'latin1');
  header.write('APPLiMac', 48, 'latin1');
  Buffer.concat([s15(0.9642), s15(1), s15(0.8249)]).copy(header, 68);
  header.write('jane', 80, 'latin1');
  const table = Buffer.alloc(4 + 12 * tags.length);
  table.writeUInt32BE(tags.length);
  const data: Buffer[] = [];
  let at = 128 + table.length;
  tags.forEach(([signature, body], i) => {
    const padded = Buffer.concat([body, Buffer.alloc((4 - (body.length % 4)) % 4)]);
    table.write(signature, 4 + 12 * i, 'latin1');
    table.writeUInt32BE(at, 8 + 12 * i);
    table.writeUInt32BE(body.length, 12 + 12 * i);
    data.push(padded);
    at += padded.length;
  });
  const profile = Buffer.concat([header, table, ...data]);
  profile.writeUInt32BE(profile.length, 0);
  return profile;
}

/** Pixels as converted to sRGB through the file's own profile. */
const srgb = (image: Buffer): Promise<Buffer> => sharp(image).toColourspace('srgb').raw().toBuffer();

const photo = (): ReturnType<typeof sharp> => sharp({ create: { width: 32, height: 24, channels: 3, background: '#c83' } }).withIccProfile(profilePath);

describe('issue 26: ICC profiles are written from their fields', () => {
  it('the rebuilt profile keeps the colour tags, resets the header, rewrites desc and cprt and drops the rest', () => {
    const input = monitorProfile();
    const { profile, changed } = canonicalIcc(input, 'test');
    assert.ok(changed);
    assert.ok(!profile.includes(Buffer.from('Jane')) && !profile.includes(Buffer.from('iMac')) && !profile.includes(Buffer.from('owner')));
    for (const field of [[4, 8], [24, 36], [40, 44], [48, 56], [80, 100]] as const) assert.ok(profile.subarray(...field).every((b) => b === 0), `header bytes ${field[0]}–${field[1]} reset`);
    const tags = Array.from({ length: profile.readUInt32BE(128) }, (_, i) => profile.toString('latin1', 132 + 12 * i, 136 + 12 * i));
    assert.deepEqual(tags.sort(), ['bTRC', 'bXYZ', 'cprt', 'desc', 'gTRC', 'gXYZ', 'rTRC', 'rXYZ', 'wtpt'].sort());
    assert.ok(isCanonicalIcc(profile), 'rebuilding it again changes nothing');
    assert.ok(!isCanonicalIcc(input));
  });

  for (const format of ['jpeg', 'png', 'webp', 'tiff', 'avif'] as const) {
    it(`${format}: the owner's text is gone from the profile and the colours convert the same`, async () => {
      const input = await photo().toFormat(format).toBuffer();
      assert.ok(input.includes(Buffer.from('Jane')) || format === 'png', 'the input carries the text (PNG deflates it)');
      const { out, bytes } = await cleanBytes(work, input);
      assert.equal(out.removed.profileText, 1);
      const kept = (await sharp(bytes).metadata()).icc;
      assert.ok(kept && isCanonicalIcc(kept), 'the output carries the rebuilt profile');
      assert.ok(!kept.includes(Buffer.from('Jane')) && !bytes.includes(Buffer.from('Jane Example')));
      if (format !== 'avif') assert.ok((await srgb(bytes)).equals(await srgb(input)), 'pixels convert identically under the rewritten profile');
    });
  }

  it('the verifier refuses a file whose profile scrubline did not write', async () => {
    for (const format of ['jpeg', 'png', 'webp', 'tiff'] as const) {
      const input = await photo().toFormat(format).toBuffer();
      assert.ok(checkImageStructure(format, input).problems.includes('icc: profile not written from its fields'), format);
    }
  });
});
