import { expect } from 'chai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { reachableCopy } from '../../lib/db/embedded.js';
import { tmpFolder } from '../helpers/setup.js';

describe('reachableCopy (embedded binaries under a private folder, when running as root)', () => {
  it('copies the binaries once to a world-readable folder, keeping symlinks, and reuses the copy', () => {
    const priv = tmpFolder('userport-private-');
    fs.chmodSync(priv, 0o700);
    const pkgRoot = path.join(priv, 'pkg');
    const native = path.join(pkgRoot, 'native');
    fs.mkdirSync(path.join(native, 'bin'), { recursive: true });
    fs.mkdirSync(path.join(native, 'lib'), { recursive: true });
    fs.writeFileSync(path.join(native, 'bin', 'postgres'), '#!/bin/sh\n', { mode: 0o700 });
    fs.writeFileSync(path.join(native, 'lib', 'libx.so.1.2'), 'x', { mode: 0o600 });
    fs.symlinkSync('libx.so.1.2', path.join(native, 'lib', 'libx.so'));
    const version = `test-${process.pid}-${Date.now()}`;
    fs.writeFileSync(path.join(pkgRoot, 'package.json'), JSON.stringify({ version }));
    const target = reachableCopy(native, pkgRoot);
    try {
      expect(target.startsWith(os.tmpdir())).to.equal(true);
      expect(target).to.include(version);
      expect(fs.statSync(path.join(target, 'bin', 'postgres')).mode & 0o005).to.equal(0o005);
      expect(fs.statSync(path.join(target, 'lib', 'libx.so.1.2')).mode & 0o004).to.equal(0o004);
      expect(fs.readlinkSync(path.join(target, 'lib', 'libx.so'))).to.equal('libx.so.1.2');
      expect(fs.statSync(target).mode & 0o777).to.equal(0o755);
      expect(reachableCopy(native, pkgRoot)).to.equal(target);
      // The package changed under the same version: the copy no longer matches and is replaced.
      fs.writeFileSync(path.join(native, 'bin', 'postgres'), 'changed');
      expect(reachableCopy(native, pkgRoot)).to.equal(target);
      expect(fs.readFileSync(path.join(target, 'bin', 'postgres'), 'utf8')).to.equal('changed');
    } finally {
      fs.rmSync(target, { recursive: true, force: true });
      fs.rmSync(priv, { recursive: true, force: true });
    }
  });

  describe('refuses a folder of that name it cannot trust (a local user may plant one first)', () => {
    let priv: string;
    let pkgRoot: string;
    let native: string;
    let target: string;
    beforeEach(() => {
      priv = tmpFolder('userport-private-');
      fs.chmodSync(priv, 0o700);
      pkgRoot = path.join(priv, 'pkg');
      native = path.join(pkgRoot, 'native');
      fs.mkdirSync(path.join(native, 'bin'), { recursive: true });
      fs.writeFileSync(path.join(native, 'bin', 'initdb'), '#!/bin/sh\necho real\n', { mode: 0o755 });
      const version = `test-${process.pid}-${Date.now()}`;
      fs.writeFileSync(path.join(pkgRoot, 'package.json'), JSON.stringify({ version }));
      target = path.join(os.tmpdir(), `userport-postgres-${os.platform()}-${os.arch()}-${version}`);
    });
    afterEach(() => {
      fs.rmSync(target, { recursive: true, force: true });
      fs.rmSync(priv, { recursive: true, force: true });
    });
    const refused = () => {
      try {
        reachableCopy(native, pkgRoot);
      } catch (err) {
        return (err as { code?: string }).code;
      }
      return 'used';
    };
    const plant = (mode: number) => {
      fs.mkdirSync(path.join(target, 'bin'), { recursive: true });
      fs.writeFileSync(path.join(target, 'bin', 'initdb'), '#!/bin/sh\necho planted\n', { mode: 0o755 });
      fs.chmodSync(target, mode);
    };

    it('owned by another user', function () {
      if (process.getuid?.() !== 0) this.skip();
      plant(0o755);
      for (const p of [target, path.join(target, 'bin'), path.join(target, 'bin', 'initdb')]) fs.chownSync(p, 65534, 65534);
      expect(refused()).to.equal('USERPORT_DB_EMBEDDED');
      expect(fs.readFileSync(path.join(target, 'bin', 'initdb'), 'utf8')).to.include('planted');
    });

    it('writable by others', () => {
      plant(0o777);
      expect(refused()).to.equal('USERPORT_DB_EMBEDDED');
    });

    it('with a symlink the package does not have', () => {
      fs.mkdirSync(path.join(target, 'bin'), { recursive: true });
      fs.chmodSync(target, 0o755);
      fs.symlinkSync('/bin/sh', path.join(target, 'bin', 'initdb'));
      expect(refused()).to.equal('USERPORT_DB_EMBEDDED');
    });
  });
});
