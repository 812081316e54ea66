#!/usr/bin/env node
// The CLI runs the compiled dist/ (`npm run build`; `npm start`, `npm test` and `npm pack` build
// it themselves). A package installed from a registry or a tarball ships it built.
import { existsSync } from 'node:fs';
import { enableCompileCache } from 'node:module';

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

// V8's code cache of the compiled modules, kept on disk by Node (os.tmpdir()/node-compile-cache
// unless NODE_COMPILE_CACHE names another place; code only, never a file's bytes). A batch starts
// a fresh isolate per core on every run and each compiles the whole pipeline: 100 photos took
// 3-7 % less time with it (in turns, 2 cores). Set in the environment too, so that the batch's
// worker threads use it. Not for `serve`: it starts once, and its memory is what is budgeted.
// Node says why when it cannot (a read-only disk): nothing else changes then.
if (process.argv[2] !== 'serve' && process.env.NODE_COMPILE_CACHE === undefined) {
  const { directory } = enableCompileCache();
  if (directory !== undefined) process.env.NODE_COMPILE_CACHE = directory;
}
const { main } = await import('../dist/cli/cli.js');
process.exitCode = await main(process.argv.slice(2));
