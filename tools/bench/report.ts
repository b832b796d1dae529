/**
 * Human-readable output of a benchmark run: the text table printed at the end, and the SVG chart
 * (throughput and peak RSS against export size), hand-written with no dependency.
 */
import { isSkipped, SCENARIOS, type BenchResults, type CpuSeconds, type SizeResult } from './results.js';

const MB = 1e6;

function fmt(n: number | null | undefined, digits = 1): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return '-';
  return n.toFixed(digits);
}

function thousands(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return '-';
  return Math.round(n).toLocaleString('en-US');
}

function mb(bytes: number | null | undefined): string {
  return bytes === null || bytes === undefined ? '-' : fmt(bytes / MB, 0);
}

/** Pads cells into aligned columns; the first column left-aligned, the rest right-aligned. */
export function alignTable(rows: string[][]): string {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? '').length)));
  return rows.map((r) => r.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join('  ')).join('\n');
}

/** The table printed at the end of a run. */
export function formatTable(results: BenchResults): string {
  const general = results.sizes.some((s) => s.generalPath && !isSkipped(s.generalPath));
  const head = ['users', 'records', 'MB', 'userport s', 'rec/s', 'MB/s', 'RSS MB', 'COPY floor s', 'x COPY', 'bare floor s', 'bare/COPY',
    ...(general ? ['general s', 'general x COPY'] : []), 'parse s', 'parse MB/s', 'parse RSS MB'];
  const rows: string[][] = [head];
  for (const s of results.sizes) {
    const u = s.userport;
    const c = s.copyFloor;
    const p = s.parseFloor;
    const b = s.bareFloor ?? { skipped: 'not measured' };
    const g = s.generalPath ?? { skipped: 'not measured' };
    rows.push([
      thousands(s.users), thousands(s.records), mb(s.bytes),
      isSkipped(u) ? 'skipped' : fmt(u.seconds, 2), isSkipped(u) ? '-' : thousands(u.recordsPerSec),
      isSkipped(u) ? '-' : fmt(u.mbPerSec), isSkipped(u) ? '-' : mb(u.peakRssBytes),
      isSkipped(c) ? 'skipped' : fmt(c.seconds, 2), fmt(s.ratioToCopyFloor, 2),
      isSkipped(b) ? 'skipped' : fmt(b.seconds, 2), fmt(s.ratioBareToCopyFloor, 2),
      ...(general ? [isSkipped(g) ? 'skipped' : fmt(g.seconds, 2), fmt(s.ratioGeneralToCopyFloor, 2)] : []),
      isSkipped(p) ? 'skipped' : fmt(p.seconds, 2), isSkipped(p) ? '-' : fmt(p.mbPerSec), isSkipped(p) ? '-' : mb(p.peakRssBytes),
    ]);
  }
  const lines = [alignTable(rows)];
  const cpu = cpuTable(results);
  if (cpu) lines.push('', 'CPU seconds (user + system) of PostgreSQL (pg) and of the client (the importing process; the benchmark for the floors), same runs:', cpu, '');
  for (const s of results.sizes) {
    if (isSkipped(s.userport)) lines.push(`${thousands(s.users)} users: userport skipped: ${s.userport.skipped}`);
    if (isSkipped(s.copyFloor)) lines.push(`${thousands(s.users)} users: COPY floor skipped: ${s.copyFloor.skipped}`);
  }
  const sc = results.scenarios ?? [];
  if (sc.length) {
    const scRows: string[][] = [['scenario', 'users', 'records', 'userport s', 'rec/s', 'RSS MB', 'COPY floor s', 'x COPY', 'checks', 'note']];
    for (const x of sc) {
      const u = x.userport;
      const c = x.copyFloor;
      const failed = x.checks.filter((k) => !k.ok).length;
      const note = x.name === 'resume' && typeof x.details.totalSeconds === 'number'
        ? `killed after ${fmt(x.details.killedAfterSeconds as number, 1)} s; total ${fmt(x.details.totalSeconds, 1)} s`
        : x.name === 'existing' && typeof x.details.importASeconds === 'number' ? `into ${thousands(x.details.usersBefore as number)} users (A took ${fmt(x.details.importASeconds, 1)} s)`
          : isSkipped(u) ? u.skipped : '';
      scRows.push([`${SCENARIOS[x.name].letter}. ${x.title}`, thousands(x.users), thousands(x.records),
        isSkipped(u) ? 'skipped' : fmt(u.seconds, 2), isSkipped(u) ? '-' : thousands(u.recordsPerSec), isSkipped(u) ? '-' : mb(u.peakRssBytes),
        isSkipped(c) ? 'skipped' : fmt(c.seconds, 2), fmt(x.ratioToCopyFloor, 2),
        failed ? `${failed} of ${x.checks.length} failed` : `${x.checks.length} ok`, note]);
    }
    lines.push('', 'scenarios (each against its own COPY floor):', alignTable(scRows), '');
  }
  const exp = results.sizes.filter((s) => s.export !== undefined && !(isSkipped(s.export) && s.export.skipped.startsWith('measured on the largest')));
  if (exp.length) {
    const exportRows: string[][] = [['users', 'records', 'export MB', 'export s', 'rec/s', 'MB/s', 'RSS MB', 'COPY TO s', 'COPY TO MB/s', 'x COPY TO']];
    for (const s of exp) {
      const e = s.export!;
      exportRows.push(isSkipped(e) ? [thousands(s.users), 'skipped', e.skipped, '', '', '', '', '', '', ''] : [
        thousands(s.users), thousands(e.records), mb(e.bytes), fmt(e.seconds, 2), thousands(e.recordsPerSec), fmt(e.mbPerSec),
        mb(e.peakRssBytes), fmt(e.copyToFloor.seconds, 2), fmt(e.copyToFloor.mbPerSec), fmt(e.ratioToCopyToFloor, 2),
      ]);
    }
    lines.push('', 'export (userport export users of the imported database):', alignTable(exportRows), '');
  }
  const enc = results.sizes.filter((s) => !isSkipped(s.encrypted));
  for (const s of enc) {
    const e = s.encrypted as Exclude<SizeResult['encrypted'], { skipped: string }>;
    lines.push(`encrypted ${thousands(s.users)} users: ${fmt(e.seconds, 2)} s, ${thousands(e.recordsPerSec)} rec/s, ` +
      `${fmt(e.mbPerSec)} MB/s of plaintext, peak RSS ${mb(e.peakRssBytes)} MB`);
  }
  if (results.options.encrypted) {
    for (const s of results.sizes) {
      if (isSkipped(s.encrypted)) lines.push(`encrypted ${thousands(s.users)} users: skipped: ${s.encrypted.skipped}`);
    }
  }
  const d = results.peers.django;
  if (isSkipped(d)) lines.push(`Django loaddata peer: skipped: ${d.skipped}`);
  else {
    lines.push(`Django ${d.version} loaddata peer, ${thousands(d.users)} users (${thousands(d.records)} records): ${fmt(d.seconds, 2)} s, ` +
      `${thousands(d.recordsPerSec)} rec/s, peak RSS ${mb(d.peakRssBytes)} MB`);
  }
  const failed = results.sizes.flatMap((s) => s.checks.filter((c) => !c.ok).map((c) => `${thousands(s.users)} users: check ${c.name} failed: expected ${JSON.stringify(c.expected)}, got ${JSON.stringify(c.actual)}`));
  lines.push(...failed);
  lines.push(...sc.flatMap((x) => x.checks.filter((c) => !c.ok).map((c) => `scenario ${x.name}: check ${c.name} failed: expected ${JSON.stringify(c.expected)}, got ${JSON.stringify(c.actual)}`)));
  const m = results.machine;
  lines.push(`machine: ${m.cpus} x ${m.cpuModel}, ${fmt(m.memoryBytes / 1e9, 0)} GB RAM, ${m.os}, Node ${m.node}, PostgreSQL ${m.postgres}; ` +
    `total ${fmt(results.seconds, 0)} s`);
  return lines.join('\n');
}

