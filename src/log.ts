/**
 * Logging: pino JSON. Logs state facts (media family, bytes, categories removed, timings,
 * fingerprint id), never values. `redact` backs that up for the places a value could slip in:
 * auth headers, cookies, and the client file name multer puts on its errors (THREATS 33); and
 * every string logged loses the credentials of any URL in it (THREATS 51: an upstream URL with
 * user:password put the password into the stack of every failed forward).
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

/**
 * `scheme://user:password@host` → `scheme://[redacted]@host`, for any scheme. A scanner, not a
 * regular expression over the whole string: after each `://` it reads up to the next `/`, space or
 * `@`, so the work is linear in the text however it is made (STYLE 11).
 */
export function withoutUserinfo(text: string): string {
  let out = '';
  let from = 0;
  for (let at = text.indexOf('://'); at >= 0; at = text.indexOf('://', at + 3)) {
    const start = at + 3;
    let end = start;
    while (end < text.length && !' \t\r\n/@?#"\''.includes(text[end]!)) end++;
    if (text[end] !== '@' || end === start) continue;
    out += text.slice(from, start) + '[redacted]';
    from = end;
    at = end - 2;
  }
  return from === 0 ? text : out + text.slice(from);
}

/**
 * Every string of a log line's own fields, userinfo removed; bounded in depth (fields are small
 * objects). Objects that are not plain (pino-http's request and response) are left to their
 * serializers.
 */
function scrubbed(value: unknown, depth = 0): unknown {
  if (typeof value === 'string') return withoutUserinfo(value);
  if (depth > 6 || value === null || typeof value !== 'object') return value;
  if (Array.isArray(value)) return value.map((item) => scrubbed(item, depth + 1));
  if (value instanceof Error) {
    return { type: value.name, message: withoutUserinfo(value.message), stack: value.stack === undefined ? undefined : withoutUserinfo(value.stack) };
  }
  const prototype = Object.getPrototypeOf(value) as unknown;
  if (prototype !== Object.prototype && prototype !== null) return value;
  const out: Record<string, unknown> = {};
  for (const [key, item] of Object.entries(value)) out[key] = scrubbed(item, depth + 1);
  return out;
}

export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino(
    {
      name: 'scrubline',
      level,
      redact: { paths: redactPaths, censor: '[redacted]' },
      base: { service: 'scrubline' },
      formatters: { log: (fields) => scrubbed(fields) as Record<string, unknown> },
      hooks: {
        // The message too: a caller's message is a fixed sentence, but a library's may name a URL.
        logMethod(args, method) {
          method.apply(this, args.map((arg) => (typeof arg === 'string' ? withoutUserinfo(arg) : arg)) as Parameters<typeof method>);
        },
      },
    },
    destination,
  );
}
