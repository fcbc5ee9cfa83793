import { isIP } from 'node:net';

/**
 * `host` (a name, an address, or a URL's hostname with IPv6 brackets) in one spelling, to compare: lower case,
 * without brackets, and an IPv6 address in its shortest form (`FE80:0::1` and `fe80::1` are one address; a URL
 * writes `::ffff:127.0.0.1` as `::ffff:7f00:1`).
 */
export function canonicalHost(host: string): string {
  const bare = host.replace(/^\[|\]$/g, '').toLowerCase();
  // A zone (`fe80::1%eth0`) has no URL spelling: such an address is compared as written.
  if (isIP(bare) !== 6 || bare.includes('%')) return bare;
  return new URL(`http://[${bare}]`).hostname.replace(/^\[|\]$/g, '');
}
