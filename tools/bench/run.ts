/**
 * One benchmark run: for each export size, generate the export, measure the parse floor, import
 * it with userport into a fresh database (a separate process, so its peak RSS is its own), load
 * the very rows it wrote again with COPY into another fresh database (the COPY floor) and into
 * bare tables whose indexes and constraints are built afterwards (the bare floor), and check
 * the counts; the general path (`--bulk-load off`) when the CLI has it; the export on the
 * largest size; the Django peer on the smallest size. Then the scenarios (tools/bench/scenarios.ts).
 * Returns everything as {@link BenchResults}; writing files and printing is the caller's business.
 */
import { generateKeyPairSync } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { pathToFileURL } from 'node:url';
import { DEFAULT_COLLISION_RATE } from '../generate.js';
import { OptionError } from '../../lib/errors.js';
import { loadTablesBare } from './bare-floor.js';
import { runMeasured } from './child.js';
import { serverCpuMeter, withCpu } from './cpu.js';
import { countsCheck, expectedRows, generateExport, importRunner, MB, PACKAGE_ROOT, runImport, shebangNodeFlags, tail, type ImportRunner } from './common.js';
import { dumpTables, IMPORTED_TABLES, loadTables } from './copy-floor.js';
import { databaseUrl, dropDatabase, freshDatabase, serverVersion } from './databases.js';
import { djangoUnavailable, runDjangoLoaddata } from './django.js';
import { measureExport } from './export.js';
import type { BenchResults, Check, ImportMeasurement, MachineInfo, PeerResult, ScenarioName, ScenarioResult, SizeResult, Skipped } from './results.js';
import { isSkipped, SCENARIOS } from './results.js';
import { runScenarios } from './scenarios.js';

export { expectedRows, shebangNodeFlags } from './common.js';

export interface BenchOptions {
  /** Export sizes, in users. @default DEFAULT_SIZES */
  sizes?: number[];
  /** A PostgreSQL server URL with the right to create databases. */
  serverUrl: string;
  /** Folder for exports, dumps and keys (never the repository). @default a new folder under os.tmpdir() */
  workDir?: string;
  /** Generator seed. @default 1 */
  seed?: number;
  /** Keep exports, dumps and databases afterwards. @default false */
  keep?: boolean;
  /** Correctness run: the caller fails when a check fails. Recorded in the results. @default false */
  smoke?: boolean;
  /** Measure encrypted input too (skipped with a reason unless lib/decrypt.ts works). @default false */
  encrypted?: boolean;
  /** With `encrypted`: only for these sizes (an encrypted import costs as much as a plain one). @default every size */
  encryptedSizes?: number[];
  /** Run Django's loaddata on the smallest size when available. @default true */
  django?: boolean;
  /** The userport CLI to run (`<node> <it> import users ...`). @default bin/userport.js of this package */
  userportBin?: string;
  /** Kill an import still running after this many seconds and record it as not finished. @default no limit */
  importTimeoutSeconds?: number;
  /** Generator collision rate (see GenerateOptions.collisionRate). @default the generator's default */
  collisionRate?: number;
  /** Measure `userport export users` on every size, not only the largest. @default false */
  exportAll?: boolean;
  /** The scenarios to run after the sizes (issue #11 target 3). @default every scenario */
  scenarios?: ScenarioName[];
  /** Users per scenario export. @default DEFAULT_SCENARIO_USERS */
  scenarioUsers?: number;
  /** Progress lines. @default nothing */
  log?: (line: string) => void;
}

/** 1M users is reachable with `--sizes 10000,100000,1000000`; by default the run fits in 10 minutes. */
export const DEFAULT_SIZES = [10_000, 100_000];
export const DEFAULT_SCENARIO_USERS = 50_000;

function machineInfo(postgres: string): MachineInfo {
  const cpus = os.cpus();
  return {
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    cpus: cpus.length,
    memoryBytes: os.totalmem(),
    node: process.versions.node,
    postgres,
  };
}

