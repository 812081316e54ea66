/**
 * Issue 28: the Kubernetes manifests in deploy/kubernetes/ are valid against the Kubernetes
 * schemas (kubernetes-models), and say what docs/operations.md says: probes on the service's own
 * routes, a grace period above the shutdown's delay and drain limit, non-root and a read-only root,
 * a sized emptyDir for uploads in flight, secrets by reference, metrics on a port of their own.
 */
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import { Deployment } from 'kubernetes-models/apps/v1/Deployment';
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1/NetworkPolicy';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget';
import { Service } from 'kubernetes-models/v1/Service';
import { parseAllDocuments } from 'yaml';
import { defaults, loadConfig } from '../src/config.js';
import { root } from './helpers.js';

const dir = path.join(root, 'deploy', 'kubernetes');

async function manifests(): Promise<Array<Record<string, unknown> & { kind: string; apiVersion: string }>> {
  const out: Array<Record<string, unknown> & { kind: string; apiVersion: string }> = [];
  for (const name of (await readdir(dir)).filter((n) => n.endsWith('.yaml')).sort()) {
    for (const doc of parseAllDocuments(await readFile(path.join(dir, name), 'utf8'))) {
      assert.deepEqual(doc.errors, [], name);
      out.push(doc.toJSON() as Record<string, unknown> & { kind: string; apiVersion: string });
    }
  }
  return out;
}

const models: Record<string, new (data: never) => { validate(): void }> = {
  'apps/v1/Deployment': Deployment,
  'v1/Service': Service,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
  'networking.k8s.io/v1/NetworkPolicy': NetworkPolicy,
};

