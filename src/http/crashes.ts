/**
 * Crash diagnostics: when a render job fails, the render service files the error, the job's
 * configuration and which file it was working on; engineering gets back a bundle with the file's
 * *fingerprint* and the exact `scrubline repro` command that synthesises a file with the same
 * technical properties. The file itself is never needed and never kept.
 *
 *   POST /v1/crashes          { fileId | fingerprintId, error: { message, stack? }, jobConfig? }
 *   GET  /v1/crashes/:id      the bundle
 *   GET  /v1/fingerprints/:id a fingerprint
 *
 * Records live in the ledger with the job's id (so a deletion request takes them too) and expire
 * after SCRUBLINE_RECORD_RETENTION_DAYS. Log lines name ids only: an error message or job config
 * may hold anything, so they never reach the logs.
 */
import express, { Router, type NextFunction, type Request, type Response } from 'express';
import { ScrubError } from '../errors.js';
import type { ArtefactRecord, Ledger } from '../storage/ledger.js';
import { randomId } from '../ids.js';
import type { Fingerprint } from '../steps/fingerprint.js';
import type { Clock } from '../steps/tag-expiry.js';

export const limits = { bodyBytes: 256 * 1024, messageChars: 4096, stackChars: 64 * 1024, jobConfigBytes: 64 * 1024, jobConfigDepth: 32 };

/**
 * Whether a parsed JSON value nests deeper than `max` levels, without recursion: 100,000 levels
 * fit in 256 KiB, and a recursive walk (JSON.stringify's) runs out of stack on them (THREATS 44).
 */
export function nestedDeeperThan(value: unknown, max: number): boolean {
  const stack: Array<[unknown, number]> = [[value, 0]];
  while (stack.length > 0) {
    const [item, depth] = stack.pop()!;
    if (item === null || typeof item !== 'object') continue;
    if (depth >= max) return true;
    for (const child of Object.values(item)) stack.push([child, depth + 1]);
  }
  return false;
}

const idPattern = /^[A-Za-z0-9_-]{1,64}$/;

/** The fingerprint record kept for a cleaned file, so a crash can refer to it after the file is gone. */
export function fingerprintRecord(file: ArtefactRecord, fingerprint: Fingerprint, retentionDays: number): ArtefactRecord {
  return {
    ...file,
    id: `fpr_${file.id}`,
    kind: 'fingerprint',
    parentId: file.id,
    mime: 'application/json',
    bytes: 0,
    destination: 'local',
    paths: [],
    expiresAt: new Date(new Date(file.createdAt).getTime() + retentionDays * 86_400_000).toISOString(),
    body: JSON.stringify(fingerprint),
  };
}

/** The command an engineer runs; the extension follows the fingerprint's type. */
export function reproCommand(fingerprint: Fingerprint): string {
  const ext = fingerprint.mime.split('/')[1]!.replace(/^(x-|vnd\.)/, '').replace('quicktime', 'mov').replace('jpeg', 'jpg').replace('matroska', 'mkv').replace('3gpp2', '3g2').replace('3gpp', '3gp');
  return `scrubline repro ${fingerprint.id} -o repro.${ext}`;
}

interface CrashBody {
  error: { message: string; stack?: string };
  jobConfig: unknown;
}

function badRequest(what: string): ScrubError {
  return new ScrubError('bad_request', `${what} Send JSON: { "fileId" or "fingerprintId", "error": { "message", "stack" }, "jobConfig" }.`);
}

/** JSON bodies with a size bound; parse failures become a 400 and an oversize body a 413. */
function jsonBody() {
  const parse = express.json({ limit: limits.bodyBytes, strict: true, type: () => true });
  return (req: Request, res: Response, next: NextFunction): void => {
    parse(req, res, (err?: unknown) => {
      if (err === undefined) return next();
      const type = (err as { type?: string }).type;
      if (type === 'entity.too.large') return next(new ScrubError('too_large', `A crash report is at most ${limits.bodyBytes} bytes. Trim the stack or the job config.`));
      next(badRequest('The body is not valid JSON.'));
    });
  };
}