/**
 * The profile beside the wall times: PostgreSQL's CPU seconds close to a run's wall time mean the
 * server bounded it. Null when no run of the results has CPU figures (older results, a remote server).
 */
export function cpuTable(results: BenchResults): string | null {
  type Measured = { seconds: number; cpu?: CpuSeconds };
  const of = (m: Measured | { skipped: string } | undefined) => (m && !isSkipped(m) && m.cpu ? m as Measured & { cpu: CpuSeconds } : undefined);
  if (!results.sizes.some((s) => of(s.userport) || of(s.copyFloor))) return null;
  const rows: string[][] = [['users', 'userport s', 'pg CPU', 'client CPU', 'COPY floor s', 'pg CPU', 'client CPU', 'bare floor pg CPU', 'general s', 'pg CPU', 'client CPU', 'pg CPU / floor pg CPU']];
  for (const s of results.sizes) {
    const u = of(s.userport);
    const c = of(s.copyFloor);
    const b = of(s.bareFloor);
    const g = of(s.generalPath);
    const workRatio = u?.cpu.server != null && c?.cpu.server ? u.cpu.server / c.cpu.server : null;
    rows.push([
      thousands(s.users),
      fmt(u?.seconds, 2), fmt(u?.cpu.server, 2), fmt(u?.cpu.client, 2),
      fmt(c?.seconds, 2), fmt(c?.cpu.server, 2), fmt(c?.cpu.client, 2),
      fmt(b?.cpu.server, 2),
      fmt(g?.seconds, 2), fmt(g?.cpu.server, 2), fmt(g?.cpu.client, 2),
      fmt(workRatio, 2),
    ]);
  }
  return alignTable(rows);
}

