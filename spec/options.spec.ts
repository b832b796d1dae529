/**
 * Every public factory refuses unknown keys and wrong types synchronously, with an OptionError
 * whose `option` names the library option (never a CLI flag) and whose message says what was
 * expected and what arrived.
 */
import { expect } from 'chai';
import { Readable } from 'node:stream';
import { OptionError } from '../lib/errors.js';
import { createUserFilter } from '../lib/filter-users.js';
import { importUsers } from '../lib/import.js';
import { createModelMapper } from '../lib/map-models.js';
import { createRecordProcessor } from '../lib/process-records.js';
import { createRejectsFile } from '../lib/rejects.js';
import { createTokenizer } from '../lib/tokenize.js';
import { createDecryptor, openDecryptedSource } from '../lib/decrypt.js';
import { createEncryptor, encryptExport } from '../lib/encrypt.js';
import { createExporter, exportUsers } from '../lib/export.js';
import { createLocalKeyUnwrapper } from '../lib/crypto/unwrapper.js';
import { mergeStaged } from '../lib/db/merge/index.js';
import { finishImportRun } from '../lib/db/runs.js';
import { startEmbedded } from '../lib/index.js';
import { ImportStats } from '../lib/stats.js';
import type pg from 'pg';
import { optionErrorOf } from './helpers/options.js';
import { tmpPath } from './helpers/setup.js';
import { collect } from './helpers/streams.js';

/** The error `fn` throws, or that the promise it returns rejects with. */
async function errorOf(fn: () => unknown): Promise<unknown> {
  try {
    await fn();
  } catch (err) {
    return err;
  }
  throw new Error('expected a failure');
}

