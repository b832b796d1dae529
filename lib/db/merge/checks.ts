/**
 * Checks on the staged rows before anything is written: repeated source pks, and the natural
 * keys of exports written before Sentry 23.9.1.
 */
import { ErrorCodes, printable, RecordError } from '../../errors.js';
import { modelByCode, REJECTED_USER_CODE } from '../../models.js';
import type { ModelCodes, Q } from './run.js';

/** Throws USERPORT_RECORD_DUPLICATE_PK at the first record, in file order, whose pk its model already had. */
export async function refuseDuplicatePks(q: Q, S: string, run: number): Promise<void> {
  const dup = await q(`
    SELECT s.model, s.src_pk, s.ord, s.off, s.line, s.col FROM ${S} s
    JOIN (SELECT model, src_pk FROM ${S} WHERE run = $1 AND model <> ${REJECTED_USER_CODE} GROUP BY model, src_pk HAVING count(*) > 1) d
      USING (model, src_pk)
    WHERE s.run = $1 ORDER BY s.ord OFFSET 1 LIMIT 1`, [run]);
  if (!dup.rowCount) return;
  const d = dup.rows[0];
  const model = modelByCode(d.model).name;
  throw new RecordError(ErrorCodes.RECORD_DUPLICATE_PK, `${model} pk ${d.src_pk} appears more than once in the export`, {
    position: { ordinal: d.ord, offset: d.off, line: d.line, column: d.col, model, pk: d.src_pk },
  });
}

/**
 * Exports written before Sentry 23.9.1 name a row's user by username (`"user": ["alice"]`).
 * Each such row gets the source pk of the export's user with exactly that name (Django's natural
 * key is case-sensitive); an unknown name leaves it unresolved (dropped, "user not in the
 * export"). Two users of one name make the key ambiguous: refused rather than guessed, so no row
 * can land on the wrong user.
 */
export async function resolveNaturalKeys(q: Q, S: string, run: number, C: ModelCodes): Promise<void> {
  const pending = await q(`SELECT 1 FROM ${S} WHERE run = $1 AND model IN (${C.withUser.join(', ')}) AND user_pk IS NULL AND username IS NOT NULL LIMIT 1`, [run]);
  if (!pending.rowCount) return;
  const ambiguous = await q(`
    SELECT s.model, s.src_pk, s.ord, s.off, s.line, s.col, s.username FROM ${S} s
    JOIN (SELECT username FROM ${S} WHERE run = $1 AND model = ${C.user} AND username IS NOT NULL
          GROUP BY username HAVING count(*) > 1) d USING (username)
    WHERE s.run = $1 AND s.model IN (${C.withUser.join(', ')}) AND s.user_pk IS NULL ORDER BY s.ord LIMIT 1`, [run]);
  if (ambiguous.rowCount) {
    const d = ambiguous.rows[0];
    const model = modelByCode(d.model).name;
    throw new RecordError(ErrorCodes.RECORD_LEGACY_FORMAT,
      `${model} pk ${d.src_pk} names its user by username ${printable(JSON.stringify(d.username))}, as exports before Sentry 23.9.1 do, ` +
      'and the export has several users of that name: refusing to guess which one', {
        position: { ordinal: d.ord, offset: d.off, line: d.line, column: d.col, model, pk: d.src_pk, field: 'user' },
      });
  }
  await q(`
    UPDATE ${S} s SET user_pk = u.src_pk FROM ${S} u
    WHERE s.run = $1 AND s.model IN (${C.withUser.join(', ')}) AND s.user_pk IS NULL AND s.username IS NOT NULL
      AND u.run = $1 AND u.model = ${C.user} AND u.username = s.username`, [run]);
}
