/**
 * The staging column of a new user's unusable password (lib/copy-text.ts, `TAIL_COLUMNS`): made
 * in the client as the user is staged, so the users' INSERT copies it instead of hashing random
 * bytes on the server for each user. A row staged before this column (a resumed import of an
 * older version) leaves it NULL, and the INSERT makes the password as it did then.
 */
import type { Knex } from 'knex';

export async function up(knex: Knex): Promise<void> {
  await knex.raw('ALTER TABLE userport.stage ADD COLUMN IF NOT EXISTS unusable_password text');
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw('ALTER TABLE userport.stage DROP COLUMN IF EXISTS unusable_password');
}