describe('factory options', () => {
  const cases: [string, () => unknown, string][] = [
    ['createUserFilter: a string for usernames (iterable, but not a list)', () => createUserFilter({ usernames: 'alice' as unknown as string[] }), 'usernames'],
    ['createUserFilter: a number inside usernames', () => createUserFilter({ usernames: ['alice', 7 as unknown as string] }), 'usernames'],
    ['createUserFilter: collectRejects not a boolean', () => createUserFilter({ collectRejects: 'yes' as unknown as boolean }), 'collectRejects'],
    ['createUserFilter: a misspelled option', () => createUserFilter({ username: ['alice'] } as never), 'username'],
    ['createTokenizer: a misspelled option', () => createTokenizer({ maxRecordByte: 100 } as never), 'maxRecordByte'],
    ['createTokenizer: maxDepth a string', () => createTokenizer({ maxDepth: '64' as unknown as number }), 'maxDepth'],
    ['createModelMapper: an unknown option', () => createModelMapper({ usernames: [] } as never), 'usernames'],
    ['createRecordProcessor: an unknown option', () => createRecordProcessor({ maxRecordByte: 1 } as never), 'maxRecordByte'],
    ['createRecordProcessor: usernames a string', () => createRecordProcessor({ usernames: 'bob' as unknown as string[] }), 'usernames'],
    ['createRejectsFile: maxRejects negative', () => createRejectsFile(tmpPath('never-written'), { maxRejects: -1 }), 'maxRejects'],
    ['createRejectsFile: an unknown option', () => createRejectsFile(tmpPath('never-written'), { max: 1 } as never), 'max'],
  ];
  for (const [what, fn, option] of cases) {
    it(`refuses ${what}, naming ${option}`, () => {
      expect(optionErrorOf(fn)).to.equal(option);
    });
  }

  it('says what it expected and what arrived', () => {
    let err: OptionError | undefined;
    try { createUserFilter({ usernames: 'alice' as unknown as string[] }); } catch (e) { err = e as OptionError; }
    expect(err?.message).to.contain('usernames').and.contain('"alice"').and.contain('array');
  });

  it('still takes any iterable of strings for usernames, a one-shot generator included', async () => {
    function* names() { yield 'alice'; }
    const user = (pk: number, username: string) => ({ ordinal: pk, offset: 0, line: 1, column: 1, length: 1, value: { model: 'sentry.user', pk, fields: { username } } });
    const out = await collect<{ filtered: boolean }>(Readable.from([user(1, 'alice'), user(2, 'bob')], { objectMode: true }), createUserFilter({ usernames: names() }));
    expect(out.map((r) => r.filtered)).to.deep.equal([false, true]);
  });

  describe('the export and crypto factories (one checker, lib/options.ts, for all)', () => {
    const url = 'postgresql://h/d';
    const unwrapper = { unwrap: async () => Buffer.alloc(0) };
    const pem = '-----BEGIN PUBLIC KEY-----';
    const input = { stream: Readable.from([]) };
    const cases: [string, () => unknown, string][] = [
      ['createExporter: an unknown option', () => createExporter({ databaseUrl: url, indnet: 2 } as never), 'indnet'],
      ['createExporter: fetchRows a string', () => createExporter({ databaseUrl: url, fetchRows: '10' as unknown as number }), 'fetchRows'],
      ['createExporter: no databaseUrl', () => createExporter({} as never), 'databaseUrl'],
      ['exportUsers: an unknown option', () => exportUsers({ databaseUrl: url, destination: '-', encrypt: pem } as never), 'encrypt'],
      ['exportUsers: encryptWith a number', () => exportUsers({ databaseUrl: url, destination: '-', encryptWith: 7 as never }), 'encryptWith'],
      ['exportUsers: no destination', () => exportUsers({ databaseUrl: url } as never), 'destination'],
      ['createDecryptor: an unknown option', () => createDecryptor({ unwrapper, chunksize: 4096 } as never), 'chunksize'],
      ['createDecryptor: chunkSize a string', () => createDecryptor({ unwrapper, chunkSize: '4096' as unknown as number }), 'chunkSize'],
      ['openDecryptedSource: an unknown option', () => openDecryptedSource(input, { unwrapper, tmpdir: '/x' } as never), 'tmpdir'],
      ['openDecryptedSource: unwrapper not a KeyUnwrapper', () => openDecryptedSource(input, { unwrapper: 'key.pem' as never }), 'unwrapper'],
      ['createEncryptor: an unknown option', () => createEncryptor({ publicKeyPem: pem, size: 1, sise: 1 } as never), 'sise'],
      ['createEncryptor: size a string', () => createEncryptor({ publicKeyPem: pem, size: '1' as unknown as number }), 'size'],
      ['createEncryptor: an iv of 3 bytes', () => createEncryptor({ publicKeyPem: pem, size: 1, iv: Buffer.alloc(3) }), 'iv'],
      ['createEncryptor: a fernetKey that is no Fernet key', () => createEncryptor({ publicKeyPem: pem, size: 1, fernetKey: 'abc' }), 'fernetKey'],
      ['encryptExport: an unknown option', () => encryptExport(input, process.stdout, { publicKeyPem: pem, chunk: 4096 } as never), 'chunk'],
      ['encryptExport: publicKeyPem a number', () => encryptExport(input, process.stdout, { publicKeyPem: 1 as never }), 'publicKeyPem'],
      ['createLocalKeyUnwrapper: an unknown option', () => createLocalKeyUnwrapper({ privateKeyPath: 'k', passphrse: 'x' } as never), 'passphrse'],
      ['createLocalKeyUnwrapper: passphrase a number', () => createLocalKeyUnwrapper({ privateKeyPath: 'k', passphrase: 1 as never }), 'passphrase'],
    ];
    for (const [what, fn, option] of cases) {
      it(`refuses ${what}, naming ${option}`, async () => {
        const err = await errorOf(fn);
        expect(err).to.be.instanceOf(OptionError);
        expect((err as OptionError).code).to.equal('USERPORT_OPTION_INVALID');
        expect((err as OptionError).option).to.equal(option);
      });
    }
  });

  describe('importUsers', () => {
    const importCases: [string, Record<string, unknown>, string][] = [
      ['a misspelled option', { source: 'x.json', databaseUrl: 'postgresql://h/d', mergeUser: true }, 'mergeUser'],
      ['a databaseUrl that is not postgresql://', { source: 'x.json', databaseUrl: 'mysql://h/d' }, 'databaseUrl'],
      ['filterUsernames as a string', { source: 'x.json', databaseUrl: 'postgresql://h/d', filterUsernames: 'alice' }, 'filterUsernames'],
      ['no source', { databaseUrl: 'postgresql://h/d' }, 'source'],
      ['batchRows zero', { source: 'x.json', databaseUrl: 'postgresql://h/d', batchRows: 0 }, 'batchRows'],
      ['importId without resumable', { source: 'x.json', databaseUrl: 'postgresql://h/d', importId: 'a' }, 'importId'],
    ];
    for (const [what, options, option] of importCases) {
      it(`refuses ${what} before touching the database, naming ${option}`, async () => {
        const err = await errorOf(() => importUsers(options as never));
        expect(err).to.be.instanceOf(OptionError);
        expect((err as OptionError).code).to.equal('USERPORT_OPTION_INVALID');
        expect((err as OptionError).option).to.equal(option);
      });
    }
  });

  describe('the merge and the run bookkeeping (a caller wiring the sink itself)', () => {
    // A client that fails the test if anything reaches the database: the options are refused first.
    const client = { query: () => { throw new Error('the database was touched'); } } as unknown as pg.ClientBase;
    const cases: [string, () => Promise<unknown>, string][] = [
      ['a misspelled mergeStaged option', () => mergeStaged(client, { run: 1, mergeUsers: true, filterActive: false, bulkload: true } as never, new ImportStats()), 'bulkload'],
      // A misspelled required option is a missing one.
      ['mergeStaged without mergeUsers', () => mergeStaged(client, { run: 1, mergeUser: true, filterActive: false } as never, new ImportStats()), 'mergeUsers'],
      ['a run that is not a number', () => mergeStaged(client, { run: '1; drop' as never, mergeUsers: false, filterActive: false }, new ImportStats()), 'run'],
      ['mergeStaged without the sink\'s stats', () => mergeStaged(client, { run: 1, mergeUsers: false, filterActive: false }, undefined as never), 'stats'],
      ['a misspelled finishImportRun option', () => finishImportRun(client, 1, { stats: new ImportStats(), bogus: 1 } as never), 'bogus'],
      // Before any folder is made or server started.
      ['a misspelled startEmbedded option', () => startEmbedded({ bogus: 1, dir: '/nonexistent-userport-dir' } as never), 'bogus'],
      ['a startEmbedded port out of range', () => startEmbedded({ port: 70000, dir: '/nonexistent-userport-dir' }), 'port'],
    ];
    for (const [what, call, option] of cases) {
      it(`refuses ${what}, naming ${option}`, async () => {
        const err = await errorOf(call);
        expect(err).to.be.instanceOf(OptionError);
        expect((err as OptionError).option).to.equal(option);
      });
    }
  });
});
