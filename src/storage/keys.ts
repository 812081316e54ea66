/**
 * Secrets scrubline generates for itself when the operator did not configure them: kept in the
 * data dir, created 0600, generated once and reused, never logged.
 */
import { randomBytes } from 'node:crypto';
import { linkSync, mkdirSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Keyring } from './envelope.js';

/** The configured key, else the one in `<dataDir>/fingerprint-key`, created on first use. */
export function loadFingerprintKey(dataDir: string, configured: string | undefined): Buffer {
  if (configured !== undefined) return Buffer.from(configured, 'utf8');
  return Buffer.from(loadSecret(dataDir, 'fingerprint-key', () => randomBytes(32).toString('hex')), 'hex');
}

/**
 * The configured API token, else the one in `<dataDir>/api-token`, created on first start so a
 * bare `npm start` is never an open service. `generated` says whether it was created just now.
 */
export function loadApiToken(dataDir: string, configured: string | undefined): { token: string; file: string | undefined; generated: boolean } {
  if (configured !== undefined) return { token: configured, file: undefined, generated: false };
  const file = path.join(dataDir, 'api-token');
  let generated = false;
  const token = loadSecret(dataDir, 'api-token', () => {
    generated = true;
    return randomBytes(32).toString('base64url');
  });
  return { token, file, generated };
}

/**
 * The keyring for encryption at rest: the configured storage key, else the one in
 * `<dataDir>/storage-key`, created on first use; then older keys, which still decrypt.
 */
export function loadStorageKeys(dataDir: string, configured: Buffer | undefined, old: Buffer[] = []): Keyring {
  const current = configured ?? Buffer.from(loadSecret(dataDir, 'storage-key', () => randomBytes(32).toString('hex')), 'hex');
  return new Keyring([current, ...old]);
}

/** Reads `<dataDir>/<name>`, or creates it 0600 with `make()` when missing; another process's file wins a race. */
function loadSecret(dataDir: string, name: string, make: () => string): string {
  const file = path.join(dataDir, name);
  try {
    const existing = readFileSync(file, 'utf8').trim();
    if (existing !== '') return existing;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const value = make();
  try {
    // Written whole to a private temp name, then linked into place: a reader never sees it half
    // written, and if another process created it first (EEXIST) theirs is read and used.
    const partial = `${file}.${process.pid}.${randomBytes(4).toString('hex')}`;
    writeFileSync(partial, `${value}\n`, { mode: 0o600, flag: 'wx' });
    try {
      linkSync(partial, file);
    } finally {
      unlinkSync(partial);
    }
    return value;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    return readFileSync(file, 'utf8').trim();
  }
}
