// userport as a library, two ways. Run: node samples/library-example.mjs [export.json]
// Without DATABASE_URL the import starts (or reuses) the embedded PostgreSQL in ./.userport
// (or $USERPORT_HOME); it keeps running afterwards: `npx userport db stop` stops it.
import fs from 'node:fs';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createModelMapper, createTokenizer, createUserFilter, importUsers, isStagedRow, STAGE_INDEX } from 'userport';

const file = process.argv[2] ?? 'samples/users.json';

// 1. The stages inside your own ETL job, no database involved: keep two users and count them
//    per email domain. Users the filter removes come out as kind 'filtered', never as rows.
const domains = {};
await pipeline(
  fs.createReadStream(file),
  createTokenizer({ maxRecordBytes: 1 << 20 }),
  createUserFilter({ usernames: ['zsmith_2', 'grace.rossi.3@example.org'] }),
  createModelMapper(),
  new Writable({
    objectMode: true,
    write(item, _enc, done) {
      if (isStagedRow(item) && item.model === 'sentry.user') {
        const domain = String(item.values[STAGE_INDEX.email]).split('@')[1];
        domains[domain] = (domains[domain] ?? 0) + 1;
      }
      done();
    },
  }),
);
console.log('kept users per domain:', domains);

// 2. The whole job: stream the export into PostgreSQL with Sentry's rules.
const summary = await importUsers({ source: file, databaseUrl: process.env.DATABASE_URL, mergeUsers: true });
console.log(`imported ${summary.models['sentry.user'].inserted} users, merged ${summary.models['sentry.user'].merged}`);
