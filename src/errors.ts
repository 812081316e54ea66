/**
 * The one error type scrubline raises. `publicMessage` is what a caller reads (what was wrong and
 * what to do); `message` and `cause` are internal and never leave the process. The HTTP mapping
 * lives in exactly one place (http/errors.ts), the CLI mapping in cli/cli.ts.
 */
export type ErrorCode =
  | 'bad_request'
  | 'unauthorized'
  | 'not_found'
  | 'not_multipart'
  | 'no_file'
  | 'too_large'
  | 'too_many_files'
  | 'unsupported_type'
  | 'corrupt_media'
  | 'unsupported_structure'
  | 'too_many_pixels'
  | 'verification_failed'
  | 'processing_timeout'
  | 'request_timeout'
  | 'client_closed'
  | 'job_deleted'
  | 'gone'
  | 'offset_mismatch'
  | 'overloaded'
  | 'insufficient_storage'
  | 'upstream_unreachable'
  | 'upstream_rejected'
  | 'upstream_timeout'
  | 'tool_unavailable'
  | 'ledger_unavailable'
  | 'shutting_down'
  | 'storage_unavailable'
  | 'internal';

const statusByCode: Record<ErrorCode, number> = {
  bad_request: 400,
  unauthorized: 401,
  not_found: 404,
  not_multipart: 415,
  no_file: 400,
  too_large: 413,
  too_many_files: 413,
  unsupported_type: 415,
  corrupt_media: 415,
  unsupported_structure: 415,
  too_many_pixels: 413,
  verification_failed: 422,
  processing_timeout: 422,
  request_timeout: 408,
  // Never sent (the client is gone); nginx's code for it, so logs and metrics say what happened.
  client_closed: 499,
  job_deleted: 410,
  gone: 410,
  offset_mismatch: 409,
  overloaded: 503,
  insufficient_storage: 507,
  upstream_unreachable: 502,
  upstream_rejected: 502,
  upstream_timeout: 504,
  tool_unavailable: 503,
  ledger_unavailable: 503,
  shutting_down: 503,
  storage_unavailable: 503,
  internal: 500,
};

/** Codes that mean "this file was refused" rather than "scrubline or its surroundings failed". */
const rejectionCodes = new Set<ErrorCode>([
  'unsupported_type',
  'corrupt_media',
  'unsupported_structure',
  'too_many_pixels',
  'too_large',
  'verification_failed',
  'processing_timeout',
]);

export class ScrubError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly publicMessage: string;
  /** Extra public, value-free facts for the JSON body (e.g. the upstream's status code). */
  readonly details: Record<string, string | number> | undefined;
  /** What was wrong with the file, in a few value-free words (`reject`'s "why"), for other checks to report. */
  readonly reason: string | undefined;

  constructor(
    code: ErrorCode,
    publicMessage: string,
    options: { cause?: unknown; internal?: string; details?: Record<string, string | number>; reason?: string } = {},
  ) {
    super(options.internal ?? publicMessage, { cause: options.cause });
    this.name = 'ScrubError';
    this.code = code;
    this.status = statusByCode[code];
    this.publicMessage = publicMessage;
    this.details = options.details;
    this.reason = options.reason;
  }

  /** True when the file itself was refused (CLI exit 2), false for internal or environment faults. */
  get isRejection(): boolean {
    return rejectionCodes.has(this.code);
  }

  toJSON(): { error: { code: ErrorCode; message: string } & Record<string, string | number> } {
    return { error: { code: this.code, message: this.publicMessage, ...this.details } };
  }
}

/** The disk filled up under our writes, ffmpeg's or the ledger's: the server's fault, not the file's. */
export function diskFull(options: { cause?: unknown; internal?: string }): ScrubError {
  return new ScrubError('insufficient_storage', 'The server ran out of disk space while processing the upload. Nothing was kept; retry later.', options);
}

/** The client hung up before it was answered: never sent, but logged and counted as what it was. */
export function clientClosed(cause?: unknown): ScrubError {
  return new ScrubError('client_closed', 'The client closed the connection before the upload was answered. Nothing was kept; send it again.', { cause });
}

/** An upload for a job that was deleted on request. */
export function jobDeleted(): ScrubError {
  return new ScrubError('job_deleted', 'This job was deleted on request; nothing more can be stored for it. Start a new job with a new jobId.');
}

/**
 * The ledger's database cannot be reached (restarting, failing over, network): a 503 the client
 * retries, never a 500 that reads as a bug. Nothing of the request was kept.
 */
export function ledgerUnavailable(cause?: unknown): ScrubError {
  return new ScrubError('ledger_unavailable', 'The service\'s database is unavailable for a moment. Nothing was kept; retry after the time in Retry-After.', { cause, internal: 'ledger: database unavailable' });
}

/** Codes of a 503 that a client should simply retry: they carry Retry-After. */
export const retryableCodes: ReadonlySet<ErrorCode> = new Set(['overloaded', 'ledger_unavailable', 'tool_unavailable', 'shutting_down', 'storage_unavailable']);

/**
 * The bucket cannot be reached, or answers that it cannot serve now (5xx, SlowDown): a 503 the
 * client retries. Nothing of the request was kept.
 */
export function storageUnavailable(cause?: unknown): ScrubError {
  return new ScrubError('storage_unavailable', 'The service\'s object storage is unavailable for a moment. Nothing was kept; retry after the time in Retry-After.', { cause, internal: 'bucket: unavailable' });
}

/** This replica is stopping: the request was not taken, and another replica will take it. */
export function shuttingDown(): ScrubError {
  return new ScrubError('shutting_down', 'This replica is shutting down and takes no new requests. Nothing was kept; retry after the time in Retry-After (another replica will answer).');
}

/** Anything thrown that is not a ScrubError becomes an opaque internal error. */
export function asScrubError(err: unknown): ScrubError {
  if (err instanceof ScrubError) return err;
  const code = (err as { code?: unknown } | null)?.code;
  // SQLite's SQLITE_FULL (13): the ledger's disk is full (node:sqlite gives the code as errcode).
  const sqlite = code === 'ERR_SQLITE_ERROR' ? Number((err as { errcode?: unknown }).errcode) & 0xff : undefined;
  if (code === 'ENOSPC' || code === 'EDQUOT' || sqlite === 13) return diskFull({ cause: err });
  return new ScrubError('internal', 'Internal error while processing the upload; it was not stored or forwarded. Retry later or report the request id.', {
    cause: err,
  });
}

export const reject = {
  corrupt(format: string, why: string): ScrubError {
    return new ScrubError('corrupt_media', `The file looks like ${format} but is not a valid ${format} (${why}). Send an intact file.`, { reason: why });
  },
  structure(format: string, why: string): ScrubError {
    return new ScrubError(
      'unsupported_structure',
      `The ${format} file contains a structure scrubline cannot rebuild safely (${why}). It was not forwarded; convert it to a plain ${format} and retry.`,
      { reason: why },
    );
  },
  /** A picture whose header declares more pixels than allowed, refused before anything decodes it. */
  pixels(width: number, height: number, maxInputPixels: number): ScrubError {
    return new ScrubError('too_many_pixels', `The image is ${width}x${height}, more pixels than the configured limit of ${maxInputPixels}. Send a smaller image.`);
  },
};
