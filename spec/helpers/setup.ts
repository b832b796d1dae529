/**
 * Mocha root hooks: one real embedded PostgreSQL for the whole run, in a private temp folder, on
 * a free port, stopped and removed at the end. Tests get their own database from `freshDatabase`.
 * Set USERPORT_TEST_DATABASE_URL to run against another server instead.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startEmbedded, stopEmbedded } from '../../lib/db/embedded.js';

let dir: string | undefined;

export const mochaHooks = {
  async beforeAll(this: Mocha.Context) {
    this.timeout(180000);
    if (process.env.USERPORT_TEST_DATABASE_URL) return;
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'userport-test-pg-'));
    fs.chmodSync(dir, 0o755);
    const server = await startEmbedded({ dir });
    process.env.USERPORT_TEST_DATABASE_URL = server.url;
    process.env.USERPORT_TEST_EMBEDDED_DIR = dir;
  },
  async afterAll(this: Mocha.Context) {
    // The data folder holds a database per test (GBs by the end); removing it on a shared, busy
    // machine took over a minute.
    this.timeout(300000);
    if (!dir) return;
    await stopEmbedded(dir, 'immediate').catch(() => undefined);
    fs.rmSync(dir, { recursive: true, force: true });
  },
};
