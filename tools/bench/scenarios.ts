/**
 * The scenarios of issue #11 target 3 ("no cliffs"): the same import under conditions that have
 * made it slow before, each timed against its own COPY floor, i.e. the rows that very import
 * wrote, loaded by COPY into a database in the same starting state (empty, or holding the same
 * pre-existing users). Each one checks its rows against what the generator says they must be.
 *
 * - resume: a `--resumable` import killed (SIGKILL) in its final merge, the target tables then
 *   analyzed by another session while they hold nothing but the dead rows of the killed merge
 *   (statistics that say "empty" over non-empty pages, as autovacuum left them in the incident),
 *   then the same command again: the resume is timed.
 * - existing: export B imported into a database that already holds export A's users.
 * - collisions: 10% of usernames (and of primary addresses) collide case-insensitively.
 * - reverse: every record of the export in reverse order.
 * - filter: `--filter-usernames-file` with 10,000 usernames of the export.
 * - fresh-sentry, global-restore: into a new Sentry 2026 install holding its first admin.
 * - users-only: the user records alone (no Email records, user emails or options): the merge
 *   writes each user's primary user email and its Email row, as Sentry's receivers do.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createTokenizer } from '../../lib/tokenize.js';
import { runMeasured } from './child.js';
import { countsCheck, expectedRows, generateExport, importCommand, runImport, type ImportRunner } from './common.js';
import { dumpTables, IMPORTED_TABLES, loadTables, maxIds } from './copy-floor.js';
import { countRows, databaseUrl, dropDatabase, freshDatabase, withClient } from './databases.js';
import { isSkipped, SCENARIOS, type Check, type CopyFloorMeasurement, type ImportMeasurement, type ScenarioName, type ScenarioResult, type Skipped } from './results.js';
import { reverseExport } from './reverse.js';
import type { GenerateCounts } from '../generate.js';

export interface ScenarioContext {
  serverUrl: string;
  workDir: string;
  runner: ImportRunner;
  /** Users per scenario export. */
  users: number;
  seed: number;
  keep: boolean;
  /** Unique per run, part of every database name. */
  tag: string;
  timeoutSeconds?: number;
  log: (line: string) => void;
}

/** Collision rate of the `collisions` scenario. */
export const SCENARIO_COLLISION_RATE = 0.1;
/** Usernames in the `filter` scenario's filter (fewer when the export has fewer than twice as many users). */
export const FILTER_NAMES = 10_000;
/**
 * When the `resume` scenario kills its first run: right after the merge's insert into
 * `sentry_email`, so the killed transaction leaves dead rows there, as in the incident. The run is
 * the CLI in a child process (`--resumable` needs it), so this reads the CLI's trace output on
 * stderr (`USERPORT_TRACE_SQL=1`, pipelines/trace.ts): an in-process import would subscribe to
 * `onTrace` instead.
 */
