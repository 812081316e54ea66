/**
 * The OpenAPI 3.1 description (issue 18): every route the app registers is described and every
 * described route exists, and the real responses of a walk through the API (201, the error codes,
 * the file record, the crash bundle …) validate against it.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import SwaggerParser from '@apidevtools/swagger-parser';
import { createConfig, lintFromString } from '@redocly/openapi-core';
import openapiTS, { astToString } from 'openapi-typescript';
import { after, before, describe, it } from 'node:test';
import { Ajv2020 } from 'ajv/dist/2020.js';
import request from 'supertest';
import { bundledDocument } from '../src/http/openapi.js';
import { sweep } from '../src/retention/sweeper.js';
import { fixture, testService } from './helpers.js';

const base = 'https://scrubline.invalid/openapi.json';

interface Doc {
  paths: Record<string, Record<string, { responses: Record<string, { content?: Record<string, { schema: unknown }> }> }>>;
}

/** Routes as Express holds them, mounted routers included: "get /v1/files/{id}". */
function registeredRoutes(app: unknown): Set<string> {
  const found = new Set<string>();
  type Layer = { route?: { path: string; methods: Record<string, boolean> }; handle?: { stack?: Layer[] }; rawPath?: string };
  const walk = (stack: Layer[], prefix: string): void => {
    for (const layer of stack) {
      if (layer.route) {
        for (const method of Object.keys(layer.route.methods)) found.add(`${method} ${(prefix + layer.route.path).replace(/:(\w+)/g, '{$1}')}`);
      } else if (layer.handle?.stack) walk(layer.handle.stack, prefix + (layer.rawPath ?? ''));
    }
  };
  walk((app as { router: { stack: Layer[] } }).router.stack, '');
  return found;
}

/** Refs to the document's components, made absolute so a response schema compiles on its own. */
function absolute(schema: unknown): unknown {
  if (Array.isArray(schema)) return schema.map(absolute);
  if (schema === null || typeof schema !== 'object') return schema;
  return Object.fromEntries(Object.entries(schema).map(([k, v]) => [k, k === '$ref' && typeof v === 'string' && v.startsWith('#/') ? base + v : absolute(v)]));
}

describe('OpenAPI 3.1 description', () => {
  let svc: Awaited<ReturnType<typeof testService>>;
  let doc: Doc;
  let ajv: Ajv2020;
  const checked = new Set<string>();

  /** Validates a JSON response against the document's schema for this route and status. */
  function conforms(method: string, route: string, res: { status: number; body: unknown; headers: Record<string, string> }): void {
    const response = doc.paths[route]?.[method]?.responses[String(res.status)];
    assert.ok(response, `${method} ${route} ${res.status} is not described`);
    const json = response.content?.['application/json'];
    if (json) {
      assert.match(res.headers['content-type'] ?? '', /^application\/json/);
      const validate = ajv.compile(absolute(json.schema) as object);
      assert.ok(validate(res.body), `${method} ${route} ${res.status}: ${JSON.stringify(validate.errors)}`);
    } else {
      const type = Object.keys(response.content ?? {})[0];
      if (type && type !== 'application/octet-stream') assert.ok((res.headers['content-type'] ?? '').startsWith(type), `${method} ${route} ${res.status} content type`);
    }
    checked.add(`${method} ${route} ${res.status}`);
  }

  before(async () => {
    svc = await testService();
    doc = (await svc.api.get('/openapi.json')).body as Doc;
    ajv = new Ajv2020({ strict: false, allErrors: true, validateFormats: false });
    ajv.addSchema({ ...doc, $id: base });
  });
  after(() => svc.close());

  it('describes every route the app registers, and nothing it does not', () => {
    const registered = registeredRoutes(svc.app);
    const described = new Set(Object.entries(doc.paths).flatMap(([route, methods]) => Object.keys(methods).map((m) => `${m} ${route}`)));
    assert.deepEqual([...registered].filter((r) => !described.has(r)), [], 'registered but not described');
    assert.deepEqual([...described].filter((r) => !registered.has(r)), [], 'described but not registered');
  });

  it('the real responses of a walk through the API validate against it', async () => {
    const { api, app } = svc;
    conforms('get', '/healthz', await api.get('/healthz'));
    const ready = await api.get('/readyz');
    conforms('get', '/readyz', ready);
    conforms('get', '/openapi.json', await api.get('/openapi.json'));
    conforms('get', '/metrics', await api.get('/metrics'));
    conforms('post', '/v1/uploads', await request(app).post('/v1/uploads').attach('file', fixture('media/png-text-exif-xmp.png')));

    const uploaded = await api.post('/v1/uploads').field('jobId', 'job-api').attach('file', fixture('media/jpeg-gps-exif-xmp-iptc.jpg')).attach('file', fixture('media/mp4-location.mp4'));
    conforms('post', '/v1/uploads', uploaded);
    const [jpeg] = uploaded.body.files as Array<{ id: string; fingerprint: { id: string } }>;
    conforms('post', '/v1/uploads', await api.post('/v1/uploads').field('preset', 'x').attach('file', fixture('media/png-text-exif-xmp.png')));
    conforms('post', '/v1/uploads', await api.post('/v1/uploads').attach('file', fixture('media/png-text-exif-xmp.png')).attach('file', fixture('reject/html-as-image.png')));

    conforms('get', '/v1/files/{id}', await api.get(`/v1/files/${jpeg!.id}`));
    conforms('get', '/v1/files/{id}', await api.get('/v1/files/nope'));
    conforms('get', '/v1/files/{id}/content', await api.get(`/v1/files/${jpeg!.id}/content`).buffer(true));
    conforms('get', '/v1/files/{id}/thumbnail', await api.get('/v1/files/nope/thumbnail'));
    await svc.previewsSettled();
    conforms('get', '/v1/files/{id}/thumbnail', await api.get(`/v1/files/${jpeg!.id}/thumbnail`).buffer(true));

    const crash = await api.post('/v1/crashes').send({ fileId: jpeg!.id, error: { message: 'decoder failed' }, jobConfig: { preset: '1080p' } });
    conforms('post', '/v1/crashes', crash);
    conforms('post', '/v1/crashes', await api.post('/v1/crashes').send({ error: 'not an object' }));
    conforms('get', '/v1/crashes/{id}', await api.get(`/v1/crashes/${crash.body.id}`));
    conforms('get', '/v1/crashes/{id}', await api.get('/v1/crashes/nope'));
    conforms('get', '/v1/fingerprints/{id}', await api.get(`/v1/fingerprints/${jpeg!.fingerprint.id}`));

    conforms('post', '/v1/jobs/{jobId}/finished', await api.post('/v1/jobs/job-api/finished'));
    conforms('post', '/v1/jobs/{jobId}/finished', await api.post('/v1/jobs/bad%20id/finished'));
    conforms('delete', '/v1/jobs/{jobId}', await api.delete('/v1/jobs/job-api'));
    conforms('post', '/v1/uploads', await api.post('/v1/uploads').field('jobId', 'job-api').attach('file', fixture('media/png-text-exif-xmp.png')));

    const kept = await api.post('/v1/uploads').attach('file', fixture('media/png-text-exif-xmp.png'));
    await sweep({ ledger: svc.ledger, dataDir: svc.dataDir, at: new Date('2030-01-01T00:00:00.000Z') });
    conforms('get', '/v1/files/{id}/content', await api.get(`/v1/files/${kept.body.files[0].id}/content`));

    // The resumable endpoint: creation, a wrong offset, the finishing PATCH, termination.
    const tus = { 'Tus-Resumable': '1.0.0' };
    const png = readFileSync(fixture('media/png-text-exif-xmp.png'));
    const created = await api.post('/v1/resumable').set({ ...tus, 'Upload-Length': String(png.length) });
    conforms('post', '/v1/resumable', created);
    const location = created.headers.location!;
    const patch = (offset: number, body: Buffer) => api.patch(location).set({ ...tus, 'Upload-Offset': String(offset), 'Content-Type': 'application/offset+octet-stream' }).send(body);
    conforms('patch', '/v1/resumable/{id}', await patch(7, png));
    conforms('patch', '/v1/resumable/{id}', await patch(0, png.subarray(0, 100)));
    conforms('head', '/v1/resumable/{id}', await api.head(location).set(tus));
    conforms('patch', '/v1/resumable/{id}', await patch(100, png.subarray(100)));
    conforms('head', '/v1/resumable/{id}', await api.head(location).set(tus));
    const abandoned = await api.post('/v1/resumable').set({ ...tus, 'Upload-Length': '10' });
    conforms('delete', '/v1/resumable/{id}', await api.delete(abandoned.headers.location!).set(tus));
    conforms('post', '/v1/resumable', await api.post('/v1/resumable').set({ ...tus, 'Upload-Length': '0' }));

    for (const status of ['201', '400', '401', '404', '410', '415']) assert.ok([...checked].some((c) => c.endsWith(` ${status}`)), `a ${status} was checked`);
  });
});

