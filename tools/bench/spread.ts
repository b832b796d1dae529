/**
 * The spread of several benchmark runs (`npm run bench -- --spread DIR,DIR,DIR`): issue #23's
 * ratios (COPY floor time / userport time, so above 1 is faster than the floor) and peak RSS,
 * each as median and range over the runs' results.json, for every size and scenario that the
 * runs share. Single ratios on a shared machine move by ±25%: the README quotes these.
 */
import fs from 'node:fs';
import path from 'node:path';
import { alignTable } from './report.js';
import { isSkipped, type BenchResults } from './results.js';

interface Series { label: string; values: number[]; format: (v: number) => string }

const ratio = (v: number) => v.toFixed(2);
const mb = (v: number) => `${Math.round(v / 1e6)} MB`;
const times = (v: number) => `${v.toFixed(1)}x`;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Reads `<dir>/results.json` of each folder. */
export function readRuns(dirs: readonly string[]): BenchResults[] {
  return dirs.map((d) => JSON.parse(fs.readFileSync(path.join(d, 'results.json'), 'utf8')) as BenchResults);
}

/** The series of every figure the runs share, in a stable order. */
export function spreadSeries(runs: readonly BenchResults[]): Series[] {
  const series = new Map<string, Series>();
  const add = (label: string, format: Series['format'], v: number | null | undefined) => {
    if (v === undefined || v === null || !Number.isFinite(v)) return;
    const s = series.get(label) ?? { label, values: [], format };
    s.values.push(v);
    series.set(label, s);
  };
  for (const r of runs) {
    for (const s of r.sizes) {
      const n = s.users.toLocaleString('en-US');
      add(`${n} users, empty target: COPY floor / userport`, ratio, s.ratioToCopyFloor ? 1 / s.ratioToCopyFloor : null);
      add(`${n} users, general path: COPY floor / userport`, ratio, s.ratioGeneralToCopyFloor ? 1 / s.ratioGeneralToCopyFloor : null);
      if (!isSkipped(s.userport)) add(`${n} users, peak RSS`, mb, s.userport.peakRssBytes ?? null);
    }
    for (const s of r.scenarios) {
      if (isSkipped(s.userport) || !s.ratioToCopyFloor) continue;
      const n = s.users.toLocaleString('en-US');
      add(`scenario ${s.name} (${n} users): COPY floor / userport`, ratio, 1 / s.ratioToCopyFloor);
      add(`scenario ${s.name} (${n} users): peak RSS`, mb, s.userport.peakRssBytes ?? null);
    }
    const django = r.peers?.django;
    if (django && !isSkipped(django)) {
      const same = r.sizes.find((s) => s.users === django.users);
      if (same && !isSkipped(same.userport)) add(`userport / Django loaddata, records per second (${django.users.toLocaleString('en-US')} users)`, times, same.userport.recordsPerSec / django.recordsPerSec);
      const largest = r.sizes.at(-1);
      if (largest && largest !== same && !isSkipped(largest.userport)) {
        add(`userport at ${largest.users.toLocaleString('en-US')} users / Django loaddata, records per second`, times, largest.userport.recordsPerSec / django.recordsPerSec);
      }
    }
  }
  return [...series.values()];
}

/** The spread table: figure, runs, median, lowest, highest. */
export function formatSpread(runs: readonly BenchResults[]): string {
  const rows = [['figure', 'runs', 'median', 'lowest', 'highest']];
  for (const s of spreadSeries(runs)) {
    rows.push([s.label, String(s.values.length), s.format(median(s.values)), s.format(Math.min(...s.values)), s.format(Math.max(...s.values))]);
  }
  return alignTable(rows);
}
