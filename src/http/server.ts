/**
 * The service: read config once, build the parts, sweep what a previous run left in the temp
 * dir, listen, and shut down cleanly on SIGTERM/SIGINT.
 */
import { readFileSync, unwatchFile, watchFile, type Stats } from 'node:fs';
import { createRequire } from 'node:module';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Server as HttpsServer } from 'node:https';
import { createSecureContext } from 'node:tls';
import type { Duplex } from 'node:stream';
import path from 'node:path';
import type { Logger } from 'pino';
import { setTimeout as sleep } from 'node:timers/promises';
import { buildApp, type Lifecycle } from './app.js';
import { http, https } from './node-http.js';
import type { Config } from '../config.js';
import { ScrubError } from '../errors.js';
import { loadApiToken, loadFingerprintKey, loadStorageKeys } from '../storage/keys.js';
import { Metrics } from './metrics.js';
import { sweep } from '../retention/sweeper.js';
import { isBucketUrl, openStorage, type Storage } from '../storage/open.js';
import { keepingStore } from '../storage/objects.js';
import { createLogger } from '../log.js';
import type { Forwarder } from '../steps/forward.js';
import { HttpForwarder } from '../steps/forward-http.js';
import { StoreSink } from '../steps/forward-store.js';
import { emptyTempDir } from '../steps/receive.js';
import { killOrphans, loadFfmpeg, stopAll } from '../tools/ffmpeg.js';
import { findHeifDecoder } from '../tools/heif.js';
import { Previews } from './previews.js';
import { poolIdleMs, pooledBytes, trimPool } from '../buffers.js';
import { lockDataDir } from '../storage/lock.js';
import { canCollect, collectAll } from '../gc.js';

export interface RunningServer {
  server: Server;
  url: string;
  /** The metrics listener's URL, when /metrics has one of its own. */
  metricsUrl: string | undefined;
  /** Stops at once: the listener, the sweeper, tools, previews, then the ledger. */
  close(): Promise<void>;
  /** SIGTERM's orderly stop: not ready, drain up to the configured limit, then close(). */
  shutdown(signal: string): Promise<void>;
}

const { version } = createRequire(import.meta.url)('../../package.json') as { version: string };

const isLoopback = (host: string): boolean => host === 'localhost' || host === '::1' || host === '[::1]' || host.startsWith('127.');

export async function startServer(config: Config, logger: Logger = createLogger(config.logLevel)): Promise<RunningServer> {
  const tmpDir = path.join(config.dataDir, 'tmp');
  // Everything this process and its tools create is private from its first byte: an original, a
  // cleaned video ffmpeg is still writing, a decoded frame (a SIGKILL leaves them as they are).
  process.umask(0o077);
  // Before the temp dir is emptied: a second process on this data dir must not empty it under
  // the first one's live uploads.
  const lock = lockDataDir(config.dataDir);
  try {
    return await startLocked(config, logger, tmpDir, lock.release);
  } catch (err) {
    lock.release();
    throw err;
  }
}

