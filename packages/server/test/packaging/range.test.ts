import { describe, expect, it } from 'vitest';
import { requestedRange } from '../../src/packaging/routes.js';

describe('HTTP range of a device package download', () => {
  const etag = '"abc"';
  it('reads one range in each of its three forms, clamped to the file', () => {
    expect(requestedRange('bytes=0-9', 100, undefined, etag)).toEqual({ start: 0, end: 9 });
    expect(requestedRange('bytes=90-', 100, undefined, etag)).toEqual({ start: 90, end: 99 });
    expect(requestedRange('bytes=-10', 100, undefined, etag)).toEqual({ start: 90, end: 99 });
    expect(requestedRange('bytes=-500', 100, undefined, etag)).toEqual({ start: 0, end: 99 });
    expect(requestedRange('bytes=50-5000', 100, undefined, etag)).toEqual({ start: 50, end: 99 });
  });

  it('sends the whole file for no range, several ranges, junk, or a stale If-Range', () => {
    expect(requestedRange(undefined, 100, undefined, etag)).toBeUndefined();
    expect(requestedRange('bytes=0-1,5-6', 100, undefined, etag)).toBeUndefined();
    expect(requestedRange('lines=1-2', 100, undefined, etag)).toBeUndefined();
    expect(requestedRange('bytes=-', 100, undefined, etag)).toBeUndefined();
    expect(requestedRange('bytes=10-', 100, '"other"', etag)).toBeUndefined();
    expect(requestedRange('bytes=10-', 100, etag, etag)).toEqual({ start: 10, end: 99 });
  });

  it('refuses a range that starts past the end, or is empty', () => {
    expect(requestedRange('bytes=100-', 100, undefined, etag)).toBe('unsatisfiable');
    expect(requestedRange('bytes=9-3', 100, undefined, etag)).toBe('unsatisfiable');
    expect(requestedRange('bytes=-0', 100, undefined, etag)).toBe('unsatisfiable');
    // An empty file has no last bytes to send: a suffix range of it cannot be met (RFC 9110 14.1.3).
    expect(requestedRange('bytes=-5', 0, undefined, etag)).toBe('unsatisfiable');
  });
});
