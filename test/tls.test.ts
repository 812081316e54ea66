/**
 * Encryption in transit (issue 17): the service on HTTPS with a certificate made here by openssl,
 * and an HTTPS upstream verified against a custom CA. Without the CA, nothing connects.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { copyFile, readFile, writeFile } from 'node:fs/promises';
import { connect } from 'node:tls';
import { createServer, type Server } from 'node:https';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { Agent, fetch } from 'undici';
import { loadConfig } from '../src/config.js';
import { ScrubError } from '../src/errors.js';
import { createLogger } from '../src/log.js';
import { startServer, type RunningServer } from '../src/http/server.js';
import { HttpForwarder } from '../src/steps/forward-http.js';
import { LogCapture, removeDir, tempDir, testToken } from './helpers.js';

const run = promisify(execFile);
let dir: string;
const file = (name: string): string => path.join(dir, name);

/** A CA, and a certificate it signed for 127.0.0.1. */
before(async () => {
  dir = await tempDir('scrubline-tls-');
  const openssl = (...args: string[]) => run('openssl', args, { cwd: dir });
  await openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1', '-subj', '/CN=scrubline test CA');
  await openssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1');
  await run('sh', ['-c', 'printf "subjectAltName=IP:127.0.0.1\\n" > san.ext'], { cwd: dir });
  await openssl('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.pem', '-days', '1', '-extfile', 'san.ext');
});
after(async () => {
  await removeDir(dir);
});

describe('encryption in transit', () => {
  let service: RunningServer;
  let dataDir: string;
  before(async () => {
    dataDir = await tempDir();
    const config = loadConfig({
      SCRUBLINE_DATA_DIR: dataDir,
      SCRUBLINE_PORT: '0',
      SCRUBLINE_HOST: '127.0.0.1',
      SCRUBLINE_API_TOKEN: testToken,
      SCRUBLINE_SWEEP_INTERVAL_MS: '0',
      SCRUBLINE_TLS_CERT_FILE: file('server.pem'),
      SCRUBLINE_TLS_KEY_FILE: file('server.key'),
    });
    service = await startServer(config, createLogger('info', new LogCapture()));
  });
  after(async () => {
    await service.close();
    await removeDir(dataDir);
  });

  it('the service listens on HTTPS with the configured certificate, and a client that does not trust it is refused', async () => {
    assert.match(service.url, /^https:\/\/127\.0\.0\.1:\d+$/);
    const trusting = new Agent({ connect: { ca: await readFile(file('ca.pem'), 'utf8') } });
    const res = await fetch(`${service.url}/healthz`, { dispatcher: trusting });
    assert.equal(res.status, 200);
    await assert.rejects(fetch(`${service.url}/healthz`), /fetch failed/);
    await assert.rejects(fetch(service.url.replace('https:', 'http:') + '/healthz'));
  });

  it('a half-configured TLS pair is a start-up error', () => {
    assert.throws(() => loadConfig({ SCRUBLINE_TLS_CERT_FILE: file('server.pem') }), /SCRUBLINE_TLS_CERT_FILE and SCRUBLINE_TLS_KEY_FILE go together/);
    assert.throws(() => loadConfig({ SCRUBLINE_UPSTREAM_CA_FILE: file('missing.pem') }), /SCRUBLINE_UPSTREAM_CA_FILE names a file that does not exist/);
  });

  it('an HTTPS upstream is verified: with its CA the files arrive, without it nothing is sent', async () => {
    let received = 0;
    const upstream: Server = createServer({ cert: await readFile(file('server.pem')), key: await readFile(file('server.key')) }, (req, res) => {
      req.resume();
      req.on('end', () => {
        received++;
        res.writeHead(201).end();
      });
    });
    await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
    const url = new URL(`https://127.0.0.1:${(upstream.address() as { port: number }).port}/jobs`);
    try {
      const withCa = new HttpForwarder(url, 5_000, 0, 10, { ca: await readFile(file('ca.pem'), 'utf8') });
      assert.deepEqual(await withCa.forward([], { jobId: 'job-1', retention: 'standard' }, 'upload-1'), { status: 201, destination: 'upstream' });
      assert.equal(received, 1);
      const withoutCa = new HttpForwarder(url, 5_000, 0, 10);
      const err = await withoutCa.forward([], { jobId: 'job-1', retention: 'standard' }, 'upload-2').catch((e: unknown) => e);
      assert.ok(err instanceof ScrubError && err.code === 'upstream_unreachable');
      assert.equal(received, 1, 'nothing reached an upstream whose certificate was not trusted');
    } finally {
      await new Promise((resolve) => upstream.close(resolve));
    }
  });
});

