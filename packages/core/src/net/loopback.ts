import { isIP } from 'node:net';

/**
 * Whether `host` (an address, a host name, or a URL's hostname with IPv6 brackets) names this machine only:
 * 127.0.0.0/8, ::1 (also IPv4-mapped 127.x) or localhost. `0.0.0.0` is every interface, not loopback.
 */
export function isLoopbackHost(host: string): boolean {
  const bare = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (bare === 'localhost' || bare.endsWith('.localhost')) return true;
  if (isIP(bare) === 4) return bare.startsWith('127.');
  if (isIP(bare) === 6) return bare === '::1' || /^::ffff:127\./.test(bare);
  return false;
}
