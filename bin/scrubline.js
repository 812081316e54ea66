#!/usr/bin/env node
// The CLI runs the compiled dist/ (`npm run build`; `npm start`, `npm test` and `npm pack` build
// it themselves). A package installed from a registry or a tarball ships it built.
import { existsSync } from 'node:fs';

if (!existsSync(new URL('../dist/cli/cli.js', import.meta.url))) {
  process.stderr.write('scrubline is not built yet: run `npm run build` in its folder first.\n');
  process.exit(1);
}
const { main } = await import('../dist/cli/cli.js');
process.exitCode = await main(process.argv.slice(2));
