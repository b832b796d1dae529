/**
 * The error registry (lib/errors.ts): one set of codes, each raised by its class with its
 * position, and wrapDbError turning only PostgreSQL's errors into database errors.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import { Readable } from 'node:stream';
import knexFactory from 'knex';
import pg from 'pg';
import { DecryptError, DecryptErrorCodes } from '../lib/crypto/errors.js';
import {
  connectError, databaseAddress, DatabaseError, ErrorCodes, OptionError, ParseError, RecordError, UserportError, wrapCallbackError, wrapDbError, type ErrorCode,
} from '../lib/errors.js';
import { createKnex, migrate, waitForDatabase } from '../lib/db/knex.js';
import { mergeStaged } from '../lib/db/merge/index.js';
import { beginImportRun } from '../lib/db/runs.js';
import { ImportStats } from '../lib/stats.js';
import { createUserFilter } from '../lib/filter-users.js';
import { createModelMapper } from '../lib/map-models.js';
import { createPgSink } from '../lib/pg-sink.js';
import { createTokenizer } from '../lib/tokenize.js';
import { freshDatabase, type TestDb } from './helpers/db.js';
import { user } from './helpers/exports.js';
import { chunked, collectError } from './helpers/streams.js';

/** Every code, once: a code missing from this list fails to compile (the switch is exhaustive). */
function describeCode(code: ErrorCode): string {
  switch (code) {
    case 'USERPORT_OPTION_INVALID': case 'USERPORT_INPUT_EMPTY': case 'USERPORT_INPUT_NOT_ARRAY': case 'USERPORT_INPUT_TRAILING':
    case 'USERPORT_INPUT_TRUNCATED': case 'USERPORT_INPUT_UTF8': case 'USERPORT_PARSE_JSON': case 'USERPORT_LIMIT_RECORD_SIZE':
    case 'USERPORT_LIMIT_DEPTH': case 'USERPORT_RECORD_NOT_OBJECT': case 'USERPORT_RECORD_ENVELOPE': case 'USERPORT_RECORD_SCHEMA':
    case 'USERPORT_RECORD_DUPLICATE_PK': case 'USERPORT_MAX_REJECTS': case 'USERPORT_DB_CONNECT': case 'USERPORT_DB_QUERY':
    case 'USERPORT_DB_EMBEDDED': case 'USERPORT_IMPORT_MISMATCH': case 'USERPORT_IMPORT_BUSY': case 'USERPORT_IMPORT_OUTCOME_UNKNOWN': case 'USERPORT_IO': case 'USERPORT_ABORTED':
    case 'USERPORT_CALLBACK': case 'USERPORT_INTERNAL': case 'USERPORT_RECORD_OPTION_VALUE': case 'USERPORT_RECORD_LEGACY_FORMAT': case 'USERPORT_DB_SETTING': case 'USERPORT_EXPORT_SCHEMA':
    case 'USERPORT_RECORD_TARGET': case 'USERPORT_TARGET_SCHEMA': case 'USERPORT_TARGET_LIMIT':
      return 'core';
    case 'USERPORT_DECRYPT_KEY_MISMATCH': case 'USERPORT_DECRYPT_KEY_INVALID': case 'USERPORT_DECRYPT_TAMPERED':
    case 'USERPORT_DECRYPT_TRUNCATED': case 'USERPORT_DECRYPT_TAR': case 'USERPORT_DECRYPT_PASSPHRASE': case 'USERPORT_DECRYPT_KMS':
    case 'USERPORT_DECRYPT_IO':
      return 'decrypt';
  }
}

const ALL_CODES: ErrorCode[] = [...Object.values(ErrorCodes), ...Object.values(DecryptErrorCodes)];

