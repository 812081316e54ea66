/**
 * Prometheus metrics (prom-client), served at GET /metrics. One registry per app, so tests and
 * embedders can build several. No label ever carries an id, a name or a value: outcomes, media
 * families, error codes, pipeline stages and artefact kinds are all closed vocabularies.
 */
import type { Server } from 'node:http';
import type { RequestHandler } from 'express';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { TimedStage } from '../pipeline.js';
import { http } from './node-http.js';

export type Stage = TimedStage | 'forward';

export class Metrics {
  readonly registry = new Registry();
  readonly uploads = new Counter({
    name: 'scrubline_uploads_total',
    help: 'Files by outcome (forwarded, rejected, failed) and media family',
    labelNames: ['outcome', 'family'] as const,
    registers: [this.registry],
  });
  readonly rejections = new Counter({
    name: 'scrubline_rejections_total',
    help: 'Requests answered with an error, by error code',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });
  readonly bytes = new Counter({
    name: 'scrubline_bytes_total',
    help: 'Bytes of cleaned files handed on (direction="out")',
    labelNames: ['direction'] as const,
    registers: [this.registry],
  });
  readonly stageSeconds = new Histogram({
    name: 'scrubline_stage_duration_seconds',
    help: 'Time spent in each pipeline stage, per file (receive and forward: per upload)',
    labelNames: ['stage'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120],
    registers: [this.registry],
  });
  readonly upstream = new Counter({
    name: 'scrubline_upstream_attempts_total',
    help: 'HTTP attempts to the render service by outcome (ok, retried, rejected, unreachable, timeout)',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  });
  readonly swept = new Counter({
    name: 'scrubline_sweeper_purged_total',
    help: 'Artefacts purged by the sweeper, by kind',
    labelNames: ['kind'] as const,
    registers: [this.registry],
  });
  readonly orphans = new Counter({ name: 'scrubline_sweeper_orphans_total', help: 'Orphan files removed by the sweeper', registers: [this.registry] });
  readonly inFlight = new Gauge({ name: 'scrubline_uploads_in_flight', help: 'Uploads being received, cleaned or forwarded now', registers: [this.registry] });
  readonly sweepSuccess = new Gauge({
    name: 'scrubline_sweeper_last_success_timestamp_seconds',
    help: 'When the service\'s sweeper last finished a round without error (Unix time; 0 = not yet)',
    registers: [this.registry],
  });
  readonly sweepFailures = new Counter({ name: 'scrubline_sweeper_failures_total', help: 'Sweeper rounds that failed (retention is not being enforced while they do)', registers: [this.registry] });
  readonly dependencyErrors = new Counter({
    name: 'scrubline_dependency_errors_total',
    help: 'Failed requests to the ledger\'s database (connect, query) and the bucket (put, get, delete, list)',
    labelNames: ['dependency', 'operation'] as const,
    registers: [this.registry],
  });
  readonly httpSeconds = new Histogram({
    name: 'scrubline_http_request_duration_seconds',
    help: 'Time to answer each request, by route pattern and status class (2xx, 4xx, 5xx)',
    labelNames: ['route', 'status'] as const,
    buckets: [0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120, 600],
    registers: [this.registry],
  });
  /** Set by the app from its TempSpace (free space is read at each scrape). */
  readonly tempFree = new Gauge({ name: 'scrubline_temp_free_bytes', help: 'Free bytes on the file system of the temp dir, as this process may use them', registers: [this.registry] });
  readonly tempReserved = new Gauge({ name: 'scrubline_temp_reserved_bytes', help: 'Temp-dir bytes reserved by uploads in flight (twice each upload\'s size)', registers: [this.registry] });
  readonly resumableOpen = new Gauge({ name: 'scrubline_resumable_uploads_open', help: 'Resumable uploads started and not yet finished, terminated or expired (all replicas)', registers: [this.registry] });
  readonly resumableBytes = new Gauge({ name: 'scrubline_resumable_declared_bytes', help: 'Bytes the open resumable uploads declared (all replicas)', registers: [this.registry] });
  readonly buildInfo = new Gauge({ name: 'scrubline_build_info', help: 'Always 1: the version running, and the Node.js it runs on', labelNames: ['version', 'node'] as const, registers: [this.registry] });

  constructor(version = 'unknown') {
    collectDefaultMetrics({ register: this.registry, prefix: 'scrubline_' });
    this.buildInfo.set({ version, node: process.versions.node }, 1);
    this.sweepSuccess.set(0);
    // Zero series for each dependency and operation, so an alert on their rate has a baseline.
    for (const operation of ['connect', 'query']) this.dependencyErrors.inc({ dependency: 'ledger', operation }, 0);
    for (const operation of ['put', 'get', 'delete', 'list']) this.dependencyErrors.inc({ dependency: 'bucket', operation }, 0);
  }

  /**
   * Times every request once its answer is done (or the client is gone), labelled by the route's
   * pattern (`/v1/files/:id`, never the id) and its status class.
   */
  timing(): RequestHandler {
    const histogram = this.httpSeconds;
    return function timeRequests(req, res, next) {
      const started = performance.now();
      res.once('close', () => {
        const pattern = (req.route as { path?: unknown } | undefined)?.path;
        const route = typeof pattern === 'string' ? `${req.baseUrl}${pattern}` : 'unmatched';
        histogram.observe({ route, status: `${Math.floor(res.statusCode / 100)}xx` }, (performance.now() - started) / 1000);
      });
      next();
    };
  }

  /** Reads run before each scrape (free temp space, open resumable uploads); a failing one leaves its gauge as it was. */
  private readonly scrapeReads: Array<() => Promise<void>> = [];

  onScrape(read: () => Promise<void>): void {
    this.scrapeReads.push(read);
  }

  /** The exposition text, after the scrape-time reads. */
  async text(): Promise<string> {
    await Promise.allSettled(this.scrapeReads.map((read) => read()));
    return this.registry.metrics();
  }

  observe(stage: Stage, seconds: number): void {
    this.stageSeconds.observe({ stage }, seconds);
  }

  /** GET /metrics as an Express route. */
  handler(): RequestHandler {
    const { registry } = this;
    return async (_req, res) => {
      res.type(registry.contentType).send(await this.text());
    };
  }

  /**
   * A plain-HTTP listener that answers GET /metrics and nothing else (THREATS 53: upload counts and
   * bytes are not for the API's clients). Prometheus exporters do the same: a port of their own,
   * which the network policy opens to the scraper only.
   */
  async listen(port: number, host: string): Promise<Server> {
    const { registry } = this;
    const server = http.createServer((req, res) => {
      if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
        res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":{"code":"not_found","message":"This listener serves GET /metrics only."}}');
        return;
      }
      this.text().then(
        (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
        () => res.writeHead(500).end(),
      );
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve());
    });
    return server;
  }
}
