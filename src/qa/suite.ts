/**
 * A QA suite: a folder of files plus `suite.json` (or `manifest.json`, as in fixtures/) saying
 * what each file must do. Files in the folder without an entry get the default expectation:
 * "comes out clean or is rejected, never dirty".
 *
 *   {
 *     "name": "phone photos",
 *     "ignore": ["*.md"],
 *     "files": [
 *       { "file": "iphone/IMG_0001.HEIC", "expect": { "outcome": "clean", "removed": ["exif", "xmp"],
 *         "width": 4032, "height": 3024, "orientation": 1, "fingerprint": { "container": "heif" } } },
 *       { "file": "broken/truncated.jpg", "expect": { "outcome": "reject", "code": "corrupt_media" } }
 *     ]
 *   }
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';

export interface Expectation {
  outcome: 'clean' | 'reject';
  /** For a rejection: the error code it must carry. */
  code?: string;
  /** Categories the report must name as removed. */
  removed?: string[];
  /** The cleaned file's stored pixel size (as a tag reader reports it) and EXIF orientation. */
  width?: number;
  height?: number;
  orientation?: number;
  /** Fingerprint fields that must match exactly. */
  fingerprint?: Record<string, unknown>;
}

export interface SuiteFile {
  /** Path relative to the suite folder, with forward slashes. */
  file: string;
  /** Undefined: the default, clean or rejected but never dirty. */
  expect: Expectation | undefined;
}

export interface Suite {
  name: string;
  dir: string;
  files: SuiteFile[];
}

export class SuiteError extends Error {}

const manifestNames = ['suite.json', 'manifest.json'];

/** `*` matches within one path segment; anything else is literal. */
function globMatch(pattern: string, file: string): boolean {
  const regex = new RegExp(`^${pattern.split('*').map((part) => part.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('[^/]*')}$`);
  return regex.test(file) || regex.test(path.posix.basename(file));
}

function checkExpectation(file: string, raw: unknown): Expectation {
  const e = raw as Partial<Expectation> | null;
  if (!e || typeof e !== 'object' || (e.outcome !== 'clean' && e.outcome !== 'reject')) {
    throw new SuiteError(`${file}: "expect.outcome" must be "clean" or "reject"`);
  }
  for (const key of ['width', 'height', 'orientation'] as const) {
    if (e[key] !== undefined && !Number.isInteger(e[key])) throw new SuiteError(`${file}: "expect.${key}" must be a whole number`);
  }
  if (e.removed !== undefined && !(Array.isArray(e.removed) && e.removed.every((c) => typeof c === 'string'))) {
    throw new SuiteError(`${file}: "expect.removed" must be a list of category names`);
  }
  if (e.code !== undefined && typeof e.code !== 'string') throw new SuiteError(`${file}: "expect.code" must be an error code string`);
  return e as Expectation;
}

async function listFiles(dir: string, prefix = ''): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(path.join(dir, prefix), { withFileTypes: true })) {
    const relative = prefix ? `${prefix}/${entry.name}` : entry.name;
    if (entry.isDirectory()) out.push(...(await listFiles(dir, relative)));
    else if (entry.isFile()) out.push(relative);
  }
  return out.sort();
}

export async function loadSuite(dir: string): Promise<Suite> {
  const info = await stat(dir).catch(() => undefined);
  if (!info?.isDirectory()) throw new SuiteError(`${dir} is not a folder`);
  let manifestName: string | undefined;
  let manifest: { name?: unknown; ignore?: unknown; files?: unknown } = {};
  for (const name of manifestNames) {
    const text = await readFile(path.join(dir, name), 'utf8').catch(() => undefined);
    if (text === undefined) continue;
    try {
      manifest = JSON.parse(text) as typeof manifest;
    } catch {
      throw new SuiteError(`${name} is not valid JSON`);
    }
    manifestName = name;
    break;
  }
  const ignore = Array.isArray(manifest.ignore) ? manifest.ignore.filter((p): p is string => typeof p === 'string') : [];
  const listed = new Map<string, SuiteFile>();
  for (const raw of Array.isArray(manifest.files) ? (manifest.files as Array<{ file?: unknown; expect?: unknown }>) : []) {
    if (typeof raw?.file !== 'string' || raw.file.includes('..')) throw new SuiteError(`${manifestName}: every entry needs a "file" inside the suite folder`);
    listed.set(raw.file, { file: raw.file, expect: raw.expect === undefined ? undefined : checkExpectation(raw.file, raw.expect) });
  }
  const present = await listFiles(dir);
  for (const file of listed.keys()) if (!present.includes(file)) throw new SuiteError(`${manifestName} lists ${file}, which is not in the folder`);
  const files = [...listed.values()];
  for (const file of present) {
    if (listed.has(file) || file === manifestName || ignore.some((pattern) => globMatch(pattern, file))) continue;
    files.push({ file, expect: undefined });
  }
  return { name: typeof manifest.name === 'string' ? manifest.name : path.basename(path.resolve(dir)), dir, files };
}
