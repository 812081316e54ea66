/**
 * One ledger, two engines: the same checks on SQLite (the embedded default) and on PostgreSQL (a
 * throwaway cluster made here), including what only replicas sharing a database can race on:
 * two finish reports at once, an upload recorded while its job finishes, two sweepers at once,
 * and a sweeper that dies halfway.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { jobDeleted, ScrubError } from '../src/errors.js';
import { Ledger, type ArtefactRecord, type JobExpiry } from '../src/storage/ledger.js';
import { removeDir, root, tempDir } from './helpers.js';
import { postgresMissing, startPostgres, type Postgres } from './servers.js';

const expiry: JobExpiry = (retention, finishedAt) => new Date(Date.parse(finishedAt) + (retention === 'standard' ? 24 : 72) * 3_600_000).toISOString();

const file = (id: string, jobId: string | undefined, expiresAt = '2026-06-08T00:00:00.000Z'): ArtefactRecord => ({
  id,
  kind: 'file',
  jobId,
  mime: 'image/jpeg',
  // Over 2^31: a 2 GiB upload must fit.
  bytes: 2 ** 31 + 7,
  fingerprintId: `fp_${id}`,
  destination: 'local',
  retention: 'standard',
  createdAt: '2026-06-01T00:00:00.000Z',
  expiresAt,
  paths: [`clean/${id}.jpg.enc`],
});

interface Engine {
  name: string;
  skip: string | false;
  /** A fresh, empty ledger target; `open` may be called on it more than once (replicas). */
  target(): Promise<{ open(): Promise<Ledger>; cleanup(): Promise<void>; dir?: string }>;
}

let postgres: Postgres | undefined;
let databases = 0;
const engines: Engine[] = [
  {
    name: 'SQLite',
    skip: false,
    async target() {
      const dir = await tempDir();
      return { open: () => Ledger.open(dir), cleanup: () => removeDir(dir), dir };
    },
  },
  {
    name: 'PostgreSQL',
    skip: postgresMissing() ?? false,
    async target() {
      const url = await postgres!.database(`ledger_${++databases}`);
      return { open: () => Ledger.open({ databaseUrl: url }), cleanup: async () => undefined };
    },
  },
];

before(async () => {
  if (engines[1]!.skip === false) postgres = await startPostgres();
});
after(async () => {
  await postgres?.stop();
});