describe('a renewed certificate (issue 28)', () => {
  /** The subject CN of the certificate the service presents to a new connection. */
  const presented = (port: number): Promise<string> =>
    new Promise((resolve, reject) => {
      const socket = connect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => {
        resolve(String(socket.getPeerCertificate().subject.CN));
        socket.end();
      });
      socket.once('error', reject);
    });
  const issue = async (name: string, cn: string): Promise<void> => {
    const openssl = (...args: string[]) => run('openssl', args, { cwd: dir });
    await openssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`);
    await openssl('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.pem`, '-days', '1', '-extfile', 'san.ext');
  };
  const waitFor = async (port: number, cn: string): Promise<void> => {
    for (let i = 0; i < 100 && (await presented(port)) !== cn; i++) await new Promise((r) => setTimeout(r, 100));
    assert.equal(await presented(port), cn);
  };

  it('is used for new connections when its files change or on SIGHUP; a pair that does not match is refused and the old one stays', async () => {
    const dataDir = await tempDir();
    await issue('first', 'first.scrubline.test');
    await issue('second', 'second.scrubline.test');
    await issue('third', 'third.scrubline.test');
    const live = { cert: file('live.pem'), key: file('live.key') };
    await copyFile(file('first.pem'), live.cert);
    await copyFile(file('first.key'), live.key);
    const logs = new LogCapture();
    const service = await startServer(
      loadConfig({ SCRUBLINE_DATA_DIR: dataDir, SCRUBLINE_PORT: '0', SCRUBLINE_HOST: '127.0.0.1', SCRUBLINE_API_TOKEN: testToken, SCRUBLINE_SWEEP_INTERVAL_MS: '0', SCRUBLINE_TLS_CERT_FILE: live.cert, SCRUBLINE_TLS_KEY_FILE: live.key }),
      createLogger('info', logs),
    );
    const port = Number(new URL(service.url).port);
    try {
      assert.equal(await presented(port), 'first.scrubline.test');
      // Renewed in place, as cert-manager or certbot does: the new pair is picked up by itself.
      await copyFile(file('second.key'), live.key);
      await copyFile(file('second.pem'), live.cert);
      await waitFor(port, 'second.scrubline.test');
      assert.match(logs.text, /"reason":"file changed".*TLS certificate reloaded/);
      // A certificate whose key is another's: refused, and the one in use stays.
      await writeFile(live.cert, await readFile(file('third.pem')));
      for (let i = 0; i < 100 && !logs.text.includes('TLS certificate not reloaded'); i++) await new Promise((r) => setTimeout(r, 100));
      assert.match(logs.text, /TLS certificate not reloaded/);
      assert.equal(await presented(port), 'second.scrubline.test');
      // Files replaced without a change the poll can see, then SIGHUP: read again at once.
      await copyFile(file('third.key'), live.key);
      process.kill(process.pid, 'SIGHUP');
      await waitFor(port, 'third.scrubline.test');
      assert.match(logs.text, /"reason":"SIGHUP".*TLS certificate reloaded/);
      assert.doesNotMatch(logs.text, /BEGIN (RSA |)PRIVATE KEY/, 'no key material in the logs');
    } finally {
      await service.close();
      await removeDir(dataDir);
    }
  });
});
