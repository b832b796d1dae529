/**
 * The oracle of the COPY encoder (lib/copy-text.ts): the staging line of a row as one string,
 * written the plain way, slow and obviously right. `CopyText` must produce exactly its UTF-8 bytes.
 */
import type { FilteredMarker, StagedRow } from '../../lib/map-models.js';
import { STAGE_COLUMNS, type StageValue } from '../../lib/models.js';

/** Encodes one value for COPY's text format. */
export function copyValue(v: StageValue): string {
  if (v === null) return '\\N';
  if (typeof v === 'boolean') return v ? 't' : 'f';
  if (typeof v === 'number') return String(v);
  // Backslash first; then the three characters COPY treats as delimiters.
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/\r/g, '\\r').replace(/\t/g, '\\t');
}

/**
 * One staging-table line in COPY text format. A user's row ends with `password` (its new unusable
 * password, which the encoder makes of random bytes), any other line with NULL.
 */
export function copyLine(run: number, row: StagedRow | FilteredMarker, password = '!' + 'ab'.repeat(20)): string {
  const head = [run, row.code, row.ordinal, row.offset, row.line, row.column, row.pk].join('\t');
  if (row.kind === 'filtered') {
    const values: StageValue[] = STAGE_COLUMNS.map(() => null);
    values[0] = row.username ?? null;
    return `${head}\tf\t${[...values, null].map(copyValue).join('\t')}\n`;
  }
  return `${head}\tt\t${[...row.values, row.model === 'sentry.user' ? password : null].map(copyValue).join('\t')}\n`;
}
