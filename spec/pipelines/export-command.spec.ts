/**
 * `userport export users`, run as a real process: file and stdout destinations, the encrypted
 * migration pipe into `userport import users -`, filters and findings, bad input; and constant
 * memory on an export larger than the 150 MB RSS ceiling.
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { createExporter } from '../../lib/export.js';
import { importUsers } from '../../lib/import.js';
import { freshDatabase, type TestDb } from '../helpers/db.js';
import { user, useremail, useroption, writeExport } from '../helpers/exports.js';
import { fixture as cryptoFixture } from '../crypto/helpers.js';
import { startKmsServer } from '../crypto/kms-server.js';
import { createLocalKeyUnwrapper, decryptExport } from '../../lib/decrypt.js';
import { loadPrivateKey } from '../../lib/crypto/keys.js';
import { PassThrough } from 'node:stream';
import { tmpFolder } from '../helpers/setup.js';

const ROOT = path.resolve('.');
const BIN = path.join(ROOT, 'bin/userport.js');

interface Result { code: number | null; stdout: Buffer; stderr: string }

function userport(args: string[], input?: Buffer, env: NodeJS.ProcessEnv = {}): Promise<Result> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args], { cwd: ROOT, env: { ...process.env, DATABASE_URL: '', ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => (stderr += d));
    child.stdin.end(input ?? '');
    child.on('close', (code) => resolve({ code, stdout: Buffer.concat(out), stderr }));
  });
}

async function exportText(url: string): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of createExporter({ databaseUrl: url })) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString();
}

const RECORDS = [
  user(1, 'alice'), user(2, 'bob'), user(3, 'carol'),
  useremail(1, 1, 'alice@example.com'), useremail(2, 2, 'bob@example.com'),
  useroption(1, 1, 'timezone', 'Europe/Vienna'), useroption(2, 2, 'language', 'de'),
];

describe('userport export users', function () {
  this.timeout(300000);
  let source: TestDb;
  let dir: string;
  before(async () => {
    source = await freshDatabase();
    await importUsers({ source: writeExport(RECORDS), databaseUrl: source.url });
    dir = tmpFolder('userport-export-cli-');
  });
  after(async () => {
    fs.rmSync(dir, { recursive: true, force: true });
    await source.close();
  });

  it('writes DEST and prints a summary per model', async () => {
    const dest = path.join(dir, 'users.json');
    const r = await userport(['export', 'users', dest, '--database-url', source.url]);
    expect(r.code, r.stderr).to.equal(0);
    expect(fs.readFileSync(dest, 'utf8')).to.equal(await exportText(source.url));
    expect(r.stdout.toString()).to.match(/sentry\.user\s+3\n/).and.match(/sentry\.useremail\s+3\n/);
  });

  it('writes to stdout with -, keeping the summary off stdout', async () => {
    // 3 users, 3 emails and 3 user emails (the import adds carol's primary user email, and an
    // Email row for every user email, as Sentry's signal receivers do), 2 options.
    const r = await userport(['export', 'users', '-', '--database-url', source.url]);
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout.toString()).to.equal(await exportText(source.url));
    expect(r.stderr).to.match(/^Exported: 11 records/m);
  });

  it('migrates through a pipe: export - --encrypt-with -q | import users - --decrypt-with, to the same records', async () => {
    const target = await freshDatabase();
    try {
      const exp = await userport(['export', 'users', '-', '--database-url', source.url, '--encrypt-with', cryptoFixture('fixture-key.pub'), '-q']);
      expect(exp.code, exp.stderr).to.equal(0);
      expect(exp.stderr).to.equal('');
      const imp = await userport(['import', 'users', '-', '--decrypt-with', cryptoFixture('fixture-key.pem'), '--database-url', target.url, '--silent'], exp.stdout);
      expect(imp.code, imp.stderr).to.equal(0);
      const names = async (db: TestDb) => (await db.knex.raw('SELECT username, first_name, date_joined FROM auth_user ORDER BY id')).rows;
      const options = async (db: TestDb) => (await db.knex.raw('SELECT u.username, o.key, o.value FROM sentry_useroption o JOIN auth_user u ON u.id = o.user_id ORDER BY o.id')).rows;
      expect(await names(target)).to.deep.equal(await names(source));
      expect(await options(target)).to.deep.equal(await options(source));
      expect(await target.count('auth_user')).to.equal(3);
    } finally {
      await target.close();
    }
  });

  it('--encrypt-with-gcp-kms encrypts to the KMS key\'s public key: the matching private key decrypts the export', async () => {
    const server = await startKmsServer(loadPrivateKey(fs.readFileSync(cryptoFixture('fixture-key.pem'))));
    try {
      // External-account credentials: google-auth-library exchanges the subject token at the
      // stand-in's STS (a service account's token URL is fixed to Google's).
      server.subjectTokens = ['export-job'];
      fs.writeFileSync(path.join(dir, 'subject'), 'export-job');
      fs.writeFileSync(path.join(dir, 'sa.json'), JSON.stringify({
        type: 'external_account', audience: '//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/ci/providers/local',
        subject_token_type: 'urn:ietf:params:oauth:token-type:jwt', token_url: `${server.url}/sts`, credential_source: { file: path.join(dir, 'subject') },
      }));
      fs.writeFileSync(path.join(dir, 'kms.json'), JSON.stringify({ project_id: 'p', location: 'global', key_ring: 'relocation', key: 'relocation', version: '1' }));
      const tar = path.join(dir, 'kms.tar');
      const r = await userport(['export', 'users', tar, '--database-url', source.url, '--encrypt-with-gcp-kms', path.join(dir, 'kms.json'), '--silent'], undefined,
        { GOOGLE_APPLICATION_CREDENTIALS: path.join(dir, 'sa.json'), USERPORT_GCP_KMS_ENDPOINT: server.url });
      expect(r.code, r.stderr).to.equal(0);
      const out = new PassThrough();
      const chunks: Buffer[] = [];
      out.on('data', (c: Buffer) => chunks.push(c));
      await decryptExport({ path: tar }, out, { unwrapper: createLocalKeyUnwrapper({ privateKeyPath: cryptoFixture('fixture-key.pem') }) });
      expect(Buffer.concat(chunks).toString()).to.equal(await exportText(source.url));
    } finally {
      await server.close();
    }
  });

  it('--filter-usernames-file exports those users only; --findings-file says what was left out and which names matched nothing', async () => {
    const names = path.join(dir, 'names.txt');
    fs.writeFileSync(names, 'bob\nnobody\n');
    const dest = path.join(dir, 'bob.json');
    const findings = path.join(dir, 'findings.json');
    const r = await userport(['export', 'users', dest, '--database-url', source.url, '--filter-usernames-file', names, '--findings-file', findings, '--json']);
    expect(r.code, r.stderr).to.equal(0);
    const records = JSON.parse(fs.readFileSync(dest, 'utf8')) as { model: string; fields: { username?: string } }[];
    expect(records.filter((x) => x.model === 'sentry.user').map((x) => x.fields.username)).to.deep.equal(['bob']);
    // The import's findings format (spec/findings.spec.ts compares the two).
    const f = JSON.parse(fs.readFileSync(findings, 'utf8')) as { finding: string; kind: string; model: string; count: number | null; reason: string }[];
    expect(f.filter((x) => x.kind === 'excluded').map((x) => [x.finding, x.model, x.count])).to.deep.include.members([['ExportFinding', 'sentry.user', 2]]);
    expect(f.filter((x) => x.finding === 'UnmatchedUsername').map((x) => x.reason)).to.deep.equal(['--filter-usernames: no user named "nobody"']);
    expect(JSON.parse(r.stdout.toString()).models['sentry.user']).to.equal(1);
  });

  it('an empty --filter-usernames is no filter, as Sentry\'s parse_filter_arg reads it: every user exported, and the summary says so', async () => {
    const all = path.join(dir, 'all.json');
    const unfiltered = await userport(['export', 'users', all, '--database-url', source.url, '--json']);
    expect(unfiltered.code, unfiltered.stderr).to.equal(0);
    const users = JSON.parse(unfiltered.stdout.toString()).models['sentry.user'] as number;
    expect(users).to.be.greaterThan(1);
    const dest = path.join(dir, 'empty-filter.json');
    const r = await userport(['export', 'users', dest, '--database-url', source.url, '--filter-usernames', '']);
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout.toString()).to.include('--filter-usernames was empty: no filter (as in Sentry), every user exported');
    const records = JSON.parse(fs.readFileSync(dest, 'utf8')) as { model: string }[];
    expect(records.filter((x) => x.model === 'sentry.user')).to.have.length(users);
  });

  it('refuses usage mistakes before touching any database: exit 2, USERPORT_OPTION_INVALID, no embedded server started', async () => {
    // No database URL at all: had the command got as far as the database, it would have started
    // the embedded server in USERPORT_HOME.
    const home = path.join(dir, 'never-home');
    fs.mkdirSync(path.join(dir, 'a-folder'), { recursive: true });
    const dest = path.join(dir, 'never.json');
    const cases: string[][] = [
      [dest, '--indent', 'x'],
      [dest, '--filter-usernames', 'a', '--filter-usernames-file', 'f'],
      // Not empty, but naming nobody: Sentry would export nobody, and everybody would be worse.
      [dest, '--filter-usernames', ' , '],
      [dest, '--encrypt-with', path.join(dir, 'missing.pem')],
      [dest, '--encrypt-with-gcp-kms', path.join(dir, 'missing.json')],
      [dest, '--bogus'],
      [path.join(dir, 'no-such-folder', 'x.json')],
      [path.join(dir, 'a-folder')],
      [dest, '--findings-file', '-'],
      [dest, '--findings-file', path.join(dir, 'no-such-folder', 'f.json')],
      [dest, '--database-url', 'mysql://x'],
      [],
    ];
    for (const args of cases) {
      const r = await userport(['export', 'users', ...args], undefined, { USERPORT_HOME: home });
      expect(r.code, args.join(' ')).to.equal(2);
      expect(r.stderr, args.join(' ')).to.match(/\[USERPORT_OPTION_INVALID\]\n$/);
      expect(r.stderr.trim().split('\n'), args.join(' ')).to.have.length(1);
    }
    // A key file that is there but holds no public key, a KMS config that is not one: the same.
    const notPem = path.join(dir, 'not-a-key.pem');
    fs.writeFileSync(notPem, 'hello\n');
    const badKms = path.join(dir, 'kms.json');
    fs.writeFileSync(badKms, '{"not": "a kms config"}');
    for (const [args, said] of [
      [['--encrypt-with', notPem], /^userport: --encrypt-with .*not-a-key\.pem is not a PEM RSA public key \[USERPORT_DECRYPT_KEY_INVALID\]\n$/],
      [['--encrypt-with-gcp-kms', badKms], /kms\.json.*\[USERPORT_[A-Z_]+\]\n$/],
      [['--encrypt-with', cryptoFixture('fixture-key.encrypted.pem')], /^userport: --encrypt-with is an encrypted private key: give its public key .*\[USERPORT_OPTION_INVALID\]\n$/],
    ] as [string[], RegExp][]) {
      const r = await userport(['export', 'users', dest, ...args], undefined, { USERPORT_HOME: home });
      expect(r.code, args.join(' ')).to.equal(2);
      expect(r.stderr, args.join(' ')).to.match(said);
    }
    expect(fs.existsSync(home)).to.equal(false);
    expect(fs.existsSync(dest)).to.equal(false);
  });

  it('suggests the flag meant, and takes Sentry\'s underscore spellings', async () => {
    const typo = await userport(['export', 'users', '-', '--filter-username', 'bob']);
    expect(typo.code).to.equal(2);
    expect(typo.stderr).to.include('did you mean --filter-usernames?');
    const r = await userport(['export', 'users', '-', '--database-url', source.url, '--filter_usernames', 'bob', '--no_prompt', '-q']);
    expect(r.code, r.stderr).to.equal(0);
    const records = JSON.parse(r.stdout.toString()) as { model: string; fields: { username?: string } }[];
    expect(records.filter((x) => x.model === 'sentry.user').map((x) => x.fields.username)).to.deep.equal(['bob']);
  });

  it('fails with USERPORT_EXPORT_SCHEMA on a database without Sentry\'s tables, leaving no DEST', async () => {
    const empty = await freshDatabase(false);
    try {
      const dest = path.join(dir, 'none.json');
      const r = await userport(['export', 'users', dest, '--database-url', empty.url]);
      expect(r.code).to.equal(1);
      expect(r.stderr).to.include('USERPORT_EXPORT_SCHEMA');
      expect(fs.readdirSync(dir).filter((n) => n.startsWith('none.json') || n.startsWith('.none.json'))).to.deep.equal([]);
    } finally {
      await empty.close();
    }
  });
});

const CEILING_MB = 150;

const CHILD = `
const { createExporter } = await import(process.argv[1]);
const hash = (await import('node:crypto')).createHash('sha256');
let bytes = 0;
for await (const c of createExporter({ databaseUrl: process.argv[2] })) { bytes += c.length; hash.update(c); }
process.stdout.write(JSON.stringify({ bytes, maxRssMb: process.resourceUsage().maxRSS / 1024 }));
`;

describe('export memory', function () {
  this.timeout(600000);
  it(`exports ~200 MB from a database in under ${CEILING_MB} MB of RSS @soak`, async () => {
    const db = await freshDatabase();
    try {
      // 1 KB options are the cheapest way to a big export: 200k of them, made by the server.
      await db.knex.raw(`INSERT INTO auth_user (id, password, username, first_name, email, is_staff, is_active, is_superuser, is_managed,
        is_password_expired, flags, date_joined) SELECT g, '', 'u' || g, '', '', false, true, false, false, false, 0, now() FROM generate_series(1, 1000) g`);
      await db.knex.raw(`INSERT INTO sentry_useroption (user_id, key, value)
        SELECT 1 + g % 1000, 'k' || g, to_jsonb(repeat(md5(g::text), 30)) FROM generate_series(1, 200000) g`);
      const res = await new Promise<{ bytes: number; maxRssMb: number }>((resolve, reject) => {
        const child = spawn(process.execPath, ['--max-semi-space-size=4', '--max-old-space-size=96', '--input-type=module', '-e', CHILD,
          path.resolve('dist/lib/export.js'), db.url], { stdio: ['ignore', 'pipe', 'pipe'] });
        let out = '';
        let err = '';
        child.stdout.on('data', (c: Buffer) => (out += c));
        child.stderr.on('data', (c: Buffer) => (err += c));
        child.on('error', reject);
        child.on('close', (code) => (code === 0 ? resolve(JSON.parse(out) as { bytes: number; maxRssMb: number }) : reject(new Error(`child exited ${code}: ${err}`))));
      });
      expect(res.bytes).to.be.greaterThan(CEILING_MB * 1024 * 1024);
      expect(res.maxRssMb).to.be.lessThan(CEILING_MB);
    } finally {
      await db.close();
    }
  });
});
