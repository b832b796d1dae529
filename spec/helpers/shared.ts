/**
 * The real Sentry fixtures live outside the repository (`../shared/fixtures/...`, beside the
 * clone). A bare clone has no such folder: the specs that read it must skip, saying why, instead
 * of failing before any test runs.
 */
import fs from 'node:fs';
import path from 'node:path';

export type SharedFolder = 'sentry' | 'sentry-backup';

/** The absolute path of `../shared/fixtures/<name>` from the repo root, or undefined when absent. */
export function sharedFixtures(name: SharedFolder): string | undefined {
  const dir = path.resolve('../shared/fixtures', name);
  return fs.existsSync(dir) ? dir : undefined;
}

/**
 * Call inside a `describe`: returns the folder, or, when it is absent, registers one pending test
 * whose title is the reason (mocha lists it as pending) and prints the reason once.
 */
export function requireSharedFixtures(name: SharedFolder): string | undefined {
  const dir = sharedFixtures(name);
  if (!dir) {
    const reason = `skipped: ../shared/fixtures/${name} is absent (it is not part of the repository)`;
    it(reason, function () {
      process.stdout.write(`      ${reason}\n`);
      this.skip();
    });
  }
  return dir;
}

/** The `.json` files of a shared fixtures folder, sorted; [] when the folder is absent. */
export function sharedJsonFiles(dir: string | undefined): string[] {
  return dir ? fs.readdirSync(dir).filter((f) => f.endsWith('.json')).sort() : [];
}
