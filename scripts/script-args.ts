/**
 * Argument parsing for the dev scripts (`npm run fuzz -- …` and the others): `--help` prints the
 * usage, and a mistake prints what was wrong and the usage, never a stack trace.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';

type Options = NonNullable<ParseArgsConfig['options']>;

export function scriptArgs<T extends Options>(usage: string, options: T, allowPositionals = false) {
  try {
    const parsed = parseArgs({ options: { ...options, help: { type: 'boolean', short: 'h' } }, allowPositionals, strict: true });
    if ((parsed.values as { help?: boolean }).help) {
      process.stdout.write(`${usage.trim()}\n`);
      process.exit(0);
    }
    return parsed as unknown as { values: { [K in keyof T]: T[K]['type'] extends 'boolean' ? boolean | undefined : string | undefined } & { help?: boolean }; positionals: string[] };
  } catch (err) {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n\n${usage.trim()}\n`);
    process.exit(2);
  }
}
