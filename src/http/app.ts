/**
 * buildApp(deps): the HTTP service as an Express app, without listening (server.ts listens;
 * tests build it with real parts and a temp data dir). The upload route is the library's own
 * middleware followed by the forward step, so the service and the library run the same code.
 */
import { randomUUID } from 'node:crypto';
import { access, constants } from 'node:fs/promises';
import { buffer as readAll } from 'node:stream/consumers';
import express, { type Request, type RequestHandler, type Response } from 'express';
import type { Logger } from 'pino';
import { pipeline } from 'node:stream/promises';
import { pinoHttp } from 'pino-http';
import { ScrubError, asScrubError, jobDeleted, shuttingDown } from '../errors.js';
import { isJobId, jobIdRule } from '../ids.js';
import { retryAfterSeconds, serviceErrorHandler } from './errors.js';
import { requireBearer } from './auth.js';
import { defaults } from '../config.js';
import { crashRoutes, fingerprintRecord } from './crashes.js';
import type { ArtefactRecord, JobExpiry, Ledger } from '../storage/ledger.js';
import { countByKind, purgeRecords, removeArtefactObjects } from '../retention/sweeper.js';
import { ForeignName, keepingStore, MissingObject, storeOf, type ObjectStore, type Stores } from '../storage/objects.js';
import { Metrics } from './metrics.js';
import { openApiDocument } from './openapi.js';
import { Previews, type PreviewState } from './previews.js';
import { openObject, TamperedObject, unseal, verifyObject, type Keyring } from '../storage/envelope.js';
import { scrublineParts, type ScrublineOptions, type ScrublineUpload } from '../middleware.js';
import { PartialStore, removePartials } from '../storage/partials.js';
import { resumableHandler, resumablePath } from './resumable.js';
import { TempSpace, tempBytesFor } from './temp-space.js';
import { publicReport } from '../pipeline.js';
import type { Forwarder } from '../steps/forward.js';
import { expiresAt, systemClock } from '../steps/tag-expiry.js';
import { versionOf, type Binary, type Ffmpeg } from '../tools/ffmpeg.js';
import type { HeifDecoder } from '../tools/heif.js';

export interface AppDeps {
  logger: Logger;
  dataDir: string;
  scrubline: ScrublineOptions;
  forwarder: Forwarder;
  ledger: Ledger;
  /** The stores artefacts lie in; thumbnails go to the bucket when there is one, else the data dir. */
  stores: Stores;
  tools: Ffmpeg;
  /** libheif's decoder, for HEIC previews; without it HEIC has none. */
  heifDecoder?: HeifDecoder | undefined;
  /** Encrypts what the service stores itself (thumbnails; the store sink has its own reference). */
  storage: Keyring;
  /** Bearer tokens, any one of which every /v1/* request must carry (several during a rotation). */
  apiTokens: readonly string[];
  /** Longest a file may live while its job has not reported finished. */
  unfinishedJobCapHours: number;
  /** How long fingerprints and crash records are kept (default 30 days). */
  recordRetentionDays?: number;
  /** Uploads processed at once; more get 503 with Retry-After before their body is read. */
  maxConcurrentUploads?: number;
  metrics?: Metrics;
  /** Resumable uploads: how long one may take, and how many (and how many bytes) may be open at once. */
  resumableTtlMs?: number;
  resumableMaxOpen?: number;
  resumableMaxBytes?: number;
  /** Free temp-dir space uploads never reserve. */
  tempHeadroomBytes?: number;
  /** Whether /metrics answers on this app (default true); false when it has a listener of its own. */
  serveMetrics?: boolean;
}