function readCrash(body: unknown): { ref: { fileId?: string; fingerprintId?: string }; crash: CrashBody } {
  if (!body || typeof body !== 'object' || Array.isArray(body)) throw badRequest('The body must be a JSON object.');
  const b = body as Record<string, unknown>;
  const unknownKeys = Object.keys(b).filter((k) => !['fileId', 'fingerprintId', 'error', 'jobConfig'].includes(k));
  if (unknownKeys.length > 0) throw badRequest('The body has fields scrubline does not take.');
  const fileId = b.fileId;
  const fingerprintId = b.fingerprintId;
  if ((fileId === undefined) === (fingerprintId === undefined)) throw badRequest('Give exactly one of fileId and fingerprintId.');
  for (const id of [fileId, fingerprintId]) if (id !== undefined && (typeof id !== 'string' || !idPattern.test(id))) throw badRequest('fileId/fingerprintId must be an id scrubline issued.');
  const error = b.error as Record<string, unknown> | undefined;
  if (!error || typeof error !== 'object' || typeof error.message !== 'string' || error.message === '') throw badRequest('error.message is required.');
  if (error.message.length > limits.messageChars) throw badRequest(`error.message is at most ${limits.messageChars} characters.`);
  if (error.stack !== undefined && (typeof error.stack !== 'string' || error.stack.length > limits.stackChars)) throw badRequest(`error.stack must be a string of at most ${limits.stackChars} characters.`);
  const jobConfig = b.jobConfig ?? null;
  if (nestedDeeperThan(jobConfig, limits.jobConfigDepth)) throw badRequest(`jobConfig nests deeper than ${limits.jobConfigDepth} levels; flatten it.`);
  if (jobConfig !== null && (typeof jobConfig !== 'object' || Buffer.byteLength(JSON.stringify(jobConfig)) > limits.jobConfigBytes)) {
    throw badRequest(`jobConfig must be a JSON object of at most ${limits.jobConfigBytes} bytes.`);
  }
  return {
    ref: { fileId: fileId as string | undefined, fingerprintId: fingerprintId as string | undefined },
    crash: { error: { message: error.message, ...(error.stack === undefined ? {} : { stack: error.stack as string }) }, jobConfig },
  };
}

const notFound = (what: string): ScrubError => new ScrubError('not_found', `No such ${what}. It may have expired or been deleted.`);

export function crashRoutes(deps: { ledger: Ledger; clock: Clock; retentionDays: number }): Router {
  const router = Router();

  router.post('/crashes', jsonBody(), async (req, res) => {
    const { ref, crash } = readCrash(req.body);
    // A crash named by its file belongs to that file's job, and its deletion takes the crash with
    // it: the file's own fingerprint row, not the newest with the same fingerprint id (the same
    // bytes uploaded in another job have the same one: THREATS 41).
    const fingerprint = ref.fileId !== undefined ? await deps.ledger.fingerprintOf(ref.fileId) : await deps.ledger.fingerprint(ref.fingerprintId!);
    if (!fingerprint?.body) throw notFound(ref.fileId !== undefined ? 'file' : 'fingerprint');
    const now = deps.clock();
    const record: ArtefactRecord = {
      ...fingerprint,
      id: `cr_${randomId()}`,
      kind: 'crash',
      createdAt: now.toISOString(),
      expiresAt: new Date(now.getTime() + deps.retentionDays * 86_400_000).toISOString(),
      purgedAt: undefined,
      body: JSON.stringify(crash),
    };
    await deps.ledger.record([record]);
    req.log.info({ crashId: record.id, fingerprintId: fingerprint.fingerprintId }, 'crash recorded');
    res.status(201).json({ id: record.id, fingerprintId: fingerprint.fingerprintId, expiresAt: record.expiresAt, bundle: `/v1/crashes/${record.id}` });
  });

  router.get('/crashes/:id', async (req, res) => {
    const record = await deps.ledger.get(req.params.id);
    if (record?.kind !== 'crash' || !record.body) throw notFound('crash record');
    const fingerprintRow = await deps.ledger.fingerprint(record.fingerprintId);
    if (!fingerprintRow?.body) throw notFound('crash record');
    const fingerprint = JSON.parse(fingerprintRow.body) as Fingerprint;
    const crash = JSON.parse(record.body) as CrashBody;
    res.json({
      id: record.id,
      createdAt: record.createdAt,
      expiresAt: record.expiresAt,
      jobId: record.jobId ?? null,
      error: crash.error,
      jobConfig: crash.jobConfig,
      fingerprint,
      repro: {
        command: reproCommand(fingerprint),
        steps: [
          `Save the fingerprint: GET /v1/fingerprints/${fingerprint.id} > ${fingerprint.id}.json (or run the command next to the data dir)`,
          `${reproCommand(fingerprint).replace(fingerprint.id, `${fingerprint.id}.json`)}`,
          'Rerun the render job with jobConfig on the repro file.',
        ],
      },
    });
  });

  router.get('/fingerprints/:id', async (req, res) => {
    const record = await deps.ledger.fingerprint(req.params.id);
    if (!record?.body) throw notFound('fingerprint');
    res.type('application/json').send(record.body);
  });

  return router;
}
