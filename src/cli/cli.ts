/**
 * `scrubline` — the command line. Exit codes: 0 all files cleaned, 2 a file was rejected (one
 * line on stderr says why; no output file is written for it), 1 an internal or usage error.
 */
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { createRequire } from 'node:module';
import type { StripJob, StripOutcome } from './strip.js';
import { ConfigError, configVariables, loadConfig, type Config } from '../config.js';
import { ScrubError } from '../errors.js';
import { acceptedFormatsText } from '../media.js';
import type { Suite } from '../qa/suite.js';
import type { Target } from '../qa/run.js';

// Each command imports what it uses when it runs: a batch's main thread only hands files to
// workers, and loading the pipeline, sharp, SQLite and the QA reports first would delay them.

const { version } = createRequire(import.meta.url)('../../package.json') as { version: string };

/** Each subcommand's usage, for `scrubline --help` and `scrubline <command> --help`. */
const usage: Record<string, string> = {
  strip: `  scrubline strip <input…> (-o <output> | --out-dir <dir>) [--json] [--retention standard|extended]
                                          clean files: each output verified before it is written`,
  inspect: `  scrubline inspect <file> [--json]       metadata categories the file carries, with counts (no values)`,
  fingerprint: `  scrubline fingerprint <file>            the fingerprint JSON of the file's cleaned form`,
  sweep: `  scrubline sweep [--json]                purge expired files, thumbnails and records now, with the
                                          service's settings (SCRUBLINE_DATA_DIR, or
                                          SCRUBLINE_DATABASE_URL and an s3:// upstream)
  scrubline sweep --dry-run [--at <ISO time>] [--json]
                                          only list what would go, now or at --at (--at goes with
                                          --dry-run only: nothing is ever purged early)`,
  qa: `  scrubline qa <suite-dir> [--junit <out.xml>] [--html <out.html>] [--url <service URL>] [--json]
                                          run a QA suite (suite.json) and judge every file; exit 1 on
                                          any failed expectation (--url: against a running service,
                                          token from SCRUBLINE_API_TOKEN)`,
  repro: `  scrubline repro <fingerprint.json | fp_id> -o <file>
                                          synthesise a file with the fingerprint's technical properties
                                          (an id is looked up in the ledger in SCRUBLINE_DATA_DIR)`,
  serve: `  scrubline serve                         start the HTTP service (configured by SCRUBLINE_* variables,
                                          listed by scrubline --help); SIGTERM drains it (README:
                                          shutdown)`,
};

const help = `scrubline ${version} — strips identifying metadata from images and video, verifies the result, fingerprints it.

Usage:
${Object.values(usage).join('\n')}
  scrubline --help | --version
  scrubline <command> --help              that command's usage

Accepted: ${acceptedFormatsText}.
Exit codes: 0 all cleaned, 2 a file was rejected (reason on stderr, no output written), 1 internal error.

Environment:
${configVariables.map(([name, meaning]) => `  ${name.padEnd(31)} ${meaning}`).join('\n')}
`;

type Out = { stdout: (s: string) => void; stderr: (s: string) => void };
const defaultOut: Out = { stdout: (s) => process.stdout.write(s), stderr: (s) => process.stderr.write(s) };

async function runPool<T>(items: T[], size: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) await work(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(size, items.length) }, worker));
}

