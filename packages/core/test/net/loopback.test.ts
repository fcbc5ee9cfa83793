import { describe, expect, it } from 'vitest';
import { canonicalHost, isLoopbackHost } from '../../src/net/index.js';

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
      // As a URL writes them (N4): new URL('http://[::ffff:127.0.0.1]').hostname is [::ffff:7f00:1].
      '[::ffff:7f00:1]',
      new URL('http://[::ffff:127.0.0.2]').hostname,
      '0:0:0:0:0:0:0:1',
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
      '::ffff:8000:1',
      'fe80::1%eth0',
    ])
      expect(isLoopbackHost(host), host).toBe(false);
  });
});

describe('canonicalHost', () => {
  it('spells one host one way: lower case, no brackets, an IPv6 address in its shortest form', () => {
    expect(canonicalHost('Fleet.Example')).toBe('fleet.example');
    expect(canonicalHost('192.0.2.2')).toBe('192.0.2.2');
    expect(canonicalHost('[FE80:0::1]')).toBe('fe80::1');
    expect(canonicalHost('2001:db8:0:0:0:0:0:2')).toBe('2001:db8::2');
    expect(canonicalHost('::ffff:127.0.0.1')).toBe('::ffff:7f00:1');
    expect(canonicalHost('fe80::1%eth0')).toBe('fe80::1%eth0');
  });
});
