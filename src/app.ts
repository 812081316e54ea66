/**
 * buildApp(deps): the HTTP service as an Express app, without listening (server.ts listens;
 * tests build it with real parts and a temp data dir). The upload route is the library's own
 * middleware followed by the forward step, so the service and the library run the same code.
 */
import { randomUUID } from 'node:crypto';
import { access, constants } from 'node:fs/promises';
import express, { type ErrorRequestHandler, type Request, type Response } from 'express';
import type { Logger } from 'pino';
import { pinoHttp } from 'pino-http';
import { ScrubError, asScrubError } from './errors.js';
import type { Ledger } from './ledger.js';
import { scrubline, type ScrublineOptions } from './middleware.js';
import { publicReport } from './pipeline.js';
import type { Forwarder } from './steps/forward.js';
import { systemClock } from './steps/tag-expiry.js';
import { versionOf, type Binary } from './tools/ffmpeg.js';

export interface AppDeps {
  logger: Logger;
  dataDir: string;
  scrubline: ScrublineOptions;
  forwarder: Forwarder;
  ledger: Ledger;
  ffmpeg: Binary;
  ffprobe: Binary;
}

/** The one place errors become HTTP: status, and a JSON body that says what was wrong and what to do. */
export function errorHandler(): ErrorRequestHandler {
  return async function scrublineErrorHandler(err, req, res, _next) {
    // Nothing of a failed upload may outlive the answer.
    await req.scrubline?.release();
    const error = asScrubError(err);
    const log = (req as Request & { log?: Logger }).log;
    const fields = { code: error.code, status: error.status, internal: error.message };
    if (error.status >= 500 && error.code !== 'upstream_rejected') log?.error({ ...fields, err: error.cause instanceof Error ? { type: error.cause.name, stack: error.cause.stack } : undefined }, 'request failed');
    else log?.info(fields, 'request refused');
    if (res.headersSent || res.destroyed) return;
    res.status(error.status).json(error.toJSON());
  };
}

const requestIdPattern = /^[A-Za-z0-9._-]{1,64}$/;

export function buildApp(deps: AppDeps): express.Express {
  const app = express();
  app.disable('x-powered-by');
  app.set('trust proxy', false);
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

  app.get('/readyz', async (_req, res) => {
    const [ffmpeg, ffprobe, dataDir] = await Promise.allSettled([
      versionOf(deps.ffmpeg, 10_000),
      versionOf(deps.ffprobe, 10_000),
      access(deps.dataDir, constants.W_OK),
    ]);
    const tool = (binary: Binary, result: PromiseSettledResult<{ version: string }>) => ({
      ok: result.status === 'fulfilled',
      path: binary.path,
      source: binary.source,
      version: result.status === 'fulfilled' ? result.value.version : undefined,
    });
    const body = {
      ffmpeg: tool(deps.ffmpeg, ffmpeg),
      ffprobe: tool(deps.ffprobe, ffprobe),
      dataDir: { ok: dataDir.status === 'fulfilled', writable: dataDir.status === 'fulfilled' },
      ledger: { ok: true, schemaVersion: deps.ledger.schemaVersion },
    };
    const ready = body.ffmpeg.ok && body.ffprobe.ok && body.dataDir.ok;
    res.status(ready ? 200 : 503).json({ status: ready ? 'ready' : 'not ready', ...body });
  });

  app.post('/v1/uploads', scrubline(deps.scrubline), async function forwardUpload(req: Request, res: Response) {
    const upload = req.scrubline!;
    const fields = { jobId: upload.jobId, retention: upload.retention };
    const result = await deps.forwarder.forward(upload.files, fields, upload.uploadId);
    const createdAt = (deps.scrubline.clock ?? systemClock)().toISOString();
    deps.ledger.record(
      upload.files.map((f) => ({
        id: f.id,
        kind: 'file' as const,
        jobId: upload.jobId,
        mime: f.mime,
        bytes: f.bytes,
        fingerprintId: f.fingerprint.id,
        destination: result.destination,
        retention: f.retention,
        createdAt,
        expiresAt: f.expiresAt,
      })),
    );
    for (const f of upload.files) {
      req.log.info({ fileId: f.id, family: f.fingerprint.family, mime: f.mime, bytes: f.bytes, removed: f.removed, fingerprintId: f.fingerprint.id }, 'file cleaned');
    }
    await upload.release();
    res.status(201).json({ files: upload.files.map(publicReport), upstream: { status: result.status, destination: result.destination } });
  });

  app.use((_req, _res, next) => next(new ScrubError('not_found', 'No such route. See the README for the API: POST /v1/uploads, GET /healthz, GET /readyz.')));
  app.use(errorHandler());
  return app;
}