async function stripCommand(args: string[], config: Config, out: Out): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { output: { type: 'string', short: 'o' }, 'out-dir': { type: 'string' }, json: { type: 'boolean' }, retention: { type: 'string' } },
  });
  if (positionals.length === 0) throw new UsageError('strip needs at least one input file');
  if ((values.output === undefined) === (values['out-dir'] === undefined)) throw new UsageError('strip needs exactly one of -o <output> or --out-dir <dir>');
  if (values.output !== undefined && positionals.length > 1) throw new UsageError('-o takes one input; use --out-dir for several');
  const retention = values.retention ?? 'standard';
  if (retention !== 'standard' && retention !== 'extended') throw new UsageError('--retention must be standard or extended');
  if (values['out-dir'] !== undefined) await mkdir(values['out-dir'], { recursive: true });

  let rejected = 0;
  let failed = 0;
  const report = (outcome: StripOutcome): void => {
    if (outcome.ok) {
      if (values.json) out.stdout(JSON.stringify({ input: outcome.input, output: outcome.output, ...outcome.report }) + '\n');
      return;
    }
    const { error } = outcome;
    if (error.isRejection) rejected++;
    else failed++;
    out.stderr(`scrubline: ${outcome.input}: ${error.isRejection ? 'rejected' : 'error'} (${error.code}): ${error.message}\n`);
    if (values.json) out.stdout(JSON.stringify({ input: outcome.input, error: { code: error.code, message: error.message } }) + '\n');
  };
  const jobs: StripJob[] = positionals.map((input) => ({ input, output: values.output, outDir: values['out-dir'], retention }));
  const { minFilesForWorkers, sharedDeps, stripInWorkers } = await import('./pool.js');
  if (jobs.length >= minFilesForWorkers && availableParallelism() > 1) {
    await stripInWorkers(jobs, availableParallelism(), sharedDeps(config), report);
  } else {
    const { localDeps, stripOne } = await import('./strip.js');
    const deps = await localDeps(config);
    await runPool(jobs, 2, async (job) => report(await stripOne(config, deps, job)));
  }
  return failed > 0 ? 1 : rejected > 0 ? 2 : 0;
}

async function inspectCommand(args: string[], config: Config, out: Out): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { json: { type: 'boolean' } } });
  if (positionals.length !== 1) throw new UsageError('inspect takes exactly one file');
  const { localDeps, withWorkDir } = await import('./strip.js');
  const { sniff } = await import('../steps/sniff.js');
  const { strip } = await import('../steps/strip.js');
  const { toolsFor } = await import('../pipeline.js');
  const deps = await localDeps(config);
  return withWorkDir(config, positionals[0]!, async (received) => {
    const sniffed = await sniff(received);
    const stripped = await strip(sniffed, { ...deps, ffmpeg: await toolsFor(sniffed, deps) });
    const report = { mime: sniffed.kind.mime, family: sniffed.kind.family, bytes: received.inputBytes, metadata: stripped.removed };
    if (values.json) out.stdout(JSON.stringify(report) + '\n');
    else {
      const lines = Object.entries(report.metadata).map(([category, count]) => `  ${category.padEnd(18)} ${count}`);
      out.stdout(`${report.mime}, ${report.bytes} bytes\n${lines.length > 0 ? lines.join('\n') : '  no identifying metadata found'}\n`);
    }
    return 0;
  });
}

async function fingerprintCommand(args: string[], config: Config, out: Out): Promise<number> {
  const { positionals } = parseArgs({ args, allowPositionals: true, options: {} });
  if (positionals.length !== 1) throw new UsageError('fingerprint takes exactly one file');
  const { localDeps, withWorkDir } = await import('./strip.js');
  const { cleanFile } = await import('../pipeline.js');
  const deps = await localDeps(config);
  return withWorkDir(config, positionals[0]!, async (received) => {
    const file = await cleanFile(received, 'standard', deps);
    out.stdout(JSON.stringify(file.fingerprint, null, 2) + '\n');
    return 0;
  });
}

async function sweepCommand(args: string[], config: Config, out: Out): Promise<number> {
  const { values } = parseArgs({ args, options: { 'dry-run': { type: 'boolean' }, at: { type: 'string' }, json: { type: 'boolean' } } });
  // A purge "as of" another time than now would delete files before the expiry promised to their
  // users (a future time), so --at only answers "what would go then?".
  if (values.at !== undefined && values['dry-run'] !== true) {
    throw new UsageError('--at goes with --dry-run only: a real sweep purges what has expired by now, never early. Run `scrubline sweep --dry-run --at <time>` to see what would go then');
  }
  const at = values.at === undefined ? new Date() : new Date(values.at);
  if (Number.isNaN(at.getTime())) throw new UsageError('--at must be an ISO 8601 time such as 2026-05-01T12:00:00Z');
  const { ledgerExists, openStorage } = await import('../storage/open.js');
  if (!ledgerExists(config)) throw new UsageError(`no ledger in ${config.dataDir}; set SCRUBLINE_DATA_DIR (or SCRUBLINE_DATABASE_URL) as the service has them`);
  const { sweep } = await import('../retention/sweeper.js');
  const storage = await openStorage(config);
  try {
    const report = await sweep({ ledger: storage.ledger, bucket: storage.bucket, dataDir: config.dataDir, at, dryRun: values['dry-run'] === true });
    if (values.json) out.stdout(JSON.stringify(report) + '\n');
    else {
      const verb = report.dryRun ? 'would purge' : 'purged';
      const counts = Object.entries(report.purged).map(([kind, n]) => `${n} ${kind}${n === 1 ? '' : 's'}`).join(', ');
      out.stdout(`${report.at}: ${verb} ${counts}; ${report.orphans} orphan file(s) ${report.dryRun ? 'found' : 'removed'}; ${report.partialUploads} expired resumable upload(s)${report.staleMultipartUploads > 0 ? `; ${report.staleMultipartUploads} stale multipart upload(s) aborted` : ''}\n`);
      if (report.dryRun) for (const id of report.ids) out.stdout(`${id}\n`);
      if (report.skipped.length > 0) out.stderr(`skipped ${report.skipped.length} bad ledger row(s) (naming an object scrubline does not store, or a store not configured here): ${report.skipped.join(' ')}\n`);
    }
    return report.skipped.length > 0 ? 1 : 0;
  } finally {
    await storage.close();
  }
}

