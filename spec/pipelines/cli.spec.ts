/** The command line, run as a real process: the quick start, output, errors and exit codes. */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { stopEmbedded } from '../../lib/db/embedded.js';
import { freshDatabase, type TestDb } from '../helpers/db.js';
import { user, useremail, writeExport } from '../helpers/exports.js';
import { tmpFolder, tmpPath } from '../helpers/setup.js';
import { installImportGate, reached } from '../helpers/moments.js';

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
      const home = tmpFolder('userport-home-');
      fs.chmodSync(home, 0o755);
      try {
        const res = await run('npx', ['userport', 'import', 'users', 'samples/users.json'], { env: { USERPORT_HOME: home } });
        expect(res.code, res.stderr).to.equal(0);
        expect(res.stdout).to.match(/^read\s+200\s/m);
        expect(res.stdout).to.match(/^inserted\s+200\s/m);
        expect(res.stdout).to.include('npx userport db psql');
        const url = /embedded PostgreSQL:\n {2}(postgresql:\/\/\S+)/.exec(res.stdout)?.[1];
        // Every line a person reads fits 80 columns, the URL's included.
        for (const line of res.stdout.split('\n')) expect(line.length, line).to.be.at.most(80);
        expect(url).to.match(/@127\.0\.0\.1:\d+\/userport$/);
        const again = await userport(['db', 'url'], { env: { USERPORT_HOME: home } });
        expect(again.stdout.trim()).to.equal(url);
        // The data folder is private to the server's owner.
        expect(fs.statSync(path.join(home, 'pgdata')).mode & 0o777).to.equal(0o700);
        // A dry run says everything was rolled back, never where "the data is".
        const dry = await userport(['import', 'users', 'samples/users.json', '--dry-run'], { env: { USERPORT_HOME: home } });
        expect(dry.code, dry.stderr).to.equal(0);
        // Wrapped at 80 columns.
        expect(dry.stdout.replace(/\n +/g, ' ')).to.match(/^Dry run: .*everything was rolled back, nothing was written/);
        expect(dry.stdout).not.to.include('The data is');
      } finally {
        await stopEmbedded(home, 'immediate').catch(() => undefined);
        fs.rmSync(home, { recursive: true, force: true });
      }
    });

    it('keeps the embedded data in .userport/pgdata under the current directory, between runs', async () => {
      const cwd = tmpFolder('userport-cwd-');
      fs.chmodSync(cwd, 0o755);
      try {
        const file = writeExport([user(1, 'alice')]);
        const first = await userport(['import', 'users', file, '--json'], { cwd });
        expect(first.code, first.stderr).to.equal(0);
        expect(fs.existsSync(path.join(cwd, '.userport/pgdata/PG_VERSION'))).to.equal(true);
        await userport(['db', 'stop'], { cwd });
        // The same file again is refused as already imported (issue #20): ask for a second copy.
        const second = await userport(['import', 'users', file, '--json', '--allow-reimport'], { cwd });
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
      const names = tmpPath('names.txt');
      fs.writeFileSync(names, ' table-user \nnobody\n');
      const res = await userport(['import', 'users', writeExport([user(1, 'table-user'), useremail(1, 1, 'x@example.com'), useremail(2, 77, 'y@example.com')]),
        '--database-url', db.url, '--filter-usernames-file', names]);
      expect(res.code, res.stderr).to.equal(0);
      expect(res.stdout).to.match(/^\s+user\s+email\s+useremail\s+useroption\s+total$/m);
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

    it('shows the phase, elapsed time and an ETA over the whole import on a terminal, fitting 72 columns', async () => {
      const file = writeExport(Array.from({ length: 3000 }, (_, i) => user(i + 1, `tty${i}`)));
      // `script` gives the command a pseudo-terminal; its output is what the terminal showed.
      const cmd = `stty cols 72 rows 24; ${process.execPath} ${BIN} import users ${file} --database-url '${db.url}'`;
      const tty = await run('script', ['-qec', cmd, '/dev/null']);
      expect(tty.code, tty.stdout).to.equal(0);
      // What the line showed before it was cleared for the summary.
      const frames = tty.stdout.split(/\r\x1b\[K/).slice(0, -1).filter((f) => f.length);
      expect(frames.some((f) => /^reading [\d.]+ (B|KiB|MiB) of [\d.]+ MiB \(\d+%\) · \d+s elapsed · ETA (~\d+s|--)/.test(f)), frames.join('|')).to.equal(true);
      // The merge's step (or the last rows being staged) after its record count.
      expect(frames.some((f) => /^merging 3,000 records(?: into Sentry's tables)?: [a-z ()/0-9]+ · \d+s elapsed · ETA (~\d+s|unknown)/.test(f)), frames.join('|')).to.equal(true);
      for (const f of frames) expect(f.length, f).to.be.at.most(71);
      const quiet = await run('script', ['-qec', `${cmd} --no-progress`, '/dev/null']);
      expect(quiet.stdout).not.to.include('elapsed');
    });

    it('prints short progress lines when stderr is a log, none with --no-progress or --silent', async () => {
      const file = writeExport(Array.from({ length: 500 }, (_, i) => user(i + 1, `log${i}`)));
      // Every few seconds by default: 0 here so that a short import prints its lines.
      const piped = await userport(['import', 'users', file, '--database-url', db.url], { env: { USERPORT_PROGRESS_SECONDS: '0' } });
      expect(piped.code, piped.stderr).to.equal(0);
      const lines = piped.stderr.trim().split('\n');
      expect(lines[0]).to.match(/^userport: reading .* elapsed/);
      expect(lines.some((l) => /^userport: merging 500 records into Sentry's tables: [a-z ()/0-9]+ · \d+s elapsed/.test(l)), piped.stderr).to.equal(true);
      expect(piped.stderr).not.to.include('\r').and.not.include('\x1b');
      for (const flag of ['--no-progress', '--silent', '-q']) {
        const r = await userport(['import', 'users', file, '--database-url', db.url, flag], { env: { USERPORT_PROGRESS_SECONDS: '0' } });
        expect(r.code, r.stderr).to.equal(0);
        expect(r.stderr, flag).to.equal('');
      }
    });

    it('summary: fits 80 columns, thousands separators, a total column, renamed shown as part of inserted, time per phase', async () => {
      const file = writeExport([...Array.from({ length: 1200 }, (_, i) => user(i + 1, `sum${i}`)), user(5000, 'table-user')]);
      const res = await userport(['import', 'users', file, '--database-url', db.url, '--no-progress']);
      expect(res.code, res.stderr).to.equal(0);
      for (const line of res.stdout.split('\n')) expect(line.length, line).to.be.at.most(80);
      expect(res.stdout).to.match(/^\s+user\s+email\s+useremail\s+useroption\s+total$/m);
      // table-user was imported by an earlier test: renamed, and counted among the inserted.
      expect(res.stdout).to.match(/^read\s+1,201\s+0\s+0\s+0\s+1,201$/m);
      expect(res.stdout).to.match(/^inserted\s+1,201\s+0\s+0\s+0\s+1,201$/m);
      expect(res.stdout).to.match(/^ {2}of them renamed\s+1\s+0\s+0\s+0\s+1$/m);
      expect(res.stdout).to.match(/^Imported 1,201 records \([\d.]+ KiB\) in [\d.]+s/);
      expect(res.stdout).to.match(/^Time: reading and staging [\d.]+s, merging [\d.]+s$/m);
      // Each new user's own address gets a user email, and each new user-email address an Email
      // row; table-user's address is already in the database from the earlier import.
      expect(res.stdout).to.match(/^Also written: 1,201 lost-password hashes, 1,201 primary user emails,$/m);
      expect(res.stdout).to.match(/^ {2}1,200 email rows for user-email addresses/m);
      // One record is a record.
      const one = await userport(['import', 'users', writeExport([user(7001, 'just-one')]), '--database-url', db.url, '--no-progress']);
      expect(one.code, one.stderr).to.equal(0);
      expect(one.stdout).to.match(/^Imported 1 record \([\d.]+ B\) in [\d.]+s/);
    });

    it('lists imports with a header and a real finish time for atomic imports', async () => {
      const res = await userport(['imports', '--database-url', db.url, '--json']);
      expect(res.code).to.equal(0);
      const rows = JSON.parse(res.stdout) as { mode: string; state: string; startedAt: string; finishedAt: string }[];
      expect(rows.length).to.be.at.least(2);
      expect(rows.every((r) => r.state === 'done' && r.mode === 'atomic')).to.equal(true);
      // The finish time is when the import ended, not its transaction's start (now()).
      for (const r of rows) expect(Date.parse(r.finishedAt)).to.be.above(Date.parse(r.startedAt));
      const table = await userport(['imports', '--database-url', db.url]);
      // UUID ids make a row wider than 80 columns: two lines per import, times and source under it.
      expect(table.stdout.split('\n')[0]).to.match(/^ID\s+MODE\s+STATE\s+RECORDS$/);
      expect(table.stdout.split('\n')[1]).to.match(/^\s+STARTED \(UTC\)\s+FINISHED \(UTC\)\s+SOURCE$/);
      expect(table.stdout).to.match(/ atomic\s+done\s+[\d,]+\n\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s+\d{4}-/);
    });

    it('ends quietly when its output is piped into a reader that stops early (head)', async () => {
      for (const args of [['--help'], ['imports', '--database-url', db.url]]) {
        const r = await run('bash', ['-c', `${process.execPath} ${BIN} ${args.map((a) => `'${a}'`).join(' ')} | head -c 1 >/dev/null; echo "exit=\${PIPESTATUS[0]}" >&2`]);
        expect(r.stderr, args.join(' ')).to.equal('exit=0\n');
      }
    });

    it('input hints: an encrypted export without a key, JSON with a key, UTF-16; a process substitution just works', async () => {
      const enc = await userport(['import', 'users', 'samples/users.tar', '--database-url', db.url]);
      expect(enc.code).to.equal(2);
      expect(enc.stderr).to.match(/looks encrypted.*--decrypt-with/).and.include('[USERPORT_OPTION_INVALID]');
      const plain = await userport(['import', 'users', 'samples/users.json', '--decrypt-with', 'samples/demo-key.pem', '--database-url', db.url]);
      expect(plain.code).to.equal(2);
      expect(plain.stderr).to.match(/is plain JSON, not an encrypted export/);
      const utf16 = tmpPath('utf16.json');
      fs.writeFileSync(utf16, Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(JSON.stringify([user(1, 'u16')]), 'utf16le')]));
      const u = await userport(['import', 'users', utf16, '--database-url', db.url]);
      expect(u.code).to.equal(1);
      expect(u.stderr).to.include('UTF-16').and.include('[USERPORT_INPUT_UTF8]');
      // From a pipe too (no file to sniff): the tokenizer says UTF-16.
      const piped16 = await run('bash', ['-c', `cat ${utf16} | ${process.execPath} ${BIN} import users - --database-url '${db.url}'`]);
      expect(piped16.code).to.equal(1);
      expect(piped16.stderr).to.include('UTF-16').and.include('[USERPORT_INPUT_UTF8]');
      const file = writeExport([user(1, 'procsub')]);
      const sub = await run('bash', ['-c', `${process.execPath} ${BIN} import users <(cat ${file}) --database-url '${db.url}' --json`]);
      expect(sub.code, sub.stderr).to.equal(0);
      expect(JSON.parse(sub.stdout).models['sentry.user'].read).to.equal(1);
      const resumable = await run('bash', ['-c', `${process.execPath} ${BIN} import users <(cat ${file}) --database-url '${db.url}' --resumable`]);
      expect(resumable.code).to.equal(2);
      expect(resumable.stderr).to.match(/--resumable needs SRC to be a regular file/);
    });

    it("accepts Sentry's flags with Sentry's meaning: --merge_users, --filter_usernames, --no-prompt, -q", async () => {
      const file = writeExport([user(1, 'sentry-a'), user(2, 'sentry-b')]);
      const first = await userport(['import', 'users', file, '--database-url', db.url, '--filter_usernames', 'sentry-a', '--no-prompt', '--json']);
      expect(first.code, first.stderr).to.equal(0);
      expect(JSON.parse(first.stdout).models['sentry.user']).to.include({ inserted: 1, filtered: 1 });
      const second = await userport(['import', 'users', file, '--database-url', db.url, '--merge_users', '-q']);
      expect(second.code, second.stderr).to.equal(0);
      expect(second.stdout).to.equal('');
      const names = (await db.knex.raw(`SELECT username FROM auth_user WHERE username LIKE 'sentry-%' ORDER BY 1`)).rows.map((r: { username: string }) => r.username);
      expect(names).to.deep.equal(['sentry-a', 'sentry-b']);
    });

    it('an empty --filter-usernames is no filter (as Sentry\'s parse_filter_arg), and the summary says so', async () => {
      const file = writeExport([user(1, 'empty-filter-a'), user(2, 'empty-filter-b')]);
      const res = await userport(['import', 'users', file, '--database-url', db.url, '--filter-usernames', '', '--no-progress']);
      expect(res.code, res.stderr).to.equal(0);
      expect(res.stdout).to.match(/^inserted\s+2\s+0\s+0\s+0\s+2$/m);
      expect(res.stdout).to.include('--filter-usernames was empty: no filter');
    });
  });

  describe('usage errors', () => {
    it('are caught before any database is touched: one line with the code, exit 2, no server started', async () => {
      const cwd = tmpFolder('userport-badopt-');
      const good = path.join(cwd, 'ok.json');
      const blankNames = path.join(cwd, 'blank-names.txt');
      fs.writeFileSync(blankNames, '\n  \n');
      fs.writeFileSync(good, JSON.stringify([user(1, 'a')]));
      fs.mkdirSync(path.join(cwd, 'adir'));
      const cases: [string[], string, RegExp][] = [
        [['import', 'users', good, '--nope'], 'USERPORT_OPTION_INVALID', /unknown option --nope/],
        [['import', 'users', good, '--max-rejects', '3'], 'USERPORT_OPTION_INVALID', /--max-rejects needs --rejects-file/],
        [['import', 'users', good, '--import-id', 'x'], 'USERPORT_OPTION_INVALID', /--import-id needs --resumable/],
        [['import', 'users', good, '--resumable', '--dry-run'], 'USERPORT_OPTION_INVALID', /--resumable and --dry-run/],
        [['import', 'users', good, '--resumable', '--import-id', 'a b'], 'USERPORT_OPTION_INVALID', /--import-id must be/],
        [['import', 'users', good, '--findings-file', path.join(cwd, 'no/such/f.json')], 'USERPORT_IO', /--findings-file .*does not exist/],
        [['import', 'users', good, '--rejects-file', path.join(cwd, 'no/r.jsonl')], 'USERPORT_IO', /--rejects-file .*does not exist/],
        [['import', 'users', good, '--findings-file', '-'], 'USERPORT_OPTION_INVALID', /--findings-file -: standard output/],
        [['import', 'users', good, '--rejects-file', '-'], 'USERPORT_OPTION_INVALID', /--rejects-file -: standard output/],
        [['import', 'users', path.join(cwd, 'missing.json')], 'USERPORT_IO', /SRC .* does not exist/],
        [['import', 'users', path.join(cwd, 'adir')], 'USERPORT_IO', /is a directory/],
        [['import', 'users', '-', '--resumable'], 'USERPORT_OPTION_INVALID', /--resumable needs SRC to be a file/],
        [['import', 'users', good, '--filter-usernames', 'a', '--filter-usernames-file', 'b'], 'USERPORT_OPTION_INVALID', /cannot be combined/],
        [['import', 'users', good, '--filter-usernames-file', path.join(cwd, 'nope.txt')], 'USERPORT_IO', /--filter-usernames-file .*no such file/],
        // Not empty, but naming nobody: refused, where Sentry would take nobody and an empty value takes everybody.
        [['import', 'users', good, '--filter-usernames', ' , '], 'USERPORT_OPTION_INVALID', /--filter-usernames names no user \(only blanks and separators\): give names, or an empty value for no filter/],
        [['import', 'users', good, '--filter-usernames-file', blankNames], 'USERPORT_OPTION_INVALID', /--filter-usernames-file .*blank-names\.txt names no user/],
        [['import', 'users', good, '--decrypt-with', path.join(cwd, 'nokey.pem')], 'USERPORT_IO', /--decrypt-with .*no such file/],
        [['import', 'users', good, '--max-depth', 'ten'], 'USERPORT_OPTION_INVALID', /--max-depth must be an integer/],
        [['import', 'users', good, '--database-url', 'mysql://x'], 'USERPORT_OPTION_INVALID', /--database-url/],
        [['import', 'users'], 'USERPORT_OPTION_INVALID', /missing SRC/],
        [['import', 'orgs', good], 'USERPORT_OPTION_INVALID', /unknown import scope/],
        [['imports', '--nope'], 'USERPORT_OPTION_INVALID', /unknown option --nope/],
        [['migrate', 'extra'], 'USERPORT_OPTION_INVALID', /unexpected argument/],
        [['db', 'frob'], 'USERPORT_OPTION_INVALID', /unknown db command/],
        [['frobnicate'], 'USERPORT_OPTION_INVALID', /unknown command "frobnicate" \(see/],
        [[''], 'USERPORT_OPTION_INVALID', /unknown command "" \(see/],
        [['db', ''], 'USERPORT_OPTION_INVALID', /unknown db command "" \(url/],
        // A typo of a command or a scope gets the word meant.
        [['improt', 'users', good], 'USERPORT_OPTION_INVALID', /unknown command "improt": did you mean import\?/],
        [['import', 'usres', good], 'USERPORT_OPTION_INVALID', /unknown import scope "usres": did you mean users\? \(users, config or global/],
        [['export', 'confg', '-'], 'USERPORT_OPTION_INVALID', /unknown export scope "confg": did you mean config\?/],
        [['export', 'orgs', '-'], 'USERPORT_OPTION_INVALID', /unknown export scope "orgs" \(users, config or global/],
        [['db', 'strat'], 'USERPORT_OPTION_INVALID', /unknown db command "strat": did you mean start\?/],
      ];
      try {
        for (const [args, code, message] of cases) {
          const res = await userport(args, { cwd });
          const what = args.join(' ');
          expect(res.code, `${what}: ${res.stderr}`).to.equal(2);
          expect(res.stderr.trimEnd().split('\n'), what).to.have.length(1);
          expect(res.stderr, what).to.include(`[${code}]`);
          expect(res.stderr, what).to.match(message);
        }
        expect(fs.existsSync(path.join(cwd, '.userport')), 'an embedded server was started').to.equal(false);
      } finally {
        fs.rmSync(cwd, { recursive: true, force: true });
      }
    });

    it('an unknown option says so in one line with the closest flag', async () => {
      const res = await userport(['import', 'users', 'samples/users.json', '--merge-user']);
      expect(res.code).to.equal(2);
      expect(res.stderr).to.equal('userport: unknown option --merge-user: did you mean --merge-users? [USERPORT_OPTION_INVALID]\n');
      const imp = await userport(['impor']);
      expect(imp.stderr).to.include('did you mean import?');
    });

    it('gives the process the `navigator` of Node 21 and later, so pg loads no undici to ask for Cloudflare; the library sets none', async () => {
      // At exit, what the process saw: its navigator, and whether Node's undici was loaded.
      const probe = path.join(tmpFolder('navigator'), 'probe.cjs');
      fs.writeFileSync(probe, `process.on('exit', () => process.stderr.write(JSON.stringify({ ua: typeof navigator === 'object' ? navigator.userAgent : null,
        undici: process.moduleLoadList.some((m) => m.includes('undici')) })));`);
      const seen = (res: { stderr: string }) => JSON.parse(res.stderr.slice(res.stderr.lastIndexOf('{'))) as { ua: string | null; undici: boolean };
      const major = process.versions.node.split('.')[0];
      const cli = seen(await userport(['import', '--help'], { env: { NODE_OPTIONS: `--require ${probe}` } }));
      expect(cli).to.deep.equal({ ua: `Node.js/${major}`, undici: false });
      // The library alone, loaded with pg: the navigator is whatever Node gives (none on Node 20).
      const lib = await run(process.execPath, ['--require', probe, '--input-type=module', '-e',
        `await import(${JSON.stringify(new URL('../../lib/index.js', import.meta.url).href)}); await import('pg');`]);
      expect(seen(lib).ua).to.equal(Number(major) >= 21 ? `Node.js/${major}` : null);
    });

    it('every command and subcommand has --help with its options and an example', async () => {
      for (const args of [['--help'], ['import', '--help'], ['import', 'users', '--help'], ['imports', '--help'], ['migrate', '--help'],
        ['db', '--help'], ['db', 'url', '--help'], ['encrypt', '--help'], ['decrypt', '--help'], ['help', 'imports']]) {
        const res = await userport(args);
        const what = args.join(' ');
        expect(res.code, `${what}: ${res.stderr}`).to.equal(0);
        expect(res.stdout, what).to.match(/^(Usage|userport): /);
        expect(res.stdout, what).to.include('Example');
        if (args[0] !== 'db' && args[0] !== '--help') expect(res.stdout, what).to.include('--debug');
      }
    });
  });

  describe('resumable imports', () => {
    let db: TestDb;
    before(async () => { db = await freshDatabase(); });
    after(async () => { await db.close(); });

    it('run again without --import-id, continue the killed import of the same file and options instead of starting a duplicate', async () => {
      const file = writeExport(Array.from({ length: 20000 }, (_, i) => user(i + 1, `resume${i}`)));
      const args = ['import', 'users', file, '--database-url', db.url, '--resumable', '--batch-rows', '500', '--no-progress'];
      // Kill it once a checkpoint is committed (it commits one every 500 rows): the gate holds
      // it at its second checkpoint, so it cannot finish first however fast the machine.
      const gate = await installImportGate(db.url, { checkpointAfter: 1, atFinish: false });
      let stderr = '';
      try {
        const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
        child.stderr.on('data', (d: Buffer) => (stderr += d));
        const exited = new Promise<void>((resolve) => child.on('close', () => resolve()));
        try {
          await reached('the import committed a checkpoint and waits at its next one', async () => {
            if (!(await gate.waiting(child))) return undefined;
            const r = await db.knex.raw(`SELECT checkpoint_ordinal FROM userport.imports`);
            return r.rows[0] && Number(r.rows[0].checkpoint_ordinal) > 0 ? true : undefined;
          }, { child });
        } finally {
          child.kill('SIGKILL');
          await exited;
        }
      } finally {
        await gate.remove();
      }
      const id = /Import id: (\S+)/.exec(stderr)?.[1];
      expect(id, stderr).to.match(/^[0-9a-f-]{36}$/);
      // Killed: listed as interrupted, not running (once the server sees the session gone).
      let state = '';
      for (let i = 0; i < 100 && state !== 'interrupted'; i++) {
        const list = JSON.parse((await userport(['imports', '--database-url', db.url, '--json'])).stdout) as { id: string; state: string }[];
        state = list.find((r) => r.id === id)!.state;
        if (state !== 'interrupted') await new Promise((resolve) => setTimeout(resolve, 100));
      }
      expect(state).to.equal('interrupted');
      const again = await userport([...args, '--json']);
      expect(again.code, again.stderr).to.equal(0);
      // Wrapped at 80 columns: the continuation is indented by two.
      expect(again.stderr.replace(/\n {2}/g, ' ')).to.match(new RegExp(`^Found unfinished import ${id} of this file with these options: continuing it after record [\\d,]+$`, 'm'));
      const s = JSON.parse(again.stdout);
      expect(s.importId).to.equal(id);
      expect(s.models['sentry.user']).to.include({ read: 20000, inserted: 20000, renamed: 0 });
      expect(await db.count('auth_user')).to.equal(20000);
      expect(await db.count('userport.imports')).to.equal(1);
      // And once more: it is done, nothing changes, and it says so.
      const third = await userport(args);
      expect(third.code, third.stderr).to.equal(0);
      expect(third.stdout).to.match(/^Already imported, nothing changed/);
      expect(await db.count('auth_user')).to.equal(20000);
      expect(await db.count('userport.imports')).to.equal(1);
    });

    it('`imports` tells running (a live session holds the import) from interrupted (nobody does, e.g. after a server crash)', async () => {
      await db.knex.raw(`INSERT INTO userport.imports (id, mode, state, source, options) VALUES ('crashed', 'resumable', 'running', 'x.json', '{}')`);
      const stateOf = async () => (JSON.parse((await userport(['imports', '--database-url', db.url, '--json'])).stdout) as { id: string; state: string }[])
        .find((r) => r.id === 'crashed')!.state;
      expect(await stateOf()).to.equal('interrupted');
      const holder = await db.knex.client.acquireConnection();
      try {
        await db.knex.raw(`SELECT pg_advisory_lock(747211, hashtext('crashed'))`).connection(holder);
        expect(await stateOf()).to.equal('running');
        await db.knex.raw(`SELECT pg_advisory_unlock(747211, hashtext('crashed'))`).connection(holder);
      } finally {
        await db.knex.client.releaseConnection(holder);
      }
      expect(await stateOf()).to.equal('interrupted');
    });
  });
});