/** How long one /readyz tool check answers for every caller. */
const readyCheckTtlMs = 5_000;
/** How long one /readyz check of the ledger and the bucket answers for every caller. */
const storageCheckTtlMs = 2_000;
const requestIdPattern = /^[A-Za-z0-9._-]{1,64}$/;
const routes =
  'GET /openapi.json, POST /v1/uploads, POST|HEAD|PATCH|DELETE /v1/resumable[/:id] (tus 1.0), GET /v1/files/:id, GET /v1/files/:id/content, GET /v1/files/:id/thumbnail, POST /v1/jobs/:jobId/finished, DELETE /v1/jobs/:jobId, POST /v1/crashes, GET /v1/crashes/:id, GET /v1/fingerprints/:id, GET /healthz, GET /readyz';


/** Unknown, purged-by-request or foreign ids all answer the same 404. */
function notFound(what: string, why = ''): ScrubError {
  return new ScrubError('not_found', `No such ${what}. ${why}`.trim());
}

function validJobId(jobId: string): string {
  if (!isJobId(jobId)) throw new ScrubError('bad_request', jobIdRule);
  return jobId;
}

/** The public record of a file: ids, times and retention; never a name or a value. */
function fileView(record: ArtefactRecord, preview: PreviewState) {
  return {
    id: record.id,
    jobId: record.jobId ?? null,
    mime: record.mime,
    bytes: record.bytes,
    fingerprintId: record.fingerprintId,
    destination: record.destination,
    retention: record.retention,
    createdAt: record.createdAt,
    jobFinishedAt: record.jobFinishedAt ?? null,
    expiresAt: record.expiresAt,
    purgedAt: record.purgedAt ?? null,
    thumbnail: preview === 'ready',
    /** pending: being made after the upload's answer; ready: GET …/thumbnail serves it; none: this file has none. */
    preview,
  };
}

/**
 * Where an artefact's bytes lie and under which name, from its ledger row. The store refuses a
 * name it does not build itself (a row is never trusted to name any other object: THREATS 42).
 */
function storedObject(stores: Stores, record: ArtefactRecord): { store: ObjectStore; name: string } {
  const store = storeOf(stores, record.destination);
  const name = record.paths[0];
  if (store === undefined || name === undefined) throw notFound('stored file', 'It was forwarded to the render service and is not kept here.');
  return { store, name };
}

/** The raw bytes of a stored object; an object that is gone (or a name that is not ours) is a 404 or 410. */
async function readStored(stores: Stores, record: ArtefactRecord, gone: ScrubError): Promise<{ name: string; bytes: AsyncIterable<Uint8Array> }> {
  const { store, name } = storedObject(stores, record);
  try {
    return { name, bytes: await store.get(name) };
  } catch (err) {
    if (err instanceof MissingObject || err instanceof ForeignName) throw gone;
    throw err;
  }
}

/** A stored object that does not open (altered, truncated, or under another's name): never served. */
function integrityFailure(err: unknown): ScrubError {
  if (!(err instanceof TamperedObject)) return asScrubError(err);
  return new ScrubError('internal', 'The stored file failed its integrity check and was not served. Report the request id.', { cause: err });
}

/**
 * Where a shutdown stands (http/server.ts drives it): `draining` turns /readyz to 503 so the load
 * balancer stops sending; `refusing` then answers new requests 503 on connections still open.
 */
export interface Lifecycle {
  draining: boolean;
  refusing: boolean;
}

