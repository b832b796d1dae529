import { expect } from 'chai';
import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { keyUnwrapperFromOptions, runDecryptCommand, runEncryptCommand } from '../../pipelines/crypto-commands.js';
import { loadPrivateKey } from '../../lib/crypto/keys.js';
import { chunked } from '../helpers/streams.js';
import { codeOf, drain, fifoOrSkip, fixture, flipBase64, listDir, PLAINTEXT, PYTHON_TAR, pythonMembers, readFixture, tempDir } from '../crypto/helpers.js';
import { startKmsServer, useKmsServer } from '../crypto/kms-server.js';

interface Run { code: number; stdout: Buffer; stderr: string }

async function run(cmd: typeof runEncryptCommand, args: string[], stdin: Buffer = Buffer.alloc(0)): Promise<Run> {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  const out = drain(stdout);
  const err = drain(stderr);
  const code = await cmd(args, { stdin: chunked(stdin, 4096), stdout, stderr });
  stdout.end();
  stderr.end();
  return { code, stdout: await out, stderr: (await err).toString() };
}

const KEY = fixture('fixture-key.pem');
const PUB = fixture('fixture-key.pub');

function pythonWithCryptography(): string | undefined {
  const r = spawnSync('python3', ['-c', 'import cryptography'], { encoding: 'utf8' });
  if (r.error) return `python3 is not available (${r.error.message})`;
  if (r.status !== 0) return 'python3 has no cryptography module (apt-get install python3-cryptography)';
  return undefined;
}

/** Sentry's decrypt path, in Python: tarfile + RSA-OAEP-SHA256 + Fernet. Prints the plaintext. */
const PYTHON_DECRYPT = `
import sys, tarfile
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
tar = tarfile.open(sys.argv[1], "r")
files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
assert sorted(files) == ["data.key", "export.json", "key.pub"], sorted(files)
key = serialization.load_pem_private_key(open(sys.argv[2], "rb").read(), password=None)
pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
assert pub == files["key.pub"], "key.pub differs from the private key's public key"
dek = key.decrypt(files["data.key"], padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
sys.stdout.buffer.write(Fernet(dek).decrypt(files["export.json"]))
`;

