/** The user filter (lib/filter-users.ts): the username list, the envelope and scope checks, and its stream compliance. */
import { expect } from 'chai';
import { Readable } from 'node:stream';
import { createUserFilter, parseUsernameList, scopeRecord, type FlowItem, type ScopedRecord } from '../lib/filter-users.js';
import type { RawRecord } from '../lib/tokenize.js';
import { collect, collectError } from './helpers/streams.js';
import { streamCompliance } from './helpers/compliance.js';
import { user, useroption } from './helpers/exports.js';

const pos = { offset: 10, line: 2, column: 3, length: 50 };
const raw = (ordinal: number, value: unknown): RawRecord => ({ ordinal, ...pos, value: value as Record<string, unknown> });
const objects = <T>(items: T[]) => Readable.from(items, { objectMode: true });

describe('parseUsernameList', () => {
  it('splits on commas and newlines, trims, drops empties', () => {
    expect(parseUsernameList(' alice, bob\n carol \r\n\n,dave,')).to.deep.equal(['alice', 'bob', 'carol', 'dave']);
  });
});

describe('createUserFilter', () => {
  it('passes user-scope records on, lower-cases model names, and turns other models into skip markers', async () => {
    const out = await collect<FlowItem>(objects([raw(1, user(1, 'a')), raw(2, { model: 'Sentry.UserIP', pk: 1, fields: {} }),
      raw(3, { model: 'SENTRY.USEREMAIL', pk: 1, fields: {} })]), createUserFilter());
    expect(out.map((i) => [i.kind, i.model, i.ordinal])).to.deep.equal([['record', 'sentry.user', 1], ['skip', 'sentry.userip', 2], ['record', 'sentry.useremail', 3]]);
  });

  it('marks users not in the list as filtered (exact, case-sensitive match) and leaves other models alone', async () => {
    const out = await collect<ScopedRecord>(objects([raw(1, user(1, 'alice')), raw(2, user(2, 'Alice')), raw(3, useroption(1, 2, 'k', 1))]),
      createUserFilter({ usernames: ['alice'] }));
    expect(out.map((r) => r.filtered)).to.deep.equal([false, true, false]);
  });

  it('fails on a bad envelope with its position, or passes a reject marker on when collecting rejects', async () => {
    for (const bad of [{ pk: 1, fields: {} }, { model: 'sentry.user', pk: 'x', fields: {} }, { model: 'sentry.user', pk: 1, fields: [] }, { model: 'nodot', pk: 1, fields: {} }]) {
      const err = await collectError(objects([raw(4, bad)]), createUserFilter());
      expect(err.code).to.equal('USERPORT_RECORD_ENVELOPE');
      expect(err.position).to.include({ ordinal: 4, offset: 10, line: 2, column: 3 });
    }
    const [marker] = await collect<FlowItem>(objects([raw(4, { model: 'sentry.user', fields: {} })]), createUserFilter({ collectRejects: true }));
    expect(marker).to.include({ kind: 'reject', model: 'sentry.user', ordinal: 4 });
  });

  it('does not quote a pk past 2^53 in the position (parsed, 9223372036854775808 reads as ...776000); a bad pk it can quote, it does', async () => {
    const huge = await collectError(objects([raw(4, JSON.parse('{"model":"sentry.user","pk":9223372036854775808,"fields":{}}'))]), createUserFilter());
    expect(huge.code).to.equal('USERPORT_RECORD_ENVELOPE');
    expect(huge.position).to.include({ model: 'sentry.user', field: 'pk' });
    expect(huge.position?.pk).to.equal(undefined);
    expect(huge.message).to.not.contain('9223372036854776000');
    const frac = await collectError(objects([raw(4, { model: 'sentry.user', pk: 1.5, fields: {} })]), createUserFilter());
    expect(frac.position).to.include({ pk: 1.5, field: 'pk' });
  });

  it('is a pure function underneath', () => {
    expect(scopeRecord(raw(1, { model: 'sentry.team', pk: 1, fields: {} }), undefined)).to.include({ kind: 'skip', model: 'sentry.team' });
  });
});

// Stream compliance: exactly one 'finish' on success, exactly one 'error' on failure, destroy() and
// pipeline()/finished() (spec/helpers/compliance.ts).
const rawUsers = () => objects(Array.from({ length: 300 }, (_, i) => raw(i + 1, user(i + 1, `u${i + 1}`))));
streamCompliance('createUserFilter', () => createUserFilter(), rawUsers, () => objects([raw(1, { model: 'sentry.user', pk: 'x', fields: {} })]), 'USERPORT_RECORD_ENVELOPE');
