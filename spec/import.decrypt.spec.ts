/**
 * Encrypted exports through the real import (lib/import.ts) and the real CLI binary, into the
 * embedded PostgreSQL: the plaintext rows arrive, and after every kind of failure no row exists.
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { importUsers } from '../lib/import.js';
import { createLocalKeyUnwrapper, type KeyUnwrapper } from '../lib/decrypt.js';
import { loadPrivateKey } from '../lib/crypto/keys.js';
import { startKmsServer, useKmsServer } from './crypto/kms-server.js';
import { freshDatabase, type TestDb } from './helpers/db.js';
import { chunked } from './helpers/streams.js';
import { fdsOpenedSince, openFds } from './helpers/setup.js';
import { fixture, flipBase64, makeTar, PLAINTEXT, PYTHON_TAR, pythonMembers, readFixture, tempDir } from './crypto/helpers.js';

const TABLES = ['auth_user', 'sentry_email', 'sentry_useremail', 'sentry_useroption'];
const BIN = path.resolve('bin/userport.js');

const unwrapper = (key = 'fixture-key.pem'): KeyUnwrapper => createLocalKeyUnwrapper({ privateKeyPem: readFixture(key) });

async function counts(db: TestDb): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const t of TABLES) out[t] = await db.count(t);
  return out;
}

const EMPTY = Object.fromEntries(TABLES.map((t) => [t, 0]));

/** Row counts the plaintext fixture should produce. */
function expectedCounts(): Record<string, number> {
  const records = JSON.parse(PLAINTEXT().toString()) as { model: string }[];
  const n = (m: string) => records.filter((r) => r.model === m).length;
  return { auth_user: n('sentry.user'), sentry_email: n('sentry.email'), sentry_useremail: n('sentry.useremail'), sentry_useroption: n('sentry.useroption') };
}

function runCli(args: string[], stdin?: Buffer): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => { stdout += c.toString(); });
    child.stderr.on('data', (c: Buffer) => { stderr += c.toString(); });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.on('error', () => undefined);
    child.stdin.end(stdin ?? Buffer.alloc(0));
  });
}

/** Every way an encrypted import must fail, with the code it must fail with. */
function failures(): [string, Buffer, string, string][] {
  const tar = PYTHON_TAR();
  const { token, wrapped, pub, tokenOffset } = pythonMembers();
  return [
    ['one byte changed at the start of the token', flipBase64(tar, tokenOffset + 2), 'fixture-key.pem', 'USERPORT_DECRYPT_TAMPERED'],
    ['one byte changed in the middle of the token', flipBase64(tar, tokenOffset + (token.length >> 1)), 'fixture-key.pem', 'USERPORT_DECRYPT_TAMPERED'],
    ['one byte changed at the end of the token', flipBase64(tar, tokenOffset + token.length - 2), 'fixture-key.pem', 'USERPORT_DECRYPT_TAMPERED'],
    ['a truncated tarball', tar.subarray(0, tokenOffset + 1500), 'fixture-key.pem', 'USERPORT_DECRYPT_TRUNCATED'],
    ['a missing member', makeTar([['export.json', token], ['key.pub', pub]]), 'fixture-key.pem', 'USERPORT_DECRYPT_TAR'],
    ['an extra member', makeTar([['export.json', token], ['data.key', wrapped], ['key.pub', pub], ['x', Buffer.from('x')]]), 'fixture-key.pem', 'USERPORT_DECRYPT_TAR'],
    ['the wrong key', tar, 'other-key.pem', 'USERPORT_DECRYPT_KEY_MISMATCH'],
  ];
}

