/** The model registry (lib/models.ts): its validators compiled on first use; Sentry's date-times and time zones. */
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { isDateTime, isTimeZone } from '../lib/models.js';

describe('the model registry', () => {
  it('loads no validator when the library is loaded or its models listed, all of them once an import asks: the build\'s, with ajv not even loaded', () => {
    // A process of its own (this one's registry is made by the other specs). ajv is CommonJS:
    // whoever loads it, by import or require, puts it in require's cache.
    const lib = new URL('../lib/', import.meta.url).href;
    const script = `
      const { createRequire } = await import('node:module');
      const require = createRequire(import.meta.url);
      const ajvLoaded = () => Object.keys(require.cache).some((k) => k.endsWith('/node_modules/ajv/dist/ajv.js'));
      const { EXPORT_MODELS } = await import('${lib}index.js');
      const { redact } = await import('${lib}rejects.js');
      const m = await import('${lib}models.js');
      const exported = EXPORT_MODELS.length;
      redact({ model: 'sentry.user', fields: { password: 'x' } });
      const reason = m.skipReason('sentry.userip', 'users');
      const before = ajvLoaded();
      const first = m.registry();
      const origin = first.origin;
      const after = ajvLoaded();
      const same = m.registry() === first;
      const ip = m.registry().models.get('sentry.userip');
      const checks = [ip.validate({ user: 1, ip_address: '10.0.0.1', country_code: null, region_code: null, first_seen: '2021-07-17T21:08:52Z', last_seen: '2021-07-17T21:08:52Z' }),
        ip.validate({ user: 1, ip_address: 'not an address' })];
      // The per-record path reads these objects: plain ones (V8's fast properties).
      const fast = [m.registry(), ...m.registry().models.values()].every((x) => %HasFastProperties(x));
      console.log(JSON.stringify({ exported, reason, before, origin, after, same, models: first.models.size, checks, fast }));`;
    const r = spawnSync(process.execPath, ['--allow-natives-syntax', '--input-type=module', '-e', script], { encoding: 'utf8' });
    expect(r.stderr).to.equal('');
    const out = JSON.parse(r.stdout) as { exported: number; reason: string; before: boolean; origin: string; after: boolean; same: boolean; models: number; checks: boolean[]; fast: boolean };
    expect(out.exported).to.equal(11);
    expect(out.reason).to.equal('imported by import global only');
    expect(out.before).to.equal(false);
    // `npm test` builds first, and the build writes the compiled module (spec/validators.spec.ts
    // covers the fallback, ajv compiling in the process).
    expect(out.origin).to.equal('precompiled');
    expect(out.after).to.equal(false);
    expect(out.same).to.equal(true);
    expect(out.models).to.equal(11);
    expect(out.checks).to.deep.equal([true, false]);
    expect(out.fast).to.equal(true);
  });
});

describe('isDateTime', () => {
  it('accepts the ISO-8601 shapes PostgreSQL stores and refuses the rest', () => {
    const cases: [string, boolean][] = [
      ['2021-07-17T21:08:52.713Z', true], ['2021-07-17 21:08:52', true], ['2021-07-17T21:08:52.123456789+01:00', true],
      ['2021-07-17T21:08:52-0530', true], ['2024-02-29T00:00:00Z', true], ['2000-02-29T00:00:00Z', true], ['0001-01-01T00:00:00Z', true],
      ['2021-07-17T21:08:52.1234567890Z', false], ['2021-07-17T21:08:52.Z', false], ['2021-07-17T21:08:52Z ', false],
      ['2023-02-29T00:00:00Z', false], ['1900-02-29T00:00:00Z', false], ['2021-04-31T00:00:00Z', false], ['0000-01-01T00:00:00Z', false],
      ['2021-13-01T00:00:00Z', false], ['2021-00-01T00:00:00Z', false], ['2021-01-00T00:00:00Z', false], ['2021-01-01T24:00:00Z', false],
      ['2021-01-01T23:60:00Z', false], ['2021-01-01T23:59:60Z', false], ['2021-01-01T00:00:00+16:00', false], ['2021-01-01T00:00:00+10:60', false],
      ['2021-01-01T00:00:00+1:00', false], ['2021-01-01T00:00:00+01:0', false], ['2021-01-01T00:00:00+01::00', false], ['2021-01-01T00:00:00z', false],
      ['2021-01-01t00:00:00Z', false], ['2021-01-01T00:00', false], ['21-01-01T00:00:00Z', false], ['2021-1-01T00:00:00Z', false],
      ['２０２１-01-01T00:00:00Z', false], ['2021-01-01T00:00:00\n', false], ['', false],
    ];
    for (const [s, valid] of cases) expect(isDateTime(s), s).to.equal(valid);
  });

  it('agrees with the regular expression it replaced on mutated timestamps', () => {
    const RE = /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?(Z|[+-](\d{2}):?(\d{2}))?$/;
    const reference = (s: string): boolean => {
      const m = RE.exec(s);
      if (!m) return false;
      const y = +m[1]!, mo = +m[2]!, d = +m[3]!, h = +m[4]!, mi = +m[5]!, sec = +m[6]!;
      if (y < 1 || mo < 1 || mo > 12 || d < 1 || h > 23 || mi > 59 || sec > 59) return false;
      if (m[9] !== undefined && (+m[9] > 15 || +m[10]! > 59)) return false;
      const dim = [31, (y % 4 === 0 && y % 100 !== 0) || y % 400 === 0 ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][mo - 1]!;
      return d <= dim;
    };
    const seeds = ['2021-07-17T21:08:52.713Z', '2024-02-29 23:59:59+15:59', '1999-12-31T00:00:00.123456789-0000', '2021-07-17T21:08:52'];
    const alphabet = '0123456789-:.TZ +';
    let seed = 7;
    const rand = (n: number) => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed % n; };
    let accepted = 0;
    for (let k = 0; k < 20000; k++) {
      let s = seeds[rand(seeds.length)]!;
      for (let m = 1 + rand(2); m > 0; m--) {
        const at = rand(s.length + 1);
        const op = rand(3);
        const c = alphabet[rand(alphabet.length)]!;
        s = op === 0 ? s.slice(0, at) + c + s.slice(at + 1) : op === 1 ? s.slice(0, at) + c + s.slice(at) : s.slice(0, at) + s.slice(at + 1);
      }
      const expected = reference(s);
      if (expected) accepted++;
      expect(isDateTime(s), s).to.equal(expected);
    }
    // The mutations must exercise both answers, not only refusals.
    expect(accepted).to.be.above(1000);
  });
});

describe('isTimeZone', () => {
  it('takes the names Sentry takes (zoneinfo.available_timezones() less Factory), exact and case-sensitive, the same answer every time', () => {
    const cases: [string, boolean][] = [
      ['Europe/Vienna', true], ['UTC', true], ['America/Argentina/Buenos_Aires', true], ['Etc/GMT+5', true],
      // tzdata's backward links are in Python's list, and so in Sentry's.
      ['US/Pacific', true], ['Asia/Calcutta', true], ['Asia/Kolkata', true], ['GB', true], ['EST5EDT', true],
      // Intl would take these; Sentry's ChoiceField would not.
      ['europe/vienna', false], ['utc', false], ['ETC/UTC', false], ['SystemV/AST4', false], ['Factory', false], ['localtime', false],
      ['MiddleEarth/Gondor', false], ['+01:00', false], ['', false], ['Europe/Vienna ', false], ['Europe', false],
    ];
    for (let round = 0; round < 3; round++) {
      for (const [name, valid] of cases) expect(isTimeZone(name), `${name} (round ${round})`).to.equal(valid);
    }
  });
});
