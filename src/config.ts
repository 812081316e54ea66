import { availableParallelism } from 'node:os';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { parseBucketUrl } from './storage/bucket.js';

/**
 * Everything scrubline can be configured with, read once from `SCRUBLINE_*` variables.
 * Units are in the names. Defaults live here and nowhere else.
 */
export interface Config {
  port: number;
  host: string;
  /** Root of everything scrubline writes: tmp/ (uploads in flight), clean/ and reports/ (local sink), the ledger and keys. */
  dataDir: string;
  /** Render service to forward cleaned files to (http/https), or a bucket to store them in (s3://bucket/prefix); undefined means the data dir. */
  upstreamUrl: URL | undefined;
  /** PostgreSQL ledger shared by replicas; undefined means SQLite in the data dir. */
  databaseUrl: string | undefined;
  /** Server-side encryption asked of the bucket on every write. */
  s3Sse: 'AES256' | 'aws:kms';
  s3KmsKeyId: string | undefined;
  /** Bucket in the path (`endpoint/bucket/key`) rather than the host name: MinIO and servers on an IP address. */
  s3ForcePathStyle: boolean;
  upstreamTimeoutMs: number;
  /** An Authorization header value sent to an http(s) render service: its credentials, never in the URL. */
  upstreamAuthorization: string | undefined;
  /** HMAC key for fingerprints; undefined means "generate once and keep in the data dir". */
  fingerprintKey: string | undefined;
  ffmpegPath: string | undefined;
  ffprobePath: string | undefined;
  ffmpegTimeoutMs: number;
  maxUploadBytes: number;
  maxFiles: number;
  maxInputPixels: number;
  /**
   * Bearer tokens valid for /v1/*, several at once so one can be rotated with an overlap; empty
   * means "generate one once and keep it in <dataDir>/api-token".
   */
  apiTokens: string[];
  /** The storage key (32 bytes) that encrypts what scrubline stores, and older ones that still decrypt. */
  storageKey: Buffer | undefined;
  storageOldKeys: Buffer[];
  /** libheif's decoder for HEIC previews; unset = heif-dec or heif-convert on PATH. */
  heifDecoderPath: string | undefined;
  /** HTTPS: the service's certificate chain and key (PEM files), both or neither. */
  tlsCertFile: string | undefined;
  tlsKeyFile: string | undefined;
  /** Extra CA certificates (PEM) an HTTPS upstream is verified against, beside the system's. */
  upstreamCaFile: string | undefined;
  /** How long a file of a job that has not reported "finished" may live at most. */
  unfinishedJobCapHours: number;
  /** How often the service's sweeper runs; 0 turns it off (run `scrubline sweep` instead). */
  sweepIntervalMs: number;
  /** How long fingerprints and crash records are kept. */
  recordRetentionDays: number;
  /** Uploads processed at once; more are answered 503 with Retry-After. */
  maxConcurrentUploads: number;
  /** Longest a whole request (body included) may take, and the header read. */
  requestTimeoutMs: number;
  headersTimeoutMs: number;
  /** Longest an upload's body may make no progress; then 408 and its slot is freed. */
  bodyIdleTimeoutMs: number;
  /** Further attempts after a render-service 5xx or refused connection. */
  upstreamRetries: number;
  logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
  /** A listener of its own for /metrics (THREATS 53); undefined = /metrics on the API listener. */
  metricsPort: number | undefined;
  metricsHost: string;
  /** After SIGTERM: how long in-flight requests may finish before they are cut off. */
  shutdownTimeoutMs: number;
  /** After SIGTERM: how long /readyz says "not ready" before new uploads are refused. */
  shutdownDelayMs: number;
  /** How long a resumable upload may take from its creation; then it is refused and swept. */
  resumableTtlMs: number;
  /** Resumable uploads open at once, across replicas; more are refused until some end. */
  resumableMaxOpen: number;
  /** Bytes the open resumable uploads may declare in all, across replicas. */
  resumableMaxBytes: number;
  /** Free space in the temp dir's file system that uploads never reserve. */
  tempHeadroomBytes: number;
}