describe('the OpenAPI document in the usual client tools (issue 28)', () => {
  const file = JSON.parse(readFileSync(new URL('../schemas/openapi.json', import.meta.url), 'utf8')) as Record<string, unknown>;

  it('schemas/openapi.json carries the fingerprint schema as components, in step with its own file, and is what /openapi.json serves', async () => {
    assert.deepEqual(file, bundledDocument(), 'run `npm run schemas` after changing either schema');
    assert.doesNotMatch(JSON.stringify(file), /\$defs|"\$id"/, 'no reference into a schema of its own');
    const svc = await testService();
    try {
      assert.deepEqual((await request(svc.app).get('/openapi.json')).body, file);
    } finally {
      await svc.close();
    }
  });

  it('resolves in openapi-typescript and @apidevtools/swagger-parser, and passes Redocly\'s recommended lint', async () => {
    const types = astToString(await openapiTS(structuredClone(file) as never));
    assert.match(types, /\bFingerprint: /);
    assert.match(types, /\bFingerprintImage: \{/);
    assert.match(types, /createUpload: \{/);
    const validated = (await SwaggerParser.validate(structuredClone(file) as never)) as { openapi: string };
    assert.equal(validated.openapi, '3.1.0');
    // The multipart upload's files are binary, as generators expect.
    const upload = (file as { paths: Record<string, Record<string, { requestBody: { content: Record<string, { schema: { properties: { file: { items: { format?: string } } } } }> } }>> }).paths['/v1/uploads']!.post!;
    assert.equal(upload.requestBody.content['multipart/form-data']!.schema.properties.file.items.format, 'binary');
    const problems = await lintFromString({ source: JSON.stringify(file), absoluteRef: 'openapi.json', config: await createConfig({ extends: ['recommended'] }) });
    // The open routes (health, readiness, this document) answer no 4xx: said as it is.
    const left = problems.filter((p) => !(p.ruleId === 'operation-4xx-response' && /~1(healthz|readyz|openapi\.json)\//.test(p.location[0]?.pointer ?? '')));
    assert.deepEqual(left.map((p) => `${p.ruleId}: ${p.message} ${p.location[0]?.pointer ?? ''}`), []);
  });
});
