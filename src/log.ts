/**
 * Logging: pino JSON. Logs state facts (media family, bytes, categories removed, timings,
 * fingerprint id), never values. `redact` backs that up for the places a value could slip in:
 * auth headers, cookies, and the client file name multer puts on its errors (THREATS 33).
 */
import pino, { type DestinationStream, type Logger } from 'pino';

export const redactPaths = [
  'req.headers.authorization',
  'req.headers.cookie',
  'req.headers["x-api-key"]',
  'req.headers["idempotency-key"]',
  'headers.authorization',
  'err.filename',
  'err.originalname',
  'filename',
  'originalname',
];

export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino(
    {
      name: 'scrubline',
      level,
      redact: { paths: redactPaths, censor: '[redacted]' },
      base: { service: 'scrubline' },
    },
    destination,
  );
}
