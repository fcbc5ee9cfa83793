import { readFileSync } from 'node:fs';
import { isIPv4, isIPv6, type Server, type Socket } from 'node:net';

export interface ConnectionCaps {
  /** Connections open at once on this listener; more are closed as they arrive. */
  maxConnections: number;
  /** Connections open at once from one remote address (TCP only; Unix sockets have none). */
  maxConnectionsPerAddress: number;
}

/** Which cap refused a connection. */
export type RefusedBy = 'per-address' | 'total';

/**
 * One connection over a cap. `address` is the peer's cap group (addressGroup), absent on a Unix socket.
 * `idleClosed`: the connection was let in, and an idle connection closed instead (an eviction, not a refusal);
 * `closedAddress` is then the closed connection's group.
 */
export interface ConnectionRefusal {
  refusedBy: RefusedBy;
  address?: string;
  idleClosed?: boolean;
  closedAddress?: string;
}

export interface CapHooks {
  /** Hears of each connection over a cap (for a log line and a counter). */
  onRefused?: (refusal: ConnectionRefusal) => void;
  /**
   * Whether an open connection may be closed to make room for a new one of its own address group: one with no
   * request in progress (HTTP: none started, or idle between requests). Absent: a full cap refuses newcomers.
   */
  idle?: (socket: Socket) => boolean;
}

/** What capConnections gives its listener back. */
export interface CappedConnections {
  /**
   * The connection has carried a request (HTTP: its first 'request'): it is no longer among the first the total
   * cap closes (those that never carried one), but still closable, when idle, if there are none.
   */
  carriedRequest(socket: Socket): void;
  /**
   * The connection has carried an authenticated request (the device port: its peer presented a certificate the
   * server verified): from then on it is never closed to make room for another address group's newcomer, only
   * for its own group's (when idle). Anyone can send an unauthenticated request, so only this may protect.
   */
  authenticated(socket: Socket): void;
}

/** The group of a Unix socket's connections: they have no address, and only the total cap applies. */
const UNIX_PEERS = 'unix socket';

/**
 * Caps a listener's connections in total and per remote address group (addressGroup: an IPv4 address, an IPv6
 * /64), so that one client holding connections open cannot use up the process's file descriptors and starve
 * its other listeners. Works for net, http, https and tls servers alike: 'connection' carries the raw socket
 * before any handshake.
 *
 * With `hooks.idle`, a full cap makes room by closing a connection rather than refusing the newcomer: an address
 * group at its cap closes its own oldest idle connection; a listener at its total cap closes the oldest
 * connection, of any group, that has never carried a request (`carriedRequest`), and when there is none, the
 * oldest idle one of the largest group that has one, never one that has carried an authenticated request
 * (`authenticated`), so that many addresses (a flood from many hosts, or IPv6 /64s) cannot close authenticated
 * devices' keep-alive connections. An unauthenticated request protects nothing: a flood sending one cheap request
 * per connection would otherwise fill the cap with connections nothing may close. A newcomer so let in stays until
 * `maxConnections` newer connections have come, so a client that sends its request at once gets in past a
 * flood, and a flooder mostly closes its own connections. Only when none can be closed is the newcomer closed.
 * The caps are then counted here (a connection closed to make room leaves them at once; so do its descriptor
 * and Node's own count of it, which destroy() takes down at once, even for many closed in one accept batch), and
 * Node's `maxConnections` is only a backstop, at twice the total cap; without `idle`, Node's is the total cap,
 * applied before any work. Each connection over a cap is reported to `hooks.onRefused` (Node says so of those
 * it closes with 'drop').
 */
