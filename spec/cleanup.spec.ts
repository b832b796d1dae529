/**
 * What a failure leaves open in a library caller's process: nothing. A long-running ETL job calls
 * these again and again; each path below once kept a file descriptor (or a caller's stream) after
 * failing (an audit of the entry points, round nineteen). What is checked: no descriptor of this
 * process (Linux: /proc/self/fd) open after that was not before.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { Readable, Writable } from 'node:stream';
import { writeFileAtomically } from '../lib/atomic-file.js';
import { encryptExport } from '../lib/encrypt.js';
import { createRejectsFile } from '../lib/rejects.js';
import { prepareImportSource } from '../lib/source.js';
import { reached } from './helpers/moments.js';
import { fdsOpenedSince, openFds, tmpFolder } from './helpers/setup.js';
import { user } from './helpers/exports.js';

async function rejection(p: Promise<unknown>): Promise<Error & { code?: string }> {
  try {
    await p;
  } catch (err) {
    return err as Error & { code?: string };
  }
  throw new Error('expected a rejection');
}

describe('what a failure leaves open', () => {
  it('writeFileAtomically to a device whose writer fails before it uses the stream: the device is closed', async () => {
    const before = openFds();
    for (let i = 0; i < 3; i++) {
      const err = await rejection(writeFileAtomically('/dev/null', 0o600, async () => { throw new Error('the database is unreachable'); }));
      expect(err.message).to.equal('the database is unreachable');
    }
    await reached('the device closed', async () => (fdsOpenedSince(before).length === 0 ? true : undefined), { timeoutMs: 3000 });
  });

  it('createRejectsFile resuming into a file that cannot be truncated (a device): USERPORT_IO, and the descriptor closed', () => {
    const before = openFds();
    let caught: (Error & { code?: string }) | undefined;
    try {
      createRejectsFile('/dev/zero', { resumeAt: { bytes: 10, count: 1 } });
    } catch (err) {
      caught = err as Error & { code?: string };
    }
    expect(caught?.code).to.equal('USERPORT_IO');
    expect(caught?.message).to.match(/^cannot open the rejects file \/dev\/zero: /);
    expect(fdsOpenedSince(before)).to.deep.equal([]);
  });

  it('encryptExport of a file with a key that cannot encrypt: refused before the file is opened', async () => {
    const dir = tmpFolder('cleanup-');
    const src = path.join(dir, 'export.json');
    fs.writeFileSync(src, JSON.stringify([user(1, 'alice')]));
    const sink = new Writable({ write: (_c, _e, cb) => cb() });
    const before = openFds();
    for (let i = 0; i < 3; i++) {
      const err = await rejection(encryptExport({ path: src }, sink, { publicKeyPem: '-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n' }));
      expect(err.code).to.match(/^USERPORT_DECRYPT_KEY/);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(fdsOpenedSince(before)).to.deep.equal([]);
  });

  it('a caller\'s stream that stalls after its first bytes: the import\'s stream destroyed while waiting for more destroys it', async () => {
    let pushed = false;
    const stalled = new Readable({
      read() {
        if (pushed) return; // never another byte, never an end
        pushed = true;
        // Enough for the sniffing to decide (it reads at least 512 bytes when they come).
        this.push(Buffer.from(`[${Array.from({ length: 10 }, (_, i) => JSON.stringify(user(i + 1, `user-${i}`))).join(',')},`));
      },
    });
    const opened = await (await prepareImportSource({ source: stalled })).open();
    const first = await new Promise<Buffer>((resolve) => opened.stream.once('data', resolve));
    expect(first.toString()).to.match(/^\[/);
    // The stream now waits for bytes that never come; an import that fails here destroys it.
    opened.stream.destroy();
    await reached('the caller\'s stream destroyed', async () => (stalled.destroyed ? true : undefined), { timeoutMs: 3000 });
  });
});
