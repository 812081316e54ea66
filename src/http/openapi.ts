/**
 * The HTTP API's OpenAPI 3.1 description, kept in the repository as schemas/openapi.json (where a
 * render-service team's client generator reads it) and served as it is at /openapi.json.
 *
 * The fingerprint schema (schemas/fingerprint-v1.schema.json) is a JSON Schema of its own, with
 * an `$id` and `#/$defs/...` references; pasted into the document whole, those references point
 * nowhere in it, and client generators stop there (openapi-typescript, swagger-parser). So the
 * document carries it as components: `Fingerprint`, and each definition as `Fingerprint<Name>`.
 * `withFingerprint` makes that form; `npm run schemas` writes it, and a test keeps the two files
 * in step.
 */
import { readFileSync } from 'node:fs';

type Json = Record<string, unknown>;

const read = (name: string): Json => JSON.parse(readFileSync(new URL(`../../schemas/${name}`, import.meta.url), 'utf8')) as Json;

const componentOf = (def: string): string => `Fingerprint${def[0]!.toUpperCase()}${def.slice(1)}`;

/** A schema with `#/$defs/x` references made `#/components/schemas/FingerprintX`. Pure. */
function rerooted(schema: unknown): unknown {
  if (Array.isArray(schema)) return schema.map(rerooted);
  if (schema === null || typeof schema !== 'object') return schema;
  return Object.fromEntries(
    Object.entries(schema).map(([key, value]) => [key, key === '$ref' && typeof value === 'string' && value.startsWith('#/$defs/') ? `#/components/schemas/${componentOf(value.slice(8))}` : rerooted(value)]),
  );
}

/** The document with the fingerprint schema as components, replacing any it had. Pure. */
export function withFingerprint(doc: Json, fingerprint: Json): Json {
  const { $schema: _schema, $id: _id, $defs, ...root } = fingerprint as Json & { $defs?: Record<string, unknown> };
  const components = (doc.components ?? {}) as { schemas?: Record<string, unknown> };
  const schemas = Object.fromEntries(Object.entries(components.schemas ?? {}).filter(([name]) => name !== 'Fingerprint' && !name.startsWith('Fingerprint')));
  schemas.Fingerprint = rerooted(root);
  for (const [name, def] of Object.entries($defs ?? {})) schemas[componentOf(name)] = rerooted(def);
  return { ...doc, components: { ...components, schemas } };
}

let served: Json | undefined;

export function openApiDocument(): Json {
  served ??= read('openapi.json');
  return served;
}

/** What schemas/openapi.json must hold, from the two files as they are (for `npm run schemas` and its test). */
export function bundledDocument(): Json {
  return withFingerprint(read('openapi.json'), read('fingerprint-v1.schema.json'));
}
