/**
 * The library as a user gets it (lib/index.ts): the packed tarball installed into a scratch strict
 * TypeScript project (skipLibCheck off) that embeds the stages in its own pipeline, and a host
 * process whose global state (pg's type parsers, process listeners, globals) userport leaves alone.
 */
import { expect } from 'chai';
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { freshDatabase, type TestDb } from './helpers/db.js';
import { tmpFolder } from './helpers/setup.js';

const ROOT = path.resolve('.');
const TSC = path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');

function run(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = process.env): SpawnSyncReturns<string> {
  const r = spawnSync(cmd, args, { cwd, env, encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}:\n${r.stdout}\n${r.stderr}`);
  return r;
}

/** A consumer that uses the public API only, typed, the way the README shows. */
const CONSUMER = `
import fs from 'node:fs';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import pg from 'pg';
import {
  beginImportRun, finishImportRun, createKnex, createModelMapper, createPgSink, createTokenizer, createUserFilter, ImportStats, isFilteredMarker,
  isStagedRow, mergeStaged, migrate, OptionError, STAGE_INDEX, stagedValues, type MappedItem, type StagedRow, type ImportSummary,
} from 'userport';

const [file, databaseUrl] = process.argv.slice(2) as [string, string];
const keep = ['zsmith_2', 'grace.rossi.3@example.org'];

// 1. The stages in our own pipeline, ending in our own Writable.
const kinds: Record<string, number> = {};
const emails: string[] = [];
await pipeline(
  fs.createReadStream(file),
  createTokenizer({ maxRecordBytes: 1 << 20 }),
  createUserFilter({ usernames: keep }),
  createModelMapper(),
  new Writable({
    objectMode: true,
    write(item: MappedItem, _enc, done) {
      kinds[item.kind] = (kinds[item.kind] ?? 0) + 1;
      if (isStagedRow(item) && item.model === 'sentry.user') {
        const row: StagedRow = item;
        const email = row.values[STAGE_INDEX.email];
        if (typeof email === 'string' && email === stagedValues(row).email) emails.push(email);
      }
      if (isFilteredMarker(item) && item.pk < 1) throw new Error('a filtered marker without a pk');
      done();
    },
  }),
);

// 2. The stages into PostgreSQL with the public sink and merge.
const knex = createKnex(databaseUrl);
await migrate(knex);
await knex.destroy();
const client = new pg.Client({ connectionString: databaseUrl });
await client.connect();
const stats = new ImportStats();
const run = await beginImportRun(client, { source: file });
await pipeline(
  fs.createReadStream(file),
  createTokenizer(),
  createUserFilter({ usernames: keep }),
  createModelMapper(),
  createPgSink({
    client, run, transaction: 'whole', stats,
    finalize: async (c) => { await mergeStaged(c, { run, mergeUsers: false, filterActive: true }, stats); await finishImportRun(c, run); },
  }),
);
const users = (await client.query('SELECT username FROM auth_user ORDER BY username')).rows.map((r: { username: string }) => r.username);
await client.end();

let refused = '';
try { createUserFilter({ usernames: 'alice' as unknown as string[] }); } catch (err) { if (err instanceof OptionError) refused = err.option ?? ''; }
const summary: Pick<ImportSummary, 'models'> = { models: stats.snapshot().models };
console.log(JSON.stringify({ kinds, emails: emails.length, users, refused, read: summary.models['sentry.user']?.read }));
`;

describe('the packed library', function () {
  let scratch: string;
  let db: TestDb;
  before(async function () {
    scratch = tmpFolder('userport-consumer-');
    db = await freshDatabase(false);
    run('npm', ['pack', '--ignore-scripts', '--pack-destination', scratch], ROOT);
    const tarball = fs.readdirSync(scratch).find((f) => f.endsWith('.tgz'));
    if (!tarball) throw new Error('npm pack wrote no tarball');
    fs.writeFileSync(path.join(scratch, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }));
    // Install scripts off: the embedded server's package is not needed here, and npm 11 asks first.
    run('npm', ['install', '--ignore-scripts', '--no-audit', '--no-fund', '--prefer-offline', `./${tarball}`, '@types/node@20'], scratch);
    fs.writeFileSync(path.join(scratch, 'tsconfig.json'), JSON.stringify({
      compilerOptions: {
        target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, skipLibCheck: false,
        noUncheckedIndexedAccess: true, exactOptionalPropertyTypes: true, outDir: 'out', types: ['node'],
      },
      files: ['consumer.ts'],
    }));
    fs.writeFileSync(path.join(scratch, 'consumer.ts'), CONSUMER);
  });
  after(async () => {
    await db?.close();
    if (scratch) fs.rmSync(scratch, { recursive: true, force: true });
  });

  it('compiles in a strict TypeScript project with skipLibCheck off, and runs a consumer that embeds the stages', () => {
    run(process.execPath, [TSC, '-p', 'tsconfig.json'], scratch);
    const out = run(process.execPath, ['out/consumer.js', path.join(ROOT, 'samples', 'users.json'), db.url], scratch);
    const result = JSON.parse(out.stdout.trim()) as { kinds: Record<string, number>; emails: number; users: string[]; refused: string; read: number };
    // samples/users.json: 200 users, 233 emails, 233 user emails, 352 options, 4 out-of-scope records.
    expect(result.kinds).to.deep.equal({ row: 2 + 233 + 233 + 352, filtered: 198, skip: 4 });
    expect(result.emails).to.equal(2);
    expect(result.users).to.deep.equal(['grace.rossi.3@example.org', 'zsmith_2']);
    expect(result.refused).to.equal('usernames');
    expect(result.read).to.equal(200);
  });
});

describe('the host process', () => {
  let db: TestDb;
  before(async () => { db = await freshDatabase(false); });
  after(async () => { await db.close(); });

  it('keeps its pg type parsers, process listeners and globals through an import and a spooled decryption, and loads no knex with the library', () => {
    const script = `
      import fs from 'node:fs';
      import { createRequire } from 'node:module';
      const require = createRequire(process.argv[1]);
      const pg = require('pg');
      const EVENTS = ['exit', 'beforeExit', 'SIGINT', 'SIGTERM', 'SIGHUP', 'uncaughtException', 'unhandledRejection', 'warning'];
      const state = () => ({
        int8: pg.types.getTypeParser(20)('9007199254740993'),
        listeners: Object.fromEntries(EVENTS.map((e) => [e, process.listenerCount(e)])),
        globals: Object.keys(globalThis).sort(),
      });
      const before = state();
      const lib = await import(process.argv[2]);
      const afterImport = state();
      // The library's streams need no migrator: knex is loaded where a migration runs, not before.
      const knexOnImport = Object.keys(require.cache).some((k) => k.includes('/node_modules/knex/'));
      await lib.importUsers({ source: process.argv[3], databaseUrl: process.argv[4] });
      const afterRun = state();
      // A decryption from a stream spools to a temp file: still no handler while it exists.
      const unwrapper = lib.createLocalKeyUnwrapper({ privateKeyPath: process.argv[6] });
      const src = await lib.openDecryptedSource({ stream: fs.createReadStream(process.argv[5]) }, { unwrapper });
      const whileSpooled = state();
      for await (const _ of src.stream) { /* drain */ }
      console.log(JSON.stringify({ before, afterImport, afterRun, whileSpooled, knexOnImport }));
    `;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script, path.join(ROOT, 'node_modules', 'pg', 'package.json'),
      path.join(ROOT, 'dist', 'lib', 'index.js'), path.join(ROOT, 'samples', 'users.json'), db.url,
      path.join(ROOT, 'samples', 'users.tar'), path.join(ROOT, 'samples', 'demo-key.pem')], { encoding: 'utf8' });
    expect(r.status, r.stderr).to.equal(0);
    const s = JSON.parse(r.stdout) as Record<'before' | 'afterImport' | 'afterRun' | 'whileSpooled', { int8: unknown; listeners: Record<string, number>; globals: string[] }>
      & { knexOnImport: boolean };
    expect(s.knexOnImport).to.equal(false);
    // pg's default: int8 as text, exact.
    expect(s.before.int8).to.equal('9007199254740993');
    // Node itself may hold an exit or warning listener: compare with what the host had, not zero.
    expect(s.before.listeners).to.include({ SIGINT: 0, SIGTERM: 0, SIGHUP: 0 });
    for (const later of [s.afterImport, s.afterRun, s.whileSpooled]) expect(later).to.deep.equal(s.before);
  });
});

describe('the public surface (lib/index.ts)', () => {
  it('documents every export with TSDoc', async () => {
    const ts = (await import('typescript')).default;
    const program = ts.createProgram([path.join(ROOT, 'lib', 'index.ts')], {
      module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext, strict: true, noEmit: true,
    });
    const checker = program.getTypeChecker();
    const mod = checker.getSymbolAtLocation(program.getSourceFile(path.join(ROOT, 'lib', 'index.ts'))!)!;
    const exported = checker.getExportsOfModule(mod);
    expect(exported.length).to.be.above(40);
    const undocumented = exported.filter((sym) => {
      const real = sym.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(sym) : sym;
      return ts.displayPartsToString(real.getDocumentationComment(checker)).trim() === '';
    }).map((s) => s.name);
    expect(undocumented).to.deep.equal([]);
    // The types a caller meets in the exported signatures can be named (the exports map allows no
    // deep import): options' types, what methods return, the errors' options.
    const names = new Set(exported.map((s) => s.name));
    for (const t of ['ImportScope', 'StatsSnapshot', 'EmbeddedConfig', 'MapTarget', 'FieldLimits', 'RecordSplitter', 'ModelMapping', 'ExportModel',
      'TraceOptions', 'UserportErrorOptions', 'PrivilegePlan', 'ConnectionFacts']) {
      expect(names.has(t), t).to.equal(true);
    }
  });

  it('exports the stages, guards and errors, and none of the internal helpers', async () => {
    const lib = await import(path.join(ROOT, 'dist', 'lib', 'index.js')) as Record<string, unknown>;
    for (const name of ['createTokenizer', 'createUserFilter', 'createModelMapper', 'createRecordProcessor', 'createPgSink', 'createDecryptor', 'importUsers',
      'isStagedRow', 'isFilteredMarker', 'isSkipMarker', 'isRejectMarker', 'isScopedRecord', 'STAGE_INDEX', 'UserportError', 'OptionError',
      'DecryptError', 'ErrorCodes', 'mergeStaged', 'StagedFacts', 'beginImportRun', 'startEmbedded', 'stopEmbedded']) {
      expect(lib[name], name).to.not.equal(undefined);
    }
    for (const name of ['crc32c', 'applicationDefaultTokenProvider', 'keyUnwrapperFromOptions', 'removeLiveSpoolsSync', 'copyLine', 'copyValue',
      'RecordSplitter', 'createExportGenerator', 'wrapDbError', 'kmsGetPublicKey', 'parseUsernameList']) {
      expect(lib[name], name).to.equal(undefined);
    }
  });
});