export const RESUME_KILL_ON = /^\[sql \d+ ms\] (?:WITH ins AS \( )?INSERT INTO sentry_email\b/m;

const ALL_TABLES_ANALYZED = [...IMPORTED_TABLES, 'userport.pk_ranges'] as const;

function ratio(a: { seconds: number } | Skipped, b: { seconds: number } | Skipped): number | null {
  return isSkipped(a) || isSkipped(b) ? null : a.seconds / b.seconds;
}

function floorOf(loaded: Awaited<ReturnType<typeof loadTables>>, records: number): CopyFloorMeasurement {
  const rowsTotal = Object.values(loaded.rows).reduce((a, b) => a + b, 0);
  return {
    seconds: loaded.seconds, rowsPerSec: rowsTotal / loaded.seconds, recordsPerSec: records / loaded.seconds,
    rows: loaded.rows, tableSeconds: loaded.tableSeconds, copyBytes: Object.values(loaded.bytes).reduce((a, b) => a + b, 0),
  };
}

/**
 * The COPY floor of an import into an empty database: the rows it wrote into the database
 * named `importDb`, loaded into a fresh migrated one.
 */
async function emptyTargetFloor(ctx: ScenarioContext, name: string, importDb: string, records: number): Promise<CopyFloorMeasurement> {
  const dir = path.join(ctx.workDir, `copy-${name}`);
  const dumps = await dumpTables(databaseUrl(ctx.serverUrl, importDb), dir);
  const floorDb = `bench_sc_${name}_floor_${ctx.tag}`;
  try {
    return floorOf(await loadTables(await freshDatabase(ctx.serverUrl, floorDb), dumps), records);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
    if (!ctx.keep) await dropDatabase(ctx.serverUrl, floorDb);
  }
}

function checksOfRows(expected: Record<string, number>, userport: ImportMeasurement | Skipped, floor: CopyFloorMeasurement | Skipped): Check[] {
  const checks: Check[] = [countsCheck('userport import finished', 'finished', isSkipped(userport) ? userport.skipped : 'finished')];
  if (isSkipped(userport)) return checks;
  for (const t of IMPORTED_TABLES) checks.push(countsCheck(`${t} rows`, expected[t], userport.rows[t]));
  if (!isSkipped(floor)) checks.push(countsCheck('COPY floor rows equal userport rows', userport.rows, floor.rows));
  return checks;
}

function renamedCheck(summary: unknown, expected: number): Check[] {
  const renamed = (summary as { models?: Record<string, { renamed?: number }> } | null)?.models?.['sentry.user']?.renamed;
  return renamed === undefined ? [] : [countsCheck('renamed users equal case-insensitive username collisions', expected, renamed)];
}

/** Import `file` into a fresh database, then its COPY floor: the common shape of collisions, reverse, filter and users-only. */
async function intoEmpty(ctx: ScenarioContext, name: ScenarioName, file: string, records: number, bytes: number, args: string[] = []) {
  // A database name's word: users-only -> users_only.
  const word = name.replace(/-/g, '_');
  const db = `bench_sc_${word}_${ctx.tag}`;
  ctx.log(`scenario ${name}: userport import`);
  const userport = await runImport(ctx.runner, file, await freshDatabase(ctx.serverUrl, db), { records, bytes, args, ...(ctx.timeoutSeconds ? { timeoutSeconds: ctx.timeoutSeconds } : {}) });
  let copyFloor: CopyFloorMeasurement | Skipped = { skipped: 'needs the rows of the userport import' };
  if (!isSkipped(userport)) {
    ctx.log(`scenario ${name}: COPY floor`);
    copyFloor = await emptyTargetFloor(ctx, word, db, records);
  } else ctx.log(`scenario ${name}: ${userport.skipped}`);
  if (!ctx.keep) await dropDatabase(ctx.serverUrl, db);
  return { userport, copyFloor };
}

function result(name: ScenarioName, users: number, records: number, bytes: number, userport: ImportMeasurement | Skipped,
  copyFloor: CopyFloorMeasurement | Skipped, details: Record<string, unknown>, checks: Check[]): ScenarioResult {
  const title = name === 'filter' ? `a username filter of ${Number(details.filterNames ?? FILTER_NAMES).toLocaleString('en-US')} names` : SCENARIOS[name].title;
  return { name, title, users, records, bytes, userport, copyFloor, ratioToCopyFloor: ratio(userport, copyFloor), details, checks };
}

async function collisions(ctx: ScenarioContext): Promise<ScenarioResult> {
  const file = path.join(ctx.workDir, 'scenario-collisions.json');
  ctx.log(`scenario collisions: generating ${ctx.users} users, collision rate ${SCENARIO_COLLISION_RATE}`);
  const gen = await generateExport(file, { users: ctx.users, seed: ctx.seed, collisionRate: SCENARIO_COLLISION_RATE });
  const { userport, copyFloor } = await intoEmpty(ctx, 'collisions', file, gen.records, gen.counts.bytes);
  if (!ctx.keep) fs.rmSync(file, { force: true });
  const checks = checksOfRows(expectedRows(gen.counts), userport, copyFloor);
  if (!isSkipped(userport)) checks.push(...renamedCheck(userport.summary, gen.counts.usernameCollisions));
  return result('collisions', ctx.users, gen.records, gen.counts.bytes, userport, copyFloor,
    { collisionRate: SCENARIO_COLLISION_RATE, usernameCollisions: gen.counts.usernameCollisions, sharedEmails: gen.counts.sharedEmails }, checks);
}

async function reverse(ctx: ScenarioContext): Promise<ScenarioResult> {
  const sorted = path.join(ctx.workDir, 'scenario-sorted.json');
  const file = path.join(ctx.workDir, 'scenario-reverse.json');
  ctx.log(`scenario reverse: generating ${ctx.users} users, then reversing the records`);
  const gen = await generateExport(sorted, { users: ctx.users, seed: ctx.seed });
  const t0 = process.hrtime.bigint();
  const rev = await reverseExport(sorted, file);
  const reverseSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
  fs.rmSync(sorted, { force: true });
  const { userport, copyFloor } = await intoEmpty(ctx, 'reverse', file, gen.records, rev.bytes);
  if (!ctx.keep) fs.rmSync(file, { force: true });
  const checks = [countsCheck('reversed export holds every generated record', gen.records, rev.records), ...checksOfRows(expectedRows(gen.counts), userport, copyFloor)];
  if (!isSkipped(userport)) checks.push(...renamedCheck(userport.summary, gen.counts.usernameCollisions));
  return result('reverse', ctx.users, gen.records, rev.bytes, userport, copyFloor, { reverseSeconds }, checks);
}

interface FilterPlan {
  names: string[];
  /** What the import must write with that filter. */
  expected: Record<string, number>;
}

/**
 * Picks `n` usernames spread evenly over the export's users and counts, from the export itself,
 * what an import filtered to them writes: their users and password hashes, their user emails,
 * their global options, and one Email per distinct address (case-insensitive) of their user emails.
 */
export async function planFilter(file: string, users: number, n: number): Promise<FilterPlan> {
  const step = Math.max(1, Math.floor(users / n));
  const names: string[] = [];
  const kept = new Set<number>();
  const addresses = new Set<string>();
  let seen = 0;
  let userEmails = 0;
  let options = 0;
  const tokenizer = createTokenizer();
  fs.createReadStream(file).pipe(tokenizer);
  for await (const rec of tokenizer as AsyncIterable<{ value: { model: string; pk: number; fields: Record<string, unknown> } }>) {
    const { model, pk, fields } = rec.value;
    if (model === 'sentry.user') {
      if (seen++ % step === 0 && names.length < n) { names.push(String(fields.username)); kept.add(pk); }
    } else if (model === 'sentry.useremail' && kept.has(Number(fields.user))) {
      userEmails++;
      addresses.add(String(fields.email).toLowerCase());
    } else if (model === 'sentry.useroption' && kept.has(Number(fields.user)) && fields.organization_id == null && fields.project_id == null) {
      options++;
    }
  }
  return {
    names,
    expected: { auth_user: names.length, sentry_email: addresses.size, sentry_useremail: userEmails, sentry_useroption: options, sentry_lostpasswordhash: names.length },
  };
}

async function filter(ctx: ScenarioContext): Promise<ScenarioResult> {
  const file = path.join(ctx.workDir, 'scenario-filter.json');
  const namesFile = path.join(ctx.workDir, 'scenario-filter-names.txt');
  ctx.log(`scenario filter: generating ${ctx.users} users, picking the names`);
  const gen = await generateExport(file, { users: ctx.users, seed: ctx.seed });
  const n = Math.min(FILTER_NAMES, Math.max(1, Math.floor(ctx.users / 2)));
  const plan = await planFilter(file, ctx.users, n);
  fs.writeFileSync(namesFile, `${plan.names.join('\n')}\n`);
  const { userport, copyFloor } = await intoEmpty(ctx, 'filter', file, gen.records, gen.counts.bytes, ['--filter-usernames-file', namesFile]);
  if (!ctx.keep) { fs.rmSync(file, { force: true }); fs.rmSync(namesFile, { force: true }); }
  const checks = [countsCheck('filter names picked', n, plan.names.length), ...checksOfRows(plan.expected, userport, copyFloor)];
  return result('filter', ctx.users, gen.records, gen.counts.bytes, userport, copyFloor, { filterNames: plan.names.length }, checks);
}

/**
 * Writes the user records of `file` alone to `out` (each record's text as it was, in its order),
 * and counts, from them, what an import must write: every user and its lost-password hash; and,
 * as Sentry's signal receivers do for a new user, a user email for its address (when it has one)
 * and an Email row per address (case-insensitively).
 */
export async function usersOnlyExport(file: string, out: string): Promise<{ records: number; bytes: number; expected: Record<string, number> }> {
  const tokenizer = createTokenizer();
  fs.createReadStream(file).pipe(tokenizer);
  const addresses = new Set<string>();
  let users = 0;
  let withAddress = 0;
  async function* text(): AsyncGenerator<string> {
    for await (const rec of tokenizer as AsyncIterable<{ value: { model: string; fields: Record<string, unknown> }; source: string }>) {
      if (rec.value.model !== 'sentry.user') continue;
      const address = rec.value.fields.email;
      if (typeof address === 'string' && address !== '') { withAddress++; addresses.add(address.toLowerCase()); }
      yield `${users++ === 0 ? '[\n  ' : ',\n  '}${rec.source}`;
    }
    yield users === 0 ? '[]\n' : '\n]\n';
  }
  await pipeline(Readable.from(text()), fs.createWriteStream(out));
  return {
    records: users, bytes: fs.statSync(out).size,
    expected: { auth_user: users, sentry_email: addresses.size, sentry_useremail: withAddress, sentry_useroption: 0, sentry_lostpasswordhash: users },
  };
}

async function usersOnly(ctx: ScenarioContext): Promise<ScenarioResult> {
  const generated = path.join(ctx.workDir, 'scenario-users-only-all.json');
  const file = path.join(ctx.workDir, 'scenario-users-only.json');
  ctx.log(`scenario users-only: generating ${ctx.users} users, keeping the user records alone`);
  const gen = await generateExport(generated, { users: ctx.users, seed: ctx.seed });
  const only = await usersOnlyExport(generated, file);
  fs.rmSync(generated, { force: true });
  const { userport, copyFloor } = await intoEmpty(ctx, 'users-only', file, only.records, only.bytes);
  if (!ctx.keep) fs.rmSync(file, { force: true });
  const checks = [countsCheck('the export holds every generated user', gen.counts.records['sentry.user'], only.records), ...checksOfRows(only.expected, userport, copyFloor)];
  if (!isSkipped(userport)) {
    const adjacent = (userport.summary as { adjacent?: { primaryEmails?: number } } | null)?.adjacent?.primaryEmails;
    checks.push(countsCheck('primary user emails written', only.expected.sentry_useremail, adjacent));
    checks.push(...renamedCheck(userport.summary, gen.counts.usernameCollisions));
  }
  return result('users-only', ctx.users, only.records, only.bytes, userport, copyFloor, {}, checks);
}

async function existing(ctx: ScenarioContext): Promise<ScenarioResult> {
  const fileA = path.join(ctx.workDir, 'scenario-existing-a.json');
  const fileB = path.join(ctx.workDir, 'scenario-existing-b.json');
  // B: another seed and the next range of users, so A and B share no username, address or pk and
  // the rows of both are exactly predictable.
  ctx.log(`scenario existing: generating A and B (${ctx.users} users each)`);
  const genA = await generateExport(fileA, { users: ctx.users, seed: ctx.seed });
  const genB = await generateExport(fileB, { users: ctx.users, seed: ctx.seed + 1, firstUser: ctx.users });
  const db = `bench_sc_existing_${ctx.tag}`;
  const floorDb = `bench_sc_existing_floor_${ctx.tag}`;
  const url = await freshDatabase(ctx.serverUrl, db);
  const timeout = ctx.timeoutSeconds ? { timeoutSeconds: ctx.timeoutSeconds } : {};
  ctx.log('scenario existing: importing A (not timed as the scenario)');
  const a = await runImport(ctx.runner, fileA, url, { records: genA.records, bytes: genA.counts.bytes, ...timeout });
  const details: Record<string, unknown> = { usersBefore: ctx.users, importASeconds: isSkipped(a) ? null : a.seconds };
  const checks: Check[] = [countsCheck('import of A finished', 'finished', isSkipped(a) ? a.skipped : 'finished')];
  let userport: ImportMeasurement | Skipped = { skipped: 'needs the import of A' };
  let copyFloor: CopyFloorMeasurement | Skipped = { skipped: 'needs the rows of the userport import' };
  const dirA = path.join(ctx.workDir, 'copy-existing-a');
  const dirB = path.join(ctx.workDir, 'copy-existing-b');
  try {
    if (!isSkipped(a)) {
      const expA = expectedRows(genA.counts);
      checks.push(countsCheck('rows after A', expA, a.rows));
      // The floor's database holds the same rows as the import's before B: A's, loaded by COPY.
      const before = await maxIds(url);
      const floorUrl = await freshDatabase(ctx.serverUrl, floorDb);
      await loadTables(floorUrl, await dumpTables(url, dirA));
      // Both with fresh statistics, as a database that has held its users for a while has.
      for (const u of [url, floorUrl]) await analyze(u, IMPORTED_TABLES);
      ctx.log('scenario existing: importing B into the database holding A');
      userport = await runImport(ctx.runner, fileB, url, { records: genB.records, bytes: genB.counts.bytes, ...timeout });
      if (!isSkipped(userport)) {
        ctx.log('scenario existing: COPY floor (B\'s rows into a database holding A\'s)');
        const dumpsB = await dumpTables(url, dirB, IMPORTED_TABLES, before);
        copyFloor = floorOf(await loadTables(floorUrl, dumpsB), genB.records);
        const expB = expectedRows(genB.counts);
        const both = Object.fromEntries(IMPORTED_TABLES.map((t) => [t, expA[t]! + expB[t]!]));
        checks.push(countsCheck('userport import of B finished', 'finished', 'finished'));
        for (const t of IMPORTED_TABLES) checks.push(countsCheck(`${t} rows (A and B)`, both[t], userport.rows[t]));
        checks.push(countsCheck('rows B added', expB, copyFloor.rows));
        checks.push(countsCheck('COPY floor rows equal userport rows', userport.rows, await countRows(floorUrl, IMPORTED_TABLES)));
        checks.push(...renamedCheck(userport.summary, genB.counts.usernameCollisions));
      } else {
        checks.push(countsCheck('userport import of B finished', 'finished', userport.skipped));
      }
    }
  } finally {
    for (const d of [dirA, dirB]) fs.rmSync(d, { recursive: true, force: true });
    if (!ctx.keep) {
      for (const f of [fileA, fileB]) fs.rmSync(f, { force: true });
      await dropDatabase(ctx.serverUrl, db);
      await dropDatabase(ctx.serverUrl, floorDb);
    }
  }
  return result('existing', ctx.users, genB.records, genB.counts.bytes, userport, copyFloor, details, checks);
}

async function analyze(url: string, tables: readonly string[]): Promise<void> {
  await withClient(url, (c) => c.query(`ANALYZE ${tables.join(', ')}`));
}

/** Waits until no userport session is connected to database `db`; returns the seconds waited, or null after `limit` seconds. */
async function userportSessionsGone(serverUrl: string, db: string, limit = 60): Promise<number | null> {
  const started = Date.now();
  return withClient(databaseUrl(serverUrl, 'postgres'), async (c) => {
    while (Date.now() - started < limit * 1000) {
      const { rows } = await c.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND application_name LIKE 'userport%' AND application_name <> 'userport-bench'`, [db]);
      if (rows[0].n === 0) return (Date.now() - started) / 1000;
      await new Promise((r) => setTimeout(r, 100));
    }
    return null;
  });
}

async function resume(ctx: ScenarioContext): Promise<ScenarioResult> {
  const file = path.join(ctx.workDir, 'scenario-resume.json');
  ctx.log(`scenario resume: generating ${ctx.users} users`);
  const gen = await generateExport(file, { users: ctx.users, seed: ctx.seed });
  const db = `bench_sc_resume_${ctx.tag}`;
  const url = await freshDatabase(ctx.serverUrl, db);
  // Our ANALYZE plays autovacuum's part, at a set moment: autovacuum itself could VACUUM the
  // killed merge's dead rows away first (truncating the pages, so the statistics would be right
  // again), which a loaded machine made happen once. It is on again for the resume.
  await withClient(url, (c) => c.query(ALL_TABLES_ANALYZED.map((t) => `ALTER TABLE ${t} SET (autovacuum_enabled = off)`).join('; ')));
  const args = ['--resumable', '--import-id', `bench-resume-${ctx.tag}`];
  const details: Record<string, unknown> = {};
  const checks: Check[] = [];
  let userport: ImportMeasurement | Skipped = { skipped: 'the first run was not killed in its merge' };
  let copyFloor: CopyFloorMeasurement | Skipped = { skipped: 'needs the rows of the userport import' };
  try {
    ctx.log('scenario resume: first run, killed in its merge');
    const killed = await runMeasured(process.execPath, importCommand(ctx.runner, file, url, undefined, args), {
      env: { ...process.env, USERPORT_TRACE_SQL: '1' }, killOn: RESUME_KILL_ON,
      ...(ctx.timeoutSeconds ? { timeoutMs: ctx.timeoutSeconds * 1000 } : {}),
    });
    const wasKilled = killed.killedAfter !== undefined && killed.signal === 'SIGKILL';
    checks.push(countsCheck('first run killed in its merge (after the sentry_email insert)', true, wasKilled));
    details.killedRunSeconds = killed.seconds;
    details.killedAfterSeconds = killed.killedAfter ?? null;
    details.rowsSentAfterMs = Number(/\[sink\] all rows sent after (\d+) ms/.exec(killed.stderr)?.[1] ?? NaN) || null;
    if (!wasKilled) details.firstRunExit = `${killed.code ?? killed.signal}: ${killed.stderr.trim().split('\n').slice(-2).join(' | ')}`;
    if (wasKilled) {
      details.sessionGoneAfterSeconds = await userportSessionsGone(ctx.serverUrl, db);
      // Another session analyzes the target tables while they hold only the killed merge's dead
      // rows: statistics of zero rows over pages that exist, which the planner reads as empty.
      await analyze(url, ALL_TABLES_ANALYZED);
      const stats = await withClient(url, async (c) => Object.fromEntries((await c.query(
        'SELECT relname, reltuples::bigint AS reltuples, relpages FROM pg_class WHERE relname = ANY($1) ORDER BY relname', [[...ALL_TABLES_ANALYZED]])).rows
        .map((r: { relname: string; reltuples: string; relpages: number }) => [r.relname, { reltuples: Number(r.reltuples), relpages: r.relpages }]))) as
        Record<string, { reltuples: number; relpages: number }>;
      details.statisticsBeforeResume = stats;
      const email = stats.sentry_email;
      checks.push(countsCheck('sentry_email statistics say empty over existing pages before the resume', 'reltuples 0, relpages > 0',
        email && email.reltuples === 0 && email.relpages > 0 ? 'reltuples 0, relpages > 0' : `reltuples ${email?.reltuples}, relpages ${email?.relpages}`));
      await withClient(url, (c) => c.query(ALL_TABLES_ANALYZED.map((t) => `ALTER TABLE ${t} RESET (autovacuum_enabled)`).join('; ')));
      details.stateBeforeResume = await withClient(url, async (c) => (await c.query('SELECT state FROM userport.imports WHERE id = $1', [args[2]])).rows[0]?.state ?? null);
      ctx.log('scenario resume: the same command again (timed)');
      userport = await runImport(ctx.runner, file, url, { records: gen.records, bytes: gen.counts.bytes, args, ...(ctx.timeoutSeconds ? { timeoutSeconds: ctx.timeoutSeconds } : {}) });
      if (!isSkipped(userport)) {
        details.totalSeconds = killed.seconds + userport.seconds;
        ctx.log('scenario resume: COPY floor');
        copyFloor = await emptyTargetFloor(ctx, 'resume', db, gen.records);
        details.stateAfterResume = await withClient(url, async (c) => (await c.query('SELECT state FROM userport.imports WHERE id = $1', [args[2]])).rows[0]?.state ?? null);
        checks.push(countsCheck('import done after the resume', 'done', details.stateAfterResume));
      }
      checks.push(...checksOfRows(expectedRows(gen.counts), userport, copyFloor));
      if (!isSkipped(userport)) checks.push(...renamedCheck(userport.summary, gen.counts.usernameCollisions));
    }
  } finally {
    if (!ctx.keep) { fs.rmSync(file, { force: true }); await dropDatabase(ctx.serverUrl, db); }
  }
  return result('resume', ctx.users, gen.records, gen.counts.bytes, userport, copyFloor, details, checks);
}

/** The Sentry schema fixtures (`../shared/fixtures/sentry-schemas`), or why they cannot be loaded here. */
function sentrySchemas(): { dir: string } | { skipped: string } {
  const dir = path.resolve('../shared/fixtures/sentry-schemas');
  if (!fs.existsSync(path.join(dir, 'load.sh'))) return { skipped: `${dir} is absent (it is not part of the repository)` };
  if (spawnSync('psql', ['--version']).status !== 0) return { skipped: 'psql (which load.sh runs) is not installed' };
  return { dir };
}

/** A new database holding Sentry 2026's schema and its first admin, as `sentry createuser --superuser` leaves it. */
async function freshSentryInstall(ctx: ScenarioContext, name: string, dir: string): Promise<string> {
  const url = await freshDatabase(ctx.serverUrl, name, false);
  const r = spawnSync('bash', [path.join(dir, 'load.sh'), url, path.join(dir, 'sentry-2026.sql')], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`load.sh sentry-2026.sql failed: ${r.stderr.slice(-300)}`);
  await withClient(url, (c) => c.query(`
    WITH a AS (INSERT INTO auth_user (password, username, first_name, email, email_unique, is_staff, is_active, is_superuser, is_managed,
                 is_password_expired, flags, date_joined)
               VALUES ('pbkdf2_sha256$720000$x$y', 'admin@example.com', '', 'admin@example.com', 'admin@example.com', true, true, true, false,
                 false, 0, now()) RETURNING id)
    INSERT INTO sentry_useremail (user_id, email, validation_hash, date_hash_added, is_verified)
    SELECT id, 'admin@example.com', md5('admin'), now(), true FROM a;
    INSERT INTO sentry_userrole (date_updated, date_added, name, permissions) VALUES (now(), now(), 'Super Admin', ARRAY['users.admin']);
    ANALYZE`));
  return url;
}

/** What differs between the two scenarios into a new Sentry 2026 holding its admin (f and g). */
interface FreshSentryRun {
  name: 'fresh-sentry' | 'global-restore';
  /** Share of users with an authenticator and, independently, a user IP. @default the generator's */
  outOfScopeRate?: number;
  scope?: 'global';
  /** The tables written, dumped for the floor and counted. */
  tables: readonly string[];
  /** The tables whose row counts are checked, with what each must hold. */
  want: (gen: { counts: GenerateCounts }) => Record<string, number>;
  /** What the row checks say they count. */
  what: string;
  details?: Record<string, unknown>;
}

/**
 * A generated export into a new Sentry 2026 (its real schema, from the shared fixtures) that
 * holds its first admin, timed against its COPY floor: the rows the import added, loaded into a
 * second such install. The admin's few rows take the bulk path, decided against.
 */
async function intoFreshSentry(ctx: ScenarioContext, run: FreshSentryRun): Promise<ScenarioResult> {
  const fixtures = sentrySchemas();
  const file = path.join(ctx.workDir, `scenario-${run.name}.json`);
  if ('skipped' in fixtures) return result(run.name, ctx.users, 0, 0, fixtures, fixtures, {}, []);
  ctx.log(`scenario ${run.name}: generating ${ctx.users} users`);
  const gen = await generateExport(file, { users: ctx.users, seed: ctx.seed, ...(run.outOfScopeRate !== undefined ? { outOfScopeRate: run.outOfScopeRate } : {}) });
  const tag = run.name === 'fresh-sentry' ? 'fresh' : 'global';
  const db = `bench_sc_${tag}_${ctx.tag}`;
  const floorDb = `bench_sc_${tag}_floor_${ctx.tag}`;
  const dir = path.join(ctx.workDir, `copy-${run.name}`);
  const checks: Check[] = [];
  let copyFloor: CopyFloorMeasurement | Skipped = { skipped: 'needs the rows of the userport import' };
  let userport: ImportMeasurement | Skipped;
  try {
    const url = await freshSentryInstall(ctx, db, fixtures.dir);
    const floorUrl = await freshSentryInstall(ctx, floorDb, fixtures.dir);
    const before = await maxIds(url, run.tables);
    ctx.log(`scenario ${run.name}: userport import ${run.scope ?? 'users'}`);
    // Counted: the tables written and the user scope's five (a table the generation lacks counts 0).
    const counted = [...new Set([...IMPORTED_TABLES, ...run.tables])];
    userport = await runImport(ctx.runner, file, url, { records: gen.records, bytes: gen.counts.bytes, tables: counted,
      ...(run.scope ? { scope: run.scope } : {}), ...(ctx.timeoutSeconds ? { timeoutSeconds: ctx.timeoutSeconds } : {}) });
    if (!isSkipped(userport)) {
      ctx.log(`scenario ${run.name}: COPY floor`);
      copyFloor = floorOf(await loadTables(floorUrl, await dumpTables(url, dir, run.tables, before)), gen.records);
      const want = run.want(gen);
      for (const [t, n] of Object.entries(want)) checks.push(countsCheck(`${t} rows (${run.what})`, n, userport.rows[t]));
      checks.push(countsCheck('COPY floor rows equal userport rows', userport.rows, await countRows(floorUrl, counted)));
      // The admin's few rows: the bulk path, deciding against them.
      checks.push(countsCheck('the bulk path over the admin\'s rows', true, (userport.summary as { bulkLoad?: boolean } | null)?.bulkLoad ?? false));
    } else checks.push(countsCheck('userport import finished', 'finished', userport.skipped));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
    if (!ctx.keep) {
      fs.rmSync(file, { force: true });
      await dropDatabase(ctx.serverUrl, db);
      await dropDatabase(ctx.serverUrl, floorDb);
    }
  }
  return result(run.name, ctx.users, gen.records, gen.counts.bytes, userport, copyFloor, run.details ?? {}, checks);
}

/** f: the realistic migration, into a new Sentry 2026 holding its first admin (no sentry_email there). */
function freshSentry(ctx: ScenarioContext): Promise<ScenarioResult> {
  return intoFreshSentry(ctx, {
    name: 'fresh-sentry',
    tables: IMPORTED_TABLES.filter((t) => t !== 'sentry_email'),
    what: 'the export\'s and the admin\'s; no sentry_email in Sentry 2026',
    want: (gen) => {
      const exp = expectedRows(gen.counts);
      return Object.fromEntries(IMPORTED_TABLES.map((t) => [t, t === 'sentry_email' ? 0 : exp[t]! + (t === 'auth_user' || t === 'sentry_useremail' ? 1 : 0)]));
    },
  });
}

/** Share of users with a two-factor authenticator (and, independently, a user IP) in scenario g. */
const GLOBAL_2FA_RATE = 0.3;

/**
 * g: issue #22's restore: `import global` of an export in which 30% of the users have a
 * two-factor authenticator and 30% a user IP, into a new Sentry 2026 holding its admin. Passwords
 * are kept: a lost-password hash only for the users exported unclaimed.
 */
function globalRestore(ctx: ScenarioContext): Promise<ScenarioResult> {
  return intoFreshSentry(ctx, {
    name: 'global-restore', outOfScopeRate: GLOBAL_2FA_RATE, scope: 'global', details: { twoFactorRate: GLOBAL_2FA_RATE },
    tables: [...IMPORTED_TABLES.filter((t) => t !== 'sentry_email'), 'auth_authenticator', 'sentry_userip'],
    what: 'the export\'s and the admin\'s',
    want: (gen) => {
      const exp = expectedRows(gen.counts);
      const r = gen.counts.records;
      return {
        auth_user: exp.auth_user! + 1, sentry_useremail: exp.sentry_useremail! + 1, sentry_useroption: exp.sentry_useroption!,
        sentry_lostpasswordhash: gen.counts.unclaimedUsers, auth_authenticator: r['sentry.authenticator'] ?? 0, sentry_userip: r['sentry.userip'] ?? 0,
      };
    },
  });
}

const RUNNERS: Record<ScenarioName, (ctx: ScenarioContext) => Promise<ScenarioResult>> = {
  resume, existing, collisions, reverse, filter, 'fresh-sentry': freshSentry, 'global-restore': globalRestore, 'users-only': usersOnly,
};

/** Scenario names from `all`, `none`, or a comma-separated list of names or the issue's letters (a-e). */
export function parseScenarios(spec: string): ScenarioName[] {
  const s = spec.trim().toLowerCase();
  if (s === 'all') return Object.keys(SCENARIOS) as ScenarioName[];
  if (s === 'none' || s === '') return [];
  const out: ScenarioName[] = [];
  for (const word of s.split(',').map((w) => w.trim()).filter(Boolean)) {
    const name = (Object.keys(SCENARIOS) as ScenarioName[]).find((n) => n === word || SCENARIOS[n].letter === word);
    if (!name) throw new Error(`unknown scenario "${word}" (one of ${Object.entries(SCENARIOS).map(([n, v]) => `${v.letter}/${n}`).join(', ')}, or all, none)`);
    if (!out.includes(name)) out.push(name);
  }
  // Always in the issue's order, whatever order they were asked in.
  return (Object.keys(SCENARIOS) as ScenarioName[]).filter((n) => out.includes(n));
}

/** Runs `names` one after the other. A scenario that throws is recorded with a failed check, not fatal. */
export async function runScenarios(ctx: ScenarioContext, names: readonly ScenarioName[]): Promise<ScenarioResult[]> {
  const out: ScenarioResult[] = [];
  for (const name of names) {
    if (ctx.runner.kind !== 'cli') {
      out.push(result(name, ctx.users, 0, 0, { skipped: 'scenarios need the CLI (dist/pipelines/cli.js)' }, { skipped: 'needs the CLI' }, {}, []));
      continue;
    }
    try {
      out.push(await RUNNERS[name](ctx));
    } catch (err) {
      ctx.log(`scenario ${name}: failed: ${(err as Error).stack ?? String(err)}`);
      out.push(result(name, ctx.users, 0, 0, { skipped: `scenario failed: ${(err as Error).message}` }, { skipped: 'scenario failed' }, {},
        [countsCheck('scenario ran', 'ran', (err as Error).message)]));
    }
  }
  return out;
}
