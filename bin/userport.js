#!/usr/bin/env node
// Thin launcher: the CLI is compiled TypeScript in dist/ (built by `npm ci` through `prepare`).
// A closed stdout (`userport ... | head`) is not an error worth a stack trace.
process.stdout.on('error', (err) => { if (err.code !== 'EPIPE') throw err; });
import('../dist/pipelines/cli.js').then((m) => m.main(process.argv.slice(2))).then(
  (code) => { process.exitCode = code; },
  (err) => { console.error(err); process.exitCode = 1; },
);