async function startLocked(config: Config, logger: Logger, tmpDir: string, unlock: () => void): Promise<RunningServer> {
  // A previous run killed with -9 may have left ffmpeg working on originals: stop those first.
  const orphans = await killOrphans(tmpDir);
  if (orphans > 0) logger.warn({ processes: orphans }, 'killed ffmpeg/ffprobe runs left by a previous process');
  // Originals from a crashed run must not survive it: the temp dir is emptied before serving.
  const swept = emptyTempDir(tmpDir) + Previews.emptyPendingDir(config.dataDir);
  if (swept > 0) logger.warn({ entries: swept }, 'removed uploads and held previews left by a previous run');
  const ffmpeg = await loadFfmpeg(config);
  if (ffmpeg.ffmpeg.source === 'npm') {
    logger.warn({ version: ffmpeg.ffmpegVersion }, 'using the ffmpeg build shipped on npm (2018); set SCRUBLINE_FFMPEG_PATH to a current ffmpeg');
  }
  // Made first: the ledger's and the bucket's failures are counted from their first request.
  const metrics = new Metrics(version);
  const storage = await openStorage(config, {
    ledger: (operation) => metrics.dependencyErrors.inc({ dependency: 'ledger', operation }),
    bucket: (operation) => metrics.dependencyErrors.inc({ dependency: 'bucket', operation }),
  });
  const { ledger, stores } = storage;
  const fingerprintKey = loadFingerprintKey(config.dataDir, config.fingerprintKey);
  const api = loadApiToken(config.dataDir, config.apiTokens[0]);
  const keys = loadStorageKeys(config.dataDir, config.storageKey, config.storageOldKeys);
  const heifDecoder = findHeifDecoder(config.heifDecoderPath);
  logger.info({ heifDecoder: heifDecoder ? { path: heifDecoder.path, source: heifDecoder.source } : 'none' }, heifDecoder ? 'HEIC previews by libheif' : 'no libheif decoder found: HEIC uploads get no preview');
  // Where to find the token, never the token itself.
  if (api.file) logger.info({ tokenFile: api.file, generated: api.generated }, 'API token for /v1 requests is in this file (Authorization: Bearer <token>)');
  // The render service over HTTP, or a store scrubline keeps: the bucket, else the data dir.
  const forwarder: Forwarder =
    config.upstreamUrl !== undefined && !isBucketUrl(config.upstreamUrl)
      ? new HttpForwarder(config.upstreamUrl, config.upstreamTimeoutMs, config.upstreamRetries, 250, {
          onAttempt: (outcome) => metrics.upstream.inc({ outcome }),
          ca: config.upstreamCaFile === undefined ? undefined : readFileSync(config.upstreamCaFile, 'utf8'),
          authorization: config.upstreamAuthorization,
        })
      : new StoreSink(keepingStore(stores), keys);

  const app = buildApp({
    logger,
    dataDir: config.dataDir,
    forwarder,
    ledger,
    stores,
    tools: ffmpeg,
    heifDecoder,
    storage: keys,
    apiTokens: config.apiTokens.length > 0 ? config.apiTokens : [api.token],
    unfinishedJobCapHours: config.unfinishedJobCapHours,
    recordRetentionDays: config.recordRetentionDays,
    maxConcurrentUploads: config.maxConcurrentUploads,
    resumableTtlMs: config.resumableTtlMs,
    resumableMaxOpen: config.resumableMaxOpen,
    resumableMaxBytes: config.resumableMaxBytes,
    tempHeadroomBytes: config.tempHeadroomBytes,
    metrics,
    serveMetrics: config.metricsPort === undefined,
    scrubline: {
      tmpDir,
      fingerprintKey,
      maxUploadBytes: config.maxUploadBytes,
      maxFiles: config.maxFiles,
      maxInputPixels: config.maxInputPixels,
      ffmpegPath: ffmpeg.ffmpeg.path,
      ffprobePath: ffmpeg.ffprobe.path,
      ffmpegTimeoutMs: config.ffmpegTimeoutMs,
      bodyIdleTimeoutMs: config.bodyIdleTimeoutMs,
      abandonedSweepIntervalMs: 60_000,
    },
  });

  // In transit: HTTPS when a certificate is configured; the files and tokens cross the network.
  const tlsOptions = config.tlsCertFile && config.tlsKeyFile ? { cert: readFileSync(config.tlsCertFile), key: readFileSync(config.tlsKeyFile) } : undefined;
  const server: Server = tlsOptions ? https.createServer(tlsOptions, app) : http.createServer(app);
  const tlsReload = tlsOptions && config.tlsCertFile && config.tlsKeyFile ? watchCertificate(server as HttpsServer, config.tlsCertFile, config.tlsKeyFile, logger) : undefined;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.port, config.host, () => resolve());
  }).catch(async (err: unknown) => {
    // A database pool left open would keep a failed start from exiting.
    await storage.close();
    throw err;
  });
  if (!tlsOptions && !isLoopback(config.host)) logger.warn({ host: config.host }, 'listening on plain HTTP beyond loopback: set SCRUBLINE_TLS_CERT_FILE and SCRUBLINE_TLS_KEY_FILE, or terminate TLS in front');
  // Keys generated into one replica's data dir differ from the next one's: what A stored, B could
  // not open, and their fingerprints would not agree. Names of variables only, never values.
  const generated = [
    ['SCRUBLINE_STORAGE_KEY', config.storageKey],
    ['SCRUBLINE_FINGERPRINT_KEY', config.fingerprintKey],
    ['SCRUBLINE_API_TOKEN', config.apiTokens[0]],
  ].filter(([, value]) => value === undefined).map(([name]) => name);
  if (config.databaseUrl !== undefined && generated.length > 0) {
    logger.warn({ unset: generated }, 'a shared PostgreSQL ledger with keys generated into this data dir: set these to the same values on every replica, or replicas cannot read each other\'s files');
  }
  if (config.databaseUrl !== undefined && !isBucketUrl(config.upstreamUrl)) {
    logger.warn('a shared PostgreSQL ledger, but thumbnails (and files, without an upstream) stay in this replica\'s data dir: other replicas cannot serve or purge them; set SCRUBLINE_UPSTREAM_URL=s3://bucket/prefix');
  }
  if (config.upstreamUrl?.protocol === 'http:' && !isLoopback(config.upstreamUrl.hostname)) {
    logger.warn({ upstream: config.upstreamUrl.host }, 'the render service is reached over plain HTTP on a non-loopback address: cleaned files cross the network unencrypted');
  }
  // A body that trickles in past requestTimeout gets 408 and the connection is closed; multer
  // then sees the abort and the partial file is removed with its upload dir.
  server.requestTimeout = config.requestTimeoutMs;
  server.headersTimeout = config.headersTimeoutMs;
  const poolWatch = setInterval(trimIdlePool, idleTrimMs / 4).unref();
  const responses = new WeakMap<Duplex, ServerResponse>();
  /** Requests not yet answered (or abandoned): what a shutdown waits for. */
  const inFlight = new Set<ServerResponse>();
  let drained: (() => void) | undefined;
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    responses.set(req.socket, res);
    inFlight.add(res);
    res.once('close', () => {
      inFlight.delete(res);
      if (inFlight.size === 0) drained?.();
      // A kept-alive connection's next request has no response until its headers are in.
      if (responses.get(req.socket) === res) responses.delete(req.socket);
      // The cap's 503s read no body and leave nothing behind; under load they come by the hundred.
      if (res.statusCode !== 503) releaseDeadBuffers();
    });
  });
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => answerClientError(err, socket, responses.get(socket)));
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : config.port;
  const url = `${tlsOptions ? 'https' : 'http'}://${config.host === '0.0.0.0' ? '127.0.0.1' : config.host}:${port}`;
  logger.info(
    { url, destination: forwarder instanceof StoreSink ? forwarder.store.destination : 'upstream', ledger: ledger.engine, ffmpeg: { version: ffmpeg.ffmpegVersion, source: ffmpeg.ffmpeg.source } },
    'scrubline listening',
  );

  const metricsServer = config.metricsPort === undefined ? undefined : await metrics.listen(config.metricsPort, config.metricsHost).catch(async (err: unknown) => {
    server.close();
    await storage.close();
    throw err;
  });
  const metricsAddress = metricsServer?.address();
  if (metricsAddress && typeof metricsAddress === 'object') logger.info({ host: config.metricsHost, port: metricsAddress.port }, 'metrics on a listener of their own');
  const sweeper = config.sweepIntervalMs > 0 ? startSweeper(storage, config.dataDir, config.sweepIntervalMs, logger, metrics) : undefined;

  /**
   * SIGTERM's orderly stop: /readyz answers 503 at once (the load balancer stops sending); after
   * `shutdownDelayMs`, requests on connections still open are refused and the listener closes;
   * requests in flight get `shutdownTimeoutMs` to finish, then their connections are cut (an
   * upload cut off removes its files as any aborted one does); then everything closes as below.
   */
  let stopping: Promise<void> | undefined;
  const lifecycle = app.locals.lifecycle as Lifecycle;
  const shutdown = (signal: string): Promise<void> =>
    (stopping ??= (async () => {
      lifecycle.draining = true;
      logger.info({ signal, inFlight: inFlight.size, delayMs: config.shutdownDelayMs, timeoutMs: config.shutdownTimeoutMs }, 'shutdown started: not ready, draining');
      await sleep(config.shutdownDelayMs);
      lifecycle.refusing = true;
      sweeper?.stop();
      server.close();
      server.closeIdleConnections();
      const waiting = inFlight.size;
      const finished = await Promise.race([
        new Promise<boolean>((resolve) => {
          drained = () => resolve(true);
          if (inFlight.size === 0) resolve(true);
        }),
        // Unreferenced: once the requests are done, this timer must not hold the process.
        sleep(config.shutdownTimeoutMs, false, { ref: false }),
      ]);
      const cutOff = inFlight.size;
      if (!finished) server.closeAllConnections();
      logger.info({ waited: waiting, finished: waiting - cutOff, cutOff }, finished ? 'shutdown: requests in flight finished' : 'shutdown: requests still in flight were cut off at the time limit');
      await close();
      logger.info('shutdown finished');
    })());

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> =>
    (closing ??= new Promise<void>((resolve) => {
      sweeper?.stop();
      tlsReload?.stop();
      clearInterval(poolWatch);
      server.close(() => resolve());
      server.closeIdleConnections();
      metricsServer?.close();
      stopAll();
    })
      // Previews still being made finish (or fail, their tools stopped) before the ledger closes.
      .then(() => (app.locals.previews as Previews).settled())
      .then(() => storage.close())
      .finally(unlock));
  return { server, url, metricsUrl: metricsAddress && typeof metricsAddress === 'object' ? `http://${config.metricsHost}:${metricsAddress.port}` : undefined, close, shutdown };
}

