#!/usr/bin/env node
// The CLI runs the compiled dist/ (`npm run build`; `npm start`, `npm test` and `npm pack` build
// it themselves). A package installed from a registry or a tarball ships it built.
import { existsSync, lstatSync, mkdirSync } from 'node:fs';
import nodeModule from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';

// The ledger's driver is Node's own node:sqlite (22.16 and later). The npm scripts run on the
// Node.js of the project's `node` dependency; a shell may have an older one first on its PATH.
const [major, minor] = process.versions.node.split('.').map(Number);
if (major < 22 || (major === 22 && minor < 16)) {
  process.stderr.write(`scrubline needs Node.js 22.16 or later; this is ${process.version}. Run it through npm (npm start, npm test), or as node_modules/.bin/node bin/scrubline.js.\n`);
  process.exit(1);
}

if (!existsSync(new URL('../dist/cli/cli.js', import.meta.url))) {
  process.stderr.write('scrubline is not built yet: run `npm run build` in its folder first.\n');
  process.exit(1);
}

// V8's code cache of the compiled modules (code only, never a file's bytes), kept on disk by
// Node. A batch starts a fresh isolate per core on every run and each compiles the whole
// pipeline: 100 photos took 3-7 % less time with it (in turns, 2 cores). Not for `serve`: it
// starts once, and its memory is what is budgeted. NODE_COMPILE_CACHE, when set, is Node's own
// business. Otherwise the cache is a directory of this user's in the temp dir, used only if it
// is ours and writable by nobody else: cached code is run, so a directory another user could
// write to (Node's default is a shared one) is not. Put in the environment for the batch's
// worker threads. Anything unusual (no temp dir, a read-only one) and it runs without.
function compileCacheDir() {
  const dir = path.join(tmpdir(), `scrubline-compile-cache-${process.getuid?.() ?? 'user'}`);
  try {
    // Not recursive: Node's recursive mkdir spins forever where mkdir answers ENOENT under an
    // existing parent (a temp dir on /proc).
    mkdirSync(dir, { mode: 0o700 });
  } catch (err) {
    if (err.code !== 'EEXIST') return undefined;
  }
  try {
    const found = lstatSync(dir);
    const ours = process.getuid === undefined || found.uid === process.getuid();
    return found.isDirectory() && ours && (found.mode & 0o022) === 0 ? dir : undefined;
  } catch {
    return undefined;
  }
}
if (process.argv[2] !== 'serve' && process.env.NODE_COMPILE_CACHE === undefined) {
  const dir = compileCacheDir();
  const { directory } = dir === undefined ? {} : nodeModule.enableCompileCache(dir);
  if (directory !== undefined) process.env.NODE_COMPILE_CACHE = directory;
}
const { main } = await import('../dist/cli/cli.js');
process.exitCode = await main(process.argv.slice(2));
