/**
 * importUsers embedded in a caller's program: a callback of the caller's that throws fails the
 * import with USERPORT_CALLBACK (never the process, never USERPORT_INTERNAL); a Readable source is
 * the import's, destroyed when the import ends without reading it; and what the source itself
 * fails with is said as reading's failure, not the database's.
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { Readable } from 'node:stream';
import { OptionError } from '../lib/errors.js';
import { importUsers } from '../lib/import.js';
import { failure, withDb } from './helpers/db.js';
import { user, writeExport } from './helpers/exports.js';
import { fifoOrSkip } from './crypto/helpers.js';
import { tmpFolder } from './helpers/setup.js';

const users = (n: number) => Array.from({ length: n }, (_, i) => user(i + 1, `cb-user-${i + 1}`));

/** The export's text in two pieces, the second `pauseMs` after the first: an import that lasts. */
function slowSource(text: string, pauseMs: number): Readable {
  const half = Math.floor(text.length / 2);
  let step = 0;
  return new Readable({
    read() {
      if (step === 0) { step++; this.push(text.slice(0, half)); return; }
      if (step === 1) { step++; setTimeout(() => { this.push(text.slice(half)); this.push(null); }, pauseMs); }
    },
  });
}

describe('importUsers and the caller\'s callbacks and source', function () {
  this.timeout(60000);

  it('an onStart that throws fails the import with USERPORT_CALLBACK, its error as cause, and nothing is written', async () => {
    await withDb(async (db) => {
      const bug = new Error('the caller\'s bug');
      const err = await failure(importUsers({ source: writeExport(users(3)), databaseUrl: db.url, onStart: () => { throw bug; } }));
      expect(err.code).to.equal('USERPORT_CALLBACK');
      expect(err.message).to.equal('onStart: the callback threw: the caller\'s bug');
      expect(err.cause).to.equal(bug);
      expect(await db.count('auth_user')).to.equal(0);
    });
  });

  it('an onProgress that throws on its first call or on a later one (from the timer) fails the import, not the process', async () => {
    await withDb(async (db) => {
      const first = await failure(importUsers({ source: writeExport(users(3)), databaseUrl: db.url, onProgress: () => { throw new Error('first'); } }));
      expect(first.code).to.equal('USERPORT_CALLBACK');
      expect(first.message).to.equal('onProgress: the callback threw: first');
      let calls = 0;
      const later = await failure(importUsers({
        source: slowSource(JSON.stringify(users(50)), 1200), databaseUrl: db.url,
        onProgress: () => { if (++calls === 2) throw new Error('second'); },
      }));
      expect(later.code).to.equal('USERPORT_CALLBACK');
      expect(later.message).to.equal('onProgress: the callback threw: second');
      expect(calls).to.equal(2);
      expect(await db.count('auth_user')).to.equal(0);
      // The database is as usable after both as before.
      const ok = await importUsers({ source: writeExport(users(3)), databaseUrl: db.url });
      expect(ok.models['sentry.user']!.inserted).to.equal(3);
    });
  });

  it('destroys a Readable source it did not read (a refused option), and leaves one it read to its end', async () => {
    await withDb(async (db) => {
      const file = writeExport(users(2));
      const unread = fs.createReadStream(file);
      const err = await failure(importUsers({ source: unread, databaseUrl: db.url, maxRejects: -1 }));
      expect(err).to.be.instanceOf(OptionError);
      expect(unread.destroyed).to.equal(true);
      const read = fs.createReadStream(file);
      await importUsers({ source: read, databaseUrl: db.url });
      expect(read.readableEnded).to.equal(true);
    });
  });

  it('a source that fails (a network stream reset by its server) is reading\'s failure, USERPORT_IO, not a lost database connection', async () => {
    await withDb(async (db) => {
      const text = JSON.stringify(users(50));
      let step = 0;
      const reset = new Readable({
        read() {
          if (step++ === 0) this.push(text.slice(0, 200));
          else this.destroy(Object.assign(new Error('aborted'), { code: 'ECONNRESET' }));
        },
      });
      const err = await failure(importUsers({ source: reset, databaseUrl: db.url }));
      expect(err.code).to.equal('USERPORT_IO');
      expect(err.message).to.equal('reading the source failed: aborted');
      // The same when it fails after the sniffed head, while the records are read.
      const big = JSON.stringify(users(500));
      let at = 0;
      const later = new Readable({
        read() {
          if (at < 20_000) { this.push(big.slice(at, at + 4096)); at += 4096; }
          else this.destroy(Object.assign(new Error('aborted'), { code: 'ECONNRESET' }));
        },
      });
      const err2 = await failure(importUsers({ source: later, databaseUrl: db.url }));
      expect(err2.code).to.equal('USERPORT_IO');
      expect(err2.message).to.equal('reading the source failed: aborted');
      expect(await db.count('auth_user')).to.equal(0);
    });
  });

  it('a signal cancels: aborted before the start nothing is touched; aborted mid-import, USERPORT_ABORTED and nothing written', async () => {
    await withDb(async (db) => {
      const before = new AbortController();
      before.abort(new Error('changed my mind'));
      const early = await failure(importUsers({ source: writeExport(users(3)), databaseUrl: 'postgresql://nobody@127.0.0.1:1/none', signal: before.signal }));
      expect(early.code).to.equal('USERPORT_ABORTED');
      expect(early.message).to.equal('the import was cancelled (its signal was aborted): nothing was written');
      expect((early.cause as Error).message).to.equal('changed my mind');
      const during = new AbortController();
      const err = await failure(importUsers({
        source: slowSource(JSON.stringify(users(50)), 1500), databaseUrl: db.url, signal: during.signal,
        onStart: () => { setTimeout(() => during.abort(), 300); },
      }));
      expect(err.code).to.equal('USERPORT_ABORTED');
      expect(await db.count('auth_user')).to.equal(0);
      expect((await failure(importUsers({ source: writeExport(users(1)), databaseUrl: db.url, signal: 'stop' as never }))).code).to.equal('USERPORT_OPTION_INVALID');
      // The database is as usable after it.
      expect((await importUsers({ source: writeExport(users(3)), databaseUrl: db.url })).models['sentry.user']!.inserted).to.equal(3);
    });
  });

  it('a signal aborted as soon as importUsers is called, while its source is prepared: USERPORT_ABORTED, nothing written, for a file and a stream', async () => {
    await withDb(async (db) => {
      const sources = [
        () => writeExport(users(3)),
        () => Readable.from([Buffer.from(JSON.stringify(users(3)))]),
      ];
      for (const source of sources) {
        const ac = new AbortController();
        const running = importUsers({ source: source(), databaseUrl: db.url, signal: ac.signal });
        ac.abort();
        const err = await failure(running);
        expect(err.code).to.equal('USERPORT_ABORTED');
        expect(await db.count('auth_user')).to.equal(0);
      }
    });
  });

  it('a source the caller destroys before its end (no error) is reading\'s failure, not userport\'s bug', async () => {
    await withDb(async (db) => {
      const src = slowSource(JSON.stringify(users(50)), 1500);
      const err = await failure(importUsers({ source: src, databaseUrl: db.url, onStart: () => { setTimeout(() => src.destroy(), 300); } }));
      expect(err.code).to.equal('USERPORT_IO');
      expect(err.message).to.equal('reading the source failed: the source was closed before its end');
      expect(await db.count('auth_user')).to.equal(0);
    });
  });

  it('a stop asked for while the merge runs takes effect at its next step: ROLLBACK in order, the target\'s constraints intact, nothing written', async () => {
    await withDb(async (db) => {
      const constraints = async () => Number((await db.knex.raw(`SELECT count(*) AS n FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
        WHERE t.relname IN ('auth_user', 'sentry_email', 'sentry_useremail', 'sentry_useroption', 'sentry_lostpasswordhash')`)).rows[0].n);
      const before = await constraints();
      for (const resumable of [false, true]) {
        const ac = new AbortController();
        let aborted = false;
        const err = await failure(importUsers({
          source: writeExport(users(200)), databaseUrl: db.url, resumable, signal: ac.signal,
          // Inside the merge, at the bulk path's lock: its drops follow at once.
          onTrace: (e) => { if (!aborted && e.kind === 'sql' && /LOCK TABLE/.test(e.sql)) { aborted = true; ac.abort(); } },
        }));
        expect(aborted, `resumable ${resumable}: the merge took the bulk path`).to.equal(true);
        expect(err.code, `resumable ${resumable}`).to.equal('USERPORT_ABORTED');
        expect(await db.count('auth_user')).to.equal(0);
        expect(await constraints(), `resumable ${resumable}`).to.equal(before);
      }
      // A throwing onProgress while the merge runs, the same way: the progress timer fires during a slow merge step.
      // The slow step is the first statement after the first 'merging' report (the reading's end), whatever
      // the early users step did before it: the timer's next report (500 ms on) then comes while the merge
      // still has steps to take.
      let merging = 0;
      let slowed = false;
      const err = await failure(importUsers({
        source: writeExport(users(200)), databaseUrl: db.url,
        onTrace: (e) => { if (e.kind === 'sql' && merging === 1 && !slowed) { slowed = true; const until = Date.now() + 700; while (Date.now() < until) { /* a slow step */ } } },
        onProgress: (p) => { if (p.phase === 'merging' && ++merging === 2) throw new Error('progress bar gone'); },
      }));
      expect(slowed, 'a statement ran after the reading ended').to.equal(true);
      expect(err.code).to.equal('USERPORT_CALLBACK');
      expect(await db.count('auth_user')).to.equal(0);
      expect(await constraints()).to.equal(before);
    });
  });

  it('a signal stops an import whose source has sent nothing yet (a stalled socket)', async () => {
    await withDb(async (db) => {
      const ac = new AbortController();
      const stalled = new Readable({ read() { /* nothing, ever */ } });
      const t0 = Date.now();
      const err = await failure(importUsers({ source: stalled, databaseUrl: db.url, signal: ac.signal, onStart: () => { setTimeout(() => ac.abort(), 300); } }));
      expect(err.code).to.equal('USERPORT_ABORTED');
      expect(Date.now() - t0).to.be.below(10_000);
      expect(stalled.destroyed).to.equal(true);
    });
  });

  it('a signal stops an import from a FIFO that no one has opened for writing yet (its open() waits for a writer)', async function () {
    const fifo = fifoOrSkip(this, tmpFolder('fifo-'), 'export.json');
    await withDb(async (db) => {
      const ac = new AbortController();
      const err = await failure(importUsers({ source: fifo, databaseUrl: db.url, signal: ac.signal, onStart: () => { setTimeout(() => ac.abort(), 300); } }));
      expect(err.code).to.equal('USERPORT_ABORTED');
      expect(await db.count('auth_user')).to.equal(0);
    });
    // A writer comes and goes: the abandoned open() returns, and no thread of libuv's pool stays blocked in it.
    try { fs.closeSync(fs.openSync(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK)); } catch { /* no reader left: nothing blocked */ }
  });

  it('a signal stops an import from standard input that has sent nothing (a pipe nobody writes): it settles with USERPORT_ABORTED', async () => {
    await withDb(async (db) => {
      // Its own process: the stdin it waits on is a pipe this spec never writes to.
      const lib = pathToFileURL(path.resolve('dist/lib/import.js')).href;
      const code = `import { importUsers } from ${JSON.stringify(lib)};
        const ac = new AbortController();
        importUsers({ source: '-', databaseUrl: process.env.URL, signal: ac.signal, onStart: () => { setTimeout(() => ac.abort(), 300); } })
          .then(() => { console.log('succeeded'); process.exit(1); }, (e) => { console.log(e.code); process.exit(0); });`;
      const child = spawn(process.execPath, ['--input-type=module', '-e', code], { env: { ...process.env, URL: db.url }, stdio: ['pipe', 'pipe', 'inherit'] });
      let out = '';
      child.stdout.on('data', (c: Buffer) => { out += c.toString(); });
      // A hang (the import waiting for bytes that never come, as before the stop reached standard input) is the failure.
      const exited = await new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => resolve(false), 20_000);
        child.once('exit', () => { clearTimeout(timer); resolve(true); });
      });
      if (!exited) child.kill('SIGKILL');
      expect(exited, 'the import settled').to.equal(true);
      expect(out.trim()).to.equal('USERPORT_ABORTED');
      expect(await db.count('auth_user')).to.equal(0);
    });
  });

  it('a signal aborted by onStart itself: the FIFO is never opened', async function () {
    const fifo = fifoOrSkip(this, tmpFolder('fifo-'), 'export.json');
    await withDb(async (db) => {
      const ac = new AbortController();
      const err = await failure(importUsers({ source: fifo, databaseUrl: db.url, signal: ac.signal, onStart: () => ac.abort() }));
      expect(err.code).to.equal('USERPORT_ABORTED');
    });
    await new Promise((resolve) => setTimeout(resolve, 100));
    // No reader waits on it: a writer that will not wait is refused (ENXIO).
    let code: string | undefined;
    try { fs.closeSync(fs.openSync(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK)); } catch (e) { code = (e as NodeJS.ErrnoException).code; }
    expect(code, 'nobody opened the FIFO for reading').to.equal('ENXIO');
  });
});
