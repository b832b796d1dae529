/**
 * The findings' index on `run` as a BRIN index instead of a btree. An import appends its findings
 * in one go and reads them back by run (the findings file, a cursor sorted by ordinal) or deletes
 * them by run (a retried import): block ranges by run find them as well, while each finding
 * written no longer inserts a btree entry. The btree was 0.15 s of the 0.37 s that 122k findings
 * took to write (an import of 100k users into a new Sentry 2026, whose Email records are all
 * dropped with a finding each); the BRIN index 0.04 s. Runs grow with time and an import writes its
 * findings together, so the ranges stay narrow; 16 pages a range keeps a small import's lookup small.
 */
import type { Knex } from 'knex';

export async function up(knex: Knex): Promise<void> {
  await knex.raw(`
    DROP INDEX IF EXISTS userport.findings_run_idx;
    CREATE INDEX IF NOT EXISTS findings_run_brin ON userport.findings USING brin (run) WITH (pages_per_range = 16);
  `);
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw(`
    DROP INDEX IF EXISTS userport.findings_run_brin;
    CREATE INDEX IF NOT EXISTS findings_run_idx ON userport.findings (run);
  `);
}
