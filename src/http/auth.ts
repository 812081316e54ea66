/**
 * Access control for /v1/*: `Authorization: Bearer <token>`, one of the configured tokens (several
 * while one is rotated out), checked before anything else runs
 * for the request (so not one byte of an unauthorised upload reaches the disk). The comparison
 * is constant-time over SHA-256 digests, so neither the token's content nor its length leaks
 * through timing.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { RequestHandler } from 'express';
import { ScrubError } from '../errors.js';

const digest = (value: string): Buffer => createHash('sha256').update(value, 'utf8').digest();

export function requireBearer(tokens: string | readonly string[]): RequestHandler {
  const list = typeof tokens === 'string' ? [tokens] : tokens;
  if (list.length === 0 || list.some((t) => t.length < 32)) throw new TypeError('scrubline: each API token must be at least 32 characters');
  const expected = list.map(digest);
  return function bearerAuth(req, res, next) {
    const header = req.headers.authorization;
    const given = typeof header === 'string' && /^Bearer [\x21-\x7e]+$/.test(header) ? header.slice(7) : undefined;
    // Every token is compared, whichever matches: the time taken says nothing about which.
    const presented = given === undefined ? undefined : digest(given);
    const valid = presented !== undefined && expected.map((e) => timingSafeEqual(presented, e)).includes(true);
    if (valid) return next();
    res.setHeader('WWW-Authenticate', 'Bearer realm="scrubline"');
    next(
      new ScrubError(
        'unauthorized',
        given === undefined
          ? 'This endpoint needs an API token: send "Authorization: Bearer <token>". The token is SCRUBLINE_API_TOKEN, or the api-token file in the data dir.'
          : 'The API token is not valid. Use the value of SCRUBLINE_API_TOKEN, or of the api-token file in the data dir.',
      ),
    );
  };
}