/** The parse floor in its own Node process, so its peak RSS is comparable with the import's. */
async function measureParseFloor(file: string): Promise<{ floor: SizeResult['parseFloor']; records: number | null }> {
  const mod = pathToFileURL(path.join(PACKAGE_ROOT, 'dist', 'tools', 'bench', 'parse-floor.js')).href;
  const script = `const { parseFloor } = await import(${JSON.stringify(mod)}); ` +
    'process.stdout.write(JSON.stringify(await parseFloor(process.argv[1])));';
  const run = await runMeasured(process.execPath, ['--input-type=module', '-e', script, file]);
  if (run.code !== 0) return { floor: { skipped: `parse floor failed: ${tail(run.stderr)}` }, records: null };
  const r = JSON.parse(run.stdout) as { seconds: number; bytes: number; records: number };
  // The process's own time, not the wall time of the child: Node's startup is not parsing.
  return {
    floor: { seconds: r.seconds, recordsPerSec: r.records / r.seconds, mbPerSec: r.bytes / MB / r.seconds, peakRssBytes: run.peakRssBytes },
    records: r.records,
  };
}

interface EncryptionKit {
  encrypt(file: string, out: string): Promise<void>;
  privateKeyFile: string;
}

/** A working encryptor from lib/encrypt.ts, or the reason there is none. */
async function encryptionKit(workDir: string): Promise<EncryptionKit | Skipped> {
  let mod: Record<string, unknown>;
  try {
    mod = { ...(await import('../../lib/decrypt.js')), ...(await import('../../lib/encrypt.js')) } as Record<string, unknown>;
  } catch (err) {
    return { skipped: `lib/decrypt.ts or lib/encrypt.ts does not load: ${(err as Error).message}` };
  }
  const encryptExport = mod.encryptExport;
  const openDecryptedSource = mod.openDecryptedSource;
  const createLocalKeyUnwrapper = mod.createLocalKeyUnwrapper;
  if (typeof encryptExport !== 'function' || typeof openDecryptedSource !== 'function' || typeof createLocalKeyUnwrapper !== 'function') {
    return { skipped: 'lib/encrypt.ts and lib/decrypt.ts do not export encryptExport, openDecryptedSource and createLocalKeyUnwrapper yet (the crypto branch is not merged)' };
  }
  const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const publicKeyPem = publicKey.export({ type: 'spki', format: 'pem' });
  const privateKeyPem = privateKey.export({ type: 'pkcs8', format: 'pem' });
  const privateKeyFile = path.join(workDir, 'bench-key.pem');
  fs.writeFileSync(privateKeyFile, privateKeyPem, { mode: 0o600 });
  const encrypt = async (file: string, out: string) => {
    await (encryptExport as (i: { path: string }, o: NodeJS.WritableStream, opts: { publicKeyPem: string | Buffer }) => Promise<void>)(
      { path: file }, fs.createWriteStream(out), { publicKeyPem });
  };
  // Probe the round trip on a tiny export: a contract that only throws "unavailable" is not working.
  try {
    const probe = path.join(workDir, 'probe.json');
    fs.writeFileSync(probe, '[]');
    await encrypt(probe, `${probe}.tar`);
    const unwrapper = (createLocalKeyUnwrapper as (o: { privateKeyPem: string | Buffer }) => unknown)({ privateKeyPem });
    const src = await (openDecryptedSource as (i: { path: string }, o: { unwrapper: unknown }) => Promise<{ stream: NodeJS.ReadableStream }>)(
      { path: `${probe}.tar` }, { unwrapper });
    let text = '';
    for await (const c of src.stream) text += String(c);
    if (text !== '[]') return { skipped: `lib/decrypt.ts round trip gave ${JSON.stringify(text.slice(0, 20))}, not "[]"` };
  } catch (err) {
    return { skipped: `lib/decrypt.ts does not work yet: ${(err as Error).message}` };
  }
  return { encrypt, privateKeyFile };
}

/**
 * Whether the CLI's `import users --help` lists `--bulk-load` (the switch to the general path,
 * once a faster path into empty tables exists). The general-path row is measured only then.
 */
export function cliHasBulkLoad(runner: ImportRunner | Skipped): boolean {
  if (isSkipped(runner) || runner.kind !== 'cli') return false;
  const r = spawnSync(process.execPath, [runner.bin, 'import', 'users', '--help'], { encoding: 'utf8', timeout: 30_000 });
  return /--bulk-load\b/.test(`${r.stdout ?? ''}${r.stderr ?? ''}`);
}

