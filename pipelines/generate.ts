/**
 * `npm run generate -- --users N [--seed S] [--indent 2] [--out FILE|-]`: writes a deterministic,
 * realistic Sentry user export (see tools/generate.ts). Wiring only.
 */
import fs from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';
import { createExportGenerator } from '../tools/generate.js';
import { UserportError } from '../lib/errors.js';

const USAGE = 'usage: node dist/pipelines/generate.js --users N [--seed S] [--indent 2] [--out FILE|-] ' +
  '[--out-of-scope-rate R] [--collision-rate R] [--interleaved]';

function num(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n)) throw new UserportError('USERPORT_OPTION_INVALID', `--${name} must be a number, got "${v}"`);
  return n;
}

export async function main(argv: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        users: { type: 'string' },
        seed: { type: 'string' },
        indent: { type: 'string' },
        out: { type: 'string', default: '-' },
        'out-of-scope-rate': { type: 'string' },
        'collision-rate': { type: 'string' },
        interleaved: { type: 'boolean', default: false },
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
    const out = values.out === '-' ? process.stdout : fs.createWriteStream(values.out!);
    await pipeline(gen, out);
    if (values.out !== '-') {
      process.stderr.write(`${values.out}: ${gen.counts.bytes} bytes, ${JSON.stringify(gen.counts.records)}\n`);
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
