/**
 * Issue 28: the Dockerfile builds an image that runs. No image registry (and no Docker engine) is
 * reachable here, so this performs its steps: each stage in a clean directory holding only what
 * its COPY lines name, its RUN lines run there on the Node.js of the image's major version (from
 * the npm `node` package), then the final stage's CMD is started and cleans an upload, and its
 * HEALTHCHECK is run. The base image's own packages (Debian's ffmpeg, libheif's decoder) are the
 * ones this machine has: the RUN that installs them is checked for what it names, not run.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { cp, mkdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { fixture, removeDir, root, tempDir, testToken, watchServe } from './helpers.js';

const run = promisify(execFile);

interface Instruction {
  keyword: string;
  args: string;
}

/** The Dockerfile's instructions, continuation lines joined and comments dropped. */
function parse(text: string): Instruction[] {
  const joined = text.replace(/\\\n/g, ' ');
  return joined
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('#'))
    .map((line) => {
      const space = line.indexOf(' ');
      return { keyword: line.slice(0, space).toUpperCase(), args: line.slice(space + 1).trim() };
    });
}

interface Stage {
  name: string | undefined;
  base: string;
  steps: Instruction[];
}

function stages(instructions: Instruction[], args: Map<string, string>): Stage[] {
  const out: Stage[] = [];
  for (const step of instructions) {
    if (step.keyword === 'ARG' && out.length === 0) {
      const [name, value] = step.args.split('=') as [string, string];
      args.set(name, value);
    } else if (step.keyword === 'FROM') {
      const [image, as, name] = step.args.replace(/\$\{(\w+)\}/g, (_m, v: string) => args.get(v) ?? '').split(/\s+/);
      out.push({ name: as?.toUpperCase() === 'AS' ? name : undefined, base: image!, steps: [] });
    } else out.at(-1)!.steps.push(step);
  }
  return out;
}

