/**
 * The storage drivers are optional peer dependencies (pg, @aws-sdk/client-s3 and lib-storage),
 * loaded when a ledger or a bucket is opened: an app that only mounts the middleware installs
 * and compiles none of them (issue 19). The service and the CLI's sweep need the ones they use.
 */
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

/** Loads `name`, or throws saying what needs it and how to install it. */
export function optionalPeer<T>(name: string, neededBy: string): T {
  try {
    return require(name) as T;
  } catch (err) {
    throw new Error(`${neededBy} needs ${name}, an optional peer dependency of scrubline: run \`npm i ${name}\` next to it.`, { cause: err });
  }
}