describe('Kubernetes manifests (issue 28)', () => {
  it('each is valid against its Kubernetes schema', async () => {
    const all = await manifests();
    assert.deepEqual(all.map((m) => m.kind).sort(), ['Deployment', 'NetworkPolicy', 'PodDisruptionBudget', 'Service']);
    for (const manifest of all) {
      const Model = models[`${manifest.apiVersion}/${manifest.kind}`];
      assert.ok(Model, `${manifest.apiVersion} ${manifest.kind} is a known kind`);
      assert.doesNotThrow(() => new Model(manifest as never).validate(), `${manifest.kind}`);
    }
    // The schemas are checked for real: a wrong type is refused.
    const deployment = all.find((m) => m.kind === 'Deployment')!;
    const broken = structuredClone(deployment) as unknown as { spec: { replicas: unknown } };
    broken.spec.replicas = 'two';
    assert.throws(() => new Deployment(broken as never).validate());
  });

  it('the Deployment says what the operations guide says', async () => {
    const all = await manifests();
    type Container = {
      ports: Array<{ name: string; containerPort: number }>;
      env: Array<{ name: string; value?: string; valueFrom?: { secretKeyRef?: { name: string; key: string } } }>;
      readinessProbe: { httpGet: { path: string; port: string } };
      livenessProbe: { httpGet: { path: string; port: string } };
      resources: { requests: Record<string, string>; limits: Record<string, string> };
      securityContext: { allowPrivilegeEscalation: boolean; readOnlyRootFilesystem: boolean; capabilities: { drop: string[] } };
      volumeMounts: Array<{ name: string; mountPath: string }>;
    };
    const deployment = all.find((m) => m.kind === 'Deployment') as unknown as {
      metadata: { labels: Record<string, string> };
      spec: {
        replicas: number;
        template: {
          metadata: { labels: Record<string, string> };
          spec: {
            terminationGracePeriodSeconds: number;
            securityContext: { runAsNonRoot: boolean; runAsUser: number };
            containers: Container[];
            volumes: Array<{ name: string; emptyDir?: { sizeLimit?: string } }>;
          };
        };
      };
    };
    const pod = deployment.spec.template.spec;
    const container = pod.containers[0]!;
    const env = Object.fromEntries(container.env.map((e) => [e.name, e]));

    assert.ok(deployment.spec.replicas >= 2, 'replicas, which the ledger and bucket make possible');
    assert.equal(container.readinessProbe.httpGet.path, '/readyz');
    assert.equal(container.livenessProbe.httpGet.path, '/healthz');
    assert.equal(container.readinessProbe.httpGet.port, 'http');
    // The grace period covers the shutdown's delay and drain limit as configured here.
    const config = loadConfig(Object.fromEntries(container.env.map((e) => [e.name, e.value ?? (e.name.includes('KEY') ? 'a'.repeat(64) : 't'.repeat(40))]).filter(([name]) => name!.startsWith('SCRUBLINE_'))));
    assert.ok(pod.terminationGracePeriodSeconds * 1000 > config.shutdownDelayMs + config.shutdownTimeoutMs, 'grace above delay + drain');
    assert.equal(config.shutdownDelayMs + config.shutdownTimeoutMs, defaults.shutdownDelayMs + defaults.shutdownTimeoutMs);
    // Every variable is one scrubline knows (loadConfig refuses any other), secrets only by reference.
    for (const name of ['SCRUBLINE_API_TOKEN', 'SCRUBLINE_STORAGE_KEY', 'SCRUBLINE_FINGERPRINT_KEY', 'PGPASSWORD']) {
      assert.ok(env[name]?.valueFrom?.secretKeyRef, `${name} comes from a Secret`);
      assert.equal(env[name]?.value, undefined);
    }
    assert.ok(config.databaseUrl && config.upstreamUrl?.protocol === 's3:', 'PostgreSQL and a bucket');
    // Metrics on a port of their own, not the API's.
    assert.equal(config.metricsPort, container.ports.find((p) => p.name === 'metrics')?.containerPort);
    assert.notEqual(config.metricsPort, config.port);
    // Non-root, read-only root, nothing more than it needs.
    assert.equal(pod.securityContext.runAsNonRoot, true);
    assert.ok(pod.securityContext.runAsUser > 0);
    assert.equal(container.securityContext.readOnlyRootFilesystem, true);
    assert.equal(container.securityContext.allowPrivilegeEscalation, false);
    assert.deepEqual(container.securityContext.capabilities.drop, ['ALL']);
    assert.ok(container.resources.requests.cpu && container.resources.requests.memory && container.resources.limits.memory);
    // The data dir (uploads in flight) is a sized emptyDir: twice the upload limit per concurrent upload.
    const dataMount = container.volumeMounts.find((m) => m.mountPath === '/var/lib/scrubline/data')!;
    const sizeLimit = pod.volumes.find((v) => v.name === dataMount.name)?.emptyDir?.sizeLimit ?? '';
    const gib = Number(/^(\d+)Gi$/.exec(sizeLimit)?.[1]);
    assert.ok(gib * 1024 ** 3 >= 2 * config.maxUploadBytes * config.maxConcurrentUploads, `${sizeLimit} holds ${config.maxConcurrentUploads} uploads of ${config.maxUploadBytes} bytes, twice`);

    // The Service, the budget and the policy select these pods; the Service has no metrics port.
    const labels = deployment.spec.template.metadata.labels;
    const service = all.find((m) => m.kind === 'Service') as unknown as { spec: { selector: Record<string, string>; ports: Array<{ targetPort: string }> } };
    assert.deepEqual(service.spec.selector, labels);
    assert.deepEqual(service.spec.ports.map((p) => p.targetPort), ['http']);
    const budget = all.find((m) => m.kind === 'PodDisruptionBudget') as unknown as { spec: { selector: { matchLabels: Record<string, string> } } };
    assert.deepEqual(budget.spec.selector.matchLabels, labels);
    const policy = all.find((m) => m.kind === 'NetworkPolicy') as unknown as { spec: { ingress: Array<{ from?: unknown[]; ports: Array<{ port: string }> }> } };
    const metricsRule = policy.spec.ingress.find((r) => r.ports.some((p) => p.port === 'metrics'));
    assert.ok(metricsRule?.from && metricsRule.from.length > 0, 'the metrics port only from the scraper');
  });
});
