/**
 * The HTTP API's OpenAPI 3.1 description, kept in the repository as schemas/openapi.json (where a
 * render-service team's client generator reads it, with the fingerprint schema beside it) and
 * served at /openapi.json as one self-contained document: the fingerprint schema inlined.
 */
import { readFileSync } from 'node:fs';

const read = (name: string): Record<string, unknown> => JSON.parse(readFileSync(new URL(`../../schemas/${name}`, import.meta.url), 'utf8')) as Record<string, unknown>;

let served: Record<string, unknown> | undefined;

export function openApiDocument(): Record<string, unknown> {
  if (served) return served;
  const doc = read('openapi.json') as { components: { schemas: Record<string, unknown> } };
  doc.components.schemas.Fingerprint = read('fingerprint-v1.schema.json');
  served = doc;
  return doc;
}
