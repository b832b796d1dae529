// The library, two ways. Run: DATABASE_URL=postgresql://... node samples/library-example.mjs samples/users.json
import fs from 'node:fs';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createModelMapper, createTokenizer, createUserFilter, importUsers } from 'userport';

const file = process.argv[2] ?? 'samples/users.json';

// 1. The stages inside your own ETL job: count users per email domain, no database involved.
const domains = new Map();
await pipeline(
  fs.createReadStream(file),
  createTokenizer({ maxRecordBytes: 1 << 20 }),
  createUserFilter(),
  createModelMapper(),
  new Writable({
    objectMode: true,
    write(item, _enc, done) {
      if (item.kind === 'row' && item.model === 'sentry.user') {
        const domain = String(item.values[2] ?? '').split('@')[1] ?? '(none)';
        domains.set(domain, (domains.get(domain) ?? 0) + 1);
      }
      done();
    },
  }),
);
console.log('users per domain:', Object.fromEntries(domains));

// 2. The whole job: stream the export into PostgreSQL with Sentry's rules.
const summary = await importUsers({ source: file, databaseUrl: process.env.DATABASE_URL, mergeUsers: true });
console.log(`imported ${summary.models['sentry.user'].inserted} users, merged ${summary.models['sentry.user'].merged}`);
