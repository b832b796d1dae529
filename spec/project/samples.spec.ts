import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { stopEmbedded } from '../../lib/db/embedded.js';
import { freshDatabase } from '../helpers/db.js';
import { tmpFolder } from '../helpers/setup.js';

const EXAMPLE = 'samples/library-example.mjs';

describe('samples/library-example.mjs (the README\'s library example)', () => {
  it('is printed in the README exactly as it is in the file', () => {
    const readme = fs.readFileSync('README.md', 'utf8');
    const section = readme.slice(readme.indexOf('## Library'));
    const block = /```js\n([\s\S]*?)```/.exec(section)?.[1];
    expect(block).to.equal(fs.readFileSync(EXAMPLE, 'utf8'));
  });

  it('runs the stages in its own pipeline (filtered users are not rows), then imports into DATABASE_URL', async () => {
    const db = await freshDatabase();
    try {
      const res = spawnSync(process.execPath, [EXAMPLE, 'samples/users.json'], { env: { ...process.env, DATABASE_URL: db.url }, encoding: 'utf8' });
      expect(res.status, res.stderr).to.equal(0);
      // Two users kept by the filter, one per domain: the other 198 are 'filtered' markers.
      expect(res.stdout).to.contain("kept users per domain: { 'acme.example': 1, 'example.org': 1 }");
      expect(res.stdout).to.match(/imported 200 users, merged 0/);
      expect(await db.count('auth_user')).to.equal(200);
    } finally {
      await db.close();
    }
  });

  it('starts the embedded database when there is no DATABASE_URL', async () => {
    const home = tmpFolder('userport-example-');
    // Running as root, the server runs as nobody, which must be able to enter the folder.
    fs.chmodSync(home, 0o755);
    const env: NodeJS.ProcessEnv = { ...process.env, USERPORT_HOME: path.join(home, 'db') };
    delete env.DATABASE_URL;
    try {
      const res = spawnSync(process.execPath, [EXAMPLE, 'samples/users.json'], { env, encoding: 'utf8' });
      expect(res.status, res.stderr).to.equal(0);
      expect(res.stdout).to.match(/imported 200 users, merged 0/);
      expect(fs.existsSync(path.join(home, 'db', 'pgdata', 'PG_VERSION'))).to.equal(true);
    } finally {
      await stopEmbedded(path.join(home, 'db'), 'immediate').catch(() => undefined);
      fs.rmSync(home, { recursive: true, force: true });
    }
  });
});