export function capConnections(
  server: Server,
  caps: ConnectionCaps,
  hooks: CapHooks = {},
): CappedConnections {
  const { onRefused, idle } = hooks;
  server.maxConnections = caps.maxConnections * (idle ? 2 : 1);
  if (onRefused) {
    server.on('drop', (peer?: { remoteAddress?: string }) => {
      const address = peer?.remoteAddress;
      onRefused({ refusedBy: 'total', ...(address !== undefined && { address: addressGroup(address) }) });
    });
  }
  // Each group's open connections, oldest first (a Set keeps insertion order), and the group of each.
  const open = new Map<string, Set<Socket>>();
  const groupOf = new Map<Socket, string>();
  // Connections that have carried no request yet, oldest first: the total cap's first victims.
  const unused = new Set<Socket>();
  // Connections that have carried an authenticated request: never the total cap's victims.
  const trusted = new Set<Socket>();
  /** The total cap's victim when every connection has carried a request: the largest group's oldest idle one. */
  const idleUntrusted = (isIdle: (socket: Socket) => boolean): Socket | undefined => {
    const groups = [...open.values()].sort((a, b) => b.size - a.size);
    for (const group of groups) {
      for (const held of group) if (!trusted.has(held) && isIdle(held)) return held;
    }
    return undefined;
  };
  const release = (socket: Socket) => {
    unused.delete(socket);
    trusted.delete(socket);
    const key = groupOf.get(socket);
    if (key === undefined) return;
    groupOf.delete(socket);
    const group = open.get(key);
    group?.delete(socket);
    if (group?.size === 0) open.delete(key);
  };
  server.on('connection', (socket: Socket) => {
    const address = socket.remoteAddress === undefined ? undefined : addressGroup(socket.remoteAddress);
    /** `closed`: the connection closed to let this one in (undefined: this one was refused). */
    const report = (refusedBy: RefusedBy, closed: { group: string } | undefined) =>
      onRefused?.({
        refusedBy,
        ...(address !== undefined && { address }),
        ...(closed !== undefined && { idleClosed: true }),
        ...(closed !== undefined && closed.group !== UNIX_PEERS && { closedAddress: closed.group }),
      });
    const key = address ?? UNIX_PEERS;
    const group = open.get(key);
    let refusedBy: RefusedBy | undefined;
    let victim: Socket | undefined;
    if (address !== undefined && group !== undefined && group.size >= caps.maxConnectionsPerAddress) {
      refusedBy = 'per-address';
      victim = idle ? [...group].find((held) => idle(held)) : undefined;
    } else if (idle && groupOf.size >= caps.maxConnections) {
      refusedBy = 'total';
      victim = unused.values().next().value ?? idleUntrusted(idle);
    }
    if (refusedBy !== undefined) {
      if (victim === undefined) {
        socket.destroy();
        report(refusedBy, undefined);
        return;
      }
      const closed = { group: groupOf.get(victim) ?? UNIX_PEERS };
      release(victim);
      victim.destroy();
      report(refusedBy, closed);
    }
    let joined = open.get(key);
    if (joined === undefined) open.set(key, (joined = new Set()));
    joined.add(socket);
    groupOf.set(socket, key);
    if (idle) unused.add(socket);
    socket.once('close', () => release(socket));
  });
  return {
    carriedRequest: (socket) => void unused.delete(socket),
    authenticated: (socket) => {
      // Only a connection still counted here (not closed meanwhile), so that `trusted` holds no dead sockets.
      if (groupOf.has(socket)) trusted.add(socket);
    },
  };
}

/**
 * The group a peer's connections are counted in for the per-address cap: its IPv4 address (clientAddress), or
 * for IPv6 its /64, written as a prefix (`2001:db8:1:2::/64`, `::/64` for ::1). One IPv6 host is normally given a whole /64 and can
 * pick any address in it, so counting per /128 would cap it only by the total.
 */
export function addressGroup(remoteAddress: string): string {
  const address = clientAddress(remoteAddress);
  if (isIPv4(address)) return address;
  const groups = ipv6Groups(address);
  if (groups === undefined) return address;
  // An IPv4-mapped address in hex (::ffff:7f00:1) is that IPv4 address, as in dotted form (clientAddress).
  if (groups.slice(0, 5).every((group) => group === '0') && groups[5] === 'ffff') {
    const [high, low] = groups.slice(6).map((group) => parseInt(group, 16)) as [number, number];
    return [high >> 8, high & 255, low >> 8, low & 255].join('.');
  }
  return `${compressIpv6([...groups.slice(0, 4), '0', '0', '0', '0'])}/64`;
}

