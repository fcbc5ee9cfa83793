import { describe, expect, it } from 'vitest';
import { RecentTokenVerifications } from '../../src/auth/index.js';

const reader = (tokenId: string) => ({ tokenId, name: tokenId, scope: 'read-only' as const });

describe('RecentTokenVerifications', () => {
  it('recalls a verified token within its window only', () => {
    let now = 1_000;
    const recent = new RecentTokenVerifications({ ttlMs: 60_000, now: () => now });
    recent.remember('efo_a', reader('a'));
    now += 59_999;
    expect(recent.recall('efo_a')).toEqual(reader('a'));
    now += 1;
    expect(recent.recall('efo_a')).toBeUndefined();
    expect(recent.recall('efo_b')).toBeUndefined();
  });

  it('keeps at most its limit, dropping the oldest verification first', () => {
    const recent = new RecentTokenVerifications({ limit: 2 });
    recent.remember('efo_a', reader('a'));
    recent.remember('efo_b', reader('b'));
    recent.remember('efo_a', reader('a')); // verified again: now the newest
    recent.remember('efo_c', reader('c'));
    expect(recent.recall('efo_b')).toBeUndefined();
    expect(recent.recall('efo_a')).toEqual(reader('a'));
    expect(recent.recall('efo_c')).toEqual(reader('c'));
  });

  it('forgets a token refused or revoked', () => {
    const recent = new RecentTokenVerifications();
    recent.remember('efo_a', reader('a'));
    recent.remember('efo_b', reader('b'));
    recent.forget('efo_a');
    recent.forgetTokenId('b');
    expect(recent.recall('efo_a')).toBeUndefined();
    expect(recent.recall('efo_b')).toBeUndefined();
  });

  it("counts the window back from the outage's start, so a scraper is let in for the whole outage", () => {
    let now = 0;
    const recent = new RecentTokenVerifications({ ttlMs: 60_000, now: () => now });
    recent.remember('efo_a', reader('a'));
    now = 30_000;
    expect(recent.databaseUnusable()).toBe(true); // the outage's first failed lookup
    now = 10 * 60_000;
    expect(recent.databaseUnusable()).toBe(false); // the same outage
    expect(recent.recall('efo_a')).toEqual(reader('a'));
    // The database answers, then fails again: the new outage is 10 min after the verification.
    recent.databaseAnswered();
    now += 1_000;
    expect(recent.databaseUnusable()).toBe(true);
    expect(recent.recall('efo_a')).toBeUndefined();
  });

  it('refuses a remembered token once the outage has lasted maxOutageMs', () => {
    let now = 0;
    const recent = new RecentTokenVerifications({ maxOutageMs: 24 * 3_600_000, now: () => now });
    recent.remember('efo_a', reader('a'));
    recent.databaseUnusable();
    now = 24 * 3_600_000 - 1;
    expect(recent.recall('efo_a')).toEqual(reader('a'));
    now += 1;
    expect(recent.recall('efo_a')).toBeUndefined();
  });
});