function validate(o: BenchOptions): Required<Omit<BenchOptions, 'workDir' | 'log' | 'userportBin' | 'importTimeoutSeconds' | 'collisionRate' | 'encryptedSizes'>> {
  const sizes = o.sizes ?? DEFAULT_SIZES;
  if (!Array.isArray(sizes) || sizes.length === 0 || sizes.some((n) => !Number.isInteger(n) || n < 1)) {
    throw new OptionError(`sizes must be a non-empty list of integers >= 1, got ${JSON.stringify(sizes)}`);
  }
  if (typeof o.serverUrl !== 'string' || !/^postgres(ql)?:\/\//.test(o.serverUrl)) {
    throw new OptionError(`serverUrl must be a postgresql:// URL, got ${JSON.stringify(o.serverUrl)}`);
  }
  if (o.importTimeoutSeconds !== undefined && !(o.importTimeoutSeconds > 0)) {
    throw new OptionError(`importTimeoutSeconds must be a number > 0, got ${String(o.importTimeoutSeconds)}`);
  }
  const scenarioUsers = o.scenarioUsers ?? DEFAULT_SCENARIO_USERS;
  if (!Number.isInteger(scenarioUsers) || scenarioUsers < 2) throw new OptionError(`scenarioUsers must be an integer >= 2, got ${String(scenarioUsers)}`);
  const scenarios = o.scenarios ?? (Object.keys(SCENARIOS) as ScenarioName[]);
  if (!Array.isArray(scenarios) || scenarios.some((n) => !(n in SCENARIOS))) throw new OptionError(`scenarios must be names of ${Object.keys(SCENARIOS).join(', ')}, got ${JSON.stringify(scenarios)}`);
  return {
    sizes: [...sizes].sort((a, b) => a - b),
    serverUrl: o.serverUrl,
    seed: o.seed ?? 1,
    keep: o.keep ?? false,
    smoke: o.smoke ?? false,
    encrypted: o.encrypted ?? false,
    django: o.django ?? true,
    exportAll: o.exportAll ?? false,
    scenarios,
    scenarioUsers,
  };
}

