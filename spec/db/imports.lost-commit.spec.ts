/**
 * Issue #20 item 1: a lost COMMIT acknowledgement. A TCP proxy between userport and PostgreSQL
 * forwards the import's COMMIT, then cuts the connection before the server's answer comes back:
 * the import is committed, but userport never hears it. It must find out (or say it cannot, with
 * the import id), and running the same command again must never import every user twice.
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { freshDatabase, type TestDb } from '../helpers/db.js';
import { user, writeExport } from '../helpers/exports.js';

const BIN = path.resolve('bin/userport.js');

interface Run { code: number | null; stdout: string; stderr: string }

function userport(args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    const child = spawn(BIN, args, { env: { ...process.env, DATABASE_URL: '' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d));
    child.stderr.on('data', (d: Buffer) => (stderr += d));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

interface CommitCutter { url: string; readonly cuts: number; close(): Promise<void> }

/**
 * A proxy to the PostgreSQL at `target`. On a connection that has marked an import done (the
 * `SET state = 'done'` of its final transaction), it forwards the next simple-query COMMIT
 * ('Q' message) to the server, then closes both sides without relaying the answer. With
 * `outage`, every connection after that cut is refused: the database cannot be asked either.
 */
async function commitCutter(target: string, outage: boolean): Promise<CommitCutter> {
  const t = new URL(target);
  const sockets = new Set<net.Socket>();
  let cuts = 0;
  const server = net.createServer((client) => {
    if (outage && cuts > 0) { client.destroy(); return; }
    const upstream = net.connect(Number(t.port), t.hostname);
    sockets.add(client).add(upstream);
    let buf = Buffer.alloc(0);
    let startup = true; // the startup message has no type byte
    let armed = false;
    let cut = false;
    upstream.on('data', (d: Buffer) => { if (!cut) client.write(d); });
    client.on('data', (d: Buffer) => {
      if (cut) return;
      buf = Buffer.concat([buf, d]);
      for (;;) {
        const head = startup ? 0 : 1;
        if (buf.length < head + 4) return;
        const len = head + buf.readInt32BE(head);
        if (buf.length < len) return;
        const msg = buf.subarray(0, len);
        buf = buf.subarray(len);
        upstream.write(msg);
        if (startup) { startup = false; continue; }
        const text = msg.subarray(5).toString('utf8');
        if (/SET state = 'done'/.test(text)) armed = true;
        if (armed && msg[0] === 0x51 && /^\s*COMMIT\b/i.test(text)) {
          cut = true;
          cuts++;
          client.destroy();
          // end() after the write: the server receives the whole COMMIT, then end-of-file.
          upstream.end();
          return;
        }
      }
    });
    client.on('error', () => upstream.destroy());
    client.on('close', () => { if (!cut) upstream.destroy(); });
    upstream.on('error', () => client.destroy());
    upstream.on('close', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const proxied = new URL(target);
  proxied.hostname = '127.0.0.1';
  proxied.port = String((server.address() as net.AddressInfo).port);
  return {
    url: proxied.toString(),
    get cuts() { return cuts; },
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

const USERS = 30;
const exportFile = () => writeExport(Array.from({ length: USERS }, (_, i) => user(i + 1, `lost${i + 1}`)));

async function withCutter(outage: boolean, fn: (db: TestDb, proxy: CommitCutter) => Promise<void>): Promise<void> {
  const db = await freshDatabase();
  const proxy = await commitCutter(db.url, outage);
  try { await fn(db, proxy); } finally {
    await proxy.close();
    await db.close();
  }
}

describe('reliability, round three (issue #20): a lost COMMIT acknowledgement', function () {
  this.timeout(180000);

  it('atomic: the import finds out from the database that it committed, and the same command again changes nothing', () => withCutter(false, async (db, proxy) => {
    const file = exportFile();
    const first = await userport(['import', 'users', file, '--database-url', proxy.url]);
    expect(proxy.cuts).to.equal(1);
    expect(first.code, first.stderr).to.equal(0);
    expect(first.stdout).to.match(/^Imported /);
    expect(await db.count('auth_user')).to.equal(USERS);
    const again = await userport(['import', 'users', file, '--database-url', db.url]);
    expect(again.code, again.stderr).to.equal(0);
    expect(again.stdout).to.match(/^Already imported, nothing changed/);
    expect(again.stdout).to.include('--allow-reimport');
    expect(await db.count('auth_user')).to.equal(USERS);
    // A second copy only on request: every user again, renamed.
    const copy = await userport(['import', 'users', file, '--database-url', db.url, '--allow-reimport', '-q']);
    expect(copy.code, copy.stderr).to.equal(0);
    expect(await db.count('auth_user')).to.equal(2 * USERS);
  }));

  it('atomic, database unreachable afterwards: says the outcome is unknown with the import id; the same command again finds it committed', () => withCutter(true, async (db, proxy) => {
    const file = exportFile();
    const first = await userport(['import', 'users', file, '--database-url', proxy.url]);
    expect(proxy.cuts).to.equal(1);
    expect(first.code).to.equal(1);
    const lines = first.stderr.trim().split('\n');
    expect(lines[0]).to.match(/^userport: the connection to PostgreSQL was lost after import [0-9a-f-]{36} sent its COMMIT.*run the same command again.*\[USERPORT_IMPORT_OUTCOME_UNKNOWN\]$/);
    const id = /import ([0-9a-f-]{36})/.exec(lines[0]!)![1]!;
    const again = await userport(['import', 'users', file, '--database-url', db.url]);
    expect(again.code, again.stderr).to.equal(0);
    // The summary wraps at 80 columns (continuations indented by two).
    expect(again.stdout.replace(/\n +/g, ' ')).to.include(`Already imported, nothing changed: import ${id} finished earlier`);
    expect(await db.count('auth_user')).to.equal(USERS);
  }));

  it('resumable, database unreachable afterwards: the same command again says "already imported", not "done", and changes nothing', () => withCutter(true, async (db, proxy) => {
    const file = exportFile();
    const args = (url: string) => ['import', 'users', file, '--database-url', url, '--resumable', '--import-id', 'lost-ack'];
    const first = await userport(args(proxy.url));
    expect(proxy.cuts).to.equal(1);
    expect(first.code).to.equal(1);
    expect(first.stderr).to.match(/import lost-ack sent its COMMIT.*\[USERPORT_IMPORT_OUTCOME_UNKNOWN\]/);
    const again = await userport(args(db.url));
    expect(again.code, again.stderr).to.equal(0);
    expect(again.stdout).to.match(/^Already imported, nothing changed: import lost-ack/);
    expect(await db.count('auth_user')).to.equal(USERS);
    expect(await db.count('userport.imports', "state = 'done'")).to.equal(1);
  }));

  it('resumable: the import finds out that its final transaction committed, and the same command again changes nothing', () => withCutter(false, async (db, proxy) => {
    const file = exportFile();
    const args = (url: string) => ['import', 'users', file, '--database-url', url, '--resumable', '--import-id', 'lost-ack-2'];
    const first = await userport(args(proxy.url));
    expect(proxy.cuts).to.equal(1);
    expect(first.code, first.stderr).to.equal(0);
    const again = await userport(args(db.url));
    expect(again.stdout).to.match(/^Already imported, nothing changed: import lost-ack-2/);
    expect(await db.count('auth_user')).to.equal(USERS);
  }));
});