async function qaCommand(args: string[], config: Config, out: Out): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { junit: { type: 'string' }, html: { type: 'string' }, url: { type: 'string' }, json: { type: 'boolean' } },
  });
  if (positionals.length !== 1) throw new UsageError('qa takes exactly one suite folder');
  const { loadSuite, SuiteError } = await import('../qa/suite.js');
  const { runSuite } = await import('../qa/run.js');
  const { htmlReport, junitXml, summarise } = await import('../qa/reports.js');
  let suite: Suite;
  try {
    suite = await loadSuite(positionals[0]!);
  } catch (err) {
    if (err instanceof SuiteError) throw new UsageError(`suite: ${err.message}`);
    throw err;
  }
  let target: Target = { kind: 'local', config };
  if (values.url !== undefined) {
    const url = URL.canParse(values.url) ? new URL(values.url) : undefined;
    if (!url) throw new UsageError('--url must be the service base URL, e.g. http://127.0.0.1:8080');
    const token = config.apiTokens[0] ?? readFileSync(path.join(config.dataDir, 'api-token'), 'utf8').trim();
    target = { kind: 'remote', url, token };
  }
  const tty = process.stderr.isTTY === true && !values.json;
  const started = performance.now();
  const results = await runSuite(suite, target, (result, done) => {
    if (tty) {
      const width = 30;
      const filled = Math.round((done / suite.files.length) * width);
      out.stderr(`\r[${'#'.repeat(filled)}${' '.repeat(width - filled)}] ${done}/${suite.files.length}`);
    } else if (!values.json) {
      out.stderr(`${result.pass ? 'ok  ' : 'FAIL'} ${result.file}${result.pass ? '' : `: ${result.problems.join('; ')}`}\n`);
    }
  });
  if (tty) out.stderr('\n');
  const summary = summarise(results, Math.round(performance.now() - started));
  if (values.junit) await writeFile(values.junit, junitXml(suite.name, results, summary));
  if (values.html) await writeFile(values.html, htmlReport(suite.name, results, summary, new Date().toISOString()));
  if (values.json) {
    out.stdout(JSON.stringify({ suite: suite.name, summary, files: results.map(({ seen: { preview: _preview, ...seen }, ...r }) => ({ ...r, seen })) }) + '\n');
  } else {
    const row = (label: string, n: number): string => `  ${label.padEnd(10)} ${String(n).padStart(5)}`;
    out.stdout(
      [
        `scrubline qa: ${suite.name}, ${summary.total} files in ${(summary.ms / 1000).toFixed(1)} s`,
        row('passed', summary.passed),
        row('failed', summary.failed),
        row('cleaned', summary.cleaned),
        row('rejected', summary.rejected),
        row('dirty', summary.dirty),
        row('errors', summary.errors),
        ...results.filter((r) => !r.pass).map((r) => `FAIL ${r.file}: ${r.problems.join('; ')}`),
      ].join('\n') + '\n',
    );
  }
  return summary.failed > 0 ? 1 : 0;
}

