/**
 * `npm run generate -- --users N [--seed S] [--indent 2] [--out FILE|-]`: writes a deterministic,
 * realistic Sentry user export (see tools/generate.ts). Wiring only.
 */
import fs from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { pathToFileURL } from 'node:url';
import { createExportGenerator } from '../tools/generate.js';
import { UserportError } from '../lib/errors.js';
import { exitCodeFor, formatError, parseCommand, type FlagSpecs, type FlagValues } from './cli-support.js';

const USAGE = 'usage: node dist/pipelines/generate.js --users N [--seed S] [--indent 2] [--out FILE|-] ' +
  '[--out-of-scope-rate R] [--collision-rate R] [--interleaved]';

function num(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n)) throw new UserportError('USERPORT_OPTION_INVALID', `--${name} must be a number, got "${v}"`);
  return n;
}

const FLAGS = {
  users: { type: 'string' },
  seed: { type: 'string' },
  indent: { type: 'string' },
  out: { type: 'string' },
  'out-of-scope-rate': { type: 'string' },
  'collision-rate': { type: 'string' },
  interleaved: { type: 'boolean' },
} as const satisfies FlagSpecs;

export async function main(argv: string[]): Promise<number> {
  let values: FlagValues<typeof FLAGS>;
  try {
    // The CLI's parser: its flag spellings, and a typo gets the CLI's "did you mean" and exit 2.
    values = parseCommand(argv, FLAGS, 'generate', false).values as FlagValues<typeof FLAGS>;
  } catch (err) {
    process.stderr.write(`${formatError(err)}\n${USAGE}\n`);
    return exitCodeFor(err);
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const outFile = values.out ?? '-';
  try {
    if (values.users === undefined) throw new UserportError('USERPORT_OPTION_INVALID', '--users is required');
    const gen = createExportGenerator({
      users: num('users', values.users)!,
      seed: num('seed', values.seed),
      indent: num('indent', values.indent),
      outOfScopeRate: num('out-of-scope-rate', values['out-of-scope-rate']),
      collisionRate: num('collision-rate', values['collision-rate']),
      outOfScopeLayout: values.interleaved ? 'interleaved' : 'runs',
    });
    const out = outFile === '-' ? process.stdout : fs.createWriteStream(outFile);
    await pipeline(gen, out);
    if (outFile !== '-') {
      process.stderr.write(`${outFile}: ${gen.counts.bytes} bytes, ${JSON.stringify(gen.counts.records)}\n`);
    }
    return 0;
  } catch (err) {
    // `generate ... | head`: the reader left, which is not a failure of ours.
    if ((err as { code?: string }).code === 'EPIPE') return 0;
    if (err instanceof UserportError) {
      process.stderr.write(`userport generate: ${err.describe()}\n`);
      return 2;
    }
    throw err;
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (err) => { console.error(err); process.exitCode = 1; });
}
