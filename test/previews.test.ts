/**
 * Previews for every format a render service shows (issue 18): HEIC, which sharp cannot decode,
 * through libheif's own decoder when the machine has one. A HEIC upload never depends on it.
 */
import assert from 'node:assert/strict';
import { readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import sharp from 'sharp';
import { readExifValuesStrict } from '../src/tools/exifr.js';
import { findHeifDecoder, heifDecodeArgs } from '../src/tools/heif.js';
import { binaryBody, fixture, removeDir, tempDir, testService } from './helpers.js';

const decoder = findHeifDecoder(process.env.SCRUBLINE_HEIF_DECODER_PATH);
const heic = 'media/heic-exif-xmp-thumbnail.heic';

async function thumbnailOf(svc: Awaited<ReturnType<typeof testService>>, id: string) {
  return binaryBody(svc.api.get(`/v1/files/${id}/thumbnail`));
}

describe('HEIC previews by libheif', { skip: decoder ? false : 'no heif-dec or heif-convert on PATH (Debian: libheif-examples); .ci/run installs it' }, () => {
  let svc: Awaited<ReturnType<typeof testService>>;
  before(async () => (svc = await testService({ heifDecoder: decoder })));
  after(() => svc.close());

  it('a HEIC upload gets a ≤ 320 px JPEG preview of its cleaned pixels, with no metadata', async () => {
    const res = await svc.api.post('/v1/uploads').attach('file', fixture(heic));
    assert.equal(res.status, 201, JSON.stringify(res.body));
    const { id } = res.body.files[0] as { id: string };
    await svc.previewsSettled();
    assert.equal((await svc.api.get(`/v1/files/${id}`)).body.preview, 'ready');
    const thumb = await thumbnailOf(svc, id);
    assert.equal(thumb.status, 200);
    const meta = await sharp(thumb.body as Buffer).metadata();
    assert.equal(meta.format, 'jpeg');
    assert.ok(meta.width! <= 320 && meta.height! <= 320);
    assert.equal(meta.width! / meta.height!, 64 / 48, 'the whole picture, not a crop');
    assert.deepEqual(await readExifValuesStrict(thumb.body as Buffer), {});
  });
});

describe('HEIC without a working decoder', () => {
  let svc: Awaited<ReturnType<typeof testService>>;
  before(async () => (svc = await testService({ heifDecoder: { path: '/bin/false', source: 'config' } })));
  after(() => svc.close());

  it('is cleaned and forwarded as ever; it simply has no preview', async () => {
    const res = await svc.api.post('/v1/uploads').attach('file', fixture(heic));
    assert.equal(res.status, 201);
    const { id } = res.body.files[0] as { id: string };
    await svc.previewsSettled();
    assert.equal((await svc.api.get(`/v1/files/${id}`)).body.preview, 'none');
    assert.equal((await svc.api.get(`/v1/files/${id}/thumbnail`)).status, 404);
  });

  it('the decoder is only ever given absolute paths that scrubline chose', () => {
    assert.deepEqual(heifDecodeArgs('/w/clean.heic', '/w/x.decoded.png'), ['--quiet', '/w/clean.heic', '/w/x.decoded.png']);
    assert.throws(() => heifDecodeArgs('-o.heic', '/w/x.png'));
    assert.throws(() => heifDecodeArgs('/w/clean.heic', '/w/x.jpg'));
  });
});

describe('previews after the answer', () => {
  let svc: Awaited<ReturnType<typeof testService>>;
  let dir: string;
  before(async () => {
    dir = await tempDir();
    // A decoder that waits until the test lets it go, then fails: if the answer waited for the
    // preview, the upload would never be answered while the decoder is held.
    const held = path.join(dir, 'held-decoder');
    await writeFile(held, `#!/bin/sh\nwhile [ ! -e '${path.join(dir, 'release')}' ]; do sleep 0.05; done\nexit 1\n`, { mode: 0o755 });
    svc = await testService({ heifDecoder: { path: held, source: 'config' } });
  });
  const release = (): Promise<void> => writeFile(path.join(dir, 'release'), '');
  after(async () => {
    await release();
    await svc.close();
    await removeDir(dir);
  });

  it('the upload is answered while its preview is still being made; the record says pending, then ready or none; nothing is left held', async () => {
    const res = await svc.api.post('/v1/uploads').attach('file', fixture(heic)).attach('file', fixture('media/jpeg-gps-exif-xmp-iptc.jpg'));
    assert.equal(res.status, 201);
    const [heicFile, jpegFile] = res.body.files as Array<{ id: string }>;
    assert.equal((await svc.api.get(`/v1/files/${heicFile!.id}`)).body.preview, 'pending', 'answered while the decoder is held');
    assert.equal((await svc.api.get(`/v1/files/${heicFile!.id}/thumbnail`)).status, 404, 'no thumbnail until it exists');
    assert.ok((await readdir(path.join(svc.dataDir, 'previews'))).length > 0, 'the cleaned HEIC is held for its preview');
    await release();
    await svc.previewsSettled();
    assert.equal((await svc.api.get(`/v1/files/${heicFile!.id}`)).body.preview, 'none');
    assert.equal((await svc.api.get(`/v1/files/${jpegFile!.id}`)).body.preview, 'ready');
    assert.deepEqual(await readdir(path.join(svc.dataDir, 'previews')), [], 'nothing held once the previews are done');
  });
});
