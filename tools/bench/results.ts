/**
 * The shape of `bench/results.json`. Sizes are bytes, times seconds, MB are 10^6 bytes.
 * A measurement that could not be taken is `{ skipped: <reason> }`, never silently absent.
 */

import type { BareFloorResult } from './bare-floor.js';

/** CPU seconds of one measured run: the server's and the client's (the importing process, or the benchmark's own for a floor). */
export interface CpuSeconds {
  server: number | null;
  client: number | null;
}

export interface Skipped {
  skipped: string;
}

export interface MachineInfo {
  os: string;
  cpuModel: string;
  cpus: number;
  memoryBytes: number;
  node: string;
  postgres: string;
}

export interface ImportMeasurement {
  seconds: number;
  /** Records in the export (every model) per second. */
  recordsPerSec: number;
  /** Export bytes per second, in MB (10^6). */
  mbPerSec: number;
  /** Peak resident set size of the importing process. */
  peakRssBytes: number | null;
  rssSource: string;
  /**
   * CPU seconds of PostgreSQL (null: not a server on this machine) and of the importing process
   * during the import. Absent in older results and where not measured (the scenarios).
   */
  cpu?: CpuSeconds;
  /** How the import was run. */
  via: string;
  /** Rows in the target tables after the import. */
  rows: Record<string, number>;
  /** The import's `--json` summary, as printed. */
  summary: unknown;
}

/** `userport export users` of the database an import wrote. */
export interface ExportMeasurement {
  seconds: number;
  records: number;
  /** Bytes of the export file. */
  bytes: number;
  recordsPerSec: number;
  mbPerSec: number;
  peakRssBytes: number | null;
  /** `COPY ... TO STDOUT` of the same four tables in one snapshot: the server's own floor. */
  copyToFloor: { seconds: number; bytes: number; rows: number; recordsPerSec: number; mbPerSec: number };
  /** export seconds / COPY TO floor seconds. */
  ratioToCopyToFloor: number;
}

export interface CopyFloorMeasurement {
  seconds: number;
  /** Rows loaded per second, all tables. */
  rowsPerSec: number;
  /** Records of the export per second at this speed, comparable with userport's records/s. */
  recordsPerSec: number;
  rows: Record<string, number>;
  tableSeconds: Record<string, number>;
  copyBytes: number;
  /** CPU seconds of PostgreSQL and of the benchmark process (which sends the COPY data). Absent in older results and in the scenarios. */
  cpu?: CpuSeconds;
}

/** The bare floor (tools/bench/bare-floor.ts): the same rows into tables without indexes and constraints, then built. */
export type BareFloorMeasurement = BareFloorResult & { cpu?: CpuSeconds };

export interface ParseFloorMeasurement {
  seconds: number;
  recordsPerSec: number;
  mbPerSec: number;
  /** Peak RSS of the process that only parsed. */
  peakRssBytes: number | null;
}

export interface Check {
  name: string;
  ok: boolean;
  expected: unknown;
  actual: unknown;
}

export interface SizeResult {
  users: number;
  /** Records in the export, every model included. */
  records: number;
  recordsByModel: Record<string, number>;
  bytes: number;
  generate: { seconds: number; mbPerSec: number };
  userport: ImportMeasurement | Skipped;
  copyFloor: CopyFloorMeasurement | Skipped;
  parseFloor: ParseFloorMeasurement | Skipped;
  /** userport seconds / COPY floor seconds: the headline figure. */
  ratioToCopyFloor: number | null;
  /** userport seconds / parse floor seconds. */
  ratioToParseFloor: number | null;
  encrypted: (ImportMeasurement & { tarBytes: number; encryptSeconds: number }) | Skipped;
  /** `userport export users` of the imported database, against its COPY TO floor. Absent in older results. */
  export?: ExportMeasurement | Skipped;
  /** The same rows into bare tables, indexes and constraints built after (version 2). */
  bareFloor?: BareFloorMeasurement | Skipped;
  /** bare floor seconds / COPY floor seconds (issue #11 target 2 asks userport into an empty target for at most 0.75). */
  ratioBareToCopyFloor?: number | null;
  /** The import into a fresh database with `--bulk-load off`: the general path, when the CLI has that flag (version 2). */
  generalPath?: ImportMeasurement | Skipped;
  /** general path seconds / COPY floor seconds. */
  ratioGeneralToCopyFloor?: number | null;
  checks: Check[];
}

/** The scenarios of issue #11 target 3 ("no cliffs"), by name; the letters are the issue's. */
export const SCENARIOS = {
  resume: { letter: 'a', title: 'resume after a kill in the final merge (stale statistics)' },
  existing: { letter: 'b', title: 'into a database that already holds users' },
  collisions: { letter: 'c', title: '10% colliding usernames' },
  reverse: { letter: 'd', title: 'every record in reverse order' },
  filter: { letter: 'e', title: 'a username filter of 10,000 names' },
  'fresh-sentry': { letter: 'f', title: 'into a new Sentry 2026 install holding its first admin' },
  'global-restore': { letter: 'g', title: 'import global (passwords, 30% with 2FA, 30% with a user IP) into a new Sentry 2026' },
  'users-only': { letter: 'h', title: 'the users alone: no Email records, user emails or options' },
} as const;

export type ScenarioName = keyof typeof SCENARIOS;

/**
 * One scenario: a userport import timed against its own COPY floor, the rows that very import
 * wrote loaded by COPY into a database in the same starting state.
 */
export interface ScenarioResult {
  name: ScenarioName;
  title: string;
  /** Users in the timed export. */
  users: number;
  records: number;
  bytes: number;
  /** The timed import (for `resume`: the resume). */
  userport: ImportMeasurement | Skipped;
  copyFloor: CopyFloorMeasurement | Skipped;
  /** userport seconds / COPY floor seconds. */
  ratioToCopyFloor: number | null;
  /** What else the scenario measured or set up (per scenario; seconds, counts, statistics). */
  details: Record<string, unknown>;
  checks: Check[];
}

export interface PeerResult {
  name: string;
  version: string;
  users: number;
  records: number;
  objects: number;
  seconds: number;
  recordsPerSec: number;
  peakRssBytes: number | null;
  note: string;
}

export interface BenchResults {
  /** 2 added scenarios, the bare floor and the general path; 1 had neither. */
  version: 2;
  startedAt: string;
  finishedAt: string;
  seconds: number;
  machine: MachineInfo;
  options: {
    sizes: number[]; seed: number; smoke: boolean; encrypted: boolean; collisionRate: number; importTimeoutSeconds: number | null; encryptedSizes: number[];
    /** Sizes whose export was measured. */
    exportSizes: number[];
    scenarios: ScenarioName[];
    scenarioUsers: number;
  };
  sizes: SizeResult[];
  scenarios: ScenarioResult[];
  peers: { django: PeerResult | Skipped };
}

export function isSkipped(x: unknown): x is Skipped {
  return typeof x === 'object' && x !== null && typeof (x as Skipped).skipped === 'string';
}
