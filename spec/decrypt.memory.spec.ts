/**
 * Constant memory: a child process decrypts an export much bigger than the 150 MB RSS ceiling
 * would allow to hold, from a file (two passes) and from stdin (spooled), and reports its peak
 * RSS. Holding the token or the plaintext in memory would exceed the ceiling.
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { encryptExport } from '../lib/encrypt.js';
import { readFixture, tempDir } from './crypto/helpers.js';

const CEILING_MB = 150;
const PLAINTEXT_MB = 160;

const CHILD = `
import fs from 'node:fs';
const d = await import(process.argv[1]);
const unwrapper = d.createLocalKeyUnwrapper({ privateKeyPath: process.argv[2] });
const input = process.argv[3] === '-' ? { stream: process.stdin } : { path: process.argv[3] };
const src = await d.openDecryptedSource(input, { unwrapper, tmpDir: process.argv[4] });
let n = 0;
const hash = (await import('node:crypto')).createHash('sha256');
for await (const c of src.stream) { n += c.length; hash.update(c); }
process.stdout.write(JSON.stringify({ bytes: n, sha256: hash.digest('hex'), maxRssMb: process.resourceUsage().maxRSS / 1024 }));
`;

function runChild(args: string[], stdinFile?: string): Promise<{ bytes: number; sha256: string; maxRssMb: number }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', CHILD, path.resolve('dist/lib/decrypt.js'), ...args], {
      stdio: [stdinFile ? 'pipe' : 'ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout!.on('data', (c: Buffer) => { out += c.toString(); });
    child.stderr!.on('data', (c: Buffer) => { err += c.toString(); });
    if (stdinFile) fs.createReadStream(stdinFile).pipe(child.stdin!);
    child.on('error', reject);
    child.on('close', (code) => {
      if (code !== 0) reject(new Error(`child exited ${code}: ${err}`));
      else resolve(JSON.parse(out) as { bytes: number; sha256: string; maxRssMb: number });
    });
  });
}

describe('decryption memory', () => {
  let t: ReturnType<typeof tempDir>;
  let tar: string;
  let expected: string;
  before(async () => {
    t = tempDir();
    tar = path.join(t.dir, 'big.tar');
    // Incompressible-looking but cheap: one random MiB repeated with a counter.
    const block = crypto.randomBytes(1024 * 1024);
    const hash = crypto.createHash('sha256');
    function* plaintext() {
      for (let i = 0; i < PLAINTEXT_MB; i++) {
        const chunk = Buffer.from(block);
        chunk.writeUInt32BE(i, 0);
        hash.update(chunk);
        yield chunk;
      }
    }
    await encryptExport({ stream: Readable.from(plaintext()) }, fs.createWriteStream(tar), { publicKeyPem: readFixture('fixture-key.pub'), tmpDir: t.dir });
    expected = hash.digest('hex');
    expect(fs.statSync(tar).size).to.be.greaterThan(CEILING_MB * 1024 * 1024);
  });
  after(() => t.remove());

  it(`stays under ${CEILING_MB} MB RSS decrypting a ${PLAINTEXT_MB} MB export from a file`, async () => {
    const r = await runChild(['spec/fixtures/crypto/fixture-key.pem', tar, t.dir]);
    expect(r.sha256).to.equal(expected);
    expect(r.maxRssMb).to.be.below(CEILING_MB);
  });

  it(`stays under ${CEILING_MB} MB RSS decrypting a ${PLAINTEXT_MB} MB export from stdin, and removes the spool`, async () => {
    const r = await runChild(['spec/fixtures/crypto/fixture-key.pem', '-', t.dir], tar);
    expect(r.sha256).to.equal(expected);
    expect(r.maxRssMb).to.be.below(CEILING_MB);
    expect(fs.readdirSync(t.dir)).to.deep.equal(['big.tar']);
  });
});
