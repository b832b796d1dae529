/**
 * Issue #4 requirement 6, safety:
 * - values reach PostgreSQL through COPY escaping or bound parameters: strings made of quotes,
 *   backslashes, tabs, newlines, `\.` lines and `\N` round-trip exactly into every text column;
 * - passwords, hashes and nonces never appear in stdout, stderr, the findings file or the rejects
 *   file, whether the import succeeds, rejects records, or fails;
 * - the embedded database listens on 127.0.0.1 only and keeps its data folder private.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import pg from 'pg';
import { startEmbedded, stopEmbedded } from '../../lib/db/embedded.js';
import { importUsers } from '../../lib/import.js';
import { freshDatabase } from '../helpers/db.js';
import { runCli } from './cli.js';
import { tmpFolder } from '../helpers/setup.js';

/** Strings that break naive quoting in SQL, in COPY's text format, or in JSON. */
const NASTY = [
  "O'Brien", "''", 'a"b', 'back\\slash', 'ends with a backslash\\', '\\\\two', 'tab\there', '\ttab first', 'new\nline', 'cr\rcr', 'crlf\r\n',
  '\\.', 'x\n\\.\ny', '\\.\n', '\n\\.', '\\N', 'NULL', '\\n is not a newline', '\\t\\r', "'); DROP TABLE auth_user; --", '$$ $tag$ $$',
  "E'\\x41'", '%s %d %%', '${x}', '\\\\.\\\\', '"\\"\\\\"', '\t\n\\.\n\t', ' \\ ', '\\\t\\\n',
];

