/**
 * Reliability, round three (issue #20 items 2-5, issue #21 items 1-2): how a run ends when it is
 * interrupted (signals, a supervisor stopping `npx`, `nohup`), what it leaves on disk, and pipes.
 * Every fault is injected at an observable moment (a progress line, a file that exists and has
 * grown), never after a fixed sleep.
 */
import { expect } from 'chai';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { processAlive } from '../../lib/spool.js';
import os from 'node:os';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { importUsers } from '../../lib/import.js';
import { createExportGenerator } from '../../tools/generate.js';
import { freshDatabase, type TestDb } from '../helpers/db.js';
import { user, type Rec } from '../helpers/exports.js';

const ROOT = path.resolve('.');
const BIN = path.join(ROOT, 'bin/userport.js');

interface Ended { code: number | null; signal: NodeJS.Signals | null }
interface Proc { child: ChildProcess; out: () => string; err: () => string; ended: Promise<Ended> }

/** Starts `cmd` (the launcher itself by default, as a user runs it) with pipes on every stream. */
function start(cmd: string, args: string[], env: NodeJS.ProcessEnv = {}, stdout: 'pipe' | number = 'pipe'): Proc {
  const child = spawn(cmd, args, { cwd: ROOT, env: { ...process.env, DATABASE_URL: '', ...env }, stdio: ['pipe', stdout, 'pipe'] });
  let out = '';
  let err = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString('latin1')));
  child.stderr!.on('data', (d: Buffer) => (err += d));
  child.stdin!.on('error', () => undefined);
  const ended = new Promise<Ended>((resolve) => child.on('close', (code, signal) => resolve({ code, signal })));
  return { child, out: () => out, err: () => err, ended };
}

/** Polls `cond` until it holds (an observable moment), failing after `ms`. */
async function until(cond: () => boolean, what: string, ms = 60000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Pids of node processes running the userport launcher with USERPORT_TEST_MARK=mark. */
function markedUserports(mark: string): number[] {
  const pids: number[] = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const env = fs.readFileSync(`/proc/${d}/environ`, 'latin1');
      const cmd = fs.readFileSync(`/proc/${d}/cmdline`, 'latin1');
      if (env.includes(`USERPORT_TEST_MARK=${mark}\0`) && /^[^\0]*node\0/.test(cmd) && /userport/.test(cmd)) pids.push(Number(d));
    } catch { /* gone, or not ours */ }
  }
  return pids;
}

/** An export of `n` users cut in two: the import is stuck reading until the rest is written. */
function splitExport(n: number): { head: string; tail: string } {
  const records: Rec[] = Array.from({ length: n }, (_, i) => user(i + 1, `u${i + 1}`));
  const body = records.map((r) => JSON.stringify(r));
  const half = Math.floor(n / 2);
  return { head: `[${body.slice(0, half).join(',')},`, tail: `${body.slice(half).join(',')}]` };
}

const tmpDir = () => fs.mkdtempSync(path.join(os.tmpdir(), 'userport-intr-'));
const reading = (p: Proc) => () => /userport: reading/.test(p.err());
const PROGRESS = { USERPORT_PROGRESS_SECONDS: '0' };

async function nothingImported(db: TestDb): Promise<void> {
  expect(await db.count('auth_user')).to.equal(0);
  expect(await db.count('userport.imports')).to.equal(0);
}

