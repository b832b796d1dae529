/** The command line, run as a real process: the quick start, output, errors and exit codes. */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { stopEmbedded } from '../lib/db/embedded.js';
import { freshDatabase, type TestDb } from './helpers/db.js';
import { user, useremail, writeExport } from './helpers/exports.js';

const ROOT = path.resolve('.');
const BIN = path.join(ROOT, 'bin/userport.js');

function run(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; input?: string } = {}) {
  return new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    const child = spawn(cmd, args, { cwd: opts.cwd ?? ROOT, env: { ...process.env, DATABASE_URL: '', ...opts.env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d));
    child.stderr.on('data', (d: Buffer) => (stderr += d));
    child.stdin.end(opts.input ?? '');
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}
const userport = (args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; input?: string } = {}) => run(process.execPath, [BIN, ...args], opts);

describe('userport CLI', function () {
  this.timeout(180000);

  describe('quick start (embedded database)', () => {
    it('`npx userport import users samples/users.json` works with no database given, and says how to connect', async () => {
      const home = fs.mkdtempSync(path.join(os.tmpdir(), 'userport-home-'));
      fs.chmodSync(home, 0o755);
      try {
        const res = await run('npx', ['userport', 'import', 'users', 'samples/users.json'], { env: { USERPORT_HOME: home } });
        expect(res.code, res.stderr).to.equal(0);
        expect(res.stdout).to.match(/sentry\.user\s+200\s+200\s/);
        expect(res.stdout).to.include('npx userport db psql');
        const url = /embedded PostgreSQL: (postgresql:\/\/\S+)/.exec(res.stdout)?.[1];
        expect(url).to.match(/@127\.0\.0\.1:\d+\/userport$/);
        const again = await userport(['db', 'url'], { env: { USERPORT_HOME: home } });
        expect(again.stdout.trim()).to.equal(url);
        // The data folder is private to the server's owner.
        expect(fs.statSync(path.join(home, 'pgdata')).mode & 0o777).to.equal(0o700);
      } finally {
        await stopEmbedded(home, 'immediate').catch(() => undefined);
        fs.rmSync(home, { recursive: true, force: true });
      }
    });

    it('keeps the embedded data in .userport/pgdata under the current directory, between runs', async () => {
      const cwd = fs.mkdtempSync(path.join(os.tmpdir(), 'userport-cwd-'));
      fs.chmodSync(cwd, 0o755);
      try {
        const file = writeExport([user(1, 'alice')]);
        const first = await userport(['import', 'users', file, '--json'], { cwd });
        expect(first.code, first.stderr).to.equal(0);
        expect(fs.existsSync(path.join(cwd, '.userport/pgdata/PG_VERSION'))).to.equal(true);
        await userport(['db', 'stop'], { cwd });
        const second = await userport(['import', 'users', file, '--json'], { cwd });
        expect(second.code, second.stderr).to.equal(0);
        expect(JSON.parse(second.stdout).models['sentry.user'].renamed).to.equal(1);
      } finally {
        await stopEmbedded(path.join(cwd, '.userport'), 'immediate').catch(() => undefined);
        fs.rmSync(cwd, { recursive: true, force: true });
      }
    });
  });

  describe('with --database-url', () => {
    let db: TestDb;
    before(async () => { db = await freshDatabase(false); });
    after(async () => { await db.close(); });

    it('migrate creates the tables, then says it is up to date', async () => {
      const a = await userport(['migrate', '--database-url', db.url]);
      expect(a.code, a.stderr).to.equal(0);
      expect(a.stdout).to.match(/Applied: .*sentry_user_tables/);
      const b = await userport(['migrate', '--database-url', db.url]);
      expect(b.stdout).to.include('Already up to date');
    });

    it('reads standard input with -, and --json prints the summary', async () => {
      const res = await userport(['import', 'users', '-', '--database-url', db.url, '--json'], { input: JSON.stringify([user(1, 'stdin-user')]) });
      expect(res.code, res.stderr).to.equal(0);
      const s = JSON.parse(res.stdout);
      expect(s.models['sentry.user'].inserted).to.equal(1);
      expect(s.mode).to.equal('atomic');
    });

    it('prints a summary table with drop reasons and unmatched filter names', async () => {
      const names = path.join(os.tmpdir(), `names-${process.pid}.txt`);
      fs.writeFileSync(names, ' table-user \nnobody\n');
      const res = await userport(['import', 'users', writeExport([user(1, 'table-user'), useremail(1, 1, 'x@example.com'), useremail(2, 77, 'y@example.com')]),
        '--database-url', db.url, '--filter-usernames-file', names]);
      expect(res.code, res.stderr).to.equal(0);
      expect(res.stdout).to.match(/model\s+read\s+inserted\s+existing\s+merged\s+renamed\s+filtered\s+dropped\s+rejected/);
      expect(res.stdout).to.include('dropped 1 sentry.useremail: user not in the export');
      expect(res.stdout).to.include('No user matched these --filter-usernames: nobody');
    });

    it('turns bad input into one line with position and code, exit code 1; --debug adds the stack', async () => {
      const file = writeExport('[{"model": "sentry.user", "pk": 1, "fields": {"username": "a"}}, {"model": ]');
      const res = await userport(['import', 'users', file, '--database-url', db.url]);
      expect(res.code).to.equal(1);
      const lines = res.stderr.trim().split('\n');
      expect(lines).to.have.length(1);
      expect(lines[0]).to.match(/^userport: invalid JSON in record 2: .*\(record 2, byte 75, line 1, column 76\) \[USERPORT_PARSE_JSON\]$/);
      const debug = await userport(['import', 'users', file, '--database-url', db.url, '--debug']);
      expect(debug.stderr).to.match(/\n\s+at /);
    });

    it('rejects bad options and missing files with a clear line and exit code 1', async () => {
      const cases: [string[], string][] = [
        [['import', 'users', 'x.json', '--nope'], 'USERPORT_OPTION_INVALID'],
        [['import', 'users', '/nonexistent.json', '--database-url', db.url], 'USERPORT_IO'],
        [['import', 'users', 'a', '--filter-usernames', 'a', '--filter-usernames-file', 'b'], 'USERPORT_OPTION_INVALID'],
        [['import', 'users', 'a', '--max-depth', 'ten'], 'USERPORT_OPTION_INVALID'],
        [['import', 'users', 'a', '--database-url', 'mysql://x'], 'USERPORT_OPTION_INVALID'],
        [['frobnicate'], 'USERPORT_OPTION_INVALID'],
      ];
      // From an empty folder, without a database: a bad option must fail before any server starts.
      const cwd = fs.mkdtempSync(path.join(os.tmpdir(), 'userport-badopt-'));
      try {
        for (const [args, code] of cases) {
          const res = await userport(args, { cwd });
          expect(res.code, args.join(' ')).to.equal(1);
          expect(res.stderr, args.join(' ')).to.include(`[${code}]`);
        }
        expect(fs.existsSync(path.join(cwd, '.userport')), 'an embedded server was started').to.equal(false);
      } finally {
        fs.rmSync(cwd, { recursive: true, force: true });
      }
    });

    it('shows progress (bytes, records/s, ETA) on stderr when it is a terminal, and none otherwise', async () => {
      const file = writeExport(Array.from({ length: 3000 }, (_, i) => user(i + 1, `tty${i}`)));
      // `script` gives the command a pseudo-terminal; its output is what the terminal showed.
      const cmd = `${process.execPath} ${BIN} import users ${file} --database-url '${db.url}'`;
      const tty = await run('script', ['-qec', cmd, '/dev/null']);
      expect(tty.code, tty.stdout).to.equal(0);
      expect(tty.stdout).to.match(/of [\d.]+ [KM]B \(\d+%\) · [\d,]+ records · [\d,]+ rec\/s · ETA (\d+s|--)/);
      expect(tty.stdout).to.match(/[\d.]+ [KM]B read · 3,000 records · [\d,]+ rec\/s · merging into Sentry's tables/);
      const piped = await userport(['import', 'users', file, '--database-url', db.url]);
      expect(piped.stderr).not.to.include('rec/s');
      const quiet = await run('script', ['-qec', `${cmd} --no-progress`, '/dev/null']);
      expect(quiet.stdout).not.to.include('rec/s');
    });

    it('lists imports', async () => {
      const res = await userport(['imports', '--database-url', db.url, '--json']);
      expect(res.code).to.equal(0);
      const rows = JSON.parse(res.stdout) as { mode: string; state: string }[];
      expect(rows.length).to.be.at.least(2);
      expect(rows.every((r) => r.state === 'done' && r.mode === 'atomic')).to.equal(true);
    });
  });
});