describe('userport encrypt / decrypt', () => {
  describe('on success', () => {
    it('round-trips a file through encrypt and decrypt, and creates the decrypted file 0600', async () => {
      const t = tempDir();
      try {
        const tar = path.join(t.dir, 'users.tar');
        const out = path.join(t.dir, 'users.json');
        expect((await run(runEncryptCommand, ['--encrypt-with', PUB, fixture('fixture-export.json'), tar])).code).to.equal(0);
        const r = await run(runDecryptCommand, ['--decrypt-with', KEY, tar, out]);
        expect(r).to.include({ code: 0, stderr: '' });
        expect(fs.readFileSync(out).equals(PLAINTEXT())).to.equal(true);
        expect(fs.statSync(out).mode & 0o777).to.equal(0o600);
        expect(listDir(t.dir).sort()).to.deep.equal(['users.json', 'users.tar']);
      } finally {
        t.remove();
      }
    });

    it('writes into an existing FIFO or device in place instead of renaming over it', async function () {
      const t = tempDir();
      try {
        const fifo = fifoOrSkip(this, t.dir, 'out.fifo');
        const reading = drain(fs.createReadStream(fifo));
        const r = await run(runDecryptCommand, ['--decrypt-with', KEY, fixture('python-export.tar'), fifo]);
        expect(r).to.include({ code: 0, stderr: '' });
        expect((await reading).equals(PLAINTEXT())).to.equal(true);
        expect(fs.statSync(fifo).isFIFO()).to.equal(true);
        expect(listDir(t.dir)).to.deep.equal(['out.fifo']);
      } finally {
        t.remove();
      }
    });

    it('reads a FIFO as SRC once, on the handle it opened: the writer is not cut off, nothing waits for a second one', async function () {
      const t = tempDir();
      try {
        const fifo = fifoOrSkip(this, t.dir, 'in.fifo');
        // A separate writer, as a shell's `cat export.tar > fifo` is: it dies of SIGPIPE if the
        // reader closes the FIFO early.
        const writer = spawn('sh', ['-c', 'cat "$1" > "$2"', 'sh', fixture('python-export.tar'), fifo], { stdio: 'ignore' });
        const exited = new Promise<number | null>((resolve) => writer.on('exit', (code) => resolve(code)));
        const out = path.join(t.dir, 'out.json');
        const r = await run(runDecryptCommand, ['--decrypt-with', KEY, fifo, out]);
        expect(r).to.include({ code: 0, stderr: '' });
        expect(await exited).to.equal(0);
        expect(fs.readFileSync(out).equals(PLAINTEXT())).to.equal(true);
      } finally {
        t.remove();
      }
    });

    it('given a private key to --encrypt-with, writes only its public half as key.pub; refuses an encrypted one', async () => {
      for (const key of [KEY, fixture('fixture-key.pkcs1.pem')]) {
        const enc = await run(runEncryptCommand, ['--encrypt-with', key, fixture('fixture-export.json'), '-']);
        expect(enc.code, enc.stderr).to.equal(0);
        const tar = enc.stdout.toString('latin1');
        expect(tar).not.to.include('PRIVATE KEY');
        // The private key's modulus must not be there in any form: only the public PEM is.
        const publicPem = crypto.createPublicKey(readFixture('fixture-key.pem')).export({ type: 'spki', format: 'pem' }).toString();
        expect(tar).to.include(publicPem);
        const back = await run(runDecryptCommand, ['--decrypt-with', KEY, '-', '-'], enc.stdout);
        expect(back.stdout.equals(PLAINTEXT())).to.equal(true);
      }
      const locked = await run(runEncryptCommand, ['--encrypt-with', fixture('fixture-key.encrypted.pem'), fixture('fixture-export.json'), '-']);
      expect(locked.code).to.equal(2);
      expect(locked.stdout).to.have.length(0);
      expect(locked.stderr).to.include('[USERPORT_OPTION_INVALID]');
    });

    it('reads stdin and writes stdout with -', async () => {
      const plain = crypto.randomBytes(300_000);
      const enc = await run(runEncryptCommand, ['--encrypt-with', PUB, '-', '-'], plain);
      expect(enc.code).to.equal(0);
      const dec = await run(runDecryptCommand, ['--decrypt-with', fixture('fixture-key.pkcs1.pem'), '-', '-'], enc.stdout);
      expect(dec.code).to.equal(0);
      expect(dec.stdout.equals(plain)).to.equal(true);
    });

    it('decrypts the Python tarball with an encrypted key and --decrypt-passphrase-file', async () => {
      const r = await run(runDecryptCommand, [
        '--decrypt-with', fixture('fixture-key.encrypted.pem'), '--decrypt-passphrase-file', fixture('fixture-key.passphrase'), fixture('python-export.tar'), '-',
      ]);
      expect(r.code).to.equal(0);
      expect(r.stdout.equals(PLAINTEXT())).to.equal(true);
    });

    it('decrypts with --decrypt-with-gcp-kms and encrypts with --encrypt-with-gcp-kms through a KMS endpoint', async () => {
      const server = await startKmsServer(loadPrivateKey(readFixture('fixture-key.pem')));
      const t = tempDir();
      const saved = { ...process.env };
      try {
        const kms = useKmsServer(server, t.dir);
        const r = await run(runDecryptCommand, ['--decrypt-with-gcp-kms', kms, fixture('python-export.tar'), '-']);
        expect(r.stderr).to.equal('');
        expect(r.stdout.equals(PLAINTEXT())).to.equal(true);
        // Encrypting to the KMS key: key.pub comes from getPublicKey; the local key can decrypt it.
        const enc = await run(runEncryptCommand, ['--encrypt-with-gcp-kms', kms, fixture('fixture-export.json'), '-']);
        expect(enc.stderr).to.equal('');
        const back = await run(runDecryptCommand, ['--decrypt-with', KEY, '-', '-'], enc.stdout);
        expect(back.stdout.equals(PLAINTEXT())).to.equal(true);
        server.mode = 'bad-plaintext-crc';
        const bad = await run(runDecryptCommand, ['--decrypt-with-gcp-kms', kms, fixture('python-export.tar'), '-']);
        expect(bad.code).to.equal(1);
        expect(bad.stdout).to.have.length(0);
        const badPub = await run(runEncryptCommand, ['--encrypt-with-gcp-kms', kms, fixture('fixture-export.json'), '-']);
        expect(badPub.code).to.equal(1);
        expect(badPub.stdout).to.have.length(0);
      } finally {
        process.env = saved;
        t.remove();
        await server.close();
      }
    });
  });

  describe('on failure', () => {
    const cases: [string, () => Buffer, string][] = [
      ['a tampered token', () => flipBase64(PYTHON_TAR(), pythonMembers().tokenOffset + 1000), KEY],
      ['a truncated tarball', () => PYTHON_TAR().subarray(0, 2500), KEY],
      ['the wrong key', () => PYTHON_TAR(), fixture('other-key.pem')],
    ];
    for (const [what, tar, key] of cases) {
      for (const via of ['file', 'stdin']) {
        // Another key than the export's, in a file, is found before anything runs: a usage error.
        const code = key.endsWith('other-key.pem') && via === 'file' ? 2 : 1;
        it(`exits ${code} with one line on stderr and writes no DEST for ${what} (${via})`, async () => {
          const t = tempDir();
          try {
            const src = path.join(t.dir, 'in.tar');
            fs.writeFileSync(src, tar());
            const dest = path.join(t.dir, 'out.json');
            const r = via === 'file'
              ? await run(runDecryptCommand, ['--decrypt-with', key, src, dest])
              : await run(runDecryptCommand, ['--decrypt-with', key, '-', dest], tar());
            expect(r.code, r.stderr).to.equal(code);
            expect(r.stderr).to.match(/^userport: [^\n]+ \[USERPORT_DECRYPT_[A-Z_]+\]\n$/);
            expect(listDir(t.dir)).to.deep.equal(['in.tar']);
          } finally {
            t.remove();
          }
        });
      }
    }

    it('says "this key cannot decrypt this export" for the wrong key, and shows the stack only with --debug', async () => {
      const plain = await run(runDecryptCommand, ['--decrypt-with', fixture('other-key.pem'), fixture('python-export.tar'), '-']);
      expect(plain.stderr).to.contain('this key cannot decrypt this export');
      expect(plain.stderr).not.to.contain('    at ');
      const debug = await run(runDecryptCommand, ['--debug', '--decrypt-with', fixture('other-key.pem'), fixture('python-export.tar'), '-']);
      expect(debug.stderr).to.contain('    at ');
    });

    it('rejects bad usage and a key that cannot be opened with exit code 2, before DEST is touched, each in the one error format', async () => {
      const line = /^userport: [^\n]+ \[USERPORT_[A-Z_]+\]\n$/;
      for (const [args, code] of [
        [[fixture('fixture-export.json'), '-'], 2],
        [['--encrypt-with', PUB, fixture('fixture-export.json')], 2],
        [['--encrypt-with', PUB, '--encrypt-with-gcp-kms', 'x.json', fixture('fixture-export.json'), '-'], 2],
        [['--encrypt-with', fixture('nope.pub'), fixture('fixture-export.json'), '-'], 2],
        [['--encrypt-with', KEY.replace('.pem', '.passphrase'), fixture('fixture-export.json'), '-'], 2],
        [['--bogus', fixture('fixture-export.json'), '-'], 2],
        [['--encrypt-with-gcp-kms', fixture('nope.json'), fixture('fixture-export.json'), '-'], 2],
      ] as [string[], number][]) {
        const r = await run(runEncryptCommand, args);
        expect(r.code, args.join(' ')).to.equal(code);
        expect(r.stderr, args.join(' ')).to.match(line);
      }
      for (const [args, code] of [
        [[fixture('python-export.tar'), '-'], 2],
        [['--decrypt-with', KEY, '--decrypt-with-gcp-kms', 'x.json', fixture('python-export.tar'), '-'], 2],
        [['--decrypt-passphrase-file', fixture('fixture-key.passphrase'), fixture('python-export.tar'), '-'], 2],
        [['--decrypt-with', fixture('fixture-key.encrypted.pem'), fixture('python-export.tar'), '-'], 2],
        [['--decrypt-with', PUB, fixture('python-export.tar'), '-'], 2],
        [['--decrypt-with-gcp-kms', fixture('nope.json'), fixture('python-export.tar'), '-'], 2],
      ] as [string[], number][]) {
        const r = await run(runDecryptCommand, args);
        expect(r.code, args.join(' ')).to.equal(code);
        expect(r.stderr, args.join(' ')).to.match(line);
      }
      // The key's flag and file are named, and DEST is never created.
      const t = tempDir();
      try {
        const notAKey = KEY.replace('.pem', '.passphrase');
        const out = path.join(t.dir, 'out.tar');
        const enc = await run(runEncryptCommand, ['--encrypt-with', notAKey, fixture('fixture-export.json'), out]);
        expect(enc.stderr).to.equal(`userport: --encrypt-with ${notAKey} is not a PEM RSA public key [USERPORT_DECRYPT_KEY_INVALID]\n`);
        const dec = await run(runDecryptCommand, ['--decrypt-with', notAKey, fixture('python-export.tar'), path.join(t.dir, 'out.json')]);
        expect(dec.stderr).to.equal(`userport: --decrypt-with ${notAKey}: the private key is not a PEM RSA private key (PKCS#8 or PKCS#1) [USERPORT_DECRYPT_KEY_INVALID]\n`);
        expect(fs.readdirSync(t.dir)).to.deep.equal([]);
      } finally {
        t.remove();
      }
    });
    it('says what is wrong with SRC and DEST before any key is read: missing, a folder, a folder that does not exist', async () => {
      const t = tempDir();
      try {
        const missing = path.join(t.dir, 'nothing.json');
        const nowhere = path.join(t.dir, 'no', 'such', 'out.tar');
        for (const [cmd, key] of [[runEncryptCommand, ['--encrypt-with', PUB]], [runDecryptCommand, ['--decrypt-with', KEY]]] as const) {
          for (const [args, said] of [
            [[missing, '-'], `SRC: cannot read ${missing}`],
            [[t.dir, '-'], `SRC: ${t.dir} is a folder`],
            [[fixture('python-export.tar'), nowhere], `DEST: folder ${path.dirname(nowhere)} does not exist`],
            [[fixture('python-export.tar'), path.join(t.dir, `${'y'.repeat(300)}.out`)], 'DEST: the file name is 304 bytes long, more than a file system takes (255)'],
          ] as [string[], string][]) {
            const r = await run(cmd, [...key, ...args]);
            expect(r.code, args.join(' ')).to.equal(2);
            expect(r.stderr).to.equal(`userport: ${said} [USERPORT_OPTION_INVALID]\n`);
          }
        }
        expect(fs.existsSync(path.join(t.dir, 'no'))).to.equal(false);
      } finally {
        t.remove();
      }
    });

    it('decrypt of the plain JSON export says so, from a file and from stdin, not a tar checksum', async () => {
      const json = fixture('fixture-export.json');
      for (const r of [await run(runDecryptCommand, ['--decrypt-with', KEY, json, '-']),
        await run(runDecryptCommand, ['--decrypt-with', KEY, '-', '-'], PLAINTEXT()),
        await run(runDecryptCommand, ['--decrypt-with', KEY, '-', '-'], Buffer.from('[]\n'))]) {
        expect(r.code).to.equal(1);
        expect(r.stderr).to.match(/^userport: the input is plain JSON, not an encrypted export \(the tar archive sentry export --encrypt-with writes\) \[USERPORT_DECRYPT_TAR\]\n$/);
        expect(r.stdout.length).to.equal(0);
      }
    });
  });

  describe('keyUnwrapperFromOptions', () => {

    it('returns undefined without decryption flags and an unwrapper otherwise', async () => {
      expect(await keyUnwrapperFromOptions({})).to.equal(undefined);
      const u = await keyUnwrapperFromOptions({ decryptWith: KEY });
      expect(await u!.unwrap(pythonMembers().wrapped, pythonMembers().pub)).to.have.length(44);
    });

    it('asks for the passphrase of an encrypted key once, up front, when no file gives it', async () => {
      let asked = 0;
      const u = await keyUnwrapperFromOptions({ decryptWith: fixture('fixture-key.encrypted.pem'), promptPassphrase: async () => { asked++; return 'fixture-passphrase'; } });
      expect(asked).to.equal(1);
      expect(await u!.unwrap(pythonMembers().wrapped, pythonMembers().pub)).to.have.length(44);
      expect(await codeOf(keyUnwrapperFromOptions({ decryptWith: fixture('fixture-key.encrypted.pem'), promptPassphrase: async () => 'wrong' })))
        .to.equal('USERPORT_DECRYPT_PASSPHRASE');
      await keyUnwrapperFromOptions({ decryptWith: KEY, promptPassphrase: async () => { asked++; return 'x'; } });
      expect(asked).to.equal(1);
    });

    it('validates the flags together, and opens the key before any input is read', async () => {
      expect(await codeOf(keyUnwrapperFromOptions({ decryptWith: KEY, gcpKmsConfig: 'x.json' }))).to.equal('USERPORT_OPTION_INVALID');
      expect(await codeOf(keyUnwrapperFromOptions({ passphraseFile: fixture('fixture-key.passphrase') }))).to.equal('USERPORT_OPTION_INVALID');
      expect(await codeOf(keyUnwrapperFromOptions({ decryptWith: '' }))).to.equal('USERPORT_OPTION_INVALID');
      expect(await codeOf(keyUnwrapperFromOptions({ decryptWith: fixture('nope.pem') }))).to.equal('USERPORT_DECRYPT_KEY_INVALID');
      expect(await codeOf(keyUnwrapperFromOptions({ decryptWith: fixture('fixture-key.encrypted.pem'), promptPassphrase: null }))).to.equal('USERPORT_DECRYPT_PASSPHRASE');
      expect(await codeOf(keyUnwrapperFromOptions({ decryptWith: fixture('fixture-key.encrypted.pem'), passphraseFile: fixture('fixture-key.pub') })))
        .to.equal('USERPORT_DECRYPT_PASSPHRASE');
      expect(await codeOf(keyUnwrapperFromOptions({ gcpKmsConfig: fixture('nope.json') }))).to.equal('USERPORT_DECRYPT_KMS');
    });

    it('names the flag and the file when the key cannot be opened', async () => {
      const notAKey = fixture('fixture-key.passphrase');
      const err = await keyUnwrapperFromOptions({ decryptWith: notAKey }).then(() => undefined, (e: unknown) => e as Error & { code?: string });
      expect(err?.code).to.equal('USERPORT_DECRYPT_KEY_INVALID');
      expect(err?.message).to.equal(`--decrypt-with ${notAKey}: the private key is not a PEM RSA private key (PKCS#8 or PKCS#1)`);
      const pub = await keyUnwrapperFromOptions({ decryptWith: PUB }).then(() => undefined, (e: unknown) => e as Error);
      expect(pub?.message).to.match(/^--decrypt-with .*fixture-key\.pub: the private key is not a PEM RSA private key/);
    });
  });

  describe('interoperability with Python\'s cryptography', () => {
    it('a tarball made by userport encrypt is decrypted by Python\'s Fernet, Sentry\'s way', async function () {
      const reason = pythonWithCryptography();
      if (reason) {
        console.log(`      skipped: ${reason}`);
        this.skip();
      }
      const t = tempDir();
      try {
        const tar = path.join(t.dir, 'ours.tar');
        const plain = Buffer.concat([PLAINTEXT(), Buffer.from(crypto.randomBytes(50_000).toString('hex'))]);
        fs.writeFileSync(path.join(t.dir, 'plain.json'), plain);
        expect((await run(runEncryptCommand, ['--encrypt-with', PUB, path.join(t.dir, 'plain.json'), tar])).code).to.equal(0);
        const py = spawnSync('python3', ['-c', PYTHON_DECRYPT, tar, KEY], { maxBuffer: 64 * 1024 * 1024 });
        expect(py.stderr.toString()).to.equal('');
        expect(py.status).to.equal(0);
        expect(py.stdout.equals(plain)).to.equal(true);
        // The same from stdin (spooled path), where the tar is assembled after the token.
        const viaStdin = await run(runEncryptCommand, ['--encrypt-with', PUB, '-', '-'], plain);
        fs.writeFileSync(tar, viaStdin.stdout);
        const py2 = spawnSync('python3', ['-c', PYTHON_DECRYPT, tar, KEY], { maxBuffer: 64 * 1024 * 1024 });
        expect(py2.status, py2.stderr.toString()).to.equal(0);
        expect(py2.stdout.equals(plain)).to.equal(true);
      } finally {
        t.remove();
      }
    });
  });
});