describe('the error registry', () => {
  it('holds distinct USERPORT_ codes, every one documented in the README', () => {
    expect(new Set(ALL_CODES).size).to.equal(ALL_CODES.length);
    const readme = fs.readFileSync('README.md', 'utf8');
    for (const code of ALL_CODES) {
      expect(code).to.match(/^USERPORT_[A-Z0-9_]+$/);
      expect(['core', 'decrypt']).to.include(describeCode(code));
      const documented = readme.includes(`\`${code}\``) || (code.startsWith('USERPORT_DECRYPT_') && readme.includes(`\`${code.slice('USERPORT_DECRYPT_'.length)}\``));
      expect(documented, code).to.equal(true);
    }
  });

  it('keeps the option name, the cause and the SQLSTATE on the classes', () => {
    const opt = new OptionError('x', 'databaseUrl');
    expect(opt).to.be.instanceOf(UserportError);
    expect([opt.code, opt.option]).to.deep.equal(['USERPORT_OPTION_INVALID', 'databaseUrl']);
    const cause = Object.assign(new Error('dup'), { severity: 'ERROR', code: '23505', table: 'auth_user', constraint: 'auth_user_username_key' });
    const db = new DatabaseError(ErrorCodes.DB_QUERY, 'q', { cause });
    expect([db.sqlState, db.table, db.constraint, db.cause]).to.deep.equal(['23505', 'auth_user', 'auth_user_username_key', cause]);
    expect(new DecryptError(DecryptErrorCodes.TAMPERED, 't')).to.be.instanceOf(UserportError);
  });

  describe('raised by the stages: class, code and position, table by table', () => {
    const tokenizerCases: [string, string, ErrorCode, { offset: number; line: number; column: number }][] = [
      ['empty input', '', 'USERPORT_INPUT_EMPTY', { offset: 0, line: 1, column: 1 }],
      ['not an array', '{"a": 1}', 'USERPORT_INPUT_NOT_ARRAY', { offset: 0, line: 1, column: 1 }],
      ['data after the array', '[]\n[]', 'USERPORT_INPUT_TRAILING', { offset: 3, line: 2, column: 1 }],
      ['a truncated array', '[{"a": 1},', 'USERPORT_INPUT_TRUNCATED', { offset: 10, line: 1, column: 11 }],
      ['a syntax error', '[{"a": tru}]', 'USERPORT_PARSE_JSON', { offset: 7, line: 1, column: 8 }],
      ['an element that is not an object', '[1]', 'USERPORT_RECORD_NOT_OBJECT', { offset: 1, line: 1, column: 2 }],
    ];
    for (const [what, input, code, at] of tokenizerCases) {
      // The tokenizer judges the export's shape: every failure of its own is a ParseError.
      it(`tokenizer: ${what} is a ParseError ${code} at byte ${at.offset}`, async () => {
        const err = await collectError(chunked(input, 3), createTokenizer());
        expect(err).to.be.instanceOf(ParseError);
        expect(err.code).to.equal(code);
        expect(err.position).to.include(at);
      });
    }

    const pos = { ordinal: 3, offset: 40, line: 5, column: 2, length: 30 };
    it('user filter: a bad envelope is a RecordError USERPORT_RECORD_ENVELOPE at the record, naming the field', async () => {
      const err = await collectError(Readable.from([{ ...pos, value: { model: 'sentry.user', pk: 'x', fields: {} } }], { objectMode: true }), createUserFilter());
      expect(err).to.be.instanceOf(RecordError);
      expect(err.code).to.equal('USERPORT_RECORD_ENVELOPE');
      expect(err.position).to.include({ ordinal: 3, offset: 40, line: 5, column: 2, field: 'pk' });
    });

    it('mapper: a field against its schema is a RecordError USERPORT_RECORD_SCHEMA with model, pk and field', async () => {
      const rec = user(9, 'a', { is_active: 'yes' });
      const item = { kind: 'record', ...pos, model: rec.model, pk: rec.pk, fields: rec.fields, filtered: false };
      const err = await collectError(Readable.from([item], { objectMode: true }), createModelMapper());
      expect(err).to.be.instanceOf(RecordError);
      expect(err.code).to.equal('USERPORT_RECORD_SCHEMA');
      expect(err.position).to.include({ ordinal: 3, offset: 40, model: 'sentry.user', pk: 9, field: 'is_active' });
    });
  });

  describe('wrapDbError', () => {
    let db: TestDb;
    before(async () => { db = await freshDatabase(); });
    after(async () => { await db.close(); });

    it('makes USERPORT_DB_QUERY of an error PostgreSQL sent, keeping its SQLSTATE', async () => {
      const c = new pg.Client({ connectionString: db.url });
      await c.connect();
      try {
        const pgErr = await c.query('SELECT * FROM no_such_table').then(() => undefined, (e: unknown) => e);
        const wrapped = wrapDbError(pgErr, 'reading');
        expect(wrapped).to.be.instanceOf(DatabaseError);
        expect(wrapped.code).to.equal('USERPORT_DB_QUERY');
        expect((wrapped as DatabaseError).sqlState).to.equal('42P01');
        expect(wrapped.cause).to.equal(pgErr);
      } finally {
        await c.end();
      }
    });

    it('mergeStaged says a caller\'s throwing onTrace or onStep as USERPORT_CALLBACK, not a bug of userport\'s', async () => {
      const c = new pg.Client({ connectionString: db.url });
      await c.connect();
      try {
        for (const [what, hook] of [['onTrace', { onTrace: () => { throw new Error('my subscriber bug'); } }], ['onStep', { onStep: () => { throw new Error('my subscriber bug'); } }]] as const) {
          await c.query('BEGIN');
          const run = await beginImportRun(c, { source: 'errors.spec' });
          const err = await mergeStaged(c, { run, mergeUsers: false, filterActive: false, ...hook }, new ImportStats()).then(() => undefined, (e: unknown) => e as UserportError);
          await c.query('ROLLBACK');
          expect(err?.code, what).to.equal('USERPORT_CALLBACK');
          expect(err?.message, what).to.equal(`${what}: the callback threw: my subscriber bug`);
        }
      } finally {
        await c.end();
      }
    });

    it('is how mergeStaged says what PostgreSQL refused (never pg\'s own error class)', async () => {
      const c = new pg.Client({ connectionString: db.url });
      const other = new pg.Client({ connectionString: db.url });
      await c.connect();
      await other.connect();
      try {
        // Another session holds auth_user; the merge may wait 100 ms for it.
        await other.query('BEGIN');
        await other.query('LOCK TABLE auth_user IN ACCESS EXCLUSIVE MODE');
        await c.query('BEGIN');
        const run = await beginImportRun(c, { source: 'errors.spec' });
        await c.query(`SET LOCAL lock_timeout = '100ms'`);
        const err = await mergeStaged(c, { run, mergeUsers: false, filterActive: false }, new ImportStats()).then(() => undefined, (e: unknown) => e);
        expect(err).to.be.instanceOf(DatabaseError);
        expect((err as DatabaseError).code).to.equal('USERPORT_DB_QUERY');
        expect((err as DatabaseError).sqlState).to.equal('55P03');
      } finally {
        await other.end();
        await c.end();
      }
    });

    it('makes USERPORT_DB_CONNECT of a lost connection and USERPORT_IO of a file-system error', () => {
      expect(wrapDbError(Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' }), 'x').code).to.equal('USERPORT_DB_CONNECT');
      expect(wrapDbError(new Error('Connection terminated unexpectedly'), 'x').code).to.equal('USERPORT_DB_CONNECT');
      expect(wrapDbError(Object.assign(new Error('ENOSPC'), { code: 'ENOSPC', syscall: 'write' }), 'x').code).to.equal('USERPORT_IO');
    });

    it('does not call a bug a database error: a TypeError is USERPORT_INTERNAL, a UserportError stays itself', () => {
      const bug = new TypeError('x is undefined');
      const wrapped = wrapDbError(bug, 'the merge');
      expect(wrapped).to.not.be.instanceOf(DatabaseError);
      expect([wrapped.code, wrapped.cause]).to.deep.equal(['USERPORT_INTERNAL', bug]);
      const own = new RecordError(ErrorCodes.RECORD_DUPLICATE_PK, 'dup');
      expect(wrapDbError(own, 'x')).to.equal(own);
      expect(wrapCallbackError(bug, 'finalize').code).to.equal('USERPORT_CALLBACK');
      expect(wrapCallbackError(Object.assign(new Error('ENOENT'), { code: 'ENOENT', syscall: 'open' }), 'finalize').code).to.equal('USERPORT_IO');
    });

    it("reports a bug in the caller's finalize as USERPORT_CALLBACK through the sink, with the caller's error as cause", async () => {
      const c = new pg.Client({ connectionString: db.url });
      await c.connect();
      const bug = new TypeError('caller bug');
      try {
        const sink = createPgSink({ client: c, run: 1, transaction: 'whole', finalize: async () => { throw bug; } });
        const err = await new Promise<UserportError>((resolve) => {
          sink.on('error', (e) => resolve(e as UserportError));
          sink.end();
        });
        expect(err.code).to.equal('USERPORT_CALLBACK');
        expect(err.cause).to.equal(bug);
      } finally {
        await c.end();
      }
    });
  });

  describe('connectError', () => {
    it('says where, as pg reads the URL, and never the user or password', () => {
      const cases: [string | { host?: string; port?: number | string; database?: string }, string | undefined][] = [
        ['postgresql://sentry:secret@db.internal:6432/sentry', 'db.internal:6432/sentry'],
        ['postgres://sentry@db.internal/sentry', 'db.internal:5432/sentry'],
        // ?host= and ?port= win over the authority, as in pg-connection-string.
        ['postgres://u@h/x?port=6000', 'h:6000/x'],
        ['postgres:///sentry?host=/var/run/postgresql&port=5433', '/var/run/postgresql:5433/sentry'],
        // An empty host after credentials is not a WHATWG URL, but pg takes it.
        ['postgresql://u:secret@/sentry?host=%2Ftmp', '/tmp:5432/sentry'],
        ['postgresql://[::1]:5/x', '[::1]:5/x'],
        // What pg or knex resolved, as fields.
        [{ host: 'h', port: 5, database: 'd' }, 'h:5/d'],
        // Nothing to say: no address rather than a made-up one.
        ['', undefined], ['not a url', undefined], ['mysql://x/y', undefined], [{}, undefined],
      ];
      for (const [target, address] of cases) expect(databaseAddress(target), JSON.stringify(target)).to.equal(address);
      const refused = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1'), { code: 'ECONNREFUSED' });
      const e = connectError(refused, 'postgresql://u:secret@/sentry?host=%2Ftmp');
      expect(e).to.be.instanceOf(DatabaseError);
      expect(e.code).to.equal('USERPORT_DB_CONNECT');
      expect(e.message).to.equal('cannot connect to PostgreSQL at /tmp:5432/sentry: connect ECONNREFUSED 127.0.0.1:1');
      expect(connectError(refused, 'garbage').message).to.equal('cannot connect to PostgreSQL: connect ECONNREFUSED 127.0.0.1:1');
      expect(e.message).not.to.include('secret');
    });

    it('reads a pg.Client the way it connects: the fields pg resolved', () => {
      const client = new pg.Client({ connectionString: 'postgresql://u:secret@/sentry?host=%2Ftmp&port=7' });
      expect(databaseAddress(client)).to.equal('/tmp:7/sentry');
    });

    it('is what migrate() says when it cannot connect', async () => {
      const knex = createKnex('postgresql://u:secret@127.0.0.1:1/nowhere');
      try {
        const err = await migrate(knex).then(() => undefined, (e: unknown) => e as UserportError);
        expect(err?.code).to.equal('USERPORT_DB_CONNECT');
        expect(err?.message).to.match(/^cannot connect to PostgreSQL at 127\.0\.0\.1:1\/nowhere: .*ECONNREFUSED/);
      } finally {
        await knex.destroy();
      }
    });

    it('reads a knex connection object a caller built by fields', async () => {
      const quiet = { warn() {}, error() {}, deprecate() {}, debug() {} };
      const knex = knexFactory({ client: 'pg', connection: { host: '127.0.0.1', port: 1, database: 'sentry', user: 'u', password: 'secret' }, log: quiet });
      try {
        const err = await waitForDatabase(knex, 200).then(() => undefined, (e: unknown) => e as UserportError);
        expect(err?.code).to.equal('USERPORT_DB_CONNECT');
        expect(err?.message).to.match(/^cannot connect to PostgreSQL at 127\.0\.0\.1:1\/sentry: .*ECONNREFUSED/);
        expect(err?.message).not.to.include('secret');
      } finally {
        await knex.destroy();
      }
    });
  });
});
