/**
 * Reliability (issue #4): resumable imports that survive SIGKILL, rejects, database faults,
 * concurrent imports. Imports run as real child processes of the CLI where a process must die.
 */
import { expect } from 'chai';
import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import pg from 'pg';
import { createFernetEncryptStream, generateFernetKey, parseFernetKey, SEGMENT_BYTES, verifyToken } from '../lib/crypto/fernet.js';
import { createLocalKeyUnwrapper, openDecryptedSource } from '../lib/decrypt.js';
import { startEmbedded, stopEmbedded } from '../lib/db/embedded.js';
import { mergeStaged } from '../lib/db/merge/index.js';
import { importUsers } from '../lib/import.js';
import { ImportStats, type StatsSnapshot } from '../lib/stats.js';
import { drain, encryptBuffer, flipBase64, members, readFixture } from './crypto/helpers.js';
import { chunked } from './helpers/streams.js';
import {
  committedImport, connect, holdLock, installImportGate, MERGE_LOCK_KEY, poll, preconditionNotMet, reached, standInServer, waitingForLock, type Session,
} from './helpers/moments.js';
import { migrate } from '../lib/db/knex.js';
import { failure, freshDatabase, withDb, withDbClient, type TestDb } from './helpers/db.js';
import { email, fileFingerprint, tableSnapshot, TARGET_TABLES, user, useremail, useroption, generatedExport, writeExport, type Rec } from './helpers/exports.js';
import { tmpFolder, tmpPath } from './helpers/setup.js';

const BIN = path.resolve('bin/userport.js');

interface Run { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }

function cli(args: string[], opts: { env?: NodeJS.ProcessEnv } = {}): Promise<Run> & { child: ChildProcess } {
  const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d));
  child.stderr.on('data', (d: Buffer) => (stderr += d));
  const p = new Promise<Run>((resolve) => child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })));
  return Object.assign(p, { child });
}

function generated(users: number, seed: number): Promise<string> {
  return generatedExport({ users, seed, collisionRate: 0.02 });
}

/**
 * Runs the resumable import `args` (import `id`, into `db`) until a run finishes on its own, and
 * SIGKILLs every run before that at a moment the database shows it has reached: each of the
 * first `staging` runs once it has committed one more batch, while the next batch's rows are
 * staged and its checkpoint waits at the gate; then a run waiting for the merge lock (every batch
 * committed); then a run that has merged everything and waits to mark itself done (nothing of
 * the merge committed). Resolves to the last run and the number of kills.
 */
async function killedAtMoments(db: TestDb, args: string[], id: string, staging: number): Promise<{ last: Run; kills: number }> {
  const watch = await connect(db.url);
  const gate = await installImportGate(db.url, { checkpointAfter: null, atFinish: false });
  let kills = 0;
  try {
    const row = async () => (await committedImport(watch, id)) ?? { state: '(none)', checkpoint: 0 };
    const killAt = async (what: string, waiting: (child: ChildProcess) => Promise<Session | undefined>, check: (s: Session) => Promise<void>) => {
      const run = cli(args);
      const session = await reached(what, () => waiting(run.child), { child: run.child });
      await check(session);
      run.child.kill('SIGKILL');
      const res = await run;
      expect(res.signal, `${what}: ${res.stderr}`).to.equal('SIGKILL');
      kills++;
    };
    for (let i = 1; i <= staging; i++) {
      const before = (await row()).checkpoint;
      await gate.set({ checkpointAfter: before + 1, atFinish: false });
      await killAt(`run ${i} waits at a checkpoint`, (child) => gate.waiting(child), async (s) => {
        const now = await row();
        if (!(now.state === 'running' && now.checkpoint > before && /checkpoint_ordinal/.test(s.query))) {
          throw preconditionNotMet(`run ${i} committed a batch (checkpoint ${before} -> ${now.checkpoint}, ${now.state}) and waits at its next checkpoint (${s.query})`);
        }
      });
    }
    await gate.set({ checkpointAfter: null, atFinish: false });
    const mergeLock = await holdLock(db.url, MERGE_LOCK_KEY);
    try {
      await killAt('a run waits for the merge lock', (child) => waitingForLock(watch, child, MERGE_LOCK_KEY), async (s) => {
        const now = await row();
        if (!(now.state === 'running' && /pg_advisory_xact_lock/.test(s.query))) throw preconditionNotMet(`a running import (${now.state}) waits for the merge lock (${s.query})`);
      });
    } finally {
      await mergeLock.release();
    }
    await gate.set({ checkpointAfter: null, atFinish: true });
    await killAt('a run waits to mark itself done', (child) => gate.waiting(child), async (s) => {
      const now = await row();
      if (!(now.state === 'running' && /SET state = 'done'/.test(s.query))) throw preconditionNotMet(`a running import (${now.state}) merged everything and waits to mark itself done (${s.query})`);
    });
    await gate.open();
    return { last: await cli(args), kills };
  } finally {
    await watch.end().catch(() => undefined);
    await gate.remove();
  }
}