async function reproCommand(args: string[], config: Config, out: Out): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { output: { type: 'string', short: 'o' } } });
  if (positionals.length !== 1 || values.output === undefined) throw new UsageError('repro takes a fingerprint (a .json file or an fp_ id) and -o <output file>');
  const source = positionals[0]!;
  const { ledgerExists, openLedger } = await import('../storage/open.js');
  const { readFingerprint, repro, ReproError } = await import('./repro.js');
  const { loadFfmpeg } = await import('../tools/ffmpeg.js');
  let json: string | undefined;
  if (existsSync(source)) json = readFileSync(source, 'utf8');
  else if (/^fp_[0-9a-f]{16}$/.test(source)) {
    if (!ledgerExists(config)) throw new UsageError(`no ledger in ${config.dataDir} to look ${source} up in; pass the fingerprint JSON instead`);
    const ledger = await openLedger(config);
    try {
      json = (await ledger.fingerprint(source))?.body;
    } finally {
      await ledger.close();
    }
    if (json === undefined) throw new UsageError(`no fingerprint ${source} in the ledger (expired or deleted?)`);
  } else throw new UsageError(`${source} is neither a fingerprint file nor an fp_ id`);
  try {
    const fingerprint = readFingerprint(json, config.maxInputPixels);
    await repro(fingerprint, values.output, await loadFfmpeg(config));
  } catch (err) {
    if (err instanceof ReproError) {
      out.stderr(`scrubline: repro: ${err.message}\n`);
      return 1;
    }
    throw err;
  }
  out.stdout(`${values.output}\n`);
  return 0;
}

async function serveCommand(config: Config): Promise<number> {
  const { startServer } = await import('../http/server.js');
  const running = await startServer(config);
  await new Promise<void>((resolve) => {
    // The first signal drains (http/server.ts); a second one stops at once.
    const stop = (signal: NodeJS.Signals): void => {
      process.once('SIGTERM', () => void running.close().then(resolve));
      process.once('SIGINT', () => void running.close().then(resolve));
      void running.shutdown(signal).then(resolve);
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
  return 0;
}

async function versionCommand(config: Config, out: Out): Promise<number> {
  const { loadFfmpeg } = await import('../tools/ffmpeg.js');
  const tools = await loadFfmpeg(config);
  out.stdout(`scrubline ${version}\nffmpeg ${tools.ffmpegVersion} (${tools.ffmpeg.source}: ${tools.ffmpeg.path})\nffprobe (${tools.ffprobe.source}: ${tools.ffprobe.path})\n`);
  return 0;
}

class UsageError extends Error {}

export async function main(argv: string[], out: Out = defaultOut): Promise<number> {
  const [command, ...rest] = argv;
  try {
    if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
      out.stdout(help);
      return command === undefined ? 1 : 0;
    }
    // A command's own help, read before the configuration: it works whatever the environment says.
    const commandUsage = usage[command];
    if (commandUsage !== undefined && rest.some((arg) => arg === '--help' || arg === '-h')) {
      out.stdout(`Usage:\n${commandUsage}\n${command === 'serve' ? `\nEnvironment: see scrubline --help.\n` : ''}`);
      return 0;
    }
    const config = loadConfig();
    switch (command) {
      case '--version':
      case '-v':
        return await versionCommand(config, out);
      case 'strip':
        return await stripCommand(rest, config, out);
      case 'inspect':
        return await inspectCommand(rest, config, out);
      case 'fingerprint':
        return await fingerprintCommand(rest, config, out);
      case 'sweep':
        return await sweepCommand(rest, config, out);
      case 'qa':
        return await qaCommand(rest, config, out);
      case 'repro':
        return await reproCommand(rest, config, out);
      case 'serve':
        return await serveCommand(config);
      default:
        throw new UsageError(`unknown command "${command}"`);
    }
  } catch (err) {
    if (err instanceof UsageError || (err instanceof TypeError && 'code' in err && String(err.code).startsWith('ERR_PARSE_ARGS'))) {
      out.stderr(`scrubline: ${err.message}\nRun scrubline --help for usage.\n`);
      return 1;
    }
    if (err instanceof ConfigError) {
      out.stderr(`scrubline: ${err.message}\n`);
      return 1;
    }
    if (err instanceof ScrubError) {
      out.stderr(`scrubline: ${err.isRejection ? 'rejected' : 'error'} (${err.code}): ${err.publicMessage}\n`);
      return err.isRejection ? 2 : 1;
    }
    const code = (err as NodeJS.ErrnoException).code;
    out.stderr(`scrubline: ${code === 'ENOENT' ? 'no such file' : err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  }
}
