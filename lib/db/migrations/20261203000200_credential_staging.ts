/**
 * Staging for the config and global scopes (`import config`, `import global`): one column,
 * `extra`, holding the fields only those scopes write as one JSON object (password hashes,
 * privileges, verification state, and the fields of permissions, roles, authenticators, user IPs
 * and API tokens). User scope leaves it NULL. Text, not jsonb: COPY then stores it without
 * parsing; the merge reads it as jsonb once.
 */
import type { Knex } from 'knex';

export async function up(knex: Knex): Promise<void> {
  await knex.raw('ALTER TABLE userport.stage ADD COLUMN IF NOT EXISTS extra text');
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw('ALTER TABLE userport.stage DROP COLUMN IF EXISTS extra');
}
