/**
 * Finishes what `20261201000000_bookkeeping_without_row_triggers` started: it dropped the foreign
 * keys from `userport_pk_map` and `userport_finding` to `userport_import` by their default names
 * only, so a key of another name (a table made before userport's migrations, by hand or by an
 * older tool) kept its per-row trigger. This drops every such key, whatever its name, found in
 * the catalog. `down` does nothing: the previous migration's `down` restores the keys.
 */
import type { Knex } from 'knex';

export async function up(knex: Knex): Promise<void> {
  await knex.raw(`
    DO $$
    DECLARE c record;
    BEGIN
      FOR c IN SELECT conrelid::regclass AS tbl, conname FROM pg_constraint
               WHERE contype = 'f' AND confrelid = 'userport_import'::regclass
                 AND conrelid IN ('userport_pk_map'::regclass, 'userport_finding'::regclass)
      LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', c.tbl, c.conname);
      END LOOP;
    END $$;
  `);
}

export async function down(): Promise<void> {
  // Nothing: see the module note.
}