describe('importUsers with decrypt', () => {
  let db: TestDb;
  let t: ReturnType<typeof tempDir>;
  beforeEach(async () => {
    db = await freshDatabase();
    t = tempDir();
  });
  afterEach(async () => {
    await db.close();
    t.remove();
  });

  describe('on valid exports', () => {
    it('imports the Python-made encrypted fixture exactly like its plaintext', async () => {
      await importUsers({ source: fixture('python-export.tar'), databaseUrl: db.url, decrypt: unwrapper() });
      expect(await counts(db)).to.deep.equal(expectedCounts());
      const plain = await freshDatabase();
      try {
        const file = path.join(t.dir, 'plain.json');
        fs.writeFileSync(file, PLAINTEXT());
        await importUsers({ source: file, databaseUrl: plain.url });
        // Not password or last_password_change: the import resets passwords (random marker, now).
        const cols = 'username, first_name, email, is_active, is_staff, date_joined, last_active, flags';
        const a = (await db.knex.raw(`SELECT ${cols} FROM auth_user ORDER BY username`)).rows;
        const b = (await plain.knex.raw(`SELECT ${cols} FROM auth_user ORDER BY username`)).rows;
        expect(a).to.deep.equal(b);
        expect(a.map((r: { first_name: string }) => r.first_name)).to.include('Bob \u00e9\u00e8 \u2603');
      } finally {
        await plain.close();
      }
    });

    it('imports from a stream (as from stdin) in small chunks, with a PKCS#1 key', async () => {
      await importUsers({ source: chunked(PYTHON_TAR(), 100), databaseUrl: db.url, decrypt: unwrapper('fixture-key.pkcs1.pem') });
      expect(await counts(db)).to.deep.equal(expectedCounts());
    });
  });

  it('an encrypted file already imported: the second import lets go of the authentication pass it began while its database opened, and closes the file', async () => {
    const file = path.join(t.dir, 'twice.tar');
    fs.writeFileSync(file, PYTHON_TAR());
    expect(await counts(db)).to.deep.equal(EMPTY); // the test's own connection, open from here on
    const before = openFds();
    await importUsers({ source: file, databaseUrl: db.url, decrypt: unwrapper() });
    const again = await importUsers({ source: file, databaseUrl: db.url, decrypt: unwrapper() });
    expect(again.state).to.equal('already-done');
    expect(await counts(db)).to.deep.equal(expectedCounts());
    await new Promise((resolve) => setImmediate(resolve));
    expect(fdsOpenedSince(before), 'the files and the connections closed').to.deep.equal([]);
  });

  describe('on failure, no row exists', () => {
    for (const [what, tar, key, code] of failures()) {
      it(`${what}: ${code}, from a file and from a stream`, async () => {
        const file = path.join(t.dir, 'in.tar');
        fs.writeFileSync(file, tar);
        for (const source of [file, chunked(tar, 333)]) {
          let caught: { code?: string } | undefined;
          try {
            await importUsers({ source, databaseUrl: db.url, decrypt: unwrapper(key) });
          } catch (err) {
            caught = err as { code?: string };
          }
          expect(caught?.code).to.equal(code);
          expect(await counts(db)).to.deep.equal(EMPTY);
        }
      });
    }
  });
});

describe('a key that is not the export\'s, found before the database is touched', () => {
  // Nothing answers here: an import that tried to connect would retry for seconds and say so.
  const unreachable = 'postgresql://userport@127.0.0.1:1/nowhere';

  it('importUsers of a file: USERPORT_DECRYPT_KEY_MISMATCH, without connecting', async () => {
    const started = Date.now();
    let caught: { code?: string } | undefined;
    try {
      await importUsers({ source: fixture('python-export.tar'), databaseUrl: unreachable, decrypt: unwrapper('other-key.pem') });
    } catch (err) {
      caught = err as { code?: string };
    }
    expect(caught?.code).to.equal('USERPORT_DECRYPT_KEY_MISMATCH');
    expect(Date.now() - started).to.be.below(5000);
  });

  it('the CLI: exit 2, the key named, no findings file, the database never asked', async () => {
    const t = tempDir();
    try {
      const findings = path.join(t.dir, 'findings.json');
      const r = await runCli(['import', 'users', fixture('python-export.tar'), '--decrypt-with', fixture('other-key.pem'),
        '--database-url', unreachable, '--findings-file', findings, '--silent']);
      expect(r.code, r.stderr).to.equal(2);
      expect(r.stderr).to.contain('this key cannot decrypt this export').and.contain('USERPORT_DECRYPT_KEY_MISMATCH');
      expect(r.stderr).to.not.contain('USERPORT_DB_CONNECT');
      expect(fs.existsSync(findings)).to.equal(false);
      // userport decrypt too: exit 2, DEST not written.
      const dest = path.join(t.dir, 'plain.json');
      const d = await runCli(['decrypt', '--decrypt-with', fixture('other-key.pem'), fixture('python-export.tar'), dest]);
      expect(d.code, d.stderr).to.equal(2);
      expect(d.stderr).to.contain('this key cannot decrypt this export');
      expect(fs.existsSync(dest)).to.equal(false);
    } finally {
      t.remove();
    }
  });
});

