/**
 * Writes schemas/openapi.json with the fingerprint schema (schemas/fingerprint-v1.schema.json) as
 * its components, after either file changed: `npm run schemas`. test/openapi.test.ts fails while
 * the two differ.
 */
import { writeFileSync } from 'node:fs';
import { bundledDocument } from '../src/http/openapi.js';

writeFileSync(new URL('../schemas/openapi.json', import.meta.url), `${JSON.stringify(bundledDocument(), null, 2)}\n`);
process.stdout.write('schemas/openapi.json written\n');
