import { BlockList, isIP } from 'node:net';
import { canonicalHost } from './canonical-host.js';

/**
 * Whether `host` (an address, a host name, or a URL's hostname with IPv6 brackets) names this machine only:
 * 127.0.0.0/8, ::1 (also IPv4-mapped 127.x, in any spelling: a URL writes `::ffff:127.0.0.1` as `::ffff:7f00:1`)
 * or localhost. `0.0.0.0` is every interface, not loopback.
 */
export function isLoopbackHost(host: string): boolean {
  const bare = canonicalHost(host);
  if (bare === 'localhost' || bare.endsWith('.localhost')) return true;
  const family = isIP(bare);
  if (family === 0) return false;
  const loopback = new BlockList();
  loopback.addSubnet('127.0.0.0', 8, 'ipv4');
  loopback.addAddress('::1', 'ipv6');
  // BlockList matches an IPv4-mapped IPv6 address against the IPv4 rules.
  return loopback.check(bare, family === 6 ? 'ipv6' : 'ipv4');
}
