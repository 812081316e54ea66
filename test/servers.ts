/**
 * Real servers for the production-storage tests, each made by the test and gone after it:
 *   - PostgreSQL from the machine's packages (Debian's `postgresql`), as a throwaway cluster:
 *     initdb and pg_ctl on a Unix socket in a temp dir, no TCP port, nothing left behind;
 *   - an S3-protocol server on loopback (s3rver, a dev dependency), driven by the real AWS SDK.
 * Without PostgreSQL the tests that need it are skipped, saying why (never a silent pass).
 */
import { execFile, execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { chown, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { removeDir, tempDir } from './helpers.js';

const run = promisify(execFile);

/** initdb and pg_ctl: on the PATH, or in Debian's versioned folder (not on the PATH there). */
function postgresBin(): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(':')) if (dir && existsSync(path.join(dir, 'initdb')) && existsSync(path.join(dir, 'pg_ctl'))) return dir;
  const debian = '/usr/lib/postgresql';
  const versions = existsSync(debian) ? readdirSync(debian).sort((a, b) => Number(b) - Number(a)) : [];
  for (const version of versions) if (existsSync(path.join(debian, version, 'bin', 'initdb'))) return path.join(debian, version, 'bin');
  return undefined;
}

/** PostgreSQL refuses to run as root: as root, the cluster is the `postgres` user's (the package makes it). */
function runAs(): { uid: number; gid: number; user: string } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  try {
    const id = (flag: string): number => Number(execFileSync('id', [flag, 'postgres'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim());
    return { uid: id('-u'), gid: id('-g'), user: 'postgres' };
  } catch {
    return undefined;
  }
}

/** Why the PostgreSQL tests cannot run here, or undefined when they can. */
export function postgresMissing(): string | undefined {
  if (process.env.SCRUBLINE_TEST_SKIP_POSTGRES === '1') return 'SCRUBLINE_TEST_SKIP_POSTGRES=1';
  if (postgresBin() === undefined) return 'PostgreSQL is not installed (initdb and pg_ctl not found; apt-get install postgresql)';
  if (process.getuid?.() === 0 && runAs() === undefined) return 'running as root and there is no postgres user to run the cluster as';
  return undefined;
}

export interface Postgres {
  /** A URL for a new, empty database of the cluster. */
  database(name: string): Promise<string>;
  /** Stops the server as a failover or a minor upgrade does (`pg_ctl stop -m fast`), keeping its data. */
  halt(): Promise<void>;
  /** Starts it again after halt(). */
  resume(): Promise<void>;
  stop(): Promise<void>;
}

export async function startPostgres(): Promise<Postgres> {
  const bin = postgresBin()!;
  const user = runAs();
  const dir = await tempDir();
  const data = path.join(dir, 'data');
  await mkdir(data, { mode: 0o700 });
  if (user) {
    await chown(dir, user.uid, user.gid);
    await chown(data, user.uid, user.gid);
  }
  const as = (command: string, args: string[]) => (user ? run('runuser', ['-u', user.user, '--', path.join(bin, command), ...args]) : run(path.join(bin, command), args));
  await as('initdb', ['-D', data, '-A', 'trust', '-U', 'postgres', '-E', 'UTF8', '--no-sync', '--no-instructions']);
  // No TCP: the socket in the temp dir is the only way in. fsync off: a test cluster needs no durability.
  const start = () => as('pg_ctl', ['-D', data, '-l', path.join(dir, 'log'), '-w', '-o', `-k ${dir} -c listen_addresses= -F -c max_connections=200`, 'start']);
  await start();
  const url = (db: string) => `postgresql://postgres@/${db}?host=${encodeURIComponent(dir)}`;
  const pg = (await import('pg')).default;
  return {
    async database(name) {
      const client = new pg.Client({ connectionString: url('postgres') });
      await client.connect();
      try {
        await client.query(`CREATE DATABASE "${name}"`);
      } finally {
        await client.end();
      }
      return url(name);
    },
    async halt() {
      await as('pg_ctl', ['-D', data, '-m', 'fast', '-w', 'stop']);
    },
    async resume() {
      await start();
    },
    async stop() {
      await as('pg_ctl', ['-D', data, '-m', 'immediate', '-w', 'stop']).catch(() => undefined);
      await removeDir(dir);
    },
  };
}

export interface S3Server {
  endpoint: string;
  bucket: string;
  /** Environment a scrubline process reads its bucket settings from, as the AWS SDK takes them. */
  env: Record<string, string>;
  /** The method, key and headers of every request the server received. */
  requests: Array<{ method: string; key: string; query: string; headers: Record<string, string | string[] | undefined> }>;
  client(): Promise<import('@aws-sdk/client-s3').S3Client>;
  /** Every key in the bucket. */
  keys(): Promise<string[]>;
  /** The raw bytes of an object, as the bucket holds them. */
  raw(key: string): Promise<Buffer>;
  put(key: string, body: Buffer): Promise<void>;
  /** Stops the server as an outage would, keeping its objects; resume() starts it again on the same port. */
  halt(): Promise<void>;
  resume(): Promise<void>;
  stop(): Promise<void>;
}

export async function startS3(bucket = 'scrubline-test'): Promise<S3Server> {
  const { default: S3rver } = await import('s3rver');
  const dir = await tempDir();
  const requests: S3Server['requests'] = [];
  const launch = async (port: number): Promise<{ server: InstanceType<typeof S3rver>; port: number }> => {
    const server = new S3rver({ port, address: '127.0.0.1', silent: true, directory: dir, configureBuckets: [{ name: bucket }] });
    // s3rver is a Koa app: a middleware put first sees every request as it arrived.
    (server as unknown as { middleware: Array<(ctx: { method: string; path: string; querystring: string; headers: Record<string, string> }, next: () => Promise<void>) => Promise<void>> }).middleware.unshift(
      async (ctx, next) => {
        requests.push({ method: ctx.method, key: decodeURIComponent(ctx.path.replace(`/${bucket}/`, '')), query: ctx.querystring, headers: { ...ctx.headers } });
        await next();
      },
    );
    return { server, port: ((await server.run()) as { port: number }).port };
  };
  let { server, port } = await launch(0);
  const endpoint = `http://127.0.0.1:${port}`;
  const env = {
    AWS_ENDPOINT_URL_S3: endpoint,
    AWS_REGION: 'us-east-1',
    AWS_ACCESS_KEY_ID: 'S3RVER',
    AWS_SECRET_ACCESS_KEY: 'S3RVER',
    // s3rver predates the SDK's default CRC checksums on streamed uploads (aws-chunked bodies);
    // older MinIO and Ceph builds too. The SDK's own switch, as an operator would set it.
    AWS_REQUEST_CHECKSUM_CALCULATION: 'WHEN_REQUIRED',
    // A server on an IP address has no bucket host names.
    SCRUBLINE_S3_FORCE_PATH_STYLE: 'true',
  };
  const sdk = await import('@aws-sdk/client-s3');
  const client = async () =>
    new sdk.S3Client({
      endpoint,
      region: env.AWS_REGION,
      forcePathStyle: true,
      credentials: { accessKeyId: env.AWS_ACCESS_KEY_ID, secretAccessKey: env.AWS_SECRET_ACCESS_KEY },
      requestChecksumCalculation: 'WHEN_REQUIRED',
    });
  const admin = await client();
  return {
    endpoint,
    bucket,
    env,
    requests,
    client,
    async keys() {
      const listed = await admin.send(new sdk.ListObjectsV2Command({ Bucket: bucket }));
      return (listed.Contents ?? []).map((c) => c.Key!).sort();
    },
    async raw(key) {
      const got = await admin.send(new sdk.GetObjectCommand({ Bucket: bucket, Key: key }));
      return Buffer.from(await got.Body!.transformToByteArray());
    },
    async put(key, body) {
      await admin.send(new sdk.PutObjectCommand({ Bucket: bucket, Key: key, Body: body }));
    },
    async halt() {
      await server.close();
    },
    async resume() {
      ({ server } = await launch(port));
    },
    async stop() {
      admin.destroy();
      await server.close().catch(() => undefined);
      await removeDir(dir);
    },
  };
}
