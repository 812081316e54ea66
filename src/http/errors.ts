/**
 * The one place errors become HTTP: a status, and a JSON body that says what was wrong and what
 * to do. Two doors to it: `errorHandler()` for an app that mounts the middleware (scrubline's own
 * errors only; anything else is the app's, passed on to `next`), and the service's handler, which
 * answers for every route it owns.
 */
import type { ErrorRequestHandler, NextFunction, Request, Response } from 'express';
import type { Logger } from 'pino';
import { asScrubError, retryableCodes, ScrubError } from '../errors.js';

/** What a 503 tells a client to wait: about one upload's processing time. */
export const retryAfterSeconds = 5;

type OnError = (error: ScrubError, req: Request) => void;

/**
 * Logs an error answer: faults as errors (with the cause's stack), refusals (the cap's deliberate
 * 503s included) as facts about a request. Code, status and the internal message, never a value.
 */
export function logOutcome(log: Logger | undefined, error: ScrubError, messages = { failed: 'request failed', refused: 'request refused' }): void {
  const fields = { code: error.code, status: error.status, internal: error.message };
  if (error.status >= 500 && error.code !== 'upstream_rejected' && error.code !== 'overloaded') {
    log?.error({ ...fields, err: error.cause instanceof Error ? { type: error.cause.name, stack: error.cause.stack } : undefined }, messages.failed);
  } else log?.info(fields, messages.refused);
}

async function answer(error: ScrubError, req: Request, res: Response, onError: OnError | undefined): Promise<void> {
  onError?.(error, req);
  logOutcome((req as Request & { log?: Logger }).log, error);
  if (res.headersSent || res.destroyed) return;
  if (retryableCodes.has(error.code)) res.setHeader('Retry-After', String(retryAfterSeconds));
  res.status(error.status).json(error.toJSON());
}

/**
 * For apps that mount the middleware: answers scrubline's errors (a ScrubError) and passes any
 * other error on to the app's next error handler untouched ("render queue full", bad JSON on an
 * unrelated route). Either way, what is left of an upload on the failed request is deleted first.
 */
export function errorHandler(onError?: OnError): ErrorRequestHandler {
  return async function scrublineErrorHandler(err: unknown, req: Request, res: Response, next: NextFunction) {
    await req.scrubline?.release();
    if (!(err instanceof ScrubError)) return next(err);
    await answer(err, req, res, onError);
  };
}

/** The service's last handler: every error of its routes is answered, unknown ones as opaque 500s. */
export function serviceErrorHandler(onError?: OnError): ErrorRequestHandler {
  return async function scrublineServiceErrorHandler(err: unknown, req: Request, res: Response, _next: NextFunction) {
    await req.scrubline?.release();
    await answer(asScrubError(err), req, res, onError);
  };
}