/** `KEY=value KEY2="value"` pairs of an ENV line. */
function envPairs(args: string): Record<string, string> {
  const pairs: Record<string, string> = {};
  for (const match of args.matchAll(/(\w+)=("[^"]*"|\S+)/g)) pairs[match[1]!] = match[2]!.replace(/^"|"$/g, '');
  return pairs;
}

const nodeBinOf = (major: string): string => path.join(root, 'node_modules', major === '22' ? 'node22' : 'node', 'bin');

/** The image's Node.js line. The steps run on that line's npm build whatever runs the suite, so they are run once, by the suite on that line. */
const imageMajor = /^ARG NODE_MAJOR=(\d+)$/m.exec(readFileSync(path.join(root, 'Dockerfile'), 'utf8'))?.[1];
const skip = imageMajor !== process.versions.node.split('.')[0] ? `the image's steps run in the suite on Node.js ${imageMajor}` : false;

describe('the Dockerfile, step by step (issue 28)', { skip }, () => {
  let work: string;
  before(async () => (work = await tempDir('scrubline-docker-')));
  after(() => removeDir(work));

  it('builds dist/ and the runtime dependencies in a clean directory, and the final stage serves and cleans an upload as a non-root user', { timeout: 600_000 }, async () => {
    const args = new Map<string, string>();
    const [build, final] = stages(parse(await readFile(path.join(root, 'Dockerfile'), 'utf8')), args);
    assert.ok(build && final, 'a build stage and a final stage');
    const major = args.get('NODE_MAJOR')!;
    // The current LTS line, on the image and in the package's own runtime alike.
    assert.match(build.base, new RegExp(`^node:${major}-bookworm-slim$`));
    assert.equal(final.base, build.base);
    const bin = nodeBinOf(major);
    const { stdout: version } = await run(path.join(bin, 'node'), ['--version']);
    assert.ok(version.startsWith(`v${major}.`), `the npm node package of line ${major} (${version.trim()})`);
    const pathEnv = `${bin}:${process.env.PATH}`;

    // Each stage: a directory of its own; WORKDIR maps into it.
    const dirs = new Map<Stage, { root: string; workdir: string; env: Record<string, string> }>();
    for (const stage of [build, final]) {
      const stageRoot = path.join(work, stage.name ?? 'final');
      const state = { root: stageRoot, workdir: stageRoot, env: {} as Record<string, string> };
      dirs.set(stage, state);
      await mkdir(stageRoot, { recursive: true });
      for (const step of stage.steps) {
        if (step.keyword === 'WORKDIR') {
          state.workdir = path.join(stageRoot, step.args);
          await mkdir(state.workdir, { recursive: true });
        } else if (step.keyword === 'COPY') {
          const words = step.args.split(/\s+/);
          const from = words[0]!.startsWith('--from=') ? words.shift()!.slice(7) : undefined;
          const dest = words.pop()!;
          const sourceRoot = from === undefined ? root : dirs.get([build, final].find((s) => s.name === from)!)!.root;
          for (const source of words) {
            const target = dest.endsWith('/') || words.length > 1 ? path.join(state.workdir, dest, path.basename(source)) : path.join(state.workdir, dest);
            await cp(path.join(sourceRoot, source), target, { recursive: true, errorOnExist: false });
          }
        } else if (step.keyword === 'RUN') {
          if (step.args.startsWith('apt-get')) {
            // The base image's packages: what it installs must be what the service looks for.
            assert.match(step.args, /\bffmpeg\b/);
            assert.doesNotMatch(step.args, /\b(g\+\+|gcc|make|python3|build-essential)\b/, 'no compiler in the image');
            continue;
          }
          await run('sh', ['-c', step.args], { cwd: state.workdir, env: { ...process.env, ...state.env, PATH: pathEnv }, maxBuffer: 64 * 1024 * 1024 });
        } else if (step.keyword === 'ENV') Object.assign(state.env, envPairs(step.args));
      }
    }

    const image = dirs.get(final)!;
    const app = image.workdir;
    // Nothing of the build's sources or tools came along.
    for (const absent of ['src', 'tsconfig.json', 'node_modules/typescript', 'node_modules/tsx', 'node_modules/node']) {
      await assert.rejects(stat(path.join(app, absent)), `${absent} is not in the image`);
    }
    const user = final.steps.filter((s) => s.keyword === 'USER').at(-1)?.args;
    assert.ok(user !== undefined && user !== 'root' && user !== '0', 'the image runs as a non-root user');
    // The service's drivers, which the library leaves optional, are in the image.
    await run(path.join(bin, 'node'), ['--input-type=module', '-e', "await import('pg'); await import('@aws-sdk/client-s3'); await import('@aws-sdk/lib-storage');"], { cwd: app });

    const dataDir = path.join(work, 'data');
    const env: Record<string, string> = {
      ...Object.fromEntries(Object.entries(process.env).filter((e): e is [string, string] => e[1] !== undefined && !e[0].startsWith('SCRUBLINE_'))),
      ...image.env,
      PATH: pathEnv,
      SCRUBLINE_DATA_DIR: dataDir,
      SCRUBLINE_PORT: '0',
      SCRUBLINE_HOST: '127.0.0.1',
      SCRUBLINE_API_TOKEN: testToken,
      SCRUBLINE_SHUTDOWN_DELAY_MS: '0',
    };
    const cmd = JSON.parse(final.steps.find((s) => s.keyword === 'CMD')!.args) as string[];
    const child = spawn(cmd[0]!, cmd.slice(1), { cwd: app, env, stdio: ['ignore', 'pipe', 'pipe'] });
    const served = watchServe(child);
    const { exited } = served;
    try {
      const url = await served.url;
      const form = new FormData();
      form.append('file', new Blob([new Uint8Array(await readFile(fixture('media/jpeg-gps-exif-xmp-iptc.jpg')))], { type: 'image/jpeg' }), 'a.jpg');
      const upload = await fetch(`${url}/v1/uploads`, { method: 'POST', body: form, headers: { authorization: `Bearer ${testToken}` } });
      const body = (await upload.json()) as { files: Array<{ removed: Record<string, number> }> };
      assert.equal(upload.status, 201, JSON.stringify(body));
      assert.ok((body.files[0]!.removed.gps ?? 0) >= 1);
      assert.equal((await fetch(`${url}/openapi.json`)).status, 200, 'the schemas are in the image');
      // The HEALTHCHECK, on the port the service was given.
      const health = JSON.parse(final.steps.find((s) => s.keyword === 'HEALTHCHECK')!.args.replace(/^CMD\s+/, '')) as string[];
      const port = new URL(url).port;
      await run(health[0]!, health.slice(1), { cwd: app, env: { ...env, SCRUBLINE_PORT: port } });
      await assert.rejects(run(health[0]!, health.slice(1), { cwd: app, env: { ...env, SCRUBLINE_PORT: '1' } }), 'it fails where nothing answers');
    } finally {
      child.kill('SIGTERM');
      await exited;
    }
  });
});
