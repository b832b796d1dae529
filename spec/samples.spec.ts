import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { freshDatabase } from './helpers/db.js';

describe('samples/library-example.mjs (the README\'s library example)', () => {
  it('runs the stages in its own pipeline, then imports', async () => {
    const db = await freshDatabase();
    try {
      const res = spawnSync(process.execPath, ['samples/library-example.mjs', 'samples/users.json'], { env: { ...process.env, DATABASE_URL: db.url }, encoding: 'utf8' });
      expect(res.status, res.stderr).to.equal(0);
      const perDomain = /users per domain: (\{.*\})/.exec(res.stdout.replace(/\n\s*/g, ' '))?.[1];
      expect(perDomain).to.be.a('string');
      expect(res.stdout).to.match(/imported 200 users, merged 0/);
      expect(await db.count('auth_user')).to.equal(200);
    } finally {
      await db.close();
    }
  });
});
