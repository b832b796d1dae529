/** Shared pieces of the crypto specs: fixture paths, tar surgery, collecting streams. */
import fs from 'node:fs';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { TarParser, encodeHeader, encodeEnd, paddingAfter, type TarEntry } from '../../lib/crypto/tar.js';
import { encryptExport } from '../../lib/encrypt.js';
import { tmpFolder } from '../helpers/setup.js';

export const FIXTURES = path.resolve('spec/fixtures/crypto');
export const fixture = (name: string): string => path.join(FIXTURES, name);
export const readFixture = (name: string): Buffer => fs.readFileSync(fixture(name));

export const PLAINTEXT = (): Buffer => readFixture('fixture-export.json');
export const PYTHON_TAR = (): Buffer => readFixture('python-export.tar');

/** Members of a tar with their data, via the parser under test's sibling (tar.spec covers it). */
export function members(tar: Buffer): { entry: TarEntry; data: Buffer }[] {
  const parser = new TarParser();
  const out: { entry: TarEntry; data: Buffer }[] = [];
  let parts: Buffer[] = [];
  for (const ev of parser.push(tar)) {
    if (ev.kind === 'entry') parts = [];
    else if (ev.kind === 'data') parts.push(Buffer.from(ev.chunk));
    else out.push({ entry: ev.entry, data: Buffer.concat(parts) });
  }
  parser.end();
  return out;
}

/** A ustar archive of the given members, in order. */
export function makeTar(list: [string, Buffer][]): Buffer {
  const parts: Buffer[] = [];
  let written = 0;
  for (const [name, data] of list) {
    const chunk = Buffer.concat([encodeHeader({ name, size: data.length }), data, Buffer.alloc(paddingAfter(data.length))]);
    parts.push(chunk);
    written += chunk.length;
  }
  parts.push(encodeEnd(written));
  return Buffer.concat(parts);
}

/** The python fixture's members by name. */
export function pythonMembers(): { token: Buffer; wrapped: Buffer; pub: Buffer; tokenOffset: number } {
  const m = members(PYTHON_TAR());
  const get = (n: string) => m.find((x) => x.entry.name === n)!;
  return { token: get('export.json').data, wrapped: get('data.key').data, pub: get('key.pub').data, tokenOffset: get('export.json').entry.dataOffset };
}

/** A copy of `buf` with the byte at `offset` changed, staying inside the base64 alphabet. */
export function flipBase64(buf: Buffer, offset: number): Buffer {
  const out = Buffer.from(buf);
  out[offset] = out[offset] === 0x41 /* A */ ? 0x42 : 0x41;
  return out;
}

/** A copy with the byte at `offset` XORed. */
export function flipByte(buf: Buffer, offset: number): Buffer {
  const out = Buffer.from(buf);
  out[offset] = out[offset]! ^ 0x01;
  return out;
}

export async function drain(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of stream) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

/** Encrypts `plaintext` to the fixture key (or `publicKeyPem`) with our encryptor. */
export async function encryptBuffer(plaintext: Buffer, publicKeyPem: Buffer = readFixture('fixture-key.pub')): Promise<Buffer> {
  const out = new PassThrough();
  const done = drain(out);
  const { Readable } = await import('node:stream');
  await encryptExport({ stream: Readable.from([plaintext]) }, out, { publicKeyPem });
  return done;
}

/** A private temp folder for one test, removed by the returned function. */
export function tempDir(): { dir: string; remove: () => void } {
  const dir = tmpFolder('userport-crypto-spec-');
  return { dir, remove: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

/** A FIFO `name` in `dir`, made with mkfifo; the test is skipped, saying why, where there is none. */
export function fifoOrSkip(test: Mocha.Context, dir: string, name: string): string {
  const fifo = path.join(dir, name);
  if (spawnSync('mkfifo', [fifo]).status !== 0) {
    console.log('      skipped: mkfifo is not available');
    test.skip();
  }
  return fifo;
}

/** Names in `dir` (to check that spool files are gone). */
export const listDir = (dir: string): string[] => fs.readdirSync(dir);

/** The `code` a promise rejects with; throws if it resolves. */
export async function codeOf(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
  } catch (err) {
    return (err as { code?: string }).code;
  }
  throw new Error('expected a rejection');
}