describe('reliability, round three (issue #20)', function () {
  this.timeout(300000);

  describe('an interrupted import says what it left (issue #21 item 2)', () => {
    for (const [signal, exit] of [['SIGINT', 130], ['SIGTERM', 143], ['SIGHUP', 129]] as const) {
      it(`${signal}: one line says the atomic import was rolled back; the process dies of ${signal} (exit ${exit})`, async () => {
        const db = await freshDatabase();
        try {
          const { head } = splitExport(50);
          const p = start(BIN, ['import', 'users', '-', '--database-url', db.url], PROGRESS);
          p.child.stdin!.write(head);
          await until(reading(p), 'the import to be reading');
          p.child.kill(signal);
          const end = await p.ended;
          expect(end.signal, p.err()).to.equal(signal);
          expect(p.err()).to.match(new RegExp(`^userport: interrupted by ${signal} \\(exit ${exit}\\): the import was rolled back, nothing of it was written$`, 'm'));
          await nothingImported(db);
        } finally {
          await db.close();
        }
      });
    }

    for (const signal of ['SIGINT', 'SIGTERM'] as const) {
      it(`${signal} to an atomic import into a bare database leaves it bare: the schema and Sentry's tables its migration made are taken away`, async () => {
        const db = await freshDatabase(false);
        const tables = async () => (await db.knex.raw(`SELECT n.nspname || '.' || c.relname AS t FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1`)).rows.map((r: { t: string }) => r.t);
        try {
          expect(await tables()).to.deep.equal([]);
          const { head } = splitExport(50);
          const p = start(BIN, ['import', 'users', '-', '--database-url', db.url], PROGRESS);
          p.child.stdin!.write(head);
          await until(reading(p), 'the import to be reading');
          expect(await tables(), 'migrated while it reads').to.include('public.auth_user');
          p.child.kill(signal);
          const end = await p.ended;
          expect(end.signal, p.err()).to.equal(signal);
          expect(p.err()).to.match(new RegExp(`^userport: interrupted by ${signal} \\(exit \\d+\\): the import was rolled back, nothing of it was written$`, 'm'));
          expect(p.err(), 'one line, no error of the stopped import').to.not.include('USERPORT_ABORTED');
          expect(await tables()).to.deep.equal([]);
        } finally {
          await db.close();
        }
      });
    }

    it('SIGTERM to a resumable import names the import and says the same command continues it', async () => {
      const db = await freshDatabase();
      const dir = tmpDir();
      try {
        const file = path.join(dir, 'users.json');
        await pipeline(createExportGenerator({ users: 3000, seed: 3 }), fs.createWriteStream(file));
        const p = start(BIN, ['import', 'users', file, '--database-url', db.url, '--resumable', '--import-id', 'term-1', '--batch-rows', '500']);
        await until(() => /Import id: term-1/.test(p.err()), 'the import id line');
        p.child.kill('SIGTERM');
        const end = await p.ended;
        expect(end.signal, p.err()).to.equal('SIGTERM');
        expect(p.err()).to.include('userport: interrupted by SIGTERM (exit 143): import term-1 keeps what its last checkpoint committed; run the same command again to continue it');
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
        await db.close();
      }
    });
  });

  describe('a supervisor stopping `npx userport` (item 2)', () => {
    it('SIGTERM to npx stops the import under it and rolls it back: nothing is committed', async () => {
      const db = await freshDatabase();
      const mark = crypto.randomUUID();
      const dir = tmpDir();
      try {
        const { head, tail } = splitExport(50);
        // A FIFO, not stdin: npm relays stdin, so npx dying would end the input, and the import
        // would fail for that reason whether or not it noticed its parent was gone.
        const fifo = path.join(dir, 'users.fifo');
        expect(spawnSync('mkfifo', [fifo]).status).to.equal(0);
        const p = start('npx', ['userport', 'import', 'users', fifo, '--database-url', db.url], { ...PROGRESS, USERPORT_TEST_MARK: mark });
        const writer = fs.createWriteStream(fifo);
        writer.write(head);
        await until(reading(p), 'the import to be reading');
        const pids = markedUserports(mark);
        expect(pids, 'the userport process under npx').to.have.length(1);
        p.child.kill('SIGTERM');
        await p.ended;
        // The import must stop by itself; if it still runs, the rest of the input lets it commit.
        await until(() => !processAlive(pids[0]!), 'the userport process to stop', 5000).catch(() => undefined);
        writer.on('error', () => undefined);
        writer.end(tail);
        await until(() => !processAlive(pids[0]!), 'the userport process to end', 60000);
        await nothingImported(db);
        expect(p.err()).to.match(/userport: the process that started userport \(pid \d+\) went away: stopping as on SIGTERM \(exit 143\): the import was rolled back/);
      } finally {
        for (const pid of markedUserports(mark)) process.kill(pid, 'SIGKILL');
        fs.rmSync(dir, { recursive: true, force: true });
        await db.close();
      }
    });
  });

  describe('nohup (item 3)', () => {
    it('a hangup does not stop an import started under nohup: it finishes and commits', async () => {
      const db = await freshDatabase();
      const dir = tmpDir();
      try {
        const { head, tail } = splitExport(50);
        const p = start('nohup', [BIN, 'import', 'users', '-', '--database-url', db.url], PROGRESS);
        p.child.stdin!.write(head);
        await until(reading(p), 'the import to be reading');
        // nohup execs the launcher, which execs node: the same pid all along.
        p.child.kill('SIGHUP');
        p.child.stdin!.end(tail);
        const end = await p.ended;
        expect(end, p.err()).to.deep.equal({ code: 0, signal: null });
        expect(await db.count('auth_user')).to.equal(50);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
        await db.close();
      }
    });
  });

  describe('temporary files (item 4)', () => {
    let db: TestDb;
    let dir: string;
    let keys: { pub: string; key: string };
    const listing = (d: string) => fs.readdirSync(d).sort();
    const grown = (d: string, re: RegExp) => () => fs.readdirSync(d).some((n) => re.test(n) && fs.statSync(path.join(d, n)).size > 0);

    before(async () => {
      db = await freshDatabase();
      dir = tmpDir();
      const file = path.join(dir, 'gen.json');
      await pipeline(createExportGenerator({ users: 20000, seed: 4 }), fs.createWriteStream(file));
      await importUsers({ source: file, databaseUrl: db.url });
      fs.rmSync(file);
      const pair = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
      keys = { pub: path.join(dir, 'pub.pem'), key: path.join(dir, 'key.pem') };
      fs.writeFileSync(keys.pub, pair.publicKey.export({ type: 'spki', format: 'pem' }));
      fs.writeFileSync(keys.key, pair.privateKey.export({ type: 'pkcs8', format: 'pem' }));
    });
    after(async () => {
      fs.rmSync(dir, { recursive: true, force: true });
      await db.close();
    });

    for (const signal of ['SIGTERM', 'SIGINT'] as const) {
      it(`${signal} during \`export users FILE\` leaves no partial file (password hashes) behind`, async () => {
        const out = tmpDir();
        try {
          const p = start(BIN, ['export', 'users', path.join(out, 'users.json'), '--database-url', db.url, '--no-prompt', '-q']);
          await until(grown(out, /^\.users\.json\..*\.partial$/), 'the partial file to grow');
          p.child.kill(signal);
          expect((await p.ended).signal, p.err()).to.equal(signal);
          expect(listing(out)).to.deep.equal([]);
          expect(p.err()).to.match(new RegExp(`^userport: interrupted by ${signal}`, 'm'));
        } finally {
          fs.rmSync(out, { recursive: true, force: true });
        }
      });
    }

    it('after a SIGKILL of `export users FILE`, the next run of the same export removes the leftover', async () => {
      const out = tmpDir();
      try {
        const p = start(BIN, ['export', 'users', path.join(out, 'users.json'), '--database-url', db.url, '--no-prompt', '-q']);
        await until(grown(out, /\.partial$/), 'the partial file to grow');
        p.child.kill('SIGKILL');
        await p.ended;
        expect(listing(out).filter((n) => n.endsWith('.partial'))).to.have.length(1);
        const again = start(BIN, ['export', 'users', path.join(out, 'users.json'), '--database-url', db.url, '--no-prompt', '-q']);
        expect(await again.ended, again.err()).to.deep.equal({ code: 0, signal: null });
        expect(listing(out)).to.deep.equal(['users.json']);
      } finally {
        fs.rmSync(out, { recursive: true, force: true });
      }
    });

    it('an encrypted export\'s spool left by a SIGKILL is removed by the next run', async () => {
      const out = tmpDir();
      const spools = tmpDir();
      try {
        const args = ['export', 'users', path.join(out, 'users.tar'), '--database-url', db.url, '--encrypt-with', keys.pub, '--tmp-dir', spools, '--no-prompt', '-q'];
        const p = start(BIN, args);
        const spoolGrown = () => fs.readdirSync(spools).some((d) => {
          try { return fs.readdirSync(path.join(spools, d)).some((f) => fs.statSync(path.join(spools, d, f)).size > 0); } catch { return false; }
        });
        await until(spoolGrown, 'the spool to grow');
        p.child.kill('SIGKILL');
        await p.ended;
        expect(listing(spools)).to.have.length(1);
        const again = start(BIN, args);
        expect(await again.ended, again.err()).to.deep.equal({ code: 0, signal: null });
        expect(listing(spools)).to.deep.equal([]);
        expect(listing(out)).to.deep.equal(['users.tar']);
        // The tarball is reused below, by the decrypt test.
        fs.copyFileSync(path.join(out, 'users.tar'), path.join(dir, 'users.tar'));
      } finally {
        fs.rmSync(out, { recursive: true, force: true });
        fs.rmSync(spools, { recursive: true, force: true });
      }
    });

    for (const signal of ['SIGTERM', 'SIGINT'] as const) {
      it(`${signal} during \`decrypt\` leaves no partial plaintext behind`, async function () {
        if (!fs.existsSync(path.join(dir, 'users.tar'))) this.skip();
        const out = tmpDir();
        try {
          const p = start(BIN, ['decrypt', '--decrypt-with', keys.key, path.join(dir, 'users.tar'), path.join(out, 'users.json')]);
          await until(grown(out, /\.partial$/), 'the partial plaintext to grow');
          p.child.kill(signal);
          expect((await p.ended).signal, p.err()).to.equal(signal);
          expect(listing(out)).to.deep.equal([]);
        } finally {
          fs.rmSync(out, { recursive: true, force: true });
        }
      });
    }

    it('pipes (item 5): `export users - | head -c 1000` and `| true` end quietly with 141 (128 + SIGPIPE)', async () => {
      const head = start(BIN, ['export', 'users', '-', '--database-url', db.url, '-q']);
      let taken = 0;
      head.child.stdout!.on('data', (d: Buffer) => {
        taken += d.length;
        if (taken >= 1000) head.child.stdout!.destroy();
      });
      expect(await head.ended).to.deep.equal({ code: 141, signal: null });
      expect(head.err()).to.equal('');
      const tru = start(BIN, ['export', 'users', '-', '--database-url', db.url, '-q']);
      tru.child.stdout!.destroy();
      expect(await tru.ended).to.deep.equal({ code: 141, signal: null });
      expect(tru.err()).to.equal('');
    });

    for (const encrypted of [false, true]) {
      it(`pipes (item 5): an import whose ${encrypted ? 'encrypted ' : ''}export side was SIGKILLed says the input ended early, and where`, async () => {
        const target = await freshDatabase();
        try {
          const exp = start(BIN, ['export', 'users', '-', '--database-url', db.url, '-q', ...(encrypted ? ['--encrypt-with', keys.pub] : [])]);
          const imp = start(BIN, ['import', 'users', '-', '--database-url', target.url, ...(encrypted ? ['--decrypt-with', keys.key] : [])]);
          let passed = 0;
          exp.child.stdout!.on('data', (d: Buffer) => {
            passed += d.length;
            imp.child.stdin!.write(d);
            if (passed >= 100000 && exp.child.exitCode === null) exp.child.kill('SIGKILL');
          });
          exp.child.stdout!.on('close', () => imp.child.stdin!.end());
          await exp.ended;
          const end = await imp.ended;
          expect(end.code).to.equal(1);
          const lines = imp.err().trim().split('\n');
          expect(lines).to.have.length(1);
          expect(lines[0]).to.match(encrypted ? /truncated.*\[USERPORT_DECRYPT_TRUNCATED\]$/ : /truncated \(.*byte \d+.*\) \[USERPORT_INPUT_TRUNCATED\]$/);
          await nothingImported(target);
        } finally {
          await target.close();
        }
      });
    }

    it('pipes (item 5): an export to a closed standard output (>&-) fails, exit 1, and says so', async () => {
      const p = start('sh', ['-c', 'exec "$0" export users - --database-url "$1" -q >&-', BIN, db.url]);
      expect(await p.ended).to.deep.equal({ code: 1, signal: null });
      expect(p.err()).to.match(/^userport: standard output is closed \(>&-\).*\[USERPORT_IO\]\n$/);
    });

    it('pipes (item 5): a full disk under DEST or stdout is a runtime failure (exit 1), in one line, leaving nothing', async function () {
      const full = fs.openSync('/dev/full', 'w');
      try {
        const p = start(BIN, ['export', 'users', '-', '--database-url', db.url, '-q'], {}, full);
        expect(await p.ended).to.deep.equal({ code: 1, signal: null });
        expect(p.err()).to.match(/^userport: cannot write to standard output: ENOSPC.*\[USERPORT_IO\]\n$/);
      } finally {
        fs.closeSync(full);
      }
      const mnt = tmpDir();
      if (spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', mnt]).status !== 0) {
        fs.rmSync(mnt, { recursive: true, force: true });
        this.skip();
      }
      try {
        for (const args of [
          ['export', 'users', path.join(mnt, 'users.json'), '--database-url', db.url, '--no-prompt', '-q'],
          ['decrypt', '--decrypt-with', keys.key, path.join(dir, 'users.tar'), path.join(mnt, 'users.json')],
        ]) {
          if (args[0] === 'decrypt' && !fs.existsSync(path.join(dir, 'users.tar'))) continue;
          const p = start(BIN, args);
          expect(await p.ended, args[0]).to.deep.equal({ code: 1, signal: null });
          expect(p.err(), args[0]).to.match(/^userport: cannot write .*ENOSPC.*\[USERPORT_IO\]\n$/);
          expect(fs.readdirSync(mnt)).to.deep.equal([]);
        }
      } finally {
        spawnSync('umount', [mnt]);
        fs.rmSync(mnt, { recursive: true, force: true });
      }
    });
  });

  describe('`export users -` errors (issue #21 item 1)', () => {
    it('print the one clean line a file DEST prints, never a stack trace', async () => {
      const bare = await freshDatabase(false);
      try {
        for (const [url, code] of [[bare.url, 'USERPORT_EXPORT_SCHEMA'], ['postgresql://u@127.0.0.1:1/none', 'USERPORT_DB_CONNECT']] as const) {
          const p = start(BIN, ['export', 'users', '-', '--database-url', url, '-q']);
          expect(await p.ended).to.deep.equal({ code: 1, signal: null });
          expect(p.err()).to.match(new RegExp(`^userport: [^\\n]*\\[${code}\\]\\n$`));
          expect(p.err()).not.to.include('Node.js');
        }
      } finally {
        await bare.close();
      }
    });
  });
});
