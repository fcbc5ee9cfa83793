import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  MAX_RETRY_AFTER_MS,
  RetryAfterGate,
  RetryLaterError,
  S3ObjectStore,
  retryAfterMs,
} from '../../src/capture/object-store.js';
import { s3FaultProxy, startS3, type TestS3 } from './helpers.js';

const NOW = Date.UTC(2026, 11, 7, 1, 0, 0);

describe('Retry-After values', () => {
  it('reads delay-seconds, capped', () => {
    fc.assert(
      fc.property(fc.nat({ max: 10 ** 9 }), (seconds) => {
        expect(retryAfterMs(String(seconds), NOW)).toBe(Math.min(seconds * 1000, MAX_RETRY_AFTER_MS));
      }),
    );
    expect(retryAfterMs(' 5 ', NOW)).toBe(5000);
  });

  it('reads an HTTP date as the time from now, never negative, capped', () => {
    fc.assert(
      fc.property(fc.integer({ min: -86_400, max: 3 * 86_400 }), (offsetSeconds) => {
        const at = new Date(NOW + offsetSeconds * 1000).toUTCString();
        expect(retryAfterMs(at, NOW)).toBe(Math.min(Math.max(0, offsetSeconds * 1000), MAX_RETRY_AFTER_MS));
      }),
    );
  });

  it('gives no wait for anything else, and never a wait outside [0, the cap]', () => {
    expect(retryAfterMs(undefined, NOW)).toBeUndefined();
    for (const bad of ['', '-5', '1.5', 'soon', '2026-12-07T01:00:00Z', '5 s', 'NaN'])
      expect(retryAfterMs(bad, NOW), bad).toBeUndefined();
    fc.assert(
      fc.property(fc.string({ unit: 'binary', maxLength: 40 }), (text) => {
        const ms = retryAfterMs(text, NOW);
        if (ms !== undefined) {
          expect(Number.isFinite(ms)).toBe(true);
          expect(ms).toBeGreaterThanOrEqual(0);
          expect(ms).toBeLessThanOrEqual(MAX_RETRY_AFTER_MS);
        }
      }),
    );
  });
});

describe('the Retry-After gate', () => {
  it('is measured on its own clock: a wall clock stepped back does not stretch the wait', () => {
    // The injected clock is the gate's monotonic one; the wall clock (Date.now) plays no part, so a backward
    // step of it cannot reach the gate. Stepping the injected clock back stands for a broken clock source:
    // even then the wait left is never more than the cap.
    let now = 1_000;
    const gate = new RetryAfterGate(() => now);
    gate.waitFor(5_000);
    expect(() => gate.check('s')).toThrow(RetryLaterError);
    now -= 30 * 86_400_000;
    const refused = (() => {
      try {
        gate.check('s');
      } catch (error) {
        return error as RetryLaterError;
      }
      return undefined;
    })();
    expect(refused).toBeInstanceOf(RetryLaterError);
    expect(refused!.retryAfterMs).toBeLessThanOrEqual(MAX_RETRY_AFTER_MS);
    now += MAX_RETRY_AFTER_MS;
    expect(() => gate.check('s')).not.toThrow();
  });

  it('never waits longer than the cap, whatever it is told', () => {
    let now = 0;
    const gate = new RetryAfterGate(() => now);
    gate.waitFor(10 * MAX_RETRY_AFTER_MS);
    now += MAX_RETRY_AFTER_MS;
    expect(() => gate.check('s')).not.toThrow();
  });
});

/**
 * A fault-injecting HTTP proxy in front of the real s3rver: the first `faults` PUTs are answered as S3 answers
 * throttling (503 SlowDown, with the Retry-After `retryAfter()` gives), which s3rver never does; every other
 * request is forwarded to s3rver unchanged (the SDK's signature covers the Host it sent, which is kept).
 */
async function faultyS3Proxy(target: string) {
  const state = { faults: 0, retryAfter: () => '7', puts: 0, forwardedPuts: 0 };
  const proxy = await s3FaultProxy(target, (request) => {
    if (request.method !== 'PUT') return undefined;
    state.puts += 1;
    if (state.faults === 0) {
      state.forwardedPuts += 1;
      return undefined;
    }
    state.faults -= 1;
    return {
      status: 503,
      code: 'SlowDown',
      message: 'Please reduce your request rate.',
      headers: { 'retry-after': state.retryAfter() },
    };
  });
  return { state, ...proxy };
}