export const defaults = {
  port: 8080,
  host: '0.0.0.0',
  dataDir: './data',
  upstreamTimeoutMs: 60_000,
  ffmpegTimeoutMs: 120_000,
  maxUploadBytes: 2 * 1024 ** 3,
  maxFiles: 10,
  // 268 MP: the same default sharp uses; a 12 MP photo is far below it.
  maxInputPixels: 268_402_689,
  unfinishedJobCapHours: 7 * 24,
  sweepIntervalMs: 5 * 60_000,
  recordRetentionDays: 30,
  // The work is CPU-bound: one upload per core keeps the cores busy; more only holds more
  // originals in memory at once (measured with npm run load: 4 at a time peaked at 210 MiB).
  maxConcurrentUploads: Math.max(2, availableParallelism()),
  requestTimeoutMs: 10 * 60_000,
  headersTimeoutMs: 30_000,
  // A phone on a bad network stalls for seconds, not half a minute; a stalled body holds a slot.
  bodyIdleTimeoutMs: 30_000,
  upstreamRetries: 2,
  logLevel: 'info',
  // Metrics are for the cluster's scraper, not the internet: loopback unless the operator says.
  metricsHost: '127.0.0.1',
  // Kubernetes gives a pod 30 s from SIGTERM to SIGKILL: 5 s for the load balancer to see /readyz
  // fail, 20 s to drain, 5 s to spare for clean-up and exit.
  shutdownDelayMs: 5_000,
  shutdownTimeoutMs: 20_000,
  // A phone on a bad link finishes a large video in well under an hour, or not at all that day;
  // the cap keeps originals from waiting in the store for days.
  resumableTtlMs: 60 * 60_000,
  resumableMaxOpen: 100,
  resumableMaxBytes: 50 * 1024 ** 3,
  tempHeadroomBytes: 256 * 1024 ** 2,
} as const satisfies Partial<Config>;

/** Originals in pieces wait at most a day, whatever is configured. */
const maxResumableTtlMs = 24 * 3_600_000;

const logLevels = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`Invalid configuration:\n  - ${problems.join('\n  - ')}`);
    this.name = 'ConfigError';
  }
}

type Env = Record<string, string | undefined>;

