/**
 * The long fuzz run: `npm run fuzz [-- --iterations N] [--imports N] [--seed S] [--database-url URL]`.
 * Stage-level cases by the hundred thousand, then full imports into PostgreSQL (the given one, or
 * an embedded server started in a temp folder for the run). Failing inputs are saved in the temp
 * folder; the exit code is 1 when there was any.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { startEmbedded, stopEmbedded } from '../../lib/db/embedded.js';
import { createKnex, migrate } from '../../lib/db/knex.js';
import { fuzzImports, fuzzStages } from './fuzz-core.js';

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      iterations: { type: 'string', default: '100000' },
      imports: { type: 'string', default: '500' },
      seed: { type: 'string', default: String(Date.now() % 1000000) },
      'database-url': { type: 'string' },
    },
  });
  const iterations = Number(values.iterations);
  const imports = Number(values.imports);
  const seed = Number(values.seed);
  process.stdout.write(`userport fuzz: seed ${seed}, ${iterations} stage-level cases, ${imports} imports\n`);
  const started = Date.now();
  const stages = await fuzzStages(seed, iterations, (i) => process.stdout.write(`\r  stages: ${i} cases`));
  process.stdout.write(`\r  stages: ${stages.runs} cases, ${stages.successes} accepted, ${stages.failures.length} failures ` +
    `(${((Date.now() - started) / 1000).toFixed(0)}s)\n  codes: ${JSON.stringify(stages.codes)}\n`);
  for (const f of stages.failures) process.stdout.write(`  FAIL #${f.iteration}: ${f.problem}\n    input: ${f.file}\n`);

  let failures = stages.failures.length;
  if (imports > 0) {
    let url = values['database-url'] ?? process.env.DATABASE_URL;
    let dir: string | undefined;
    if (!url) {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), 'userport-fuzz-pg-'));
      fs.chmodSync(dir, 0o755);
      url = (await startEmbedded({ dir })).url;
    }
    try {
      const knex = createKnex(url, 2);
      await migrate(knex);
      await knex.destroy();
      const t = Date.now();
      const full = await fuzzImports(seed + 1, imports, url);
      process.stdout.write(`  imports: ${full.runs} cases, ${full.successes} succeeded, ${full.failures.length} failures ` +
        `(${((Date.now() - t) / 1000).toFixed(0)}s)\n  codes: ${JSON.stringify(full.codes)}\n`);
      for (const f of full.failures) process.stdout.write(`  FAIL #${f.iteration}: ${f.problem}\n    input: ${f.file}\n`);
      failures += full.failures.length;
    } finally {
      if (dir) {
        await stopEmbedded(dir, 'immediate').catch(() => undefined);
        fs.rmSync(dir, { recursive: true, force: true });
      }
    }
  }
  return failures ? 1 : 0;
}

main().then((code) => { process.exitCode = code; }, (err) => { console.error(err); process.exitCode = 1; });
