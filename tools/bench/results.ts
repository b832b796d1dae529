/**
 * The shape of `bench/results.json`. Sizes are bytes, times seconds, MB are 10^6 bytes.
 * A measurement that could not be taken is `{ skipped: <reason> }`, never silently absent.
 */

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
}

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
  version: 1;
  startedAt: string;
  finishedAt: string;
  seconds: number;
  machine: MachineInfo;
  options: { sizes: number[]; seed: number; smoke: boolean; encrypted: boolean; collisionRate: number; importTimeoutSeconds: number | null; encryptedSizes: number[] };
  sizes: SizeResult[];
  peers: { django: PeerResult | Skipped };
}

export function isSkipped(x: unknown): x is Skipped {
  return typeof x === 'object' && x !== null && typeof (x as Skipped).skipped === 'string';
}
