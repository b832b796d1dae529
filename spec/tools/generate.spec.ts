import { createHash } from 'node:crypto';
import { expect } from 'chai';
import { createExportGenerator, iso, USER_SCOPE_MODELS, type GenerateOptions, type ExportGenerator } from '../../tools/generate.js';
import { OptionError } from '../../lib/errors.js';

interface Rec { model: string; pk: number; fields: Record<string, unknown> }

async function generate(options: GenerateOptions): Promise<{ text: string; gen: ExportGenerator; chunks: number[] }> {
  const gen = createExportGenerator(options);
  const parts: Buffer[] = [];
  for await (const chunk of gen) parts.push(chunk as Buffer);
  return { text: Buffer.concat(parts).toString('utf8'), gen, chunks: parts.map((p) => p.length) };
}

const USER_FIELDS = ['password', 'last_login', 'username', 'name', 'email', 'is_staff', 'is_active', 'is_superuser',
  'is_managed', 'is_sentry_app', 'is_password_expired', 'is_unclaimed', 'last_password_change', 'flags', 'session_nonce',
  'date_joined', 'last_active', 'avatar_type', 'avatar_url'];
const DATETIME = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

describe('createExportGenerator', () => {
  describe('determinism', () => {
    it('gives byte-identical output for the same seed, and different output for another seed', async () => {
      const hash = async (o: GenerateOptions) => createHash('sha256').update((await generate(o)).text).digest('hex');
      const a = await hash({ users: 1500, seed: 7 });
      const b = await hash({ users: 1500, seed: 7 });
      const c = await hash({ users: 1500, seed: 8 });
      expect(a).to.equal(b);
      expect(c).to.not.equal(a);
    });

    it('does not depend on the chunk size', async () => {
      const small = await generate({ users: 300, seed: 3, chunkSize: 100 });
      const big = await generate({ users: 300, seed: 3 });
      expect(small.text).to.equal(big.text);
      expect(small.chunks.length).to.be.greaterThan(big.chunks.length);
    });
  });

  describe('output', () => {
    let text: string;
    let gen: ExportGenerator;
    let records: Rec[];
    let chunks: number[];
    before(async () => {
      ({ text, gen, chunks } = await generate({ users: 3000, seed: 1, collisionRate: 0.02, outOfScopeRate: 0.02 }));
      records = JSON.parse(text) as Rec[];
    });

    it('is valid JSON printed exactly as JSON.stringify(records, null, 2) prints it', () => {
      expect(text).to.equal(JSON.stringify(records, null, 2));
      expect(gen.counts.bytes).to.equal(Buffer.byteLength(text));
    });

    it('comes in big chunks', () => {
      for (const n of chunks.slice(0, -1)) expect(n).to.be.at.least(64 * 1024);
    });

    it('has the expected number of records per model, and every record has the {model, pk, fields} shape', () => {
      const counted: Record<string, number> = {};
      for (const r of records) {
        expect(Object.keys(r)).to.deep.equal(['model', 'pk', 'fields']);
        expect(r.pk).to.be.a('number');
        expect(r.fields).to.be.an('object');
        counted[r.model] = (counted[r.model] ?? 0) + 1;
      }
      expect(counted).to.deep.equal(gen.counts.records);
      expect(counted['sentry.user']).to.equal(3000);
      expect(counted['sentry.useremail']).to.be.within(3000, 6000);
      expect(counted['sentry.useroption']).to.be.within(3000, 12000);
      expect(counted['sentry.email']).to.be.within(2900, 6000);
      expect(counted['sentry.userip']).to.be.greaterThan(0);
      expect(counted['sentry.authenticator']).to.be.greaterThan(0);
    });

    it('writes contiguous model runs in the late-2024 order, pks ascending inside each run', () => {
      const runs: string[] = [];
      const lastPk: Record<string, number> = {};
      for (const r of records) {
        if (runs[runs.length - 1] !== r.model) runs.push(r.model);
        if (lastPk[r.model] !== undefined) expect(r.pk, r.model).to.be.greaterThan(lastPk[r.model]!);
        lastPk[r.model] = r.pk;
      }
      expect(runs).to.deep.equal(['sentry.user', 'sentry.authenticator', 'sentry.email', 'sentry.useroption', 'sentry.useremail', 'sentry.userip']);
      expect(runs.filter((m) => (USER_SCOPE_MODELS as readonly string[]).includes(m))).to.deep.equal([...USER_SCOPE_MODELS]);
    });

    it('writes users with every field of a real export, in order, with real encodings', () => {
      for (const r of records.filter((x) => x.model === 'sentry.user')) {
        const f = r.fields;
        expect(Object.keys(f)).to.deep.equal(USER_FIELDS);
        expect(f.password).to.match(/^pbkdf2_sha256\$(150000|260000|720000)\$[A-Za-z0-9]{12}\$[A-Za-z0-9+/]{43}=$/);
        expect(f.flags).to.be.oneOf(['0', '1']);
        expect(f.date_joined).to.match(DATETIME);
        expect(f.last_active).to.match(DATETIME);
        if (f.last_login !== null) expect(f.last_login).to.match(DATETIME);
        expect((f.username as string).length).to.be.at.most(128);
        expect((f.email as string).length).to.be.at.most(75);
        expect(f.is_sentry_app).to.be.oneOf([null, false]);
      }
    });

    it('points every useremail, useroption, userip and authenticator at an existing user', () => {
      const users = new Set(records.filter((r) => r.model === 'sentry.user').map((r) => r.pk));
      const children = records.filter((r) => r.model !== 'sentry.user' && r.model !== 'sentry.email');
      expect(children.length).to.be.greaterThan(6000);
      for (const r of children) expect(users.has(r.fields.user as number), `${r.model} ${r.pk}`).to.equal(true);
    });

    it('makes usernames collide case-insensitively (never exactly) at the collision rate', () => {
      const names = records.filter((r) => r.model === 'sentry.user').map((r) => r.fields.username as string);
      expect(new Set(names).size).to.equal(names.length);
      const lower = new Set(names.map((n) => n.toLowerCase()));
      expect(names.length - lower.size).to.equal(gen.counts.usernameCollisions);
      expect(gen.counts.usernameCollisions).to.be.within(10, 200);
    });

    it('shares emails between users, with one lower-case sentry.email row per address', () => {
      const emails = records.filter((r) => r.model === 'sentry.email').map((r) => r.fields.email as string);
      expect(new Set(emails.map((e) => e.toLowerCase())).size).to.equal(emails.length);
      for (const e of emails) expect(e).to.equal(e.toLowerCase());
      const known = new Set(emails);
      const userEmails = records.filter((r) => r.model === 'sentry.useremail');
      for (const r of userEmails) expect(known.has((r.fields.email as string).toLowerCase()), r.fields.email as string).to.equal(true);
      const users = records.filter((r) => r.model === 'sentry.user');
      const primary = users.map((u) => (u.fields.email as string).toLowerCase());
      expect(primary.length - new Set(primary).size).to.equal(gen.counts.sharedEmails);
      expect(gen.counts.sharedEmails).to.be.within(10, 200);
      // Every user's email is one of its UserEmails.
      const byUser = new Map<number, string[]>();
      for (const r of userEmails) byUser.set(r.fields.user as number, [...(byUser.get(r.fields.user as number) ?? []), r.fields.email as string]);
      for (const u of users) expect(byUser.get(u.pk)).to.include(u.fields.email);
    });

    it('writes option values in both encodings, with unique global keys per user and a few org-scoped ones', () => {
      const options = records.filter((r) => r.model === 'sentry.useroption');
      const values = options.map((r) => r.fields.value);
      expect(values.some((v) => typeof v === 'string' && v.startsWith('"'))).to.equal(true); // "\"Europe/Vienna\""
      expect(values.some((v) => typeof v === 'string' && !v.startsWith('"') && /^[A-Za-z]/.test(v))).to.equal(true); // "Europe/Vienna"
      expect(values.some((v) => typeof v === 'boolean')).to.equal(true);
      const org = options.filter((r) => r.fields.organization_id !== null);
      expect(org.length).to.equal(gen.counts.orgScopedOptions);
      expect(org.length).to.be.greaterThan(0);
      const global = options.filter((r) => r.fields.organization_id === null && r.fields.project_id === null);
      const keys = global.map((r) => `${String(r.fields.user)}/${String(r.fields.key)}`);
      expect(new Set(keys).size).to.equal(keys.length);
    });
  });

  describe('formatting options', () => {
    it('writes compact JSON with indent 0 and 4-space JSON with indent 4', async () => {
      for (const indent of [0, 4]) {
        const { text } = await generate({ users: 50, seed: 2, indent });
        expect(text).to.equal(JSON.stringify(JSON.parse(text), null, indent));
      }
    });

    it('writes [] for zero users', async () => {
      expect((await generate({ users: 0 })).text).to.equal('[]');
    });

    it('interleaves out-of-scope records after their user when asked', async () => {
      const { text } = await generate({ users: 400, seed: 5, outOfScopeRate: 0.2, outOfScopeLayout: 'interleaved' });
      const records = JSON.parse(text) as Rec[];
      let lastUser = 0;
      let seen = 0;
      for (const r of records) {
        if (r.model === 'sentry.user') lastUser = r.pk;
        if (r.model === 'sentry.userip' || r.model === 'sentry.authenticator') {
          expect(r.fields.user).to.equal(lastUser);
          seen++;
        }
      }
      expect(seen).to.be.greaterThan(50);
    });
  });

  describe('firstUser', () => {
    const parse = async (o: GenerateOptions) => JSON.parse((await generate(o)).text) as Rec[];
    const users = (rs: Rec[]) => rs.filter((r) => r.model === 'sentry.user');

    it('writes the users of that range as a bigger export has them, except collisions with users before the range', async () => {
      const whole = await parse({ users: 400, seed: 3, collisionRate: 0.1 });
      const part = await parse({ users: 200, seed: 3, collisionRate: 0.1, firstUser: 200 });
      const byPk = new Map(users(whole).map((u) => [u.pk, u]));
      const partUsers = users(part);
      expect(partUsers.map((u) => u.pk)).to.deep.equal(Array.from({ length: 200 }, (_, k) => 201 + k));
      // In the whole export a user of the range may borrow the name of a user before it; the
      // part cannot (that user is not in it), so it keeps its own name. Every other user is equal.
      const lowerToPk = new Map<string, number>();
      for (const u of users(whole)) if (!lowerToPk.has((u.fields.username as string).toLowerCase())) lowerToPk.set((u.fields.username as string).toLowerCase(), u.pk);
      let same = 0;
      let borrowedBefore = 0;
      for (const u of partUsers) {
        const w = byPk.get(u.pk)!;
        const firstHolder = lowerToPk.get((w.fields.username as string).toLowerCase())!;
        if (firstHolder !== u.pk && firstHolder <= 200) {
          borrowedBefore++;
          expect(u.fields.username).to.not.equal(w.fields.username);
        } else {
          expect(u.fields.username).to.equal(w.fields.username);
          same++;
        }
      }
      expect(same).to.be.greaterThan(150);
      expect(borrowedBefore).to.be.greaterThan(0);
      // Children point at the part's own users only.
      const pks = new Set(partUsers.map((u) => u.pk));
      for (const r of part.filter((x) => x.model === 'sentry.useremail' || x.model === 'sentry.useroption')) expect(pks.has(r.fields.user as number)).to.equal(true);
    });

    it('makes exports of disjoint ranges share no pk, username or address, whatever their seeds', async () => {
      const a = await parse({ users: 300, seed: 1, collisionRate: 0.1 });
      const b = await parse({ users: 300, seed: 2, collisionRate: 0.1, firstUser: 300 });
      for (const model of ['sentry.user', 'sentry.email', 'sentry.useremail', 'sentry.useroption']) {
        const pa = new Set(a.filter((r) => r.model === model).map((r) => r.pk));
        const shared = b.filter((r) => r.model === model && pa.has(r.pk));
        expect(shared, model).to.deep.equal([]);
      }
      const names = new Set(users(a).map((u) => (u.fields.username as string).toLowerCase()));
      expect(users(b).filter((u) => names.has((u.fields.username as string).toLowerCase()))).to.deep.equal([]);
      const addresses = new Set(a.filter((r) => r.model === 'sentry.email').map((r) => (r.fields.email as string).toLowerCase()));
      expect(b.filter((r) => r.model === 'sentry.email' && addresses.has((r.fields.email as string).toLowerCase()))).to.deep.equal([]);
    });
  });

  describe('options', () => {
    const bad: [string, GenerateOptions][] = [
      ['users', { users: -1 }],
      ['users', { users: 1.5 }],
      ['seed', { users: 1, seed: -3 }],
      ['indent', { users: 1, indent: 11 }],
      ['collisionRate', { users: 1, collisionRate: 2 }],
      ['outOfScopeRate', { users: 1, outOfScopeRate: Number.NaN }],
      ['outOfScopeLayout', { users: 1, outOfScopeLayout: 'mixed' as 'runs' }],
      ['firstUser', { users: 1, firstUser: -1 }],
    ];
    for (const [name, options] of bad) {
      it(`rejects a bad ${name} synchronously, naming it`, () => {
        let err: unknown;
        try { createExportGenerator(options); } catch (e) { err = e; }
        expect(err).to.be.instanceOf(OptionError);
        expect((err as OptionError).code).to.equal('USERPORT_OPTION_INVALID');
        expect((err as OptionError).message).to.contain(name);
      });
    }
  });

  describe('iso', () => {
    it('formats like Date.prototype.toISOString', () => {
      for (const ms of [0, 1, 951782400000, 1687474795488, 4102444799999, 253402300799999]) {
        expect(iso(ms)).to.equal(new Date(ms).toISOString());
      }
    });
  });
});
