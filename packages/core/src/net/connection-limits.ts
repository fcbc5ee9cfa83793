import { readFileSync } from 'node:fs';
import { isIPv4, type Server, type Socket } from 'node:net';

export interface ConnectionCaps {
  /** Connections open at once on this listener; more are closed as they arrive. */
  maxConnections: number;
  /** Connections open at once from one remote address (TCP only; Unix sockets have none). */
  maxConnectionsPerAddress: number;
}

/**
 * Caps a listener's connections in total (the kernel-level `maxConnections`, applied before any TLS or HTTP
 * work) and per remote address, so that one client holding connections open cannot use up the process's file
 * descriptors and starve its other listeners. Works for net, http, https and tls servers alike: 'connection'
 * carries the raw socket before any handshake.
 */
export function capConnections(server: Server, caps: ConnectionCaps): void {
  server.maxConnections = caps.maxConnections;
  const open = new Map<string, number>();
  server.on('connection', (socket: Socket) => {
    if (socket.remoteAddress === undefined) return; // a Unix socket: the total cap applies
    const address = clientAddress(socket.remoteAddress);
    const count = (open.get(address) ?? 0) + 1;
    if (count > caps.maxConnectionsPerAddress) {
      socket.destroy();
      return;
    }
    open.set(address, count);
    socket.once('close', () => {
      const left = (open.get(address) ?? 1) - 1;
      if (left === 0) open.delete(address);
      else open.set(address, left);
    });
  });
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