for (const engine of engines) {
  describe(`the ledger on ${engine.name}`, { skip: engine.skip }, () => {
    let target: Awaited<ReturnType<Engine['target']>>;
    let ledger: Ledger;
    before(async () => {
      target = await engine.target();
      ledger = await target.open();
    });
    after(async () => {
      await ledger.close();
      await target.cleanup();
    });

    it('migrates to the current schema once, however many replicas open it at once', async () => {
      const more = await Promise.all([target.open(), target.open(), target.open()]);
      assert.deepEqual(
        more.map((l) => l.schemaVersion),
        [5, 5, 5],
      );
      await Promise.all(more.map((l) => l.close()));
      assert.equal(ledger.schemaVersion, 5);
      await ledger.ping();
    });

    it('records and reads back a file exactly, sizes past 2 GiB included', async () => {
      await ledger.record([file('a1', 'job-a')]);
      const got = await ledger.get('a1');
      assert.deepEqual(got, { ...file('a1', 'job-a'), parentId: undefined, jobFinishedAt: undefined, purgedAt: undefined, body: undefined });
      assert.equal(await ledger.get('nope'), undefined);
      await assert.rejects(ledger.record([file('a1', 'job-a')]), 'an id is recorded once');
    });

    it('lets the first of several concurrent finish reports win, and re-dates the job\'s files', async () => {
      await ledger.record([file('b1', 'job-b'), file('b2', 'job-b')]);
      const reports = await Promise.all(
        ['2026-06-02T10:00:00.000Z', '2026-06-02T11:00:00.000Z', '2026-06-02T12:00:00.000Z', '2026-06-02T13:00:00.000Z'].map((at) => ledger.finishJob('job-b', at, expiry)),
      );
      assert.equal(reports.filter((r) => r.firstReport).length, 1, 'one first report');
      assert.equal(new Set(reports.map((r) => r.finishedAt)).size, 1, 'every report answers the same finish time');
      const finishedAt = reports[0]!.finishedAt;
      for (const id of ['b1', 'b2']) {
        const record = (await ledger.get(id))!;
        assert.equal(record.jobFinishedAt, finishedAt);
        assert.equal(record.expiresAt, expiry('standard', finishedAt));
      }
    });

    it('gives a file recorded after its job finished (a race with the upload) the job\'s clock', async () => {
      await ledger.finishJob('job-c', '2026-06-03T00:00:00.000Z', expiry);
      // The upload read "not finished" and carries the safety cap; recording it corrects that.
      await ledger.record([file('c1', 'job-c', '2026-06-10T00:00:00.000Z')], expiry);
      const record = (await ledger.get('c1'))!;
      assert.equal(record.jobFinishedAt, '2026-06-03T00:00:00.000Z');
      assert.equal(record.expiresAt, '2026-06-04T00:00:00.000Z');
    });

    it('refuses to record into a deleted job, and lists what the deletion must purge', async () => {
      await ledger.record([file('d1', 'job-d')]);
      const listed = await ledger.deleteJob('job-d', '2026-06-04T00:00:00.000Z');
      assert.deepEqual(listed.map((r) => r.id), ['d1']);
      await assert.rejects(ledger.record([file('d2', 'job-d')]), (err: unknown) => err instanceof ScrubError && err.code === jobDeleted().code);
      assert.equal(await ledger.get('d2'), undefined);
      assert.equal(await ledger.jobDeletedAt('job-d'), '2026-06-04T00:00:00.000Z');
      await ledger.recordDeletion('job-d', '2026-06-04T00:00:00.000Z', { file: 1 }, ['d1']);
      assert.deepEqual(await ledger.deletions('job-d'), [{ requestedAt: '2026-06-04T00:00:00.000Z', counts: { file: 1 }, ids: ['d1'] }]);
    });

    it('hands each expired artefact to exactly one of several sweepers at once', async () => {
      const ids = Array.from({ length: 60 }, (_, i) => `s${String(i).padStart(2, '0')}`);
      await ledger.record(ids.map((id) => file(id, 'job-s', '2026-07-01T00:00:00.000Z')));
      const at = '2026-07-02T00:00:00.000Z';
      // One sweeper: claims batches of 7 until one comes back short; a delete from the store takes
      // a moment, and the other sweepers run meanwhile.
      const sweeper = async (replica: Ledger, handed: string[]): Promise<void> => {
        for (;;) {
          const claimed = await replica.claimExpired(at, 7, [], async (records, mark) => {
            for (const r of records) {
              handed.push(r.id);
              await new Promise((resolve) => setTimeout(resolve, 2));
              await mark(r.id);
            }
          });
          if (claimed < 7) break;
        }
      };
      let handed: string[][];
      if (engine.name === 'SQLite') {
        // SQLite's driver waits for a lock synchronously, so its sweepers at once are processes
        // (the service's interval sweep, `scrubline sweep` run by cron), each with its connection.
        const startAt = Date.now() + 4000; // past each process's start-up
        const child = `import { Ledger } from ${JSON.stringify(path.join(root, 'src/storage/ledger.ts'))};
          const ledger = await Ledger.open(${JSON.stringify(target.dir)});
          await new Promise((resolve) => setTimeout(resolve, ${startAt} - Date.now())); // all start together
          const handed = [];
          for (;;) {
            const claimed = await ledger.claimExpired(${JSON.stringify(at)}, 7, [], async (records, mark) => {
              for (const r of records) {
                handed.push(r.id);
                await new Promise((resolve) => setTimeout(resolve, 2));
                await mark(r.id);
              }
            });
            if (claimed < 7) break;
          }
          await ledger.close();
          process.stdout.write(JSON.stringify(handed));`;
        handed = await Promise.all(
          [1, 2, 3].map(async () => JSON.parse((await promisify(execFile)(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', child], { cwd: root })).stdout) as string[]),
        );
      } else {
        const replicas = [ledger, ...(await Promise.all([target.open(), target.open()]))];
        handed = replicas.map(() => [] as string[]);
        await Promise.all(replicas.map((replica, n) => sweeper(replica, handed[n]!)));
        await Promise.all(replicas.filter((l) => l !== ledger).map((l) => l.close()));
      }
      const all = handed.flat().filter((id) => id.startsWith('s'));
      assert.equal(all.length, new Set(all).size, 'no artefact handed out twice');
      assert.deepEqual(new Set(all), new Set(ids.concat()), 'every expired artefact handed out');
      for (const id of ids) assert.equal((await ledger.get(id))!.purgedAt, at);
      // PostgreSQL's SKIP LOCKED lets replicas share batches; SQLite's one write lock goes back to
      // whoever asks first, so there one process may take them all (correct, if not shared).
      if (engine.name === 'PostgreSQL') assert.ok(handed.filter((h) => h.length > 0).length > 1, `the sweepers shared the work: ${handed.map((h) => h.length).join(', ')}`);
    });

    it('leaves what a sweeper that died halfway claimed for the next one to finish', async () => {
      await ledger.record(['k1', 'k2', 'k3'].map((id) => file(id, 'job-k', '2026-08-01T00:00:00.000Z')));
      const at = '2026-08-02T00:00:00.000Z';
      await assert.rejects(
        ledger.claimExpired(at, 10, [], async (records, mark) => {
          await mark(records[0]!.id);
          throw new Error('killed');
        }),
        /killed/,
      );
      // The whole claim rolled back, the mark of k1 with it.
      const left = (await ledger.expired(at)).map((r) => r.id);
      assert.deepEqual(left, ['k1', 'k2', 'k3']);
      let second: string[] = [];
      await ledger.claimExpired(at, 10, [], async (records, mark) => {
        second = records.map((r) => r.id);
        for (const r of records) await mark(r.id);
      });
      assert.deepEqual(second, left);
      assert.deepEqual(await ledger.expired(at), []);
    });

    it('knows the live names of each store, and forgets a purged record\'s JSON', async () => {
      await ledger.record([{ ...file('l1', 'job-l'), destination: 'bucket', paths: ['p/job-l/l1.jpg', 'p/job-l/l1.json'] }, { ...file('l2', 'job-l'), kind: 'fingerprint', paths: [], body: '{"id":"fp"}' }]);
      assert.ok((await ledger.livePaths('bucket')).has('p/job-l/l1.json'));
      assert.equal((await ledger.livePaths('local')).has('p/job-l/l1.json'), false);
      await ledger.markPurged(['l1', 'l2'], '2026-09-01T00:00:00.000Z');
      assert.equal((await ledger.livePaths('bucket')).has('p/job-l/l1.json'), false);
      assert.equal((await ledger.get('l2'))!.body, undefined);
    });
  });
}
