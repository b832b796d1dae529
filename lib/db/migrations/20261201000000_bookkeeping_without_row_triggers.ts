/**
 * `userport_pk_map` and `userport_finding` lose their foreign keys to `userport_import`.
 *
 * A foreign key is checked by a trigger per inserted row: the merge writes a pk-map row for every
 * user and email, and those checks took more time than the inserts themselves (0.6 s of 1.0 s per
 * 100k rows). Nothing ever deleted an import, so the `ON DELETE CASCADE` was unused; the import's
 * row is written in the same transaction as its pk-map and finding rows. (Keys of other names:
 * see `20261201120000_bookkeeping_foreign_keys_by_catalog`.)
 */
import type { Knex } from 'knex';

export async function up(knex: Knex): Promise<void> {
  await knex.raw(`
    ALTER TABLE userport_pk_map DROP CONSTRAINT IF EXISTS userport_pk_map_run_fkey;
    ALTER TABLE userport_finding DROP CONSTRAINT IF EXISTS userport_finding_run_fkey;
  `);
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw(`
    ALTER TABLE userport_pk_map ADD CONSTRAINT userport_pk_map_run_fkey
      FOREIGN KEY (run) REFERENCES userport_import (run) ON DELETE CASCADE;
    ALTER TABLE userport_finding ADD CONSTRAINT userport_finding_run_fkey
      FOREIGN KEY (run) REFERENCES userport_import (run) ON DELETE CASCADE;
  `);
}