/** Runs the benchmark. Never throws for a measurement that cannot be taken: it is recorded as skipped. */
export async function runBench(options: BenchOptions): Promise<BenchResults> {
  const o = validate(options);
  const log = options.log ?? (() => undefined);
  const startedAt = new Date();
  const started = process.hrtime.bigint();
  const ownWorkDir = options.workDir === undefined;
  const workDir = options.workDir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'userport-bench-'));
  fs.mkdirSync(workDir, { recursive: true });
  const runner = importRunner(options.userportBin);
  const machine = machineInfo(await serverVersion(o.serverUrl));
  const kit = o.encrypted ? await encryptionKit(workDir) : { skipped: 'not requested (--encrypted)' };
  if (o.encrypted && isSkipped(kit)) log(`encrypted input: skipped: ${kit.skipped}`);
  const djangoWhyNot = o.django ? djangoUnavailable() : 'not requested';
  let django: PeerResult | Skipped = { skipped: djangoWhyNot ?? 'not run' };
  const tag = `${process.pid}`;
  const sizes: SizeResult[] = [];
  const timeout = options.importTimeoutSeconds ? { timeoutSeconds: options.importTimeoutSeconds } : {};
  const bulkLoad = cliHasBulkLoad(runner);
  const meter = await serverCpuMeter(o.serverUrl);
  if (isSkipped(meter)) log(`PostgreSQL CPU time: not measured: ${meter.skipped}`);
  const largest = o.sizes[o.sizes.length - 1]!;
  const exportSizes = o.exportAll ? o.sizes : [largest];

  for (const users of o.sizes) {
    const file = path.join(workDir, `users-${users}.json`);
    log(`${users} users: generating ${file}`);
    const gen = await generateExport(file, { users, seed: o.seed, ...(options.collisionRate === undefined ? {} : { collisionRate: options.collisionRate }) });
    const records = Object.values(gen.counts.records).reduce((a, b) => a + b, 0);
    const bytes = gen.counts.bytes;
    log(`${users} users: ${records} records, ${(bytes / MB).toFixed(0)} MB in ${gen.seconds.toFixed(1)} s; parse floor`);
    const { floor: parseFloor, records: parsed } = await measureParseFloor(file);

    let userport: ImportMeasurement | Skipped;
    const importDb = `bench_import_${users}_${tag}`;
    const copyDb = `bench_copy_${users}_${tag}`;
    if (isSkipped(runner)) userport = runner;
    else {
      log(`${users} users: userport import (${runner.kind})`);
      userport = await runImport(runner, file, await freshDatabase(o.serverUrl, importDb), { records, bytes, meter, ...timeout });
      if (isSkipped(userport)) log(`${users} users: ${userport.skipped}`);
    }

    let copyFloor: SizeResult['copyFloor'] = { skipped: 'needs the rows of a userport import' };
    let bareFloor: SizeResult['bareFloor'] = { skipped: 'needs the rows of a userport import' };
    const checks: Check[] = [];
    checks.push(countsCheck('parse floor found every generated record', records, parsed));
    if (!isSkipped(runner)) checks.push(countsCheck('userport import finished', 'finished', isSkipped(userport) ? userport.skipped : 'finished'));
    if (!isSkipped(userport)) {
      log(`${users} users: COPY floor`);
      const dumps = await dumpTables(databaseUrl(o.serverUrl, importDb), path.join(workDir, `copy-${users}`));
      const copyUrl = await freshDatabase(o.serverUrl, copyDb);
      const { result: loaded, cpu } = await withCpu(meter, () => loadTables(copyUrl, dumps));
      const rowsTotal = Object.values(loaded.rows).reduce((a, b) => a + b, 0);
      copyFloor = {
        seconds: loaded.seconds,
        rowsPerSec: rowsTotal / loaded.seconds,
        recordsPerSec: records / loaded.seconds,
        rows: loaded.rows,
        tableSeconds: loaded.tableSeconds,
        copyBytes: Object.values(loaded.bytes).reduce((a, b) => a + b, 0),
        cpu,
      };
      const expected = expectedRows(gen.counts);
      for (const t of IMPORTED_TABLES) checks.push(countsCheck(`${t} rows`, expected[t], userport.rows[t]));
      checks.push(countsCheck('COPY floor rows equal userport rows', userport.rows, loaded.rows));
      if (!o.keep) await dropDatabase(o.serverUrl, copyDb);
      log(`${users} users: bare floor (COPY into tables without indexes and constraints, then build them)`);
      const bareDb = `bench_bare_${users}_${tag}`;
      const bareUrl = await freshDatabase(o.serverUrl, bareDb);
      const { result: bare, cpu: bareCpu } = await withCpu(meter, () => loadTablesBare(bareUrl, dumps));
      bareFloor = { ...bare, cpu: bareCpu };
      checks.push(countsCheck('bare floor rows equal userport rows', userport.rows, bare.rows));
      if (!o.keep) await dropDatabase(o.serverUrl, bareDb);
      const renamed = (userport.summary as { models?: Record<string, { renamed?: number }> } | null)?.models?.['sentry.user']?.renamed;
      if (renamed !== undefined) checks.push(countsCheck('renamed users equal case-insensitive username collisions', gen.counts.usernameCollisions, renamed));
      if (!o.keep) fs.rmSync(path.join(workDir, `copy-${users}`), { recursive: true, force: true });
    }

    // issue #10: the other half of a migration, measured on the database the import just wrote.
    let exported: SizeResult['export'] = exportSizes.includes(users) ? { skipped: 'needs the userport import (through the CLI)' }
      : { skipped: 'measured on the largest size only (--export for every size)' };
    if (!isSkipped(runner) && runner.kind === 'cli' && !isSkipped(userport) && exportSizes.includes(users)) {
      log(`${users} users: userport export, then the COPY TO floor`);
      exported = await measureExport(shebangNodeFlags(runner.bin), runner.bin, databaseUrl(o.serverUrl, importDb), path.join(workDir, `export-${users}.json`), o.keep);
      if (!isSkipped(exported)) checks.push(countsCheck('export wrote every row of the four tables', exported.copyToFloor.rows, exported.records));
      else log(`${users} users: export ${exported.skipped}`);
    }

    // The general path: the same import with the empty-target fast path switched off.
    let generalPath: SizeResult['generalPath'] = { skipped: 'the CLI has no --bulk-load (import users --help)' };
    if (bulkLoad && !isSkipped(runner)) {
      log(`${users} users: userport import --bulk-load off (the general path)`);
      const generalDb = `bench_general_${users}_${tag}`;
      generalPath = await runImport(runner, file, await freshDatabase(o.serverUrl, generalDb), { records, bytes, args: ['--bulk-load', 'off'], meter, ...timeout });
      checks.push(countsCheck('general path (--bulk-load off) finished', 'finished', isSkipped(generalPath) ? generalPath.skipped : 'finished'));
      if (!isSkipped(generalPath) && !isSkipped(userport)) checks.push(countsCheck('general path rows equal userport rows', userport.rows, generalPath.rows));
      if (!o.keep) await dropDatabase(o.serverUrl, generalDb);
    }

    const encryptThis = options.encryptedSizes === undefined || options.encryptedSizes.includes(users);
    let encrypted: SizeResult['encrypted'] = isSkipped(kit) ? kit : !encryptThis ? { skipped: 'size not in --encrypted-sizes' } : { skipped: 'needs the userport import' };
    if (!isSkipped(kit) && !isSkipped(runner) && encryptThis) {
      const tar = `${file}.tar`;
      log(`${users} users: encrypting, then importing the encrypted export`);
      const t0 = process.hrtime.bigint();
      await kit.encrypt(file, tar);
      const encryptSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
      const encDb = `bench_enc_${users}_${tag}`;
      const m = await runImport(runner, tar, await freshDatabase(o.serverUrl, encDb), { privateKeyFile: kit.privateKeyFile, records, bytes, ...timeout });
      encrypted = isSkipped(m) ? m : { ...m, tarBytes: fs.statSync(tar).size, encryptSeconds };
      if (!isSkipped(m)) checks.push(countsCheck('encrypted import rows equal plain import rows', isSkipped(userport) ? null : userport.rows, m.rows));
      if (!o.keep) { fs.rmSync(tar, { force: true }); await dropDatabase(o.serverUrl, encDb); }
    }

    if (o.django && !djangoWhyNot && users === o.sizes[0]) {
      log(`${users} users: Django loaddata peer`);
      try {
        const d = await runDjangoLoaddata(file, o.serverUrl, `bench_django_${tag}`);
        django = {
          name: 'Django loaddata', version: d.djangoVersion, users, records, objects: d.objects,
          seconds: d.run.seconds, recordsPerSec: records / d.run.seconds, peakRssBytes: d.run.peakRssBytes,
          note: 'loaddata --ignorenonexistent (the peer model lacks is_unclaimed); python startup included; tables created before timing',
        };
        checks.push(countsCheck('Django loaded every record', records, d.objects));
      } catch (err) {
        django = { skipped: (err as Error).message };
      }
      if (!o.keep) await dropDatabase(o.serverUrl, `bench_django_${tag}`);
    }

    const ratio = (a: { seconds: number } | Skipped, b: { seconds: number } | Skipped) =>
      (isSkipped(a) || isSkipped(b) ? null : a.seconds / b.seconds);
    sizes.push({
      users, records, recordsByModel: gen.counts.records, bytes,
      generate: { seconds: gen.seconds, mbPerSec: bytes / MB / gen.seconds },
      userport, copyFloor, parseFloor,
      ratioToCopyFloor: ratio(userport, copyFloor),
      ratioToParseFloor: ratio(userport, parseFloor),
      bareFloor, ratioBareToCopyFloor: ratio(bareFloor, copyFloor),
      generalPath, ratioGeneralToCopyFloor: ratio(generalPath, copyFloor),
      encrypted, export: exported, checks,
    });
    if (!o.keep) {
      fs.rmSync(file, { force: true });
      await dropDatabase(o.serverUrl, importDb);
      await dropDatabase(o.serverUrl, copyDb);
    }
  }
  let scenarios: ScenarioResult[] = [];
  if (o.scenarios.length) {
    if (isSkipped(runner)) log(`scenarios: skipped: ${runner.skipped}`);
    else {
      scenarios = await runScenarios({
        serverUrl: o.serverUrl, workDir, runner, users: o.scenarioUsers, seed: o.seed, keep: o.keep, tag, log,
        ...(options.importTimeoutSeconds ? { timeoutSeconds: options.importTimeoutSeconds } : {}),
      }, o.scenarios);
    }
  }
  if (!o.keep && ownWorkDir) fs.rmSync(workDir, { recursive: true, force: true });
  else if (!o.keep) fs.rmSync(path.join(workDir, 'bench-key.pem'), { force: true });
  const finishedAt = new Date();
  return {
    version: 2,
    startedAt: startedAt.toISOString(),
    finishedAt: finishedAt.toISOString(),
    seconds: Number(process.hrtime.bigint() - started) / 1e9,
    machine,
    options: {
      sizes: o.sizes, seed: o.seed, smoke: o.smoke, encrypted: o.encrypted,
      collisionRate: options.collisionRate ?? DEFAULT_COLLISION_RATE, importTimeoutSeconds: options.importTimeoutSeconds ?? null,
      encryptedSizes: o.encrypted ? (options.encryptedSizes ?? o.sizes) : [],
      exportSizes, scenarios: o.scenarios, scenarioUsers: o.scenarioUsers,
    },
    sizes,
    scenarios,
    peers: { django },
  };
}