/** Eight groups written as RFC 5952 does: the longest run of two or more zero groups (the first of equals) as `::`. */
function compressIpv6(groups: string[]): string {
  let best = { start: -1, length: 0 };
  for (let start = 0; start < groups.length;) {
    let end = start;
    while (end < groups.length && groups[end] === '0') end += 1;
    if (end - start > best.length) best = { start, length: end - start };
    start = end === start ? start + 1 : end;
  }
  if (best.length < 2) return groups.join(':');
  const head = groups.slice(0, best.start).join(':');
  const tail = groups.slice(best.start + best.length).join(':');
  return `${head}::${tail}`;
}

/** The eight 16-bit groups of an IPv6 address, in lowercase hex without leading zeros; undefined if it is not one. */
function ipv6Groups(address: string): string[] | undefined {
  const zone = address.indexOf('%');
  const bare = zone === -1 ? address : address.slice(0, zone);
  if (!isIPv6(bare)) return undefined;
  const parse = (part: string): string[] => {
    if (part === '') return [];
    const pieces = part.split(':');
    const last = pieces[pieces.length - 1]!;
    if (isIPv4(last)) {
      // An embedded IPv4 address (::1.2.3.4) is the last two groups.
      const [a, b, c, d] = last.split('.').map(Number) as [number, number, number, number];
      pieces.splice(-1, 1, ((a << 8) | b).toString(16), ((c << 8) | d).toString(16));
    }
    return pieces;
  };
  const [head, tail] = bare.split('::') as [string, string | undefined];
  const front = parse(head);
  const back = tail === undefined ? [] : parse(tail);
  const zeros = Array<string>(8 - front.length - back.length).fill('0');
  return [...front, ...zeros, ...back].map((group) => parseInt(group, 16).toString(16));
}

/**
 * One client's address in one spelling: an IPv4 client reaching a dual-stack (::) listener shows as
 * `::ffff:1.2.3.4`, the same client on an IPv4 listener (or a socket handed over from one) as `1.2.3.4`; both
 * count as `1.2.3.4`. IPv6 addresses are lowercased (Node gives them so; a handed-over socket may not).
 */
export function clientAddress(remoteAddress: string): string {
  const address = remoteAddress.toLowerCase();
  const mapped = address.startsWith('::ffff:') ? address.slice('::ffff:'.length) : undefined;
  return mapped !== undefined && isIPv4(mapped) ? mapped : address;
}

/**
 * The process's limit on open file descriptors (the soft limit, which Node raises to the hard one at start), or
 * undefined where it cannot be read (not Linux). `limitsText` is /proc/self/limits, for tests.
 */
export function openFileLimit(limitsText?: string): number | undefined {
  let text = limitsText;
  if (text === undefined) {
    try {
      text = readFileSync('/proc/self/limits', 'utf8');
    } catch {
      return undefined;
    }
  }
  const match = /^Max open files\s+(\d+|unlimited)/m.exec(text);
  if (!match || match[1] === 'unlimited') return undefined;
  return Number(match[1]);
}

/**
 * Caps that fit in `share` of the descriptor limit: when the listeners' total caps would take more, each is
 * scaled down in proportion (at least 1), so that a flood on every listener still leaves descriptors for the
 * database, files and the process's own work. Returns the caps unchanged when they fit or the limit is unknown.
 */
export function fitConnectionCaps<T extends ConnectionCaps>(
  caps: readonly T[],
  fileLimit: number | undefined,
  share = 0.8,
): { caps: T[]; scaled: boolean } {
  const total = caps.reduce((sum, cap) => sum + cap.maxConnections, 0);
  if (fileLimit === undefined || total <= fileLimit * share) return { caps: [...caps], scaled: false };
  const factor = (fileLimit * share) / total;
  return {
    caps: caps.map((cap) => {
      const maxConnections = Math.max(1, Math.floor(cap.maxConnections * factor));
      return {
        ...cap,
        maxConnections,
        maxConnectionsPerAddress: Math.min(cap.maxConnectionsPerAddress, maxConnections),
      };
    }),
    scaled: true,
  };
}
