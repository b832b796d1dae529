/**
 * `npm run bench [-- --sizes 10000,100000] [--keep] [--encrypted] [--smoke]
 *  [--database-url URL] [--out DIR] [--work-dir DIR] [--no-django] [--import-timeout SEC] [--collision-rate R]
 *  [--encrypted-sizes N,M] [--export] [--scenarios all|a,b,..|none] [--no-scenarios] [--scenario-users N]`
 * `npm run bench -- --parse-compare FILE|USERS`
 * `npm run bench -- --spread DIR,DIR,DIR`
 *
 * Measures userport against the COPY floor, the bare floor, the parse floor and Django's loaddata,
 * then the scenarios of issue #11 (tools/bench/), prints a table and writes `<out>/results.json`
 * and `<out>/chart.svg`. Without --database-url it runs its own embedded PostgreSQL in a temporary
 * folder and removes it afterwards. Wiring only.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { startEmbedded, stopEmbedded } from '../lib/db/embedded.js';
import { UserportError } from '../lib/errors.js';
import { renderChart, formatTable } from '../tools/bench/report.js';
import { DEFAULT_SCENARIO_USERS, DEFAULT_SIZES, runBench } from '../tools/bench/run.js';
import { compareParsers, formatParseRates } from '../tools/bench/parse-compare.js';
import { parseScenarios } from '../tools/bench/scenarios.js';
import { formatSpread, readRuns } from '../tools/bench/spread.js';
import { createExportGenerator } from '../tools/generate.js';
import { exitCodeFor, formatError, parseCommand, type FlagSpecs, type FlagValues } from './cli-support.js';

const SMOKE_SCENARIO_USERS = 500;
const USAGE = `usage: npm run bench -- [--sizes ${DEFAULT_SIZES.join(',')}] [--seed N] [--keep] [--encrypted] [--smoke] ` +
  '[--database-url URL] [--out DIR] [--work-dir DIR] [--no-django] [--import-timeout SEC] [--collision-rate R] [--encrypted-sizes N,M] ' +
  '[--export] [--scenarios all|a,b,..|none] [--no-scenarios] [--scenario-users N] [--parse-compare FILE|USERS] [--spread DIR,DIR,..]\n' +
  `  --sizes           export sizes in users (default ${DEFAULT_SIZES.join(',')}; add 1000000 for the 1M row)\n` +
  '  --export          measure `userport export users` on every size (default: the largest size only)\n' +
  '  --scenarios       issue #11 scenarios, by letter or name (default all): a/resume (killed in the merge, stale\n' +
  '                    statistics, resumed), b/existing (into a database holding users), c/collisions (10%),\n' +
  '                    d/reverse (records in reverse order), e/filter (10,000 usernames),\n' +
  '                    f/fresh-sentry (into a new Sentry 2026 with its admin; needs ../shared),\n' +
  '                    g/global-restore (import global, 30% with 2FA, into a new Sentry 2026; needs ../shared),\n' +
  '                    h/users-only (the user records alone: each user\'s user email and Email row made by the merge)\n' +
  '  --no-scenarios    the same as --scenarios none\n' +
  `  --scenario-users  users per scenario export (default ${DEFAULT_SCENARIO_USERS}; --smoke: ${SMOKE_SCENARIO_USERS})\n` +
  '  --parse-compare   FILE, or a number of users to generate: read that export with stream-json (parser +\n' +
  '                    streamArray) and with userport\'s tokenizer, best of 3 each, print MB/s; nothing else runs\n' +
  '  --spread          the --out folders of several runs: median and range of each ratio and peak RSS they\n' +
  '                    share (printed, and written to spread.md in --out if given); nothing else runs';
const SMOKE_SIZES = [500];
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

const FLAGS = {
  sizes: { type: 'string' },
  seed: { type: 'string' },
  keep: { type: 'boolean' },
  encrypted: { type: 'boolean' },
  smoke: { type: 'boolean' },
  'database-url': { type: 'string' },
  out: { type: 'string' },
  'work-dir': { type: 'string' },
  'no-django': { type: 'boolean' },
  'import-timeout': { type: 'string' },
  'collision-rate': { type: 'string' },
  'encrypted-sizes': { type: 'string' },
  export: { type: 'boolean' },
  scenarios: { type: 'string' },
  'no-scenarios': { type: 'boolean' },
  'scenario-users': { type: 'string' },
  'parse-compare': { type: 'string' },
  spread: { type: 'string' },
} as const satisfies FlagSpecs;
type Values = FlagValues<typeof FLAGS>;

export async function main(argv: string[]): Promise<number> {
  let values: Values;
  try {
    // The CLI's parser: its flag spellings, and a typo gets the CLI's "did you mean" and exit 2.
    values = parseCommand(argv, FLAGS, 'bench', false).values as Values;
  } catch (err) {
    process.stderr.write(`${formatError(err)}\n${USAGE}\n`);
    return exitCodeFor(err);
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  if (values['parse-compare'] !== undefined) return parseCompare(values['parse-compare'], Number(values.seed ?? '1'));
  if (values.spread !== undefined) {
    const dirs = values.spread.split(',').map((d) => d.trim()).filter(Boolean);
    const table = `${dirs.length} runs: ${dirs.join(', ')}\n\n${formatSpread(readRuns(dirs))}\n`;
    process.stdout.write(table);
    if (values.out) {
      // As a run's --out: the folder is made when missing.
      fs.mkdirSync(values.out, { recursive: true });
      fs.writeFileSync(path.join(values.out, 'spread.md'), table);
    }
    return 0;
  }
  let scenarios;
  try {
    scenarios = values['no-scenarios'] ? [] : parseScenarios(values.scenarios ?? 'all');
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n${USAGE}\n`);
    return 2;
  }
  const scenarioUsers = values['scenario-users'] ? Number(values['scenario-users'].replace(/_/g, '')) : values.smoke ? SMOKE_SCENARIO_USERS : DEFAULT_SCENARIO_USERS;
  const sizes = values.sizes ? values.sizes.split(',').map((s) => Number(s.trim().replace(/_/g, ''))) : values.smoke ? SMOKE_SIZES : DEFAULT_SIZES;
  const workDir = values['work-dir'] ?? fs.mkdtempSync(path.join(os.tmpdir(), 'userport-bench-'));
  // A smoke run must not overwrite the committed figures.
  const out = values.out ?? (values.smoke ? workDir : path.join(ROOT, 'bench'));
  let embeddedDir: string | undefined;
  try {
    let serverUrl = values['database-url'];
    if (!serverUrl) {
      embeddedDir = fs.mkdtempSync(path.join(os.tmpdir(), 'userport-bench-pg-'));
      // The server may run as "nobody" (when we are root): it must be able to enter the folder.
      fs.chmodSync(embeddedDir, 0o755);
      process.stderr.write(`starting an embedded PostgreSQL in ${embeddedDir}\n`);
      serverUrl = (await startEmbedded({ dir: embeddedDir })).url;
    }
    const results = await runBench({
      sizes, serverUrl, workDir, seed: Number(values.seed ?? '1'), keep: values.keep === true, smoke: values.smoke === true,
      encrypted: values.encrypted === true, django: !values['no-django'], exportAll: values.export === true, scenarios, scenarioUsers,
      ...(values['import-timeout'] ? { importTimeoutSeconds: Number(values['import-timeout']) } : {}),
      ...(values['collision-rate'] ? { collisionRate: Number(values['collision-rate']) } : {}),
      ...(values['encrypted-sizes'] ? { encrypted: true, encryptedSizes: values['encrypted-sizes'].split(',').map((s) => Number(s.trim().replace(/_/g, ''))) } : {}),
      log: (line) => process.stderr.write(`${line}\n`),
    });
    fs.mkdirSync(out, { recursive: true });
    fs.writeFileSync(path.join(out, 'results.json'), `${JSON.stringify(results, null, 2)}\n`);
    fs.writeFileSync(path.join(out, 'chart.svg'), renderChart(results));
    process.stdout.write(`${formatTable(results)}\n`);
    process.stderr.write(`wrote ${path.join(out, 'results.json')} and ${path.join(out, 'chart.svg')}\n`);
    const failed = [...results.sizes, ...results.scenarios].some((s) => s.checks.some((c) => !c.ok));
    return failed ? 1 : 0;
  } catch (err) {
    if (err instanceof UserportError) {
      process.stderr.write(`userport bench: ${err.describe()}\n`);
      return 2;
    }
    throw err;
  } finally {
    if (embeddedDir) {
      await stopEmbedded(embeddedDir, 'immediate').catch(() => undefined);
      if (!values.keep) fs.rmSync(embeddedDir, { recursive: true, force: true });
    }
    if (!values.keep && !values['work-dir'] && out !== workDir) fs.rmSync(workDir, { recursive: true, force: true });
  }
}

/** `--parse-compare FILE|USERS`: the tokenizer against stream-json on one export (tools/bench/parse-compare.ts). */
async function parseCompare(what: string, seed: number): Promise<number> {
  const users = /^\d[\d_]*$/.test(what) ? Number(what.replace(/_/g, '')) : undefined;
  const dir = users === undefined ? undefined : fs.mkdtempSync(path.join(os.tmpdir(), 'userport-parse-compare-'));
  try {
    const file = dir ? path.join(dir, 'export.json') : what;
    if (dir) await pipeline(createExportGenerator({ users: users!, seed }), fs.createWriteStream(file));
    process.stdout.write(`${dir ? `${users} generated users (seed ${seed})` : file}, ${fs.statSync(file).size} bytes, node ${process.version}\n`);
    process.stdout.write(`${formatParseRates(await compareParsers(file))}\n`);
    return 0;
  } finally {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (err) => { console.error(err); process.exitCode = 1; });
}