export function buildApp(deps: AppDeps): express.Express {
  const app = express();
  app.disable('x-powered-by');
  app.set('trust proxy', false);
  const lifecycle: Lifecycle = { draining: false, refusing: false };
  app.locals.lifecycle = lifecycle;
  const metrics = deps.metrics ?? new Metrics();
  app.use(metrics.timing());
  app.use(
    pinoHttp({
      logger: deps.logger,
      genReqId: (req, res) => {
        const given = req.headers['x-request-id'];
        const id = typeof given === 'string' && requestIdPattern.test(given) ? given : randomUUID();
        res.setHeader('x-request-id', id);
        return id;
      },
      // Only the method and the path: query strings and headers can carry anything.
      serializers: {
        req: (req: { id: string; method: string; url: string }) => ({ id: req.id, method: req.method, path: req.url.split('?')[0] }),
        res: (res: { statusCode: number }) => ({ statusCode: res.statusCode }),
      },
    }),
  );

  app.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });

  // A stopping replica takes no new work; the connection is closed after the answer.
  app.use('/v1', (_req, res, next) => {
    if (!lifecycle.refusing) return next();
    res.setHeader('Connection', 'close');
    next(shuttingDown());
  });

  // Open, like the health routes: it describes the API, and holds nothing of anyone's.
  app.get('/openapi.json', (_req, res) => {
    res.json(openApiDocument());
  });

  // /readyz is open: every caller within a few seconds shares one tool check, in flight or done,
  // so a flood of probes spawns no more than two processes per interval (THREATS 39).
  let toolCheck: { at: number; result: Promise<[PromiseSettledResult<{ version: string }>, PromiseSettledResult<{ version: string }>]> } | undefined;
  const checkTools = () => {
    if (!toolCheck || performance.now() - toolCheck.at > readyCheckTtlMs) {
      toolCheck = { at: performance.now(), result: Promise.allSettled([versionOf(deps.tools.ffmpeg, 10_000), versionOf(deps.tools.ffprobe, 10_000)]) };
    }
    return toolCheck.result;
  };
  // The ledger and the bucket likewise: one check answers every probe for a second or two, so a
  // probe flood is not a query flood, and an outage shows within that time.
  const answers = (check: Promise<void>): Promise<boolean> => check.then(() => true, () => false);
  let storageCheck: { at: number; result: Promise<[ledger: boolean, bucket: boolean | undefined]> } | undefined;
  const checkStorage = () => {
    if (!storageCheck || performance.now() - storageCheck.at > storageCheckTtlMs) {
      const bucket = deps.stores.bucket?.ping?.();
      storageCheck = { at: performance.now(), result: Promise.all([answers(deps.ledger.ping()), bucket && answers(bucket)]) };
    }
    return storageCheck.result;
  };
  app.get('/readyz', async (_req, res) => {
    // At once, without a check: the load balancer must stop sending here.
    if (lifecycle.draining) return void res.status(503).json({ status: 'shutting down' });
    const [[ffmpeg, ffprobe], [dataDir], [ledger, bucket]] = await Promise.all([checkTools(), Promise.allSettled([access(deps.dataDir, constants.W_OK)]), checkStorage()]);
    const tool = (binary: Binary, result: PromiseSettledResult<{ version: string }>) => ({
      ok: result.status === 'fulfilled',
      path: binary.path,
      source: binary.source,
      version: result.status === 'fulfilled' ? result.value.version : undefined,
    });
    const body = {
      ffmpeg: tool(deps.tools.ffmpeg, ffmpeg),
      ffprobe: tool(deps.tools.ffprobe, ffprobe),
      dataDir: { ok: dataDir.status === 'fulfilled', writable: dataDir.status === 'fulfilled' },
      ledger: { ok: ledger, engine: deps.ledger.engine, schemaVersion: deps.ledger.schemaVersion },
      ...(bucket === undefined ? {} : { bucket: { ok: bucket } }),
      // Optional: without it HEIC uploads are cleaned as ever, only without a preview.
      heifDecoder: deps.heifDecoder ? { present: true, path: deps.heifDecoder.path, source: deps.heifDecoder.source } : { present: false },
    };
    const ready = body.ffmpeg.ok && body.ffprobe.ok && body.dataDir.ok && ledger && bucket !== false;
    if (!ready) res.setHeader('Retry-After', String(retryAfterSeconds));
    res.status(ready ? 200 : 503).json({ status: ready ? 'ready' : 'not ready', ...body });
  });

  const clock = deps.scrubline.clock ?? systemClock;
  const jobExpiry: JobExpiry = (retention, finishedAt) => expiresAt(retention, new Date(finishedAt));
  const previews = new Previews({
    dataDir: deps.dataDir,
    ledger: deps.ledger,
    store: keepingStore(deps.stores),
    expiry: jobExpiry,
    storage: deps.storage,
    tools: deps.tools,
    heifDecoder: deps.heifDecoder,
    maxInputPixels: deps.scrubline.maxInputPixels ?? defaults.maxInputPixels,
    logger: deps.logger,
  });
  // The server awaits previews in flight before it closes the ledger.
  app.locals.previews = previews;
  const recordRetentionDays = deps.recordRetentionDays ?? defaults.recordRetentionDays;
  // Every /v1 route, before any of them reads a byte of the body.
  app.use('/v1', requireBearer(deps.apiTokens));

  if (deps.serveMetrics !== false) app.get('/metrics', metrics.handler());

  // The concurrency cap: counted from before the body is read until the response is gone.
  const maxConcurrent = deps.maxConcurrentUploads ?? defaults.maxConcurrentUploads;
  let inFlight = 0;
  const gate: RequestHandler = function concurrencyCap(_req, res, next) {
    if (inFlight >= maxConcurrent) {
      return next(new ScrubError('overloaded', `scrubline is processing ${maxConcurrent} uploads already. Retry after ${retryAfterSeconds} seconds.`));
    }
    inFlight++;
    metrics.inFlight.set(inFlight);
    res.once('close', () => metrics.inFlight.set(--inFlight));
    next();
  };

  /**
   * After the pipeline, for both doors (POST /v1/uploads and the resumable endpoint): forward the
   * cleaned files, record them, release them, and say what to answer. `after` starts the previews
   * once the answer is on its way.
   */
  async function deliver(upload: ScrublineUpload, log: Logger): Promise<{ body: unknown; after: () => void }> {
    // A deleted job takes nothing more, in flight or later (THREATS 41).
    if (upload.jobId !== undefined && (await deps.ledger.jobDeletedAt(upload.jobId)) !== undefined) throw jobDeleted();
    const fields = { jobId: upload.jobId, retention: upload.retention };
    const forwardStarted = performance.now();
    const result = await deps.forwarder.forward(upload.files, fields, upload.uploadId);
    metrics.observe('forward', (performance.now() - forwardStarted) / 1000);
    const createdAt = clock().toISOString();
    const records: ArtefactRecord[] = [];
    const fileRecords: ArtefactRecord[] = [];
    for (const f of upload.files) {
      const file: ArtefactRecord = {
        id: f.id,
        kind: 'file',
        jobId: upload.jobId,
        mime: f.mime,
        bytes: f.bytes,
        fingerprintId: f.fingerprint.id,
        destination: result.destination,
        retention: f.retention,
        createdAt,
        expiresAt: f.expiresAt,
        paths: result.stored?.[f.id] ?? [],
      };
      fileRecords.push(file);
      records.push(file, fingerprintRecord(file, f.fingerprint, recordRetentionDays));
    }
    try {
      // A finish report that landed on any replica since the clock was read re-dates the files.
      await deps.ledger.record(records, jobExpiry);
    } catch (err) {
      // The job was deleted while this upload was being forwarded (or the ledger failed): what
      // it stored goes too.
      await Promise.allSettled(records.map((r) => removeArtefactObjects(deps.stores, r)));
      throw err;
    }
    for (const f of upload.files) {
      metrics.uploads.inc({ outcome: 'forwarded', family: f.kind.family });
      metrics.bytes.inc({ direction: 'out' }, f.bytes);
      log.info({ fileId: f.id, family: f.fingerprint.family, mime: f.mime, bytes: f.bytes, removed: f.removed, fingerprintId: f.fingerprint.id }, 'file cleaned');
    }
    // What the previews need is held past the clean-up; they are made after the answer.
    const held = await Promise.all(upload.files.map((f) => previews.hold(f)));
    await upload.release();
    return {
      body: { files: upload.files.map(publicReport), upstream: { status: result.status, destination: result.destination } },
      after: () => held.forEach((h, i) => h && previews.start(fileRecords[i]!, h)),
    };
  }

  const parts = scrublineParts(
    {
      ...deps.scrubline,
      jobFinishedAt: (jobId) => deps.ledger.jobFinishedAt(jobId),
      unfinishedJobCapHours: deps.unfinishedJobCapHours,
      observe: (stage, seconds) => metrics.observe(stage, seconds),
      // A big JPEG's preview is made after the answer (http/previews.ts), as a video's is, from
      // the picture the verifier's walk of its scans read (makePreview).
      previews: false,
    },
    // The store sink seals an image into its work dir while it is verified (issue 30).
    { stage: deps.forwarder.stage?.bind(deps.forwarder) },
  );
  const maxUploadBytes = deps.scrubline.maxUploadBytes ?? defaults.maxUploadBytes;
  const tempSpace = new TempSpace(deps.scrubline.tmpDir, deps.tempHeadroomBytes ?? defaults.tempHeadroomBytes);
  metrics.onScrape(async () => {
    metrics.tempFree.set(await tempSpace.free());
    metrics.tempReserved.set(tempSpace.reserved);
  });

  // Room in the temp dir for the original and its cleaned copy, reserved before the body is read
  // (its Content-Length, or the largest file when the client does not say) and held until the
  // answer is gone.
  const reserveTemp: RequestHandler = async function reserveTempSpace(req, res, next) {
    const declared = Number(req.headers['content-length']);
    const release = await tempSpace.reserve(tempBytesFor(Number.isSafeInteger(declared) && declared > 0 ? declared : maxUploadBytes));
    res.once('close', release);
    next();
  };

  app.post('/v1/uploads', gate, reserveTemp, parts.middleware, async function forwardUpload(req: Request, res: Response) {
    const { body, after } = await deliver(req.scrubline!, req.log);
    res.status(201).json(body);
    after();
  });

  const partials = new PartialStore({
    ledger: deps.ledger,
    stores: deps.stores,
    store: keepingStore(deps.stores),
    storage: deps.storage,
    ttlMs: deps.resumableTtlMs ?? defaults.resumableTtlMs,
    now: clock,
  });
  const resumable = resumableHandler({
    parts,
    partials,
    ledger: deps.ledger,
    tempSpace,
    metrics,
    maxUploadBytes,
    maxOpen: deps.resumableMaxOpen ?? defaults.resumableMaxOpen,
    maxBytes: deps.resumableMaxBytes ?? defaults.resumableMaxBytes,
    bodyIdleTimeoutMs: deps.scrubline.bodyIdleTimeoutMs ?? defaults.bodyIdleTimeoutMs,
    deliver,
    now: clock,
  });
  metrics.onScrape(async () => {
    const totals = await deps.ledger.partialTotals(clock().toISOString());
    metrics.resumableOpen.set(totals.open);
    metrics.resumableBytes.set(totals.bytes);
  });
  // A request that sends bytes holds a processing slot, as a multipart upload does: the one that
  // sends the last byte runs the pipeline.
  app.post(resumablePath, gate, resumable);
  app.head(`${resumablePath}/:id`, resumable);
  app.patch(`${resumablePath}/:id`, gate, resumable);
  app.delete(`${resumablePath}/:id`, resumable);

  app.use('/v1', crashRoutes({ ledger: deps.ledger, clock, retentionDays: recordRetentionDays }));

  app.get('/v1/files/:id', async (req, res) => {
    const record = await deps.ledger.get(req.params.id);
    if (!record || record.kind !== 'file') throw notFound('file');
    res.json(fileView(record, await previews.state(record.id)));
  });

  app.get('/v1/files/:id/thumbnail', async (req, res) => {
    const file = await deps.ledger.get(req.params.id);
    const thumbnail = file && file.kind === 'file' && file.purgedAt === undefined ? await deps.ledger.thumbnailOf(file.id) : undefined;
    if (!thumbnail) throw notFound('thumbnail', 'It expired, was deleted, or it has no preview (HEIC without libheif\'s decoder on the server).');
    const stored = await readStored(deps.stores, thumbnail, notFound('thumbnail', 'It was purged.'));
    let jpeg: Buffer;
    try {
      jpeg = unseal(deps.storage, stored.name, await readAll(stored.bytes));
    } catch (err) {
      throw integrityFailure(err);
    }
    res.setHeader('Cache-Control', 'private, no-store');
    res.type('image/jpeg').send(jpeg);
  });

  // The cleaned file itself, decrypted, for a render service that reads from the data dir or the
  // bucket: every byte is proven before the first is sent (a first read of the whole object), so
  // an altered object is refused, never half served.
  app.get('/v1/files/:id/content', async (req, res) => {
    const file = await deps.ledger.get(req.params.id);
    if (!file || file.kind !== 'file') throw notFound('file');
    if (file.purgedAt !== undefined) throw new ScrubError('gone', 'The file was purged: its retention ended or its job was deleted. Upload it again if it is still needed.');
    const notStored = new ScrubError('gone', 'The file is no longer stored. Upload it again if it is still needed.');
    const proof = await readStored(deps.stores, file, notStored);
    const bytes = await verifyObject(deps.storage, proof.name, proof.bytes).catch((err: unknown) => {
      throw err instanceof TamperedObject ? integrityFailure(err) : err;
    });
    const { name, bytes: stored } = await readStored(deps.stores, file, notStored);
    res.setHeader('Cache-Control', 'private, no-store');
    res.setHeader('Content-Length', String(bytes));
    res.type(file.mime);
    // A client that goes away mid-download is not an error of ours.
    await pipeline(openObject(deps.storage, name, stored), res).catch((err: unknown) => {
      if (!res.destroyed || res.writableFinished) throw err;
    });
  });

  app.post('/v1/jobs/:jobId/finished', async (req, res) => {
    const jobId = validJobId(req.params.jobId);
    const done = await deps.ledger.finishJob(jobId, clock().toISOString(), jobExpiry);
    req.log.info({ jobId, firstReport: done.firstReport, artefacts: done.artefacts }, 'job finished');
    res.json({
      jobId,
      finishedAt: done.finishedAt,
      firstReport: done.firstReport,
      expiresAt: { standard: expiresAt('standard', new Date(done.finishedAt)), extended: expiresAt('extended', new Date(done.finishedAt)) },
      artefacts: done.artefacts,
    });
  });

  app.delete('/v1/jobs/:jobId', async (req, res) => {
    const jobId = validJobId(req.params.jobId);
    const at = clock().toISOString();
    // The job is marked deleted in the same transaction that lists its artefacts: an upload
    // recorded before is in the list, one after is refused (410 job_deleted).
    const records = await deps.ledger.deleteJob(jobId, at);
    // Its resumable uploads in progress go too (a new one is refused from now: 410).
    const partialUploads = await removePartials(deps.ledger, deps.stores, await deps.ledger.partialIds({ jobId }));
    const { purged, skipped } = await purgeRecords(deps.ledger, deps.stores, records, at);
    const counts = countByKind(purged);
    await deps.ledger.recordDeletion(jobId, at, counts, purged.map((r) => r.id));
    if (skipped.length > 0) req.log.error({ jobId, skipped }, 'job deletion skipped ledger rows that name objects scrubline does not store');
    req.log.info({ jobId, purged: counts, partialUploads }, 'job deleted on request');
    res.json({ jobId, deletedAt: at, purged: counts, partialUploads, ...(skipped.length > 0 ? { skipped: skipped.length } : {}) });
  });

  app.use((_req, _res, next) => next(new ScrubError('not_found', `No such route. See the README for the API: ${routes}.`)));
  app.use(
    serviceErrorHandler((error, req) => {
      metrics.rejections.inc({ reason: error.code });
      if (req.path === '/v1/uploads' && error.code !== 'overloaded' && error.code !== 'unauthorized') {
        const outcome = error.code === 'client_closed' ? 'client_closed' : error.isRejection ? 'rejected' : 'failed';
        metrics.uploads.inc({ outcome, family: 'unknown' });
      }
    }),
  );
  return app;
}