describe('safety', () => {
  describe('values reach PostgreSQL escaped, never concatenated', () => {
    it('quotes, backslashes, tabs, newlines, \\. lines and \\N round-trip exactly into every text column', async () => {
      const recs: unknown[] = [];
      NASTY.forEach((s, i) => {
        const pk = i + 1;
        recs.push({ model: 'sentry.user', pk, fields: {
          username: `${s}#${pk}`, name: s, email: `${s}@${pk}.example`, session_nonce: [...s].slice(0, 12).join(''), avatar_url: s,
          password: s, date_joined: '2023-06-22T22:59:55.488Z',
        } });
        recs.push({ model: 'sentry.email', pk, fields: { email: `${s}@${pk}.example` } });
        recs.push({ model: 'sentry.useremail', pk, fields: { user: pk, email: `${s}+other@${pk}.example`, validation_hash: [...s].slice(0, 32).join('') } });
        recs.push({ model: 'sentry.useroption', pk: pk * 2, fields: { user: pk, key: `${s}#k`, value: s } });
        recs.push({ model: 'sentry.useroption', pk: pk * 2 + 1, fields: { user: pk, key: `${s}#obj`, value: { [s]: [s, { [s]: s }] } } });
      });
      const db = await freshDatabase();
      try {
        await importUsers({ source: Readable.from([Buffer.from(JSON.stringify(recs))]), databaseUrl: db.url });
        const users = await db.knex('auth_user').select('username', 'first_name', 'email', 'session_nonce', 'avatar_url');
        expect(users).to.have.length(NASTY.length);
        const byName = new Map(users.map((u: Record<string, string>) => [u.username, u]));
        for (const [i, s] of NASTY.entries()) {
          const pk = i + 1;
          expect(byName.get(`${s}#${pk}`), JSON.stringify(s)).to.deep.equal({
            username: `${s}#${pk}`, first_name: s, email: `${s}@${pk}.example`, session_nonce: [...s].slice(0, 12).join(''), avatar_url: s,
          });
        }
        const emails = (await db.knex('sentry_email').select('email')).map((r: { email: string }) => r.email).sort();
        // The export's email rows, plus one per other user-email address (Sentry's receivers/email.py).
        expect(emails).to.deep.equal(NASTY.flatMap((s, i) => [`${s}@${i + 1}.example`, `${s}+other@${i + 1}.example`]).sort());
        const userEmails = (await db.knex('sentry_useremail').select('email')).map((r: { email: string }) => r.email).sort();
        expect(userEmails).to.deep.equal(NASTY.flatMap((s, i) => [`${s}@${i + 1}.example`, `${s}+other@${i + 1}.example`]).sort());
        const options = await db.knex('sentry_useroption').select('key', 'value');
        const byKey = new Map(options.map((o: { key: string; value: unknown }) => [o.key, o.value]));
        expect(options).to.have.length(NASTY.length * 2);
        for (const s of NASTY) {
          // A string that is itself JSON text of a string, array or object is the legacy encoding: decoded once.
          let decoded: unknown = s;
          if ('"[{'.includes(s[0] ?? 'x')) try { decoded = JSON.parse(s) as unknown; } catch { /* not JSON text: raw */ }
          expect(byKey.get(`${s}#k`), JSON.stringify(s)).to.deep.equal(decoded);
          expect(byKey.get(`${s}#obj`), JSON.stringify(s)).to.deep.equal({ [s]: [s, { [s]: s }] });
        }
        // Nothing else was touched: every user got exactly its own rows.
        expect(await db.count('sentry_lostpasswordhash')).to.equal(NASTY.length);
      } finally {
        await db.close();
      }
    });
  });

  describe('secrets never reach logs, errors, findings or rejects', () => {
    const PASSWORD = 'PwMark7f3a9c';
    const HASH = 'HashMark9b2e41d';
    const NONCE = 'NonceMk5c8d';
    const MARKERS = [PASSWORD, HASH, NONCE];
    const pw = `pbkdf2_sha256$150000$${PASSWORD}$q0Bf5Bc0c8gqQW0xMq1T`;
    let tmp: string;

    before(() => { tmp = tmpFolder('userport-secrets-'); });
    after(() => fs.rmSync(tmp, { recursive: true, force: true }));

    const user = (pk: number, username: string, extra: Record<string, unknown> = {}) =>
      ({ model: 'sentry.user', pk, fields: { username, email: `${username}@example.com`, password: pw, session_nonce: NONCE, ...extra } });
    /** Good users, a renamed one, rejected ones (each failing field next to a secret), dropped rows, an out-of-scope hash. */
    const records = [
      user(1, 'alice'),
      user(2, 'alice'), // renamed: a finding
      user(3, 'bob', { is_active: 'yes' }), // rejected, secret beside the bad field
      user(4, 'carol', { password: `${pw}${'x'.repeat(200)}` }), // rejected: the secret is the bad field
      user(5, 'dave', { password: { hash: pw } }), // rejected: the secret has the wrong type
      { model: 'sentry.user', pk: 'six', fields: { username: 'erin', password: pw, session_nonce: NONCE } }, // bad envelope
      { model: 'sentry.useremail', pk: 1, fields: { user: 1, email: 'alice@example.com', validation_hash: HASH } },
      { model: 'sentry.useremail', pk: 2, fields: { user: 3, email: 'bob@example.com', validation_hash: HASH } }, // dropped: user rejected
      { model: 'sentry.useremail', pk: 3, fields: { user: 1, email: 'alice2@example.com', validation_hash: `${HASH}${'0'.repeat(40)}` } }, // rejected
      { model: 'sentry.useroption', pk: 1, fields: { user: 1, key: 'k', value: 1, organization_id: 4 } }, // dropped: org-scoped
      { model: 'sentry.lostpasswordhash', pk: 1, fields: { user: 1, hash: HASH } }, // skipped model
    ];

    function expectNoSecret(where: string, text: string) {
      for (const m of MARKERS) expect(text.includes(m), `${m} appears in ${where}:\n${text}`).to.equal(false);
    }

    for (const json of [false, true]) {
      it(`a successful import with rejects and findings${json ? ' (--json)' : ''} prints and writes no secret`, async () => {
        const file = path.join(tmp, `export-${json}.json`);
        fs.writeFileSync(file, JSON.stringify(records, null, 2));
        const rejects = path.join(tmp, `rejects-${json}.jsonl`);
        const findings = path.join(tmp, `findings-${json}.json`);
        const db = await freshDatabase();
        try {
          const r = await runCli(['import', 'users', file, '--database-url', db.url, '--no-progress', '--rejects-file', rejects,
            '--findings-file', findings, ...(json ? ['--json'] : [])]);
          expect(r.code, r.stderr).to.equal(0);
          const rejectLines = fs.readFileSync(rejects, 'utf8').trim().split('\n');
          const findingsText = fs.readFileSync(findings, 'utf8');
          // The test can fail: there is something in every channel to look at.
          expect(r.stdout).to.match(/alice|records/);
          expect(rejectLines).to.have.length(5);
          expect(rejectLines.join('\n')).to.include('[redacted]');
          expect(findingsText).to.include('renamed').and.include('dropped');
          expectNoSecret('stdout', r.stdout);
          expectNoSecret('stderr', r.stderr);
          expectNoSecret('the rejects file', rejectLines.join('\n'));
          expectNoSecret('the findings file', findingsText);
          // The secrets really were in the input.
          expect(fs.readFileSync(file, 'utf8')).to.include(PASSWORD).and.include(HASH).and.include(NONCE);
        } finally {
          await db.close();
        }
      });
    }

    const failing: [string, unknown[] | string, string[]][] = [
      ['a schema error on a record holding secrets', [records[0]!, records[2]!], []],
      ['the secret itself failing its schema', [records[3]!], []],
      ['a bad validation hash', [records[0]!, records[8]!], []],
      ['a JSON syntax error inside a record holding secrets', `[{"model": "sentry.user", "pk": 1, "fields": {"password": "${pw}", "session_nonce": "${NONCE}", "is_active": tru}}]`, []],
      ['too many rejects (--max-rejects 0)', records, ['--max-rejects', '0', '--rejects-file', 'REJECTS']],
      ['a duplicated pk', [records[0]!, { ...records[0]!, fields: { ...(records[0] as { fields: object }).fields, username: 'zed' } }], ['--debug']],
    ];
    for (const [what, content, args] of failing) {
      it(`a failed import (${what}) prints and writes no secret`, async () => {
        const file = path.join(tmp, 'failing.json');
        fs.writeFileSync(file, typeof content === 'string' ? content : JSON.stringify(content, null, 2));
        const findings = path.join(tmp, 'findings-failing.json');
        const rejects = path.join(tmp, 'rejects-failing.jsonl');
        const db = await freshDatabase();
        try {
          const r = await runCli(['import', 'users', file, '--database-url', db.url, '--no-progress', '--findings-file', findings,
            ...args.map((a) => (a === 'REJECTS' ? rejects : a))]);
          expect(r.code, r.stderr).to.equal(1);
          expect(r.stderr).to.match(/\[USERPORT_[A-Z_]+\]/);
          const findingsText = fs.readFileSync(findings, 'utf8');
          expect(findingsText).to.include('ImportError');
          expectNoSecret('stdout', r.stdout);
          expectNoSecret('stderr', r.stderr);
          expectNoSecret('the findings file', findingsText);
          if (fs.existsSync(rejects)) expectNoSecret('the rejects file', fs.readFileSync(rejects, 'utf8'));
          expect(fs.readFileSync(file, 'utf8')).to.include(PASSWORD);
          expect(await db.count('auth_user')).to.equal(0);
        } finally {
          fs.rmSync(rejects, { force: true });
          await db.close();
        }
      });
    }
  });

  describe('the embedded database', () => {
    it('listens on 127.0.0.1 only, with a 0700 data folder and a 0600 settings file', async function () {
      this.timeout(180000);
      const dir = tmpFolder('userport-embedded-');
      // Root runs the server as "nobody", which must be able to reach the folder (as in spec/helpers/setup.ts).
      fs.chmodSync(dir, 0o755);
      try {
        const server = await startEmbedded({ dir });
        expect(fs.statSync(server.dataDir).mode & 0o777).to.equal(0o700);
        expect(fs.statSync(path.join(dir, 'embedded.json')).mode & 0o777).to.equal(0o600);
        expect(new URL(server.url).hostname).to.equal('127.0.0.1');
        const client = new pg.Client({ connectionString: server.url });
        await client.connect();
        try {
          expect((await client.query('SHOW listen_addresses')).rows[0].listen_addresses).to.equal('127.0.0.1');
          expect((await client.query('SHOW unix_socket_directories')).rows[0].unix_socket_directories).to.equal('');
        } finally {
          await client.end();
        }
        // Not reachable on any other address of this machine.
        const others = Object.values(os.networkInterfaces()).flat().filter((a) => a && a.family === 'IPv4' && !a.internal);
        for (const a of others) {
          const refused = await new Promise<boolean>((resolve) => {
            const s = net.connect({ host: a!.address, port: server.config.port });
            s.once('connect', () => { s.destroy(); resolve(false); });
            s.once('error', () => resolve(true));
          });
          expect(refused, `port ${server.config.port} open on ${a!.address}`).to.equal(true);
        }
      } finally {
        await stopEmbedded(dir, 'immediate').catch(() => undefined);
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  });
});
