import { describe, expect, it } from 'vitest';
import { isLoopbackHost } from '../../src/net/index.js';

describe('isLoopbackHost', () => {
  it('takes 127.0.0.0/8, ::1 and localhost as this machine only', () => {
    for (const host of [
      '127.0.0.1',
      '127.1.2.3',
      'localhost',
      'LOCALHOST',
      'a.localhost',
      '::1',
      '[::1]',
      '::ffff:127.0.0.1',
    ])
      expect(isLoopbackHost(host), host).toBe(true);
  });

  it('takes every other address or name, and every interface (0.0.0.0, ::), as reachable from elsewhere', () => {
    for (const host of [
      '0.0.0.0',
      '::',
      '[::]',
      '192.0.2.2',
      '10.0.0.5',
      'fleet.example',
      '128.0.0.1',
      'localhost.example',
    ])
      expect(isLoopbackHost(host), host).toBe(false);
  });
});
