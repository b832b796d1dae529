/**
 * lib/overlap.ts: while the early users step holds the import's connection, the rows that keep
 * arriving go to a private spool file, COPYed once the step is done. The spool must be gone after
 * the import, whatever its end; a spool that cannot be made is an IO error that says so, and the
 * import leaves nothing behind.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import { importUsers } from '../lib/index.js';
import { OverlapRun } from '../lib/overlap.js';
import { spoolsIn } from '../lib/spool.js';
import { ErrorCodes } from '../lib/errors.js';
import { failure, withDb } from './helpers/db.js';
import { TARGET_TABLES, user, useremail, useroption, writeExport, type Rec } from './helpers/exports.js';
import { tmpFolder } from './helpers/setup.js';

/** Users first, in pk order, then their options and user emails: Sentry's order, so the early step runs. */
function sentryOrdered(users: number): Rec[] {
  const rows: Rec[] = [];
  for (let i = 1; i <= users; i++) rows.push(user(i, `u${i}`, { email: `u${i}@example.com` }));
  for (let i = 1; i <= users; i++) rows.push(useroption(i, i, 'timezone', 'UTC'), useremail(i, i, `u${i}@example.com`));
  return rows;
}

describe('lib/overlap: the rows that arrive during the early users step', () => {
  const file = writeExport(sentryOrdered(3000));

  it('go through a spool under tmpDir that is gone once the import is done', async () => {
    await withDb(async (db) => {
      const dir = tmpFolder('overlap-');
      const moments: string[] = [];
      let spools: string[] = [];
      await importUsers({
        source: file, databaseUrl: db.url, tmpDir: dir,
        onTrace: (e) => {
          if (e.kind !== 'sink') return;
          moments.push(e.moment);
          // While the step runs, its spool is there.
          if (e.moment === 'overlap done') spools = fs.readdirSync(dir);
        },
      });
      expect(moments, 'the early step ran while rows arrived').to.include.members(['overlap started', 'overlap done', 'spool copied']);
      expect(spools).to.have.length(1);
      expect(spools[0]).to.match(/^userport-spool-/);
      expect(await db.count('sentry_useroption')).to.equal(3000);
      expect(fs.readdirSync(dir)).to.deep.equal([]);
    });
  });

  it('gives writeDiverted scratch paths in the spool\'s private folder, words only, gone with the spool', async () => {
    const dir = tmpFolder('overlap-');
    const made: string[] = [];
    let refused = '';
    const run = await OverlapRun.begin({
      run: async () => undefined,
      finish: async () => undefined,
      async writeDiverted(_sides, _stage, scratch) {
        for (const name of ['email_run_0', 'email_run_1']) {
          const file = scratch(name);
          fs.writeFileSync(file, 'x', { flag: 'wx', mode: 0o600 });
          made.push(file);
        }
        try { scratch('../escape'); } catch (err) { refused = (err as Error).message; }
      },
    }, spoolsIn(dir), () => false, () => undefined, () => undefined);
    expect(run).to.not.equal(undefined);
    const copied: string[] = [];
    await run!.drain(() => new Writable({ write(chunk, _enc, done) { copied.push(String(chunk)); done(); } }));
    // Both in the one spool folder under tmpDir, beside the spool; nothing of them outside it.
    const folders = new Set(made.map((f) => path.dirname(f)));
    expect(folders.size).to.equal(1);
    const [folder] = [...folders];
    expect(path.dirname(folder!)).to.equal(dir);
    expect(path.basename(folder!)).to.match(/^userport-spool-/);
    expect(made.map((f) => path.basename(f))).to.deep.equal(['scratch-email_run_0', 'scratch-email_run_1']);
    expect(refused).to.equal('a scratch file\'s name is a word, not "../escape"');
    expect(copied.join('')).to.equal('');
    expect(fs.readdirSync(dir)).to.deep.equal([]);
  });

  it('hands the work\'s early part each sealed side spool once, closed with its pending rows; a later row is appended, and writeDiverted reads every line', async () => {
    const dir = tmpFolder('overlap-');
    const sealed = new Set<string>();
    const early: string[][] = [];
    const atEnd: Record<string, string[]> = {};
    const all = async (lines: () => AsyncIterable<Buffer[]>) => {
      const got: string[] = [];
      for await (const chunk of lines()) got.push(...chunk.map(String));
      return got;
    };
    const run = await OverlapRun.begin({
      run: async () => undefined,
      finish: async () => undefined,
      early: {
        sealed: (name) => sealed.has(name),
        write: async (sides) => { for (const [name, lines] of sides) early.push([name, ...await all(lines)]); },
      },
      async writeDiverted(sides) { for (const [name, lines] of sides) atEnd[name] = await all(lines); },
    }, spoolsIn(dir), () => false, () => undefined, () => undefined);
    await run!.writeSide('a', [Buffer.from('a1\n')]);
    await run!.writeSide('b', [Buffer.from('b1\n')]);
    await new Promise((r) => setImmediate(r)); // the work's run is done
    expect(run!.earlyDue(['a', 'b', 'c'])).to.deep.equal([]);
    // c is sealed but was never written: nothing of it to hand.
    sealed.add('a').add('c');
    const due = run!.earlyDue(['a', 'b', 'c']);
    expect(due).to.deep.equal(['a', 'c']);
    // The sink's pending rows of a go to its file before it is closed.
    await run!.startEarly(due, async (name) => { if (name === 'a') await run!.writeSide('a', [Buffer.from('a2\n')]); });
    expect(run!.earlyDue(['a', 'b', 'c']), 'each once').to.deep.equal([]);
    // A row after it (a file not in Sentry's order): appended to the closed file, which the early
    // part reads as it was when closed (the work tells the late row apart).
    await run!.writeSide('a', [Buffer.from('a3\n')]);
    await run!.drain(() => new Writable({ write(_chunk, _enc, done) { done(); } }));
    expect(early).to.deep.equal([['a', 'a1', 'a2']]);
    expect(atEnd).to.deep.equal({ a: ['a1', 'a2', 'a3'], b: ['b1'] });
    expect(fs.readdirSync(dir)).to.deep.equal([]);
  });

  it('a spool that cannot be made: USERPORT_IO naming the staging spool, and no row written', async () => {
    await withDb(async (db) => {
      // The folder is there when the options are checked, and gone by the time the step starts.
      const dir = tmpFolder('overlap-');
      let gone = false;
      const onTrace = () => { if (!gone) { fs.rmSync(dir, { recursive: true }); gone = true; } };
      const err = await failure(importUsers({ source: file, databaseUrl: db.url, tmpDir: dir, onTrace }));
      expect(gone).to.equal(true);
      expect(err.code).to.equal(ErrorCodes.IO);
      expect(err.message).to.match(/^cannot write the staging spool file: .*no such file or directory/);
      for (const t of TARGET_TABLES) expect(await db.count(t), t).to.equal(0);
    });
  });
});
