#!/usr/bin/env node
// The container's health check: GET /healthz on this process's own port, over HTTPS when the
// service has a certificate (SCRUBLINE_TLS_CERT_FILE), which is its own and not checked here:
// the question is "is the process answering", not "is the certificate trusted". Exit 0 or 1.
import { request as http } from 'node:http';
import { request as https } from 'node:https';

const port = Number(process.env.SCRUBLINE_PORT ?? 8080);
const tls = Boolean(process.env.SCRUBLINE_TLS_CERT_FILE);
const req = (tls ? https : http)({ host: '127.0.0.1', port, path: '/healthz', timeout: 5_000, rejectUnauthorized: false }, (res) => {
  res.resume();
  process.exit(res.statusCode === 200 ? 0 : 1);
});
req.on('timeout', () => req.destroy());
req.on('error', () => process.exit(1));
req.end();
