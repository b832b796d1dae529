/**
 * `npm run bench [-- --sizes 10000,100000,1000000] [--keep] [--encrypted] [--smoke]
 *  [--database-url URL] [--out DIR] [--work-dir DIR] [--no-django] [--import-timeout SEC] [--collision-rate R]
 *  [--encrypted-sizes N,M]`
 *
 * Measures userport against the COPY floor, the parse floor and Django's loaddata (tools/bench/),
 * prints a table and writes `<out>/results.json` and `<out>/chart.svg`. Without --database-url it
 * runs its own embedded PostgreSQL in a temporary folder and removes it afterwards. Wiring only.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { startEmbedded, stopEmbedded } from '../lib/db/embedded.js';
import { UserportError } from '../lib/errors.js';
import { renderChart, formatTable } from '../tools/bench/report.js';
import { DEFAULT_SIZES, runBench } from '../tools/bench/run.js';

const USAGE = 'usage: npm run bench -- [--sizes 10000,100000,1000000] [--seed N] [--keep] [--encrypted] [--smoke] ' +
  '[--database-url URL] [--out DIR] [--work-dir DIR] [--no-django] [--import-timeout SEC] [--collision-rate R] [--encrypted-sizes N,M]';
const SMOKE_SIZES = [500];
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

export async function main(argv: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        sizes: { type: 'string' },
        seed: { type: 'string', default: '1' },
        keep: { type: 'boolean', default: false },
        encrypted: { type: 'boolean', default: false },
        smoke: { type: 'boolean', default: false },
        'database-url': { type: 'string' },
        out: { type: 'string' },
        'work-dir': { type: 'string' },
        'no-django': { type: 'boolean', default: false },
        'import-timeout': { type: 'string' },
        'collision-rate': { type: 'string' },
        'encrypted-sizes': { type: 'string' },
        help: { type: 'boolean', default: false },
      },
      strict: true,
    }));
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n${USAGE}\n`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
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
      sizes, serverUrl, workDir, seed: Number(values.seed), keep: values.keep, smoke: values.smoke,
      encrypted: values.encrypted, django: !values['no-django'],
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
    const failed = results.sizes.some((s) => s.checks.some((c) => !c.ok));
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

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (err) => { console.error(err); process.exitCode = 1; });
}
