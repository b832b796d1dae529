/**
 * `npm run bench` and `npm run generate` parse their flags with the CLI's parser
 * (pipelines/cli-support.ts): a typo exits 2 with the CLI's "did you mean", --help still prints.
 */
import { expect } from 'chai';
import { main as benchMain } from '../../pipelines/bench.js';
import { main as generateMain } from '../../pipelines/generate.js';

/** Runs `main`, capturing what it writes; resolves to its exit code and output. */
async function captured(main: (argv: string[]) => Promise<number>, argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const write = { out: process.stdout.write, err: process.stderr.write };
  let out = '';
  let err = '';
  process.stdout.write = ((s: string) => { out += s; return true; }) as typeof process.stdout.write;
  process.stderr.write = ((s: string) => { err += s; return true; }) as typeof process.stderr.write;
  try {
    return { code: await main(argv), out, err };
  } finally {
    process.stdout.write = write.out;
    process.stderr.write = write.err;
  }
}

describe('the bench and generate flags', () => {
  for (const [name, main, typo, meant] of [
    ['bench', benchMain, '--smok', '--smoke'],
    ['generate', generateMain, '--seeed', '--seed'],
  ] as const) {
    it(`${name}: a misspelled flag exits 2 with did you mean ${meant}, and the usage`, async () => {
      const r = await captured(main, [typo]);
      expect(r.code).to.equal(2);
      expect(r.err).to.contain(`unknown option ${typo}: did you mean ${meant}?`).and.contain('[USERPORT_OPTION_INVALID]').and.contain('usage:');
    });

    it(`${name}: --help prints the usage and exits 0`, async () => {
      const r = await captured(main, ['--help']);
      expect([r.code, r.out.startsWith('usage:')]).to.deep.equal([0, true]);
    });
  }
});