/** Snapshot without the random tails of renamed users (they differ from run to run by design). */
async function comparable(db: TestDb) {
  const snap = await tableSnapshot(db.knex);
  return JSON.parse(JSON.stringify(snap).replace(/-[a-z0-9]{2,12}(?=["@])/g, '-~'));
}

describe('reliability', function () {
  this.timeout(300000);

  describe('resumable imports', () => {
    it('give the same database as one uninterrupted import, however often the process is SIGKILLed @soak', async () => {
      const file = await generated(4000, 7);
      const reference = await freshDatabase();
      const target = await freshDatabase();
      try {
        const ref = await importUsers({ source: file, databaseUrl: reference.url });
        const args = ['import', 'users', file, '--database-url', target.url, '--resumable', '--import-id', 'kill-test', '--batch-rows', '700', '--json', '--no-progress'];
        const { last, kills } = await killedAtMoments(target, args, 'kill-test', 3);
        expect(last.code, last.stderr).to.equal(0);
        expect(kills).to.be.at.least(2);
        const resumedSummary = JSON.parse(last.stdout);
        expect(await comparable(target)).to.deep.equal(await comparable(reference));
        expect(resumedSummary.models).to.deep.equal(JSON.parse(JSON.stringify(ref.models)));
        expect(resumedSummary.records).to.equal(ref.records);
        // Run again: nothing changes, and it says so.
        const again = await cli(args);
        expect(again.code).to.equal(0);
        expect(JSON.parse(again.stdout).state).to.equal('already-done');
        expect(await comparable(target)).to.deep.equal(await comparable(reference));
        expect(await target.count('userport.stage')).to.equal(0);
      } finally {
        await reference.close();
        await target.close();
      }
    });

    it('keep the rejects file exact across SIGKILLs: every bad record once, in order @soak', async () => {
      const recs: unknown[] = [];
      for (let i = 1; i <= 6000; i++) {
        recs.push(i % 500 === 0 ? user(i, `bad${i}`, { is_active: 'no' }) : user(i, `user${i}`));
        recs.push(useroption(i, i, 'timezone', 'UTC'));
      }
      const file = writeExport(recs);
      const target = await freshDatabase();
      const rejects = tmpPath('rejects-kill.jsonl');
      try {
        const args = ['import', 'users', file, '--database-url', target.url, '--resumable', '--import-id', 'kill-rejects', '--batch-rows', '900',
          '--rejects-file', rejects, '--json', '--no-progress'];
        const { last, kills } = await killedAtMoments(target, args, 'kill-rejects', 3);
        expect(last.code, last.stderr).to.equal(0);
        expect(kills).to.be.at.least(1);
        const lines = fs.readFileSync(rejects, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { pk: number });
        expect(lines.map((l) => l.pk)).to.deep.equal([500, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 4500, 5000, 5500, 6000]);
        expect(JSON.parse(last.stdout).models['sentry.user']).to.include({ read: 6000, inserted: 5988, rejected: 12 });
        expect(await target.count('auth_user')).to.equal(5988);
      } finally {
        await target.close();
      }
    });

    it('print the id they generated, list in `userport imports`, and refuse to resume with another file', async () => {
      const db = await freshDatabase();
      try {
        const file = writeExport([user(1, 'alice')]);
        const first = await cli(['import', 'users', file, '--database-url', db.url, '--resumable', '--no-progress']);
        expect(first.code, first.stderr).to.equal(0);
        const id = /Import id: (\S+)/.exec(first.stderr)?.[1];
        expect(id).to.match(/^[0-9a-f-]{36}$/);
        const list = await cli(['imports', '--database-url', db.url]);
        expect(list.stdout).to.include(id).and.include('resumable').and.include('done');
        const other = writeExport([user(1, 'bob')]);
        const mismatch = await cli(['import', 'users', other, '--database-url', db.url, '--resumable', '--import-id', id!]);
        // A finished import is not re-run, whatever the file.
        expect(mismatch.code).to.equal(0);
        await db.knex.raw(`UPDATE userport.imports SET state = 'running'`);
        const refused = await cli(['import', 'users', other, '--database-url', db.url, '--resumable', '--import-id', id!]);
        expect(refused.code).to.equal(1);
        expect(refused.stderr).to.include('[USERPORT_IMPORT_MISMATCH]');
      } finally {
        await db.close();
      }
    });

    it('refuse a file written into while the database is reached: USERPORT_IO, nothing written, and the file is not recorded as imported', async () => {
      await withDb(async (db) => {
        const file = writeExport([user(1, 'checked-bytes')]);
        const err = await failure(importUsers({
          source: file, databaseUrl: db.url,
          onStart: () => { fs.writeFileSync(file, JSON.stringify([user(1, 'rewritten-in-place'), user(2, 'rewritten-in-place-2')])); },
        }));
        expect(err.code).to.equal('USERPORT_IO');
        expect(err.message).to.include('changed after it was checked and fingerprinted');
        expect(await db.count('auth_user')).to.equal(0);
        // Run again, it imports what the file holds now.
        const again = await importUsers({ source: file, databaseUrl: db.url });
        expect(again.models['sentry.user']!.inserted).to.equal(2);
      });
    });

    it('read the file they fingerprinted: another export renamed over the path while the database is reached is not what they import', async () => {
      await withDb(async (db) => {
        const file = writeExport([user(1, 'fingerprinted')]);
        const recorded = fileFingerprint(file);
        const summary = await importUsers({
          source: file, databaseUrl: db.url, resumable: true, importId: 'swapped',
          // The import's row holds the fingerprint now; the records are not read yet.
          onStart: () => {
            const next = writeExport([user(1, 'renamed-over'), user(2, 'renamed-over-2')]);
            fs.renameSync(next, file);
          },
        });
        expect(summary.records).to.equal(1);
        expect((await db.knex('auth_user').select('username')).map((r) => r.username)).to.deep.equal(['fingerprinted']);
        const row = await db.knex('userport.imports').where({ id: 'swapped' }).first('source_size', 'source_fingerprint');
        expect({ size: Number(row.source_size), hash: row.source_fingerprint }).to.deep.equal(recorded);
      });
    });
  });

  describe('rejects file', () => {
    const records = (): unknown[] => [
      user(1, 'alice'), user(2, 'x'.repeat(200)), { model: 'sentry.user', fields: {} }, 17, { pk: 9, fields: {} },
      useremail(1, 1, 'alice@example.com'), user(3, 'carol', { name: 'a\u0000b', password: 'pbkdf2$SECRET' }), useroption(1, 1, 'k', 'v'),
    ];

    it('takes records that fail validation, one JSON line each, and goes on', async () => {
      const db = await freshDatabase();
      const rejects = tmpPath('rejects.jsonl');
      try {
        // 17 is not an object: an envelope failure like the others, rejected in its place (issue #12 item 7).
        const all = await importUsers({ source: writeExport(records()), databaseUrl: db.url, rejectsFile: rejects });
        expect(all.models['(invalid)']).to.include({ read: 2, rejected: 2 });
        const first = fs.readFileSync(rejects, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
        expect(first.map((l) => [l.ordinal, l.code])).to.deep.equal([[2, 'USERPORT_RECORD_SCHEMA'], [3, 'USERPORT_RECORD_ENVELOPE'],
          [4, 'USERPORT_RECORD_NOT_OBJECT'], [5, 'USERPORT_RECORD_ENVELOPE'], [7, 'USERPORT_RECORD_SCHEMA']]);
        expect(first[2].record).to.equal(17);
        await db.knex.raw('TRUNCATE auth_user, sentry_email, sentry_useremail, sentry_useroption, sentry_lostpasswordhash RESTART IDENTITY CASCADE');
        const recs = records().filter((r) => r !== 17);
        const s = await importUsers({ source: writeExport(recs), databaseUrl: db.url, rejectsFile: rejects });
        expect(s.models['sentry.user']).to.include({ read: 4, inserted: 1, rejected: 3 });
        expect(s.models['(invalid)']).to.include({ read: 1, rejected: 1 });
        const lines = fs.readFileSync(rejects, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
        expect(lines.map((l) => [l.ordinal, l.code, l.field])).to.deep.equal([
          [2, 'USERPORT_RECORD_SCHEMA', 'username'], [3, 'USERPORT_RECORD_ENVELOPE', 'pk'], [4, 'USERPORT_RECORD_ENVELOPE', 'model'],
          [6, 'USERPORT_RECORD_SCHEMA', 'name'],
        ]);
        expect(lines[0]).to.include({ model: 'sentry.user', pk: 2 });
        expect(lines[0].offset).to.be.a('number');
        expect(lines[0].record.fields.username).to.have.length(200);
        expect(lines[3].record.fields.password).to.equal('[redacted]');
        expect(fs.readFileSync(rejects, 'utf8')).not.to.include('SECRET');
        expect(await db.count('auth_user')).to.equal(1);
      } finally {
        await db.close();
      }
    });

    it('aborts after maxRejects, leaving nothing behind', async () => {
      const db = await freshDatabase();
      try {
        const recs = records().filter((r) => r !== 17);
        const err = await importUsers({ source: writeExport(recs), databaseUrl: db.url, rejectsFile: tmpPath('r2'), maxRejects: 1 })
          .catch((e) => e);
        expect(err.code).to.equal('USERPORT_MAX_REJECTS');
        expect(err.position).to.include({ ordinal: 3 });
        for (const t of TARGET_TABLES) expect(await db.count(t), t).to.equal(0);
      } finally {
        await db.close();
      }
    });
  });

  describe('database faults', () => {
    let dir: string;
    let url: string;
    before(async () => {
      dir = tmpFolder('userport-fault-pg-');
      fs.chmodSync(dir, 0o755);
      url = (await startEmbedded({ dir })).url;
    });
    after(async () => {
      await stopEmbedded(dir, 'immediate').catch(() => undefined);
      fs.rmSync(dir, { recursive: true, force: true });
    });

    it('a server that dies mid-import gives a clear error; an atomic import leaves nothing, a resumable one resumes @soak', async () => {
      const file = await generated(20000, 11);
      // The gate is a trigger on the import's bookkeeping table: it must exist before the import.
      const setup = await freshDatabaseAt(url);
      try { await migrate(setup.knex); } finally { await setup.close(); }
      for (const resumable of [false, true]) {
        const extra = resumable ? ['--resumable', '--import-id', 'fault', '--batch-rows', '2000'] : [];
        // Atomic: the server dies once everything is merged, in the import's one transaction,
        // just before it commits. Resumable: once it has committed one batch and staged the next.
        const gate = await installImportGate(url, { checkpointAfter: resumable ? 1 : null, atFinish: !resumable });
        const p = cli(['import', 'users', file, '--database-url', url, '--no-progress', '--json', ...extra]);
        let res: Run;
        try {
          const at = await reached(`the ${resumable ? 'resumable' : 'atomic'} import waits at the gate`, () => gate.waiting(p.child), { child: p.child });
          if (resumable) {
            const watch = await connect(url);
            const row = await committedImport(watch, 'fault').finally(() => watch.end());
            if (!(row && row.state === 'running' && row.checkpoint > 0 && /checkpoint_ordinal/.test(at.query))) {
              throw preconditionNotMet(`the resumable import committed a batch (${JSON.stringify(row)}) and waits at its next checkpoint (${at.query})`);
            }
          } else if (!/SET state = 'done'/.test(at.query)) {
            throw preconditionNotMet(`the atomic import merged everything and waits to mark itself done (${at.query})`);
          }
          await stopEmbedded(dir, 'immediate');
          res = await p;
        } finally {
          if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
          // A no-op when the server still runs (the moment never came); the gate goes either way.
          await startEmbedded({ dir });
          await gate.remove();
        }
        expect(res.code, `${resumable}: ${res.stdout}`).to.equal(1);
        expect(res.stderr).to.match(/\[USERPORT_DB_CONNECT\]/);
        expect(res.stderr.trim().split('\n').length).to.be.at.most(2);
        const db = await freshDatabaseAt(url);
        try {
          if (!resumable) {
            for (const t of TARGET_TABLES) expect(await db.count(t), t).to.equal(0);
          } else {
            expect((await db.knex.raw(`SELECT state FROM userport.imports WHERE id = 'fault'`)).rows[0].state).to.not.equal('done');
            const again = await cli(['import', 'users', file, '--database-url', url, '--no-progress', '--json', ...extra]);
            expect(again.code, again.stderr).to.equal(0);
            expect(again.stderr).to.include('Resuming import fault');
            expect(JSON.parse(again.stdout).models['sentry.user'].read).to.equal(20000);
            expect(await db.count('auth_user')).to.equal(20000);
          }
        } finally {
          await db.close();
        }
      }
    });

    it('retries a server that is not up yet at start-up', async () => {
      await stopEmbedded(dir, 'fast');
      // The server comes up only once the import has tried it and been turned away.
      const standIn = await standInServer(url);
      const p = cli(['import', 'users', writeExport([user(1, 'late')]), '--database-url', url, '--json', '--no-progress']);
      try {
        await standIn.tried('the import tried to connect while the server was down', p.child);
      } catch (err) {
        p.child.kill('SIGKILL');
        throw err;
      } finally {
        await standIn.close();
      }
      await startEmbedded({ dir });
      const res = await p;
      expect(res.code, res.stderr).to.equal(0);
      expect(JSON.parse(res.stdout).models['sentry.user'].inserted).to.equal(1);
    });
  });

  describe('concurrent imports', () => {
    it('4 processes with overlapping usernames and emails all finish, with every collision resolved', async () => {
      const db = await freshDatabase();
      try {
        const files: string[] = [];
        for (let k = 0; k < 4; k++) {
          const recs: Rec[] = [];
          for (let i = k * 100; i < k * 100 + 300; i++) {
            const name = i % 2 ? `User${i}` : `user${i}`;
            recs.push(user(i + 1, name), email(i + 1, `Shared${i}@example.com`), useremail(i + 1, i + 1, `shared${i}@example.com`),
              useroption(i + 1, i + 1, 'timezone', 'UTC'));
          }
          files.push(writeExport(recs));
        }
        const runs = await Promise.all(files.map((f, k) => cli(['import', 'users', f, '--database-url', db.url, '--json', '--no-progress',
          ...(k % 2 ? ['--merge-users'] : [])])));
        for (const r of runs) expect(r.code, r.stderr).to.equal(0);
        const summaries = runs.map((r) => JSON.parse(r.stdout));
        const dupUsers = await db.knex.raw('SELECT lower(username) FROM auth_user GROUP BY 1 HAVING count(*) > 1');
        expect(dupUsers.rows).to.deep.equal([]);
        const dupEmails = await db.knex.raw('SELECT lower(email) FROM sentry_email GROUP BY 1 HAVING count(*) > 1');
        expect(dupEmails.rows).to.deep.equal([]);
        type Counts = { read: number; inserted: number; existing: number; merged: number; renamed: number; filtered: number; rejected: number; dropped: Record<string, number> };
        const sum = (f: (s: { models: Record<string, Counts> }) => number) => summaries.reduce((a, s) => a + f(s), 0);
        expect(await db.count('auth_user')).to.equal(sum((s) => s.models['sentry.user']!.inserted!));
        // Plus the rows Sentry's receivers/email.py adds for the other addresses of new users.
        expect(await db.count('sentry_email')).to.equal(600 + sum((s) => (s as unknown as { adjacent: { userEmailAddresses: number } }).adjacent.userEmailAddresses));
        expect(sum((s) => s.models['sentry.email']!.inserted!)).to.equal(600);
        for (const s of summaries) {
          for (const [m, c] of Object.entries(s.models as Record<string, Counts>)) {
            const dropped = Object.values(c.dropped).reduce((a, b) => a + b, 0);
            expect(c.inserted + c.existing + c.merged + c.filtered + dropped + c.rejected, m).to.equal(c.read);
          }
        }
      } finally {
        await db.close();
      }
    });
  });
});

async function freshDatabaseAt(url: string): Promise<TestDb> {
  const { createKnex } = await import('../lib/db/knex.js');
  const knex = createKnex(url, 2);
  return {
    url, knex,
    async count(table, where) {
      return (await knex.raw(`SELECT count(*)::int AS n FROM ${table}${where ? ` WHERE ${where}` : ''}`)).rows[0].n;
    },
    async close() { await knex.destroy(); },
  };
}

describe('reliability, round two (issue #9)', function () {
  this.timeout(300000);

  describe('counters keyed by data', () => {
    it('count a field named constructor, toString or __proto__ from zero after a resume restored the counters', () => {
      const before = new ImportStats();
      before.unknownField('sentry.user', 'seen_before_checkpoint');
      before.drop('sentry.useroption', 'some reason');
      // Through JSON, as the checkpoint stores it in jsonb.
      const restored = new ImportStats();
      restored.restore(JSON.parse(JSON.stringify(before.snapshot())) as StatsSnapshot);
      for (let i = 0; i < 3; i++) {
        for (const name of ['constructor', 'toString', '__proto__', 'hasOwnProperty']) {
          restored.unknownField('sentry.user', name);
          restored.drop('sentry.useroption', name);
          restored.skip(name);
        }
      }
      const snap = restored.snapshot();
      // Parsed, not literal: in an object literal `__proto__` would set the prototype.
      const three = '"constructor":3,"toString":3,"__proto__":3,"hasOwnProperty":3';
      expect(snap.unknownFields['sentry.user']).to.deep.equal(JSON.parse(`{"seen_before_checkpoint":1,${three}}`));
      expect(snap.models['sentry.useroption']!.dropped).to.deep.equal(JSON.parse(`{"some reason":1,${three}}`));
      expect(snap.skipped).to.deep.equal(JSON.parse(`{${three}}`));
    });
  });

  describe('encrypted exports', () => {
    it('release no plaintext of bytes changed between the authentication pass and the decrypt pass', async () => {
      const plain = Buffer.from(JSON.stringify(Array.from({ length: 40000 }, (_, i) => user(i + 1, `u${i}`))));
      expect(plain.length).to.be.above(4 * SEGMENT_BYTES);
      const tar = await encryptBuffer(plain);
      const token = members(tar).find((m) => m.entry.name === 'export.json')!.entry;
      const file = tmpPath('userport-toctou.tar');
      fs.writeFileSync(file, tar);
      try {
        const unwrapper = createLocalKeyUnwrapper({ privateKeyPem: readFixture('fixture-key.pem') });
        const src = await openDecryptedSource({ path: file }, { unwrapper });
        // Authenticated; now change one character in the third segment of the token, in place.
        const at = token.dataOffset + 2 * SEGMENT_BYTES + 12345;
        fs.writeFileSync(file, flipBase64(tar, at));
        const out: Buffer[] = [];
        let code: string | undefined;
        try {
          for await (const c of src.stream) out.push(c as Buffer);
        } catch (err) {
          code = (err as { code?: string }).code;
        }
        expect(code).to.equal('USERPORT_DECRYPT_TAMPERED');
        const got = Buffer.concat(out);
        // Only what the first two (untouched, authenticated) segments decrypt to came out.
        expect(got.length).to.be.at.most((2 * SEGMENT_BYTES / 4) * 3);
        expect(got.equals(plain.subarray(0, got.length))).to.equal(true);
      } finally {
        fs.rmSync(file, { force: true });
      }
    });

    it('name the whole character where the token stops being base64', async () => {
      const key = generateFernetKey();
      const token = await drain(Readable.from([crypto.randomBytes(400_000)]).pipe(createFernetEncryptStream({ key })));
      for (const [at, byte] of [[501, 0x21], [448801, 0x2e], [448802, 0x3d]] as const) {
        const bad = Buffer.from(token);
        bad[at] = byte;
        for (const chunk of [7, 1000, 65536]) {
          let err: { code?: string; message: string } | undefined;
          try {
            await verifyToken(chunked(bad, chunk), parseFernetKey(key));
          } catch (e) {
            err = e as { code?: string; message: string };
          }
          expect(err?.code).to.equal('USERPORT_DECRYPT_TAMPERED');
          // The position is only in the message (a token character is no JSON position).
          expect(err!.message.match(/character ([\d.]+)/)?.[1], `${at}/${chunk}`).to.equal(String(at));
        }
      }
    });
  });
});

describe('reliability, round two (issue #9): the database', function () {
  this.timeout(300000);

  /** Resolves once `sql` returns a row, or to undefined when `child` exits first. */
  function until<T>(knex: TestDb['knex'], sql: string, child: ChildProcess): Promise<T | undefined> {
    return poll(async () => (await knex.raw(sql)).rows[0] as T | undefined, { child, intervalMs: 100 });
  }

  it('a resume gets past its SIGKILLed predecessor\'s session stuck in the merge, and plans sanely after a VACUUM', async () => {
    const file = await generated(3000, 21);
    const reference = await freshDatabase();
    const target = await freshDatabase();
    const holder = new pg.Client({ connectionString: target.url });
    await holder.connect();
    try {
      const refSummary = await importUsers({ source: file, databaseUrl: reference.url });
      // Autovacuum must not repair the statistics behind the test's back.
      for (const t of ['auth_user', 'sentry_email', 'userport.pk_ranges']) await target.knex.raw(`ALTER TABLE ${t} SET (autovacuum_enabled = false)`);
      // Stand-ins: uncommitted rows in sentry_email, as a merge killed in its stride leaves them
      // while autovacuum runs, and a merge statement that runs for minutes (it waits for this lock).
      await holder.query('BEGIN');
      await holder.query(`INSERT INTO sentry_email (email, date_added) SELECT 'pad' || i || '@pad.invalid', now() FROM generate_series(1, 3000) i`);
      await holder.query('LOCK TABLE sentry_useremail IN ACCESS EXCLUSIVE MODE');
      const args = ['import', 'users', file, '--database-url', target.url, '--resumable', '--import-id', 'merge-kill', '--batch-rows', '1000', '--json', '--no-progress'];
      const waiting = (not = 0) => `SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid)
        WHERE NOT l.granted AND l.locktype = 'relation' AND l.relation = 'sentry_useremail'::regclass AND a.pid <> ${not}`;
      const first = cli(args);
      const orphan = await until<{ pid: number }>(target.knex, waiting(), first.child);
      expect(orphan, 'the first run reached the merge').to.not.equal(undefined);
      first.child.kill('SIGKILL');
      expect((await first).signal).to.equal('SIGKILL');
      // VACUUM needs the orphan gone (its merge holds the tables); a session that outlived its
      // process would hold them for as long as its statement runs.
      const vac = new pg.Client({ connectionString: target.url });
      await vac.connect();
      try {
        await vac.query(`SET lock_timeout = '30s'`);
        await vac.query('VACUUM auth_user, sentry_email, userport.pk_ranges');
      } finally {
        await vac.end();
      }
      // The statistics now say sentry_email is empty, though it has pages.
      const st = (await target.knex.raw(`SELECT reltuples, relpages FROM pg_class WHERE relname = 'sentry_email'`)).rows[0];
      expect([st.reltuples, st.relpages > 0]).to.deep.equal([0, true]);

      const second = cli(args, { env: { USERPORT_EXPLAIN_SQL: '1' } });
      // The resume gets the import lock and the merge lock, then waits like its predecessor did;
      // only then are the stand-ins rolled back.
      const resumed = await until<{ pid: number }>(target.knex, waiting(orphan!.pid), second.child);
      await holder.query('ROLLBACK');
      const res = await second;
      expect(res.code, res.stderr.slice(-2000)).to.equal(0);
      expect(resumed, 'the resume reached the merge').to.not.equal(undefined);
      expect((await target.knex.raw('SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = ?', [orphan!.pid])).rows[0].n).to.equal(0);
      // Every statement of the merge: no nested loop that rescans a table without an index.
      const plans = [...res.stderr.matchAll(/\[plan\] (.*)\n([\s\S]*?)\n\[\/plan\]/g)].map((m) => ({ sql: m[1]!, plan: m[2]! }));
      // The pk map of the users and of the emails (which joins sentry_email, whose statistics lie).
      expect(plans.filter((p) => /INSERT INTO userport.pk_ranges /.test(p.sql))).to.have.length(2);
      for (const p of plans) {
        expect(p.plan, p.sql).to.not.match(/Nested Loop[\s\S]*->\s+Seq Scan/);
      }
      expect(await comparable(target)).to.deep.equal(await comparable(reference));
      expect(JSON.parse(res.stdout).models).to.deep.equal(JSON.parse(JSON.stringify(refSummary.models)));
    } finally {
      await holder.end().catch(() => undefined);
      await reference.close();
      await target.close();
    }
  });

  it('a resume ends the session of a dead process on this host that holds its import (a server without client checks)', async () => {
    const db = await freshDatabase();
    const dead = spawn(process.execPath, ['-e', '0']);
    await new Promise((r) => dead.once('exit', r));
    // What a killed import leaves on a server that never checks its clients: a session named
    // after its (now gone) process, holding the import's lock, deep in a long statement.
    const orphan = new pg.Client({ connectionString: db.url, application_name: `userport ${dead.pid}@${os.hostname()}`.slice(0, 63) });
    await orphan.connect();
    orphan.on('error', () => undefined);
    try {
      await orphan.query(`SELECT pg_advisory_lock(747211, hashtext('orphaned'))`);
      const sleeping = orphan.query('SELECT pg_sleep(3600)').then(() => undefined, (err: { code?: string }) => err.code);
      const res = await cli(['import', 'users', writeExport([user(1, 'after-orphan')]), '--database-url', db.url, '--resumable', '--import-id', 'orphaned', '--json', '--no-progress']);
      expect(res.code, res.stderr).to.equal(0);
      expect(await sleeping).to.equal('57P01');
      expect(await db.count('auth_user')).to.equal(1);
    } finally {
      await orphan.end().catch(() => undefined);
      await db.close();
    }
  });

  it('two concurrent imports of names differing only in case leave no duplicates under a REPEATABLE READ default', async () => {
    const db = await freshDatabase();
    try {
      const name = new URL(db.url).pathname.slice(1);
      await db.knex.raw(`ALTER DATABASE ${name} SET default_transaction_isolation = 'repeatable read'`);
      const files = [0, 1].map((k) => writeExport(Array.from({ length: 3000 }, (_, i) => user(i + 1, k ? `User${i}` : `user${i}`))));
      const runs = await Promise.all(files.map((f) => cli(['import', 'users', f, '--database-url', db.url, '--json', '--no-progress'])));
      for (const r of runs) expect(r.code, r.stderr).to.equal(0);
      const dup = await db.knex.raw('SELECT count(*)::int AS n FROM (SELECT lower(username) FROM auth_user GROUP BY 1 HAVING count(*) > 1) d');
      expect(dup.rows[0].n).to.equal(0);
      expect(await db.count('auth_user')).to.equal(6000);
      expect(runs.map((r) => JSON.parse(r.stdout).models['sentry.user'].renamed).sort()).to.deep.equal([0, 3000]);
    } finally {
      await db.close();
    }
  });

  it('the merge refuses a run that is not registered in userport.imports (a caller wiring its own stages), before writing anything', async () => {
    await withDbClient(async (db, c) => {
      await c.query('BEGIN');
      await c.query(`INSERT INTO userport.stage (run, model, ord, off, line, col, src_pk, keep, username) VALUES (424242, 1, 1, 0, 1, 1, 1, true, 'ann')`);
      const err = await mergeStaged(c, { run: 424242, mergeUsers: false, filterActive: false }, new ImportStats()).then(() => undefined, (e: unknown) => e);
      expect((err as { code?: string }).code).to.equal('USERPORT_OPTION_INVALID');
      expect((err as { option?: string }).option).to.equal('run');
      expect((err as Error).message).to.contain('beginImportRun');
      await c.query('ROLLBACK');
      expect(await db.count('userport.pk_map')).to.equal(0);
      expect(await db.count('auth_user')).to.equal(0);
    });
  });

  it('the merge refuses a transaction that is not READ COMMITTED (a caller\'s own client)', async () => {
    await withDbClient(async (_db, c) => {
      for (const level of ['REPEATABLE READ', 'SERIALIZABLE']) {
        await c.query(`BEGIN ISOLATION LEVEL ${level}`);
        const workMem = (await c.query(`SELECT current_setting('work_mem') AS v`)).rows[0].v as string;
        let code: string | undefined;
        try {
          await mergeStaged(c, { run: 1, mergeUsers: false, filterActive: false }, new ImportStats());
        } catch (err) {
          code = (err as { code?: string }).code;
        }
        // Refused before taking anything: the caller's transaction holds no merge lock and its settings.
        const after = (await c.query(`SELECT current_setting('work_mem') AS v,
          (SELECT count(*)::int FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS locks`)).rows[0] as { v: string; locks: number };
        await c.query('ROLLBACK');
        expect(code, level).to.equal('USERPORT_DB_SETTING');
        expect(after, level).to.deep.equal({ v: workMem, locks: 0 });
      }
    });
  });
});