describe('S3 store told to slow down (s3rver behind a fault-injecting proxy)', () => {
  let dir: string;
  let s3: TestS3;
  let proxy: Awaited<ReturnType<typeof faultyS3Proxy>>;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ef-retry-after-'));
    s3 = await startS3(join(dir, 's3'));
    proxy = await faultyS3Proxy(s3.endpoint);
  });
  afterAll(async () => {
    await proxy.close();
    await s3.close();
    await rm(dir, { recursive: true, force: true });
  });

  const storeAt = (now: () => number) =>
    new S3ObjectStore({
      bucket: s3.bucket,
      region: 'us-east-1',
      endpoint: proxy.endpoint,
      credentials: s3.credentials,
      maxAttempts: 1,
      now,
    });

  it('fails with the wait S3 asked for, makes no request until it has passed, then stores the object', async () => {
    let now = 1_000;
    const store = storeAt(() => now);
    const body = Buffer.from(Array.from({ length: 70_000 }, (_, i) => i % 251));
    proxy.state.faults = 1;
    proxy.state.retryAfter = () => '7';
    const putsBefore = proxy.state.puts;
    try {
      const first = await store.put('a/slow.bin', body, 'application/octet-stream').catch((e) => e);
      expect(first).toBeInstanceOf(RetryLaterError);
      expect(first.retryAfterMs).toBe(7000);
      expect(first.message).not.toMatch(/S3RVER/);
      expect(proxy.state.puts - putsBefore).toBe(1);
      now += 6000;
      const early = await store.put('a/slow.bin', body, 'application/octet-stream').catch((e) => e);
      expect(early).toBeInstanceOf(RetryLaterError);
      expect(early.retryAfterMs).toBe(1000);
      expect(proxy.state.puts - putsBefore).toBe(1);
      now += 1000;
      await store.put('a/slow.bin', body, 'application/octet-stream');
      expect(proxy.state.puts - putsBefore).toBe(2);
      expect(proxy.state.forwardedPuts).toBeGreaterThan(0);
      expect((await s3.get('a/slow.bin')).equals(body)).toBe(true);
    } finally {
      store.close();
    }
  });

  it('takes an HTTP-date Retry-After as a wait from the wall clock, and ignores hostile values', async () => {
    let now = 1_000;
    const store = storeAt(() => now);
    try {
      proxy.state.faults = 1;
      proxy.state.retryAfter = () => new Date(Date.now() + 120_000).toUTCString();
      const dated = await store.put('a/dated.bin', Buffer.from('d'), 'text/plain').catch((e) => e);
      expect(dated).toBeInstanceOf(RetryLaterError);
      // Whole seconds in the date, and the wall clock moved on a little: between 118 and 120 s.
      expect(dated.retryAfterMs).toBeGreaterThan(118_000);
      expect(dated.retryAfterMs).toBeLessThanOrEqual(120_000);
      now += 120_000;
      await store.put('a/dated.bin', Buffer.from('d'), 'text/plain');
      expect((await s3.get('a/dated.bin')).toString()).toBe('d');

      proxy.state.faults = 1;
      proxy.state.retryAfter = () => '99999999999';
      const huge = await store.put('a/huge.bin', Buffer.from('h'), 'text/plain').catch((e) => e);
      expect(huge).toBeInstanceOf(RetryLaterError);
      expect(huge.retryAfterMs).toBe(MAX_RETRY_AFTER_MS);
      now += MAX_RETRY_AFTER_MS;

      // Not a number S3 could mean: an ordinary failure (the spool's own backoff), and no wait imposed.
      proxy.state.faults = 1;
      proxy.state.retryAfter = () => '-1';
      const negative = await store.put('a/neg.bin', Buffer.from('n'), 'text/plain').catch((e) => e);
      expect(negative).toBeInstanceOf(Error);
      expect(negative).not.toBeInstanceOf(RetryLaterError);
      await store.put('a/neg.bin', Buffer.from('n'), 'text/plain');
      expect((await s3.get('a/neg.bin')).toString()).toBe('n');
    } finally {
      store.close();
    }
  });
});