/**
 * Node answers a request that timed out or is not valid HTTP with a bare status line; ours says
 * what went wrong and what to do, in the JSON every other error has. Only when no byte of a
 * response went out on the connection yet (as Node does); the connection is closed either way.
 */
function answerClientError(err: NodeJS.ErrnoException, socket: Duplex, current: ServerResponse | undefined): void {
  if (socket.writable && !current?.headersSent) {
    const [status, error] =
      err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? [408, new ScrubError('request_timeout', 'The request did not arrive within the time limit, so it was dropped and nothing was kept. Send it again, faster or smaller.')]
        : err.code === 'HPE_HEADER_OVERFLOW'
          ? [431, new ScrubError('bad_request', 'The request headers are larger than the server accepts. Send smaller headers.')]
          : [400, new ScrubError('bad_request', 'The request is not valid HTTP/1.1. Check the client.')];
    const body = JSON.stringify(error);
    socket.write(
      `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
    );
  }
  socket.destroy(err);
}

/**
 * A renewed certificate is taken without a restart: when the certificate or key file changes
 * (polled, so a Kubernetes secret's symlink swap is seen too) or on SIGHUP, both are read again,
 * and used for new connections only if they form a valid pair; otherwise the old pair stays and
 * the error is logged. Connections already open keep theirs.
 */
function watchCertificate(server: HttpsServer, certFile: string, keyFile: string, logger: Logger): { stop(): void } {
  const reload = (reason: string): void => {
    try {
      const pair = { cert: readFileSync(certFile), key: readFileSync(keyFile) };
      createSecureContext(pair); // throws on a key that does not match, or a file that is not PEM
      server.setSecureContext(pair);
      logger.info({ reason, certFile }, 'TLS certificate reloaded');
    } catch (err) {
      logger.error({ reason, certFile, err: err instanceof Error ? { type: err.name, message: err.message } : undefined }, 'TLS certificate not reloaded: the files do not form a valid pair; the previous certificate stays in use');
    }
  };
  // A certificate and its key are rarely written at the same instant: wait for both to settle.
  let pending: NodeJS.Timeout | undefined;
  const changed = (current: Stats, previous: Stats): void => {
    if (current.mtimeMs === previous.mtimeMs && current.ino === previous.ino && current.size === previous.size) return;
    clearTimeout(pending);
    pending = setTimeout(() => reload('file changed'), 500).unref();
  };
  for (const file of [certFile, keyFile]) watchFile(file, { interval: 1_000, persistent: false }, changed);
  const onHangup = (): void => reload('SIGHUP');
  process.on('SIGHUP', onHangup);
  return {
    stop: () => {
      clearTimeout(pending);
      for (const file of [certFile, keyFile]) unwatchFile(file, changed);
      process.off('SIGHUP', onHangup);
    },
  };
}

/** The in-service purge: one sweep at a time, on an interval that never keeps the process alive. */
function startSweeper(storage: Storage, dataDir: string, intervalMs: number, logger: Logger, metrics: Metrics): { stop(): void } {
  let running = false;
  const run = async (): Promise<void> => {
    if (running) return;
    running = true;
    try {
      const report = await sweep({ ledger: storage.ledger, bucket: storage.bucket, dataDir, at: new Date() });
      metrics.sweepSuccess.set(Date.now() / 1000);
      for (const [kind, n] of Object.entries(report.purged)) if (n > 0) metrics.swept.inc({ kind }, n);
      metrics.orphans.inc(report.orphans);
      if (report.ids.length > 0 || report.orphans > 0 || report.partialUploads > 0 || report.staleMultipartUploads > 0) {
        const { purged, orphans, partialUploads, staleMultipartUploads } = report;
        logger.info({ purged, orphans, partialUploads, staleMultipartUploads }, 'sweep purged expired artefacts');
      }
      if (report.partialUploads > 0) metrics.swept.inc({ kind: 'partial' }, report.partialUploads);
      if (report.skipped.length > 0) logger.error({ skipped: report.skipped }, 'sweep skipped ledger rows that name objects scrubline does not store (or a store not configured here); fix or remove those rows');
    } catch (err) {
      metrics.sweepFailures.inc();
      logger.error({ err: err instanceof Error ? { type: err.name, message: err.message } : undefined }, 'sweep failed; it will run again');
    } finally {
      running = false;
    }
  };
  const timer = setInterval(() => void run(), intervalMs);
  timer.unref();
  void run();
  return { stop: () => clearInterval(timer) };
}

/**
 * An upload's request chunks and per-request objects outlive several young-generation
 * collections (an upload takes a hundred ms or more under load), so they are only freed by a full
 * collection, which V8 schedules late: after ~64 MiB of dead external memory, or once the old
 * generation reaches its initial size (64 MiB in bin/serve.sh, where V8's own schedule marked ~18
 * times a second). When the process runs with --expose-gc (bin/serve.sh), a processed request
 * that ends with more than `deadSlackBytes` of either (external memory beyond the pooled read
 * buffers, heap grown since the last collection) triggers that collection at once (~15 ms on a
 * heap of ~20 MiB on a quiet machine, ~60 ms under load with both cores busy: --trace-gc), at
 * most every `minCollectionGapMs`. Without the flag, nothing happens.
 * Measured with `npm run load` (2 cores): peak RSS 171-192 MiB without, ~130-140 MiB with.
 * Looking every 250 ms while a request is in flight too was tried (issue 30): a video upload took
 * ~15 % longer and photos/s fell ~5 %, for at most a few MiB less in the resumable phase only.
 * Collecting after every request (no slack, no gap) was tried too: photo-phase peak RSS ~151 MiB
 * against ~161, for 10-15 % fewer photos/s. An 8 MiB slack (16 before, issue 30): photo-phase
 * peak 141-144 MiB against 148-153, photos/s 12.1-13.7 against 12.6-14.8 (five runs each in
 * turns, the rest of the test alike); 4 MiB went to 139-140 but photos/s fell (11.7-12.7).
 */
const deadSlackBytes = 8 * 1024 * 1024;
const minCollectionGapMs = 250;
let lastCollection = 0;
/** The heap as the last collection left it: what it has grown by since is garbage, mostly. */
let heapAfterCollection = 0;

/**
 * The read buffers kept for the next photo are let go once none has been lent or given back for
 * this long (and collected at once, with --expose-gc): a quiet service, or one receiving videos or
 * tus PATCHes (whose requests end every few seconds), holds none of them.
 */
const idleTrimMs = 2000;

function trimIdlePool(): void {
  if (poolIdleMs() >= idleTrimMs && trimPool() > 0) collectNow();
}

function releaseDeadBuffers(): void {
  if (!canCollect() || performance.now() - lastCollection < minCollectionGapMs) return;
  // The buffers pooled for image reads are external memory too, and alive.
  const { external, heapUsed } = process.memoryUsage();
  if (external - pooledBytes() + Math.max(0, heapUsed - heapAfterCollection) <= deadSlackBytes) return;
  collectNow();
}

function collectNow(): void {
  if (!canCollect()) return;
  lastCollection = performance.now();
  collectAll();
  heapAfterCollection = process.memoryUsage().heapUsed;
}
