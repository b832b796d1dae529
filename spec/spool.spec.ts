/**
 * lib/spool.ts: the private files the decryption and the overlap of the early users step write
 * to disk. They must be private (0700 folder, 0600 file), go away with their stream, and a spool
 * left by a process that was SIGKILLed must be removed by the next one, never one still in use.
 */
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { MAKER_TAG, makeSpool, processAlive, removeLiveSpoolsSync, removeStaleSpools, spoolsIn } from '../lib/spool.js';
import { tmpFolder } from './helpers/setup.js';

/** The pid of a process that has ended. */
function deadPid(): number {
  const r = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
  const pid = Number(r.stdout);
  expect(processAlive(pid), `process ${pid} has ended`).to.equal(false);
  return pid;
}

describe('lib/spool: private spool files', () => {
  it('makes a 0600 file in a new 0700 folder, and remove() deletes both (twice is harmless)', async () => {
    const dir = tmpFolder('spool-');
    const spool = await makeSpool(dir, 'rows.copy');
    expect(path.dirname(spool.path)).to.equal(spool.dir);
    expect(path.basename(spool.dir)).to.match(new RegExp(`^userport-spool-${MAKER_TAG}-[^-]{6}$`));
    expect(fs.statSync(spool.dir).mode & 0o777).to.equal(0o700);
    expect(fs.statSync(spool.path).mode & 0o777).to.equal(0o600);
    await spool.file.write('some rows\n');
    await spool.remove();
    await spool.remove();
    expect(fs.readdirSync(dir)).to.deep.equal([]);
  });

  it('removes the spools of ended processes, and keeps its own, a live process\'s, another PID namespace\'s and other files', async () => {
    const dir = tmpFolder('spool-');
    const ns = MAKER_TAG.split('-')[1]!;
    const dead = path.join(dir, `userport-spool-${deadPid()}-${ns}-abc123`);
    const live = path.join(dir, `userport-spool-${process.ppid}-${ns}-def456`);
    const mine = path.join(dir, `userport-spool-${MAKER_TAG}-0a1b2c`);
    // Another container sharing this /tmp: its pids mean nothing here.
    const otherNamespace = path.join(dir, `userport-spool-${deadPid()}-${ns === '1' ? '2' : '1'}-aaaaaa`);
    // A name from before the namespace was noted: judged here.
    const legacyDead = path.join(dir, `userport-spool-${deadPid()}-bbbbbb`);
    const other = path.join(dir, 'userport-spool-notapid-x');
    for (const d of [dead, live, mine, otherNamespace, legacyDead, other]) {
      fs.mkdirSync(d);
      fs.writeFileSync(path.join(d, 'export.json.fernet'), 'x');
    }
    await removeStaleSpools(dir);
    expect(fs.readdirSync(dir).sort()).to.deep.equal([live, mine, otherNamespace, other].map((d) => path.basename(d)).sort());
    // A new spool clears what is stale first.
    const dead2 = path.join(dir, `userport-spool-${deadPid()}-${ns}-ffffff`);
    fs.mkdirSync(dead2);
    const spool = await makeSpool(dir);
    expect(fs.existsSync(dead2)).to.equal(false);
    await spool.remove();
  });

  it('an import\'s spool maker (spoolsIn) sweeps stale spools once, before its first spool, not before each', async () => {
    const dir = tmpFolder('spool-');
    const ns = MAKER_TAG.split('-')[1]!;
    const stale = (tag: string) => {
      const d = path.join(dir, `userport-spool-${deadPid()}-${ns}-${tag}`);
      fs.mkdirSync(d);
      return d;
    };
    const before = stale('aaa111');
    const spools = spoolsIn(dir);
    const first = await spools('export.json.fernet');
    expect(fs.existsSync(before), 'swept before the first spool').to.equal(false);
    const meanwhile = stale('bbb222');
    const second = await spools('stage.copy');
    expect(fs.existsSync(meanwhile), 'not swept again by the same maker').to.equal(true);
    expect(path.basename(second.path)).to.equal('stage.copy');
    await first.remove();
    await second.remove();
  });

  it('a folder that cannot be listed or written: removeStaleSpools never throws, makeSpool says where', async () => {
    const missing = path.join(tmpFolder('spool-'), 'no', 'such');
    await removeStaleSpools(missing);
    let err: (Error & { code?: string }) | undefined;
    await makeSpool(missing).catch((e: Error) => { err = e; });
    expect(err?.message).to.include(`cannot create the spool folder in ${missing}`);
    // Its first user's code (the decryption's); the overlap says USERPORT_IO and "staging spool".
    expect(err?.code).to.equal('USERPORT_DECRYPT_IO');
  });

  it('removeLiveSpoolsSync removes the spools still open (for a host\'s signal handler), and only those', async () => {
    const dir = tmpFolder('spool-');
    const open = await makeSpool(dir);
    const closed = await makeSpool(dir);
    await closed.remove();
    const kept = path.join(dir, 'not-a-spool');
    fs.mkdirSync(kept);
    removeLiveSpoolsSync();
    expect(fs.readdirSync(dir)).to.deep.equal(['not-a-spool']);
    await open.remove(); // already gone: harmless
  });
});
