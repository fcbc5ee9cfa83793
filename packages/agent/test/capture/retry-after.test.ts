import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  MAX_RETRY_AFTER_MS,
  RetryLaterError,
  S3ObjectStore,
  retryAfterMs,
} from '../../src/capture/object-store.js';

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

// S3's throttling answer (503 SlowDown with Retry-After), which s3rver never gives: a plain HTTP server answers
// every request so, and counts them.
describe('S3 store told to slow down', () => {
  let server: Server;
  let requests = 0;
  let endpoint: string;
  beforeAll(async () => {
    server = createServer((request, response) => {
      requests += 1;
      request.resume();
      request.on('end', () => {
        response.writeHead(503, { 'content-type': 'application/xml', 'retry-after': '7' });
        response.end(
          '<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>',
        );
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

  it('fails with the wait S3 asked for, and makes no request until it has passed', async () => {
    let now = NOW;
    const store = new S3ObjectStore({
      bucket: 'captures',
      region: 'us-east-1',
      endpoint,
      credentials: { source: 'static', accessKeyId: 'test', secretAccessKey: 'test-secret' },
      maxAttempts: 1,
      now: () => now,
    });
    try {
      const first = await store.put('a/b.bin', Buffer.from('x'), 'application/octet-stream').catch((e) => e);
      expect(first).toBeInstanceOf(RetryLaterError);
      expect(first.retryAfterMs).toBe(7000);
      expect(first.message).not.toMatch(/test-secret/);
      expect(requests).toBe(1);
      now += 6000;
      const early = await store.put('a/b.bin', Buffer.from('x'), 'application/octet-stream').catch((e) => e);
      expect(early).toBeInstanceOf(RetryLaterError);
      expect(early.retryAfterMs).toBe(1000);
      expect(requests).toBe(1);
      now += 1000;
      await expect(store.put('a/b.bin', Buffer.from('x'), 'application/octet-stream')).rejects.toBeInstanceOf(
        RetryLaterError,
      );
      expect(requests).toBe(2);
    } finally {
      store.close();
    }
  });
});