// ---------------------------------------------------------------------------------------------
// SVG chart

interface Series {
  name: string;
  color: string;
  dash?: string;
  points: [number, number][];
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

function logTicks(min: number, max: number): number[] {
  const ticks: number[] = [];
  for (let e = Math.floor(Math.log10(min)); e <= Math.ceil(Math.log10(max)); e++) {
    for (const m of [1, 2, 5]) {
      const v = m * 10 ** e;
      if (v >= min * 0.999 && v <= max * 1.001) ticks.push(v);
    }
  }
  return ticks;
}

function shortNumber(v: number): string {
  if (v >= 1e9) return `${+(v / 1e9).toPrecision(3)}G`;
  if (v >= 1e6) return `${+(v / 1e6).toPrecision(3)}M`;
  if (v >= 1e3) return `${+(v / 1e3).toPrecision(3)}k`;
  return `${+v.toPrecision(3)}`;
}

function panel(x0: number, y0: number, w: number, h: number, title: string, yLabel: string, xs: number[], series: Series[]): string {
  const all = series.flatMap((s) => s.points).filter(([, y]) => y > 0 && Number.isFinite(y));
  const out: string[] = [];
  out.push(`<text x="${x0 + w / 2}" y="${y0 - 12}" text-anchor="middle" font-size="14" font-weight="bold">${esc(title)}</text>`);
  if (all.length === 0 || xs.length === 0) {
    out.push(`<text x="${x0 + w / 2}" y="${y0 + h / 2}" text-anchor="middle" font-size="12">no data</text>`);
    return out.join('\n');
  }
  // Log scales on both axes: sizes span 100x and the series span orders of magnitude.
  const xMin = Math.min(...xs) / 1.5;
  const xMax = Math.max(...xs) * 1.5;
  let yMin = Math.min(...all.map(([, y]) => y));
  let yMax = Math.max(...all.map(([, y]) => y));
  yMin = 10 ** Math.floor(Math.log10(yMin));
  yMax = 10 ** Math.ceil(Math.log10(yMax * 1.01));
  const px = (x: number) => x0 + ((Math.log10(x) - Math.log10(xMin)) / (Math.log10(xMax) - Math.log10(xMin))) * w;
  const py = (y: number) => y0 + h - ((Math.log10(y) - Math.log10(yMin)) / (Math.log10(yMax) - Math.log10(yMin))) * h;
  out.push(`<rect x="${x0}" y="${y0}" width="${w}" height="${h}" fill="none" stroke="#888"/>`);
  for (const t of logTicks(yMin, yMax)) {
    const y = py(t).toFixed(1);
    out.push(`<line x1="${x0}" x2="${x0 + w}" y1="${y}" y2="${y}" stroke="#e4e4e4"/>`);
    out.push(`<text x="${x0 - 6}" y="${y}" text-anchor="end" dominant-baseline="middle" font-size="11">${shortNumber(t)}</text>`);
  }
  for (const x of xs) {
    const X = px(x).toFixed(1);
    out.push(`<line x1="${X}" x2="${X}" y1="${y0}" y2="${y0 + h}" stroke="#e4e4e4"/>`);
    out.push(`<text x="${X}" y="${y0 + h + 16}" text-anchor="middle" font-size="11">${shortNumber(x)}</text>`);
  }
  out.push(`<text x="${x0 + w / 2}" y="${y0 + h + 34}" text-anchor="middle" font-size="12">export size (users)</text>`);
  out.push(`<text transform="translate(${x0 - 48} ${y0 + h / 2}) rotate(-90)" text-anchor="middle" font-size="12">${esc(yLabel)}</text>`);
  series.forEach((s, k) => {
    const pts = s.points.filter(([, y]) => y > 0 && Number.isFinite(y));
    if (pts.length > 1) {
      out.push(`<polyline fill="none" stroke="${s.color}" stroke-width="2"${s.dash ? ` stroke-dasharray="${s.dash}"` : ''} ` +
        `points="${pts.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(' ')}"/>`);
    }
    for (const [x, y] of pts) {
      out.push(`<circle cx="${px(x).toFixed(1)}" cy="${py(y).toFixed(1)}" r="3.5" fill="${s.color}"><title>${esc(s.name)}: ${shortNumber(y)}</title></circle>`);
    }
    // Legend below the axis title, two entries per row: inside the plot it would hide points.
    const lx = x0 + (k % 2) * (w / 2);
    const ly = y0 + h + 54 + Math.floor(k / 2) * 16;
    out.push(`<line x1="${lx}" x2="${lx + 20}" y1="${ly}" y2="${ly}" stroke="${s.color}" stroke-width="2"${s.dash ? ` stroke-dasharray="${s.dash}"` : ''}/>`);
    out.push(`<text x="${lx + 26}" y="${ly}" dominant-baseline="middle" font-size="11">${esc(s.name)}</text>`);
  });
  return out.join('\n');
}

/** The chart: records/s (left) and peak RSS in MB (right) against the number of users. */
export function renderChart(results: BenchResults): string {
  const sizes = results.sizes;
  const xs = sizes.map((s) => s.users);
  const pick = <T>(f: (s: SizeResult) => T | undefined): [number, T][] =>
    sizes.flatMap((s) => { const v = f(s); return v === undefined ? [] : [[s.users, v] as [number, T]]; });
  const u = (s: SizeResult) => (isSkipped(s.userport) ? undefined : s.userport);
  const c = (s: SizeResult) => (isSkipped(s.copyFloor) ? undefined : s.copyFloor);
  const p = (s: SizeResult) => (isSkipped(s.parseFloor) ? undefined : s.parseFloor);
  const e = (s: SizeResult) => (isSkipped(s.encrypted) ? undefined : s.encrypted);
  const d = results.peers.django;
  const throughput: Series[] = [
    { name: 'userport', color: '#1f77b4', points: pick((s) => u(s)?.recordsPerSec) },
    { name: 'COPY floor', color: '#2ca02c', dash: '6 3', points: pick((s) => c(s)?.recordsPerSec) },
    { name: 'parse floor', color: '#ff7f0e', dash: '2 3', points: pick((s) => p(s)?.recordsPerSec) },
  ];
  const rss: Series[] = [
    { name: 'userport', color: '#1f77b4', points: pick((s) => u(s)?.peakRssBytes ?? undefined).map(([x, y]) => [x, y / MB]) },
    { name: 'parse floor', color: '#ff7f0e', dash: '2 3', points: pick((s) => p(s)?.peakRssBytes ?? undefined).map(([x, y]) => [x, y / MB]) },
    { name: 'export file size', color: '#999999', dash: '4 4', points: sizes.map((s) => [s.users, s.bytes / MB]) },
  ];
  if (sizes.some((s) => e(s))) {
    throughput.push({ name: 'userport, encrypted', color: '#9467bd', points: pick((s) => e(s)?.recordsPerSec) });
    rss.push({ name: 'userport, encrypted', color: '#9467bd', points: pick((s) => e(s)?.peakRssBytes ?? undefined).map(([x, y]) => [x, y / MB]) });
  }
  if (!isSkipped(d)) {
    throughput.push({ name: 'Django loaddata', color: '#d62728', points: [[d.users, d.recordsPerSec]] });
    if (d.peakRssBytes) rss.push({ name: 'Django loaddata', color: '#d62728', points: [[d.users, d.peakRssBytes / MB]] });
  }
  const W = 960;
  // Measurements that could not be taken are said under the plots, not silently missing.
  const notes = sizes.flatMap((s) => (isSkipped(s.userport) ? [`userport at ${shortNumber(s.users)} users: ${s.userport.skipped}`] : []));
  const H = 480 + notes.length * 16;
  const m = results.machine;
  const caption = `${m.cpus} x ${m.cpuModel}, PostgreSQL ${m.postgres}, Node ${m.node}; ${results.finishedAt.slice(0, 10)}`;
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    panel(80, 50, 360, 300, 'Throughput (records/s, log)', 'records/s', xs, throughput),
    panel(580, 50, 360, 300, 'Peak RSS (MB, log)', 'MB', xs, rss),
    ...notes.map((n, k) => `<text x="${W / 2}" y="${458 + k * 16}" text-anchor="middle" font-size="11" fill="#b00">${esc(n)}</text>`),
    `<text x="${W / 2}" y="${H - 12}" text-anchor="middle" font-size="11" fill="#555">${esc(caption)}</text>`,
    '</svg>',
    '',
  ].join('\n');
}