describe('userport import users --decrypt-with (CLI binary)', () => {
  let db: TestDb;
  let t: ReturnType<typeof tempDir>;
  beforeEach(async () => {
    db = await freshDatabase();
    t = tempDir();
  });
  afterEach(async () => {
    await db.close();
    t.remove();
  });

  it('imports an encrypted file and an encrypted stdin', async () => {
    const r = await runCli(['import', 'users', fixture('python-export.tar'), '--decrypt-with', fixture('fixture-key.pem'), '--database-url', db.url, '--silent']);
    expect(r.stderr).to.equal('');
    expect(r.code).to.equal(0);
    expect(await counts(db)).to.deep.equal(expectedCounts());
    const other = await freshDatabase();
    try {
      const s = await runCli(['import', 'users', '-', '--decrypt-with', fixture('fixture-key.encrypted.pem'),
        '--decrypt-passphrase-file', fixture('fixture-key.passphrase'), '--database-url', other.url, '--silent'], PYTHON_TAR());
      expect(s.code, s.stderr).to.equal(0);
      expect(await counts(other)).to.deep.equal(expectedCounts());
    } finally {
      await other.close();
    }
  });

  it('imports with --decrypt-with-gcp-kms through a KMS endpoint, and writes nothing on a crc32c mismatch', async () => {
    const server = await startKmsServer(loadPrivateKey(readFixture('fixture-key.pem')));
    const saved = { ...process.env };
    try {
      // The child inherits the environment: ADC from the file, KMS at the local stand-in.
      const kms = useKmsServer(server, t.dir);
      server.mode = 'bad-plaintext-crc';
      const bad = await runCli(['import', 'users', fixture('python-export.tar'), '--decrypt-with-gcp-kms', kms, '--database-url', db.url, '--silent']);
      expect(bad.code).to.equal(1);
      expect(bad.stderr.trimEnd().split('\n')).to.have.length(1);
      expect(await counts(db)).to.deep.equal(EMPTY);
      server.mode = 'ok';
      server.requests.length = 0;
      const ok = await runCli(['import', 'users', fixture('python-export.tar'), '--decrypt-with-gcp-kms', kms, '--database-url', db.url, '--silent']);
      expect(ok.code, ok.stderr).to.equal(0);
      expect(await counts(db)).to.deep.equal(expectedCounts());
      // The key is unwrapped before the database twice (the CLI's check, then importUsers, which
      // decrypts with the key it unwrapped): the KMS unwrapper remembers it, so KMS is asked once.
      expect(server.requests.filter((r) => r.path.endsWith(':asymmetricDecrypt'))).to.have.length(1);
    } finally {
      process.env = saved;
      await server.close();
    }
  });

  for (const [what, tar, key] of failures()) {
    // Another key than the export's is a usage error where it is found before anything runs (a
    // file's key members are read first); from a pipe it is met while reading: exit 1.
    const wrongKey = key === 'other-key.pem';
    it(`exits ${wrongKey ? '2 (a file) or 1 (a pipe)' : 1} with one line on stderr and no rows for ${what}`, async () => {
      const file = path.join(t.dir, 'in.tar');
      fs.writeFileSync(file, tar);
      for (const [src, stdin] of [[file, undefined], ['-', tar]] as const) {
        const r = await runCli(['import', 'users', src, '--decrypt-with', fixture(key), '--database-url', db.url, '--silent'], stdin);
        expect(r.code, `${src}: ${r.stderr}`).to.equal(wrongKey && src === file ? 2 : 1);
        expect(r.stderr.trimEnd().split('\n')).to.have.length(1);
        if (key === 'other-key.pem') expect(r.stderr).to.contain('this key cannot decrypt this export');
        expect(await counts(db)).to.deep.equal(EMPTY);
      }
    });
  }
});