/** Reads and validates the environment; throws one ConfigError listing every bad variable. */
export function loadConfig(env: Env = process.env): Config {
  const problems: string[] = [];
  const read = (name: string): string | undefined => {
    const value = env[`SCRUBLINE_${name}`];
    return value === undefined || value.trim() === '' ? undefined : value.trim();
  };
  const integer = (name: string, fallback: number, min: number, max: number): number => {
    const raw = read(name);
    if (raw === undefined) return fallback;
    const value = Number(raw);
    if (!/^\d+$/.test(raw) || !Number.isSafeInteger(value) || value < min || value > max) {
      problems.push(`SCRUBLINE_${name} must be a whole number from ${min} to ${max}, got "${raw}"`);
      return fallback;
    }
    return value;
  };

  const boolean = (name: string): boolean => {
    const raw = read(name);
    if (raw === undefined || raw === 'false') return false;
    if (raw === 'true') return true;
    problems.push(`SCRUBLINE_${name} must be true or false, got "${raw}"`);
    return false;
  };

  let upstreamUrl: URL | undefined;
  const rawUpstream = read('UPSTREAM_URL');
  if (rawUpstream !== undefined) {
    try {
      upstreamUrl = new URL(rawUpstream);
      if (upstreamUrl.protocol === 's3:') parseBucketUrl(upstreamUrl);
      // Credentials in a URL end up in logs and stack traces (THREATS 51): they come apart.
      else if (upstreamUrl.username !== '' || upstreamUrl.password !== '') {
        problems.push('SCRUBLINE_UPSTREAM_URL must not carry a user name or password: give the URL without them and put the credentials in SCRUBLINE_UPSTREAM_AUTHORIZATION (e.g. "Basic <base64>" or "Bearer <token>")');
        upstreamUrl = undefined;
      }
      else if (upstreamUrl.protocol !== 'http:' && upstreamUrl.protocol !== 'https:') {
        problems.push(`SCRUBLINE_UPSTREAM_URL must be an http://, https:// or s3:// URL, got protocol "${upstreamUrl.protocol}"`);
      }
    } catch (err) {
      const why = upstreamUrl?.protocol === 's3:' && err instanceof Error ? `: ${err.message}` : '';
      problems.push(`SCRUBLINE_UPSTREAM_URL must be an absolute http(s) URL such as http://render:9000/jobs, or s3://bucket/prefix${why}`);
    }
  }

  const databaseUrl = read('DATABASE_URL');
  if (databaseUrl !== undefined && !/^postgres(?:ql)?:\/\//.test(databaseUrl)) problems.push('SCRUBLINE_DATABASE_URL must be a postgres:// or postgresql:// URL (unset = SQLite in the data dir)');
  else if (databaseUrl !== undefined && hasPassword(databaseUrl)) {
    problems.push('SCRUBLINE_DATABASE_URL must not carry a password: keep the user name in the URL and give the password in PGPASSWORD or a PGPASSFILE, which the PostgreSQL driver reads');
  }
  const upstreamAuthorization = read('UPSTREAM_AUTHORIZATION');
  if (upstreamAuthorization !== undefined && (upstreamUrl === undefined || upstreamUrl.protocol === 's3:')) {
    problems.push('SCRUBLINE_UPSTREAM_AUTHORIZATION goes with an http:// or https:// SCRUBLINE_UPSTREAM_URL');
  }
  if (upstreamAuthorization !== undefined && /[\r\n]/.test(upstreamAuthorization)) problems.push('SCRUBLINE_UPSTREAM_AUTHORIZATION must be one line');
  const s3Sse = read('S3_SSE') ?? 'AES256';
  if (s3Sse !== 'AES256' && s3Sse !== 'aws:kms') problems.push(`SCRUBLINE_S3_SSE must be AES256 or aws:kms, got "${s3Sse}"`);
  const s3KmsKeyId = read('S3_KMS_KEY_ID');
  if (s3KmsKeyId !== undefined && s3Sse !== 'aws:kms') problems.push('SCRUBLINE_S3_KMS_KEY_ID goes with SCRUBLINE_S3_SSE=aws:kms');

  const fingerprintKey = read('FINGERPRINT_KEY');
  if (fingerprintKey !== undefined && fingerprintKey.length < 32) {
    problems.push('SCRUBLINE_FINGERPRINT_KEY must be at least 32 characters (e.g. `openssl rand -hex 32`)');
  }

  // Several tokens, comma-separated, are all valid: the new one and the one being retired.
  const apiTokens = (read('API_TOKEN') ?? '').split(',').map((t) => t.trim()).filter((t) => t !== '');
  if (apiTokens.some((t) => t.length < 32 || !/^[\x21-\x7e]+$/.test(t))) {
    problems.push('SCRUBLINE_API_TOKEN must be one token, or several separated by commas, each at least 32 printable characters (e.g. `openssl rand -hex 32`)');
  }

  problems.push(...unknownVariables(env));

  // 32 bytes as 64 hex digits or as base64: `openssl rand -hex 32`.
  const storageKeyOf = (name: string, text: string): Buffer | undefined => {
    const hex = /^[0-9a-fA-F]{64}$/.test(text);
    const key = Buffer.from(text, hex ? 'hex' : 'base64');
    // Base64 must be canonical: Buffer.from ignores what it cannot read.
    if (key.length === 32 && (hex || key.toString('base64') === text)) return key;
    problems.push(`${name} must be 32 bytes as 64 hex digits or base64 (e.g. \`openssl rand -hex 32\`)`);
    return undefined;
  };
  const rawStorageKey = read('STORAGE_KEY');
  const storageKey = rawStorageKey === undefined ? undefined : storageKeyOf('SCRUBLINE_STORAGE_KEY', rawStorageKey);
  const storageOldKeys = (read('STORAGE_OLD_KEYS') ?? '')
    .split(',')
    .map((k) => k.trim())
    .filter((k) => k !== '')
    .map((k) => storageKeyOf('SCRUBLINE_STORAGE_OLD_KEYS', k))
    .filter((k): k is Buffer => k !== undefined);
  const tlsCertFile = read('TLS_CERT_FILE');
  const tlsKeyFile = read('TLS_KEY_FILE');
  if ((tlsCertFile === undefined) !== (tlsKeyFile === undefined)) problems.push('SCRUBLINE_TLS_CERT_FILE and SCRUBLINE_TLS_KEY_FILE go together: set both for HTTPS, or neither');
  for (const [name, file] of [['SCRUBLINE_TLS_CERT_FILE', tlsCertFile], ['SCRUBLINE_TLS_KEY_FILE', tlsKeyFile], ['SCRUBLINE_UPSTREAM_CA_FILE', read('UPSTREAM_CA_FILE')]] as const) {
    if (file !== undefined && !existsSync(file)) problems.push(`${name} names a file that does not exist: ${file}`);
  }

  const logLevel = read('LOG_LEVEL') ?? defaults.logLevel;
  if (!(logLevels as readonly string[]).includes(logLevel)) {
    problems.push(`SCRUBLINE_LOG_LEVEL must be one of ${logLevels.join(', ')}, got "${logLevel}"`);
  }

  const config: Config = {
    port: integer('PORT', defaults.port, 0, 65_535),
    host: read('HOST') ?? defaults.host,
    dataDir: path.resolve(read('DATA_DIR') ?? defaults.dataDir),
    upstreamUrl,
    databaseUrl,
    s3Sse: s3Sse as Config['s3Sse'],
    s3KmsKeyId,
    s3ForcePathStyle: boolean('S3_FORCE_PATH_STYLE'),
    upstreamTimeoutMs: integer('UPSTREAM_TIMEOUT_MS', defaults.upstreamTimeoutMs, 100, 3_600_000),
    fingerprintKey,
    ffmpegPath: read('FFMPEG_PATH'),
    ffprobePath: read('FFPROBE_PATH'),
    ffmpegTimeoutMs: integer('FFMPEG_TIMEOUT_MS', defaults.ffmpegTimeoutMs, 100, 3_600_000),
    maxUploadBytes: integer('MAX_UPLOAD_BYTES', defaults.maxUploadBytes, 1, Number.MAX_SAFE_INTEGER),
    maxFiles: integer('MAX_FILES', defaults.maxFiles, 1, 1000),
    maxInputPixels: integer('MAX_INPUT_PIXELS', defaults.maxInputPixels, 1, 2 ** 40),
    apiTokens,
    storageKey,
    storageOldKeys,
    heifDecoderPath: read('HEIF_DECODER_PATH'),
    tlsCertFile,
    tlsKeyFile,
    upstreamCaFile: read('UPSTREAM_CA_FILE'),
    unfinishedJobCapHours: integer('UNFINISHED_JOB_CAP_HOURS', defaults.unfinishedJobCapHours, 1, 24 * 365),
    sweepIntervalMs: integer('SWEEP_INTERVAL_MS', defaults.sweepIntervalMs, 0, 24 * 3_600_000),
    recordRetentionDays: integer('RECORD_RETENTION_DAYS', defaults.recordRetentionDays, 1, 3650),
    maxConcurrentUploads: integer('MAX_CONCURRENT_UPLOADS', defaults.maxConcurrentUploads, 1, 10_000),
    requestTimeoutMs: integer('REQUEST_TIMEOUT_MS', defaults.requestTimeoutMs, 1000, 24 * 3_600_000),
    headersTimeoutMs: integer('HEADERS_TIMEOUT_MS', defaults.headersTimeoutMs, 1000, 3_600_000),
    bodyIdleTimeoutMs: integer('BODY_IDLE_TIMEOUT_MS', defaults.bodyIdleTimeoutMs, 100, 3_600_000),
    upstreamRetries: integer('UPSTREAM_RETRIES', defaults.upstreamRetries, 0, 10),
    logLevel: logLevel as Config['logLevel'],
    upstreamAuthorization,
    metricsPort: read('METRICS_PORT') === undefined ? undefined : integer('METRICS_PORT', 0, 0, 65_535),
    metricsHost: read('METRICS_HOST') ?? defaults.metricsHost,
    shutdownDelayMs: integer('SHUTDOWN_DELAY_MS', defaults.shutdownDelayMs, 0, 3_600_000),
    shutdownTimeoutMs: integer('SHUTDOWN_TIMEOUT_MS', defaults.shutdownTimeoutMs, 0, 24 * 3_600_000),
    resumableTtlMs: integer('RESUMABLE_TTL_MS', defaults.resumableTtlMs, 60_000, maxResumableTtlMs),
    resumableMaxOpen: integer('RESUMABLE_MAX_OPEN', defaults.resumableMaxOpen, 1, 100_000),
    resumableMaxBytes: integer('RESUMABLE_MAX_BYTES', defaults.resumableMaxBytes, 1, Number.MAX_SAFE_INTEGER),
    tempHeadroomBytes: integer('TEMP_HEADROOM_BYTES', defaults.tempHeadroomBytes, 0, Number.MAX_SAFE_INTEGER),
  };
  if (problems.length > 0) throw new ConfigError(problems);
  return config;
}

/**
 * Whether a postgres:// URL has a password in its userinfo. Read by hand: libpq's forms
 * (`postgresql://user:pw@/db?host=/socket`) are not all URLs WHATWG's parser accepts.
 */
function hasPassword(url: string): boolean {
  const rest = url.slice(url.indexOf('://') + 3);
  const authority = rest.slice(0, [...'/?#'].map((c) => rest.indexOf(c)).filter((i) => i >= 0).reduce((a, b) => Math.min(a, b), rest.length));
  const at = authority.lastIndexOf('@');
  return at >= 0 && authority.slice(0, at).includes(':');
}

/** The documented variables, for the README and `scrubline --help`. */
export const configVariables: ReadonlyArray<[name: string, meaning: string]> = [
  ['SCRUBLINE_PORT', `port to listen on (default ${defaults.port})`],
  ['SCRUBLINE_HOST', `address to bind (default ${defaults.host})`],
  ['SCRUBLINE_DATA_DIR', `where scrubline keeps its ledger, keys, temp files and the local sink (default ${defaults.dataDir})`],
  ['SCRUBLINE_UPSTREAM_URL', 'render service to forward cleaned files to (http:// or https://), or s3://bucket/prefix to keep them in a bucket (endpoint, region and credentials as the AWS SDK reads them); unset = keep them in the data dir'],
  ['SCRUBLINE_DATABASE_URL', 'PostgreSQL ledger that several replicas share (postgres://…); unset = SQLite in the data dir'],
  ['SCRUBLINE_S3_SSE', 'server-side encryption asked of the bucket on every write: AES256 (default) or aws:kms'],
  ['SCRUBLINE_S3_FORCE_PATH_STYLE', 'true = address the bucket in the path, not the host name (MinIO, a server on an IP address; default false)'],
  ['SCRUBLINE_S3_KMS_KEY_ID', 'KMS key for SCRUBLINE_S3_SSE=aws:kms; unset = the bucket\'s default key'],
  ['SCRUBLINE_UPSTREAM_AUTHORIZATION', 'Authorization header value sent to an http(s) render service, e.g. "Bearer <token>"; credentials never go in SCRUBLINE_UPSTREAM_URL'],
  ['SCRUBLINE_UPSTREAM_TIMEOUT_MS', `how long the upstream may take to answer (default ${defaults.upstreamTimeoutMs})`],
  ['SCRUBLINE_FINGERPRINT_KEY', 'HMAC key for fingerprints, 32+ characters; unset = generated once and kept in the data dir'],
  ['SCRUBLINE_FFMPEG_PATH', 'ffmpeg binary; unset = ffmpeg on PATH, else the one shipped by @ffmpeg-installer/ffmpeg'],
  ['SCRUBLINE_FFPROBE_PATH', 'ffprobe binary; unset = ffprobe on PATH, else the one shipped by @ffprobe-installer/ffprobe'],
  ['SCRUBLINE_FFMPEG_TIMEOUT_MS', `wall-clock limit for one ffmpeg/ffprobe run (default ${defaults.ffmpegTimeoutMs})`],
  ['SCRUBLINE_MAX_UPLOAD_BYTES', `largest accepted file (default ${defaults.maxUploadBytes})`],
  ['SCRUBLINE_MAX_FILES', `most files in one upload (default ${defaults.maxFiles})`],
  ['SCRUBLINE_MAX_INPUT_PIXELS', `largest accepted image, width x height (default ${defaults.maxInputPixels})`],
  ['SCRUBLINE_API_TOKEN', 'bearer token every /v1/* request must carry, 32+ characters; several separated by commas are all valid (to rotate: add the new one, move clients, remove the old); unset = generated once and kept in <data dir>/api-token'],
  ['SCRUBLINE_STORAGE_KEY', 'key that encrypts every file, report and thumbnail scrubline stores (AES-256-GCM envelopes), 32 bytes as 64 hex digits or base64; unset = generated once into <data dir>/storage-key'],
  ['SCRUBLINE_STORAGE_OLD_KEYS', 'comma-separated earlier storage keys, kept for reading what they encrypted after a rotation'],
  ['SCRUBLINE_HEIF_DECODER_PATH', 'libheif decoder for HEIC previews; unset = heif-dec or heif-convert on PATH, else HEIC has no preview'],
  ['SCRUBLINE_TLS_CERT_FILE', 'PEM certificate chain: with SCRUBLINE_TLS_KEY_FILE, the service listens on HTTPS'],
  ['SCRUBLINE_TLS_KEY_FILE', 'PEM private key for SCRUBLINE_TLS_CERT_FILE'],
  ['SCRUBLINE_UPSTREAM_CA_FILE', 'PEM CA certificates an https:// upstream is verified against, beside the system CAs'],
  ['SCRUBLINE_UNFINISHED_JOB_CAP_HOURS', `longest a file may live while its job has not reported finished (default ${defaults.unfinishedJobCapHours})`],
  ['SCRUBLINE_SWEEP_INTERVAL_MS', `how often the service purges expired artefacts; 0 = never, run \`scrubline sweep\` instead (default ${defaults.sweepIntervalMs})`],
  ['SCRUBLINE_RECORD_RETENTION_DAYS', `how long fingerprints and crash records are kept (default ${defaults.recordRetentionDays})`],
  ['SCRUBLINE_MAX_CONCURRENT_UPLOADS', `uploads processed at once; more get 503 + Retry-After (default one per core, at least 2; here ${defaults.maxConcurrentUploads})`],
  ['SCRUBLINE_REQUEST_TIMEOUT_MS', `longest a request may take to arrive, body included; slower gets 408 (default ${defaults.requestTimeoutMs})`],
  ['SCRUBLINE_HEADERS_TIMEOUT_MS', `longest the request headers may take (default ${defaults.headersTimeoutMs})`],
  ['SCRUBLINE_BODY_IDLE_TIMEOUT_MS', `longest an upload's body may make no progress; then 408, partial file removed, slot freed (default ${defaults.bodyIdleTimeoutMs})`],
  ['SCRUBLINE_UPSTREAM_RETRIES', `further attempts after a render-service 5xx or refused connection, same Idempotency-Key (default ${defaults.upstreamRetries})`],
  ['SCRUBLINE_METRICS_PORT', 'serve /metrics on a listener of its own at this port (plain HTTP, for the scraper), and not on the API listener; unset = /metrics on the API listener'],
  ['SCRUBLINE_METRICS_HOST', `address the metrics listener binds (default ${defaults.metricsHost}; 0.0.0.0 for a scraper in another pod)`],
  ['SCRUBLINE_SHUTDOWN_DELAY_MS', `after SIGTERM, how long /readyz answers 503 while uploads are still taken, so the load balancer stops sending (default ${defaults.shutdownDelayMs})`],
  ['SCRUBLINE_SHUTDOWN_TIMEOUT_MS', `after that, how long requests in flight may finish before they are cut off and cleaned up (default ${defaults.shutdownTimeoutMs}); delay + timeout must fit the orchestrator's grace period`],
  ['SCRUBLINE_RESUMABLE_TTL_MS', `how long a resumable upload (/v1/resumable) may take from its creation; then its pieces are refused and swept (default ${defaults.resumableTtlMs}, at most ${maxResumableTtlMs})`],
  ['SCRUBLINE_RESUMABLE_MAX_OPEN', `resumable uploads open at once across replicas; more get 503 + Retry-After (default ${defaults.resumableMaxOpen})`],
  ['SCRUBLINE_RESUMABLE_MAX_BYTES', `bytes the open resumable uploads may declare in all, across replicas; more get 503 + Retry-After (default ${defaults.resumableMaxBytes})`],
  ['SCRUBLINE_TEMP_HEADROOM_BYTES', `free space in the temp dir's file system that uploads never reserve; an upload needs twice its size there, else 507 before its body is read (default ${defaults.tempHeadroomBytes})`],
  ['SCRUBLINE_LOG_LEVEL', `pino level: ${logLevels.join(', ')} (default ${defaults.logLevel})`],
];

/** The test suite's own switches (SCRUBLINE_TEST_*), which the service ignores. */
const testPrefix = 'SCRUBLINE_TEST_';

/**
 * A SCRUBLINE_* variable scrubline does not know is a mistake (`SCRUBLINE_PROT=9000` would
 * otherwise leave the port at its default, silently): each is named, with the closest known one.
 */
function unknownVariables(env: Env): string[] {
  const known = configVariables.map(([name]) => name);
  return Object.keys(env)
    .filter((name) => name.startsWith('SCRUBLINE_') && !name.startsWith(testPrefix) && !known.includes(name))
    .sort()
    .map((name) => {
      const closest = known.reduce((best, candidate) => (editDistance(name, candidate) < editDistance(name, best) ? candidate : best));
      const hint = editDistance(name, closest) <= Math.max(3, Math.floor(name.length / 4)) ? `; did you mean ${closest}?` : '';
      return `${name} is not a scrubline setting${hint} (scrubline --help lists them)`;
    });
}

/** Levenshtein distance: the fewest single-character edits from one name to the other. */
function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) current.push(Math.min(previous[j]! + 1, current[j - 1]! + 1, previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1)));
    previous = current;
  }
  return previous[b.length]!;
}
