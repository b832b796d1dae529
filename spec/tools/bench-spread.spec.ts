/**
 * `npm run bench -- --spread DIR,DIR,..` (tools/bench/spread.ts): issue #23's ratios (COPY floor
 * time / userport time) and peak RSS of several runs, as median and range.
 */
import fs from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { main as benchMain } from '../../pipelines/bench.js';
import type { BenchResults } from '../../tools/bench/results.js';
import { formatSpread, readRuns, spreadSeries } from '../../tools/bench/spread.js';
import { tmpFolder } from '../helpers/setup.js';

/** A run's results with what the spread reads: one size, one scenario, the Django peer. */
function run(userportS: number, floorS: number, rssMb: number, djangoRate: number): BenchResults {
  const measurement = (seconds: number, records: number) => ({ seconds, recordsPerSec: records / seconds, peakRssBytes: rssMb * 1e6 });
  return {
    sizes: [{ users: 100000, userport: measurement(userportS, 500000), ratioToCopyFloor: userportS / floorS, ratioGeneralToCopyFloor: 2 * userportS / floorS }],
    scenarios: [{ name: 'existing', users: 100000, userport: measurement(2 * userportS, 500000), ratioToCopyFloor: 2 * userportS / floorS }],
    peers: { django: { users: 100000, recordsPerSec: djangoRate } },
  } as unknown as BenchResults;
}

describe('benchmark spread', () => {
  const runs = [run(10, 8, 120, 1000), run(12, 9, 110, 1000), run(11, 11, 130, 2000)];

  it('gives each figure the runs share as median, lowest and highest, ratios as floor / userport', () => {
    const series = Object.fromEntries(spreadSeries(runs).map((s) => [s.label, s.values]));
    expect(series['100,000 users, empty target: COPY floor / userport']).to.deep.equal([0.8, 0.75, 1]);
    expect(series['100,000 users, general path: COPY floor / userport']).to.deep.equal([0.4, 0.375, 0.5]);
    expect(series['scenario existing (100,000 users): COPY floor / userport']).to.deep.equal([0.4, 0.375, 0.5]);
    expect(series['100,000 users, peak RSS']).to.deep.equal([120e6, 110e6, 130e6]);
    expect(series['userport / Django loaddata, records per second (100,000 users)']).to.deep.equal([50, 500000 / 12 / 1000, 500000 / 11 / 2000]);
    const table = formatSpread(runs).split('\n');
    expect(table[0]).to.match(/^figure\s+runs\s+median\s+lowest\s+highest$/);
    expect(table.find((l) => l.startsWith('100,000 users, empty target'))).to.match(/\s3\s+0\.80\s+0\.75\s+1\.00$/);
    expect(table.find((l) => l.startsWith('100,000 users, peak RSS'))).to.match(/\s3\s+120 MB\s+110 MB\s+130 MB$/);
  });

  it('reads the runs\' folders from the command line, prints the table and writes spread.md with --out', async () => {
    const dirs = runs.map((r, i) => {
      const d = tmpFolder(`userport-spread-${i}-`);
      fs.writeFileSync(path.join(d, 'results.json'), JSON.stringify(r));
      return d;
    });
    expect(readRuns(dirs)).to.deep.equal(JSON.parse(JSON.stringify(runs)));
    // A folder that does not exist yet is made, as a run's --out is.
    const out = path.join(tmpFolder('userport-spread-out-'), 'spread', 'here');
    const write = process.stdout.write;
    let printed = '';
    process.stdout.write = ((chunk: string) => { printed += chunk; return true; }) as typeof process.stdout.write;
    let code: number;
    try { code = await benchMain(['--spread', dirs.join(','), '--out', out]); } finally { process.stdout.write = write; }
    expect(code).to.equal(0);
    expect(printed).to.contain('3 runs: ').and.to.contain('0.80');
    expect(fs.readFileSync(path.join(out, 'spread.md'), 'utf8')).to.equal(printed);
  });
});
