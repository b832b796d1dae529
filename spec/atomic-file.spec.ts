/**
 * lib/atomic-file.ts: how `userport export` and the encrypt/decrypt commands write their output.
 * A failure must leave an existing file as it was and no partial file beside it; a device is
 * written in place; a temporary file left by a SIGKILLed writer is removed by the next write.
 */
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { Writable } from 'node:stream';
import { writeFileAtomically } from '../lib/atomic-file.js';
import { OptionError } from '../lib/errors.js';
import { MAKER_TAG, processAlive } from '../lib/spool.js';
import { tmpFolder } from './helpers/setup.js';

const writeAll = (text: string) => (out: Writable) => new Promise<void>((resolve, reject) => {
  out.on('error', reject);
  out.end(text, () => resolve());
});

describe('lib/atomic-file: output files written whole or not at all', () => {
  it('writes a new file with the mode asked, through a temporary name that is gone after', async () => {
    const dir = tmpFolder('atomic-');
    const dest = path.join(dir, 'out.json');
    await writeFileAtomically(dest, 0o600, writeAll('[]\n'));
    expect(fs.readFileSync(dest, 'utf8')).to.equal('[]\n');
    expect(fs.statSync(dest).mode & 0o777).to.equal(0o600);
    expect(fs.readdirSync(dir)).to.deep.equal(['out.json']);
  });

  it('a write that fails midway leaves the existing file as it was, and nothing beside it', async () => {
    const dir = tmpFolder('atomic-');
    const dest = path.join(dir, 'out.json');
    fs.writeFileSync(dest, 'the old export');
    const boom = new Error('the database went away');
    let caught: unknown;
    await writeFileAtomically(dest, 0o644, async (out) => {
      await new Promise<void>((resolve) => out.write('half of the new one', () => resolve()));
      throw boom;
    }).catch((e: unknown) => { caught = e; });
    expect(caught).to.equal(boom);
    expect(fs.readFileSync(dest, 'utf8')).to.equal('the old export');
    expect(fs.readdirSync(dir)).to.deep.equal(['out.json']);
  });

  it('a folder that does not exist: a rejection that names it (with its errno code), not an unhandled stream error', async () => {
    const dir = tmpFolder('atomic-');
    const dest = path.join(dir, 'no', 'such', 'out.json');
    let caught: (Error & { code?: string }) | undefined;
    await writeFileAtomically(dest, 0o600, writeAll('[]')).catch((e: Error) => { caught = e; });
    expect(caught?.message).to.equal(`the folder ${path.dirname(dest)} does not exist`);
    expect(caught?.code).to.equal('ENOENT');
    expect(fs.readdirSync(dir)).to.deep.equal([]);
  });

  it('a file where a folder should be: named as such, not by the temporary name', async () => {
    const dir = tmpFolder('atomic-');
    fs.writeFileSync(path.join(dir, 'plain'), 'x');
    const dest = path.join(dir, 'plain', 'out.json');
    let caught: (Error & { code?: string }) | undefined;
    await writeFileAtomically(dest, 0o600, writeAll('[]')).catch((e: Error) => { caught = e; });
    expect(caught?.message).to.equal(`${path.join(dir, 'plain')} is not a folder`);
    expect(caught?.code).to.equal('ENOTDIR');
  });

  it('a DEST whose name is near the 255-byte limit is written too, through a shortened temporary name', async () => {
    const dir = tmpFolder('atomic-');
    // 250 bytes, two-byte characters included: DEST is a valid name, DEST plus the temporary
    // suffix would not be.
    const name = `${'é'.repeat(20)}${'x'.repeat(205)}.json`;
    expect(Buffer.byteLength(name)).to.equal(250);
    const dest = path.join(dir, name);
    await writeFileAtomically(dest, 0o600, writeAll('[]\n'));
    expect(fs.readFileSync(dest, 'utf8')).to.equal('[]\n');
    expect(fs.readdirSync(dir)).to.deep.equal([name]);
    // A name too long for any file: said before the writer runs, about DEST.
    const tooLong = path.join(dir, `${'y'.repeat(300)}.json`);
    let caught: (Error & { code?: string }) | undefined;
    let wrote = false;
    await writeFileAtomically(tooLong, 0o600, async (out) => { wrote = true; await writeAll('[]')(out); }).catch((e: Error) => { caught = e; });
    expect(caught?.code).to.equal('ENAMETOOLONG');
    expect(caught?.message).to.equal('the file name is 305 bytes long, more than a file system takes (255)');
    expect(wrote).to.equal(false);
    expect(fs.readdirSync(dir)).to.deep.equal([name]);
  });

  it('a directory is refused with an OptionError; a device is written in place', async () => {
    const dir = tmpFolder('atomic-');
    let caught: unknown;
    await writeFileAtomically(dir, 0o644, writeAll('x')).catch((e: unknown) => { caught = e; });
    expect(caught).to.be.instanceOf(OptionError);
    expect((caught as Error).message).to.equal(`DEST ${dir} is a directory`);
    await writeFileAtomically('/dev/null', 0o644, writeAll('nothing'));
    expect(fs.statSync('/dev/null').isCharacterDevice()).to.equal(true);
  });

  it('removes the temporary file a killed writer left for the same DEST, never a live writer\'s or another PID namespace\'s', async () => {
    const dir = tmpFolder('atomic-');
    const r = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
    const dead = Number(r.stdout);
    expect(processAlive(dead)).to.equal(false);
    const ns = MAKER_TAG.split('-')[1]!;
    const stale = path.join(dir, `.out.json.${dead}-${ns}.0123456789ab.partial`);
    const legacyStale = path.join(dir, `.out.json.${dead}.0123456789ac.partial`);
    const live = path.join(dir, `.out.json.${process.ppid}-${ns}.0123456789ab.partial`);
    const otherNamespace = path.join(dir, `.out.json.${dead}-${ns === '1' ? '2' : '1'}.0123456789ab.partial`);
    const otherDest = path.join(dir, `.other.json.${dead}-${ns}.0123456789ab.partial`);
    for (const f of [stale, legacyStale, live, otherNamespace, otherDest]) fs.writeFileSync(f, 'partial');
    await writeFileAtomically(path.join(dir, 'out.json'), 0o644, writeAll('[]'));
    expect(fs.readdirSync(dir).sort()).to.deep.equal([path.basename(live), path.basename(otherNamespace), path.basename(otherDest), 'out.json'].sort());
  });
});
