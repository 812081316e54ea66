/**
 * A real service on loopback for the THREATS suites: startServer with a temp data dir and a
 * recording upstream, raw-socket requests, and the baseline every hostile case must leave.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { loadConfig } from '../src/config.js';
import { startServer, type RunningServer } from '../src/http/server.js';
import { createLogger } from '../src/log.js';
import { filesUnder, LogCapture, manifest, removeDir, startUpstream, tempDir, testToken } from './helpers.js';

export const planted = manifest.planted as Record<string, string | number>;
export const auth = { authorization: `Bearer ${testToken}` };

export interface Service {
  server: RunningServer;
  dataDir: string;
  logs: LogCapture;
  upstream: Awaited<ReturnType<typeof startUpstream>>;
  port: number;
}

export async function service(env: Record<string, string> = {}, dataDir?: string): Promise<Service> {
  dataDir ??= await tempDir();
  const logs = new LogCapture();
  const upstream = await startUpstream();
  const config = loadConfig({
    SCRUBLINE_DATA_DIR: dataDir,
    SCRUBLINE_PORT: '0',
    SCRUBLINE_HOST: '127.0.0.1',
    SCRUBLINE_API_TOKEN: testToken,
    SCRUBLINE_UPSTREAM_URL: upstream.url,
    SCRUBLINE_SWEEP_INTERVAL_MS: '0',
    SCRUBLINE_MAX_UPLOAD_BYTES: String(2 * 1024 * 1024),
    SCRUBLINE_MAX_FILES: '3',
    ...env,
  });
  const server = await startServer(config, createLogger('info', logs));
  return { server, dataDir, logs, upstream, port: Number(new URL(server.url).port) };
}

export async function stop(svc: Service): Promise<void> {
  await svc.server.close();
  await svc.upstream.close();
  await removeDir(svc.dataDir);
}

/** A multipart body from parts; `raw` lets a test write the part headers itself. */
export function multipart(boundary: string, parts: Array<{ name?: string; filename?: string; data: Buffer | string; raw?: string }>, close = true): Buffer {
  const chunks: Buffer[] = [];
  for (const p of parts) {
    const disposition = p.raw ?? `Content-Disposition: form-data${p.name !== undefined ? `; name="${p.name}"` : ''}${p.filename !== undefined ? `; filename="${p.filename}"` : ''}`;
    chunks.push(Buffer.from(`--${boundary}\r\n${disposition}\r\n\r\n`), Buffer.from(p.data), Buffer.from('\r\n'));
  }
  if (close) chunks.push(Buffer.from(`--${boundary}--\r\n`));
  return Buffer.concat(chunks);
}

/** One HTTP/1.1 request over a raw socket; resolves with the status (0 if the server hung up) and body. */
export function raw(port: number, head: string, body: Buffer | Buffer[] = Buffer.alloc(0), options: { gapMs?: number; abortAfter?: number } = {}): Promise<{ status: number; body: string; headers: string }> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    let response = '';
    socket.on('data', (d) => (response += d.toString('latin1')));
    socket.on('error', () => undefined);
    socket.on('close', () => {
      const [headers = '', text = ''] = response.split('\r\n\r\n');
      resolve({ status: Number(/^HTTP\/1\.1 (\d+)/.exec(headers)?.[1] ?? 0), body: text, headers });
    });
    socket.on('connect', async () => {
      socket.write(head);
      const pieces = Array.isArray(body) ? body : [body];
      for (const [i, piece] of pieces.entries()) {
        if (socket.destroyed) return;
        socket.write(piece);
        if (options.abortAfter !== undefined && i + 1 >= options.abortAfter) return void socket.destroy();
        if (options.gapMs) await delay(options.gapMs);
      }
    });
  });
}

export function uploadHead(port: number, boundary: string, length: number, extra = ''): string {
  return `POST /v1/uploads HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAuthorization: Bearer ${testToken}\r\nContent-Type: multipart/form-data; boundary=${boundary}\r\nContent-Length: ${length}\r\nConnection: close\r\n${extra}\r\n`;
}

export async function post(svc: Service, parts: Array<{ name?: string; filename?: string; data: Buffer | string; raw?: string }>, options: { close?: boolean; contentType?: string } = {}) {
  const boundary = 'scrublinetestboundary';
  const body = multipart(boundary, parts, options.close ?? true);
  const head = options.contentType
    ? `POST /v1/uploads HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${testToken}\r\nContent-Type: ${options.contentType}\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`
    : uploadHead(svc.port, boundary, body.length);
  const res = await raw(svc.port, head, body);
  return { ...res, json: (() => { try { return JSON.parse(res.body) as { error?: { code: string; message: string }; files?: Array<{ id: string; mime: string }> }; } catch { return {}; } })() };
}

/** The baseline every hostile case must leave behind. */
export async function baseline(svc: Service, forwardedBefore: number, secrets: string[] = []): Promise<void> {
  assert.deepEqual(await filesUnder(path.join(svc.dataDir, 'tmp')), [], 'upload temp dir is empty');
  assert.equal(svc.upstream.requests.length, forwardedBefore, 'nothing forwarded');
  const health = await fetch(`${svc.server.url}/healthz`);
  assert.equal(health.status, 200, 'process alive');
  for (const secret of [String(planted.artist), String(planted.filename), testToken, ...secrets]) assert.ok(!svc.logs.text.includes(secret), `logs contain ${secret}`);
}

