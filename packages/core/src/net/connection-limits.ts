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
 * `idleClosed`: the connection was let in, and an idle connection closed instead.
 */
export interface ConnectionRefusal {
  refusedBy: RefusedBy;
  address?: string;
  idleClosed?: boolean;
}

export interface CapHooks {
  /** Hears of each connection over a cap (for a log line and a counter). */
  onRefused?: (refusal: ConnectionRefusal) => void;
  /**
   * Whether an open connection may be closed to make room for a new one: one with no request in progress (HTTP:
   * none started, or idle between requests). Absent: a full cap refuses newcomers.
   */
  idle?: (socket: Socket) => boolean;
}

/** Connections closed to make room but not yet gone, over the total cap, before Node refuses any more itself. */
export const CLOSING_ALLOWANCE = 16;

/** Connections looked at, at most, for an idle one to close at the total cap. */
const MAX_IDLE_CHECKS = 1024;

/** The group of a Unix socket's connections: they have no address, and only the total cap applies. */
const UNIX_PEERS = 'unix socket';

/**
 * Caps a listener's connections in total and per remote address group (addressGroup: an IPv4 address, an IPv6
 * /64), so that one client holding connections open cannot use up the process's file descriptors and starve
 * its other listeners. Works for net, http, https and tls servers alike: 'connection' carries the raw socket
 * before any handshake.
 *
 * With `hooks.idle`, a full cap makes room by closing an idle connection rather than refusing the newcomer: an
 * address group at its cap closes its own oldest idle connection; a listener at its total cap closes the oldest
 * idle connection of its largest group that has one. A client that holds connections without using them (a
 * local user flooding a loopback listener, where every client shares 127.0.0.1 and can use any of 127/8) then
 * cannot keep out one that sends its request at once. Only when none is idle is the newcomer closed. The caps
 * are then counted here (a connection closed to make room leaves them at once; its descriptor is closed at
 * once too, only Node's count of it lags until its 'close'), and Node's `maxConnections` is a backstop
 * CLOSING_ALLOWANCE above the total; without `idle`, Node's is the total cap, applied before any work.
 * Each connection over a cap is reported to `hooks.onRefused` (Node says so of those it closes with 'drop').
 */
export function capConnections(server: Server, caps: ConnectionCaps, hooks: CapHooks = {}): void {
  const { onRefused, idle } = hooks;
  server.maxConnections = caps.maxConnections + (idle ? CLOSING_ALLOWANCE : 0);
  if (onRefused) {
    server.on('drop', (peer?: { remoteAddress?: string }) => {
      const address = peer?.remoteAddress;
      onRefused({ refusedBy: 'total', ...(address !== undefined && { address: addressGroup(address) }) });
    });
  }
  // Each group's open connections, oldest first (a Set keeps insertion order), and the group of each.
  const open = new Map<string, Set<Socket>>();
  const groupOf = new Map<Socket, string>();
  const release = (socket: Socket) => {
    const key = groupOf.get(socket);
    if (key === undefined) return;
    groupOf.delete(socket);
    const group = open.get(key);
    group?.delete(socket);
    if (group?.size === 0) open.delete(key);
  };
  /**
   * The oldest idle connection of the largest group, else the first idle one found among at most
   * MAX_IDLE_CHECKS others: a flood against a listener whose connections are all busy costs a bounded look each.
   */
  const idleToClose = (): Socket | undefined => {
    let largest: Set<Socket> | undefined;
    for (const group of open.values())
      if (largest === undefined || group.size > largest.size) largest = group;
    let checks = 0;
    for (const group of largest === undefined ? [] : [largest, ...open.values()]) {
      for (const socket of group) {
        if (idle!(socket)) return socket;
        if (++checks >= MAX_IDLE_CHECKS) return undefined;
      }
    }
    return undefined;
  };
  server.on('connection', (socket: Socket) => {
    const address = socket.remoteAddress === undefined ? undefined : addressGroup(socket.remoteAddress);
    const report = (refusedBy: RefusedBy, idleClosed: boolean) =>
      onRefused?.({
        refusedBy,
        ...(address !== undefined && { address }),
        ...(idleClosed && { idleClosed }),
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
      victim = idleToClose();
    }
    if (refusedBy !== undefined) {
      if (victim === undefined) {
        socket.destroy();
        report(refusedBy, false);
        return;
      }
      release(victim);
      victim.destroy();
      report(refusedBy, true);
    }
    let joined = open.get(key);
    if (joined === undefined) open.set(key, (joined = new Set()));
    joined.add(socket);
    groupOf.set(socket, key);
    socket.once('close', () => release(socket));
  });
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
