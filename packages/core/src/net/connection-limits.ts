import type { Server, Socket } from 'node:net';

export interface ConnectionCaps {
  /** Connections open at once on this listener; more are closed as they arrive. */
  maxConnections: number;
  /** Connections open at once from one remote address (TCP only; Unix sockets have none). */
  maxConnectionsPerAddress: number;
}

export interface ConnectionCapsHandle {
  /** Connections open now per remote address (for tests and metrics). */
  openFrom(address: string): number;
  /** Connections closed on arrival because a cap was reached, since start. */
  readonly refused: number;
}

/**
 * Caps a listener's connections in total (the kernel-level `maxConnections`, applied before any TLS or HTTP
 * work) and per remote address, so that one client holding connections open cannot use up the process's file
 * descriptors and starve its other listeners. Works for net, http, https and tls servers alike: 'connection'
 * carries the raw socket before any handshake.
 */
export function capConnections(server: Server, caps: ConnectionCaps): ConnectionCapsHandle {
  server.maxConnections = caps.maxConnections;
  const open = new Map<string, number>();
  let refused = 0;
  server.on('drop', () => {
    refused++;
  });
  server.on('connection', (socket: Socket) => {
    const address = socket.remoteAddress;
    if (address === undefined) return; // a Unix socket: the total cap applies
    const count = (open.get(address) ?? 0) + 1;
    if (count > caps.maxConnectionsPerAddress) {
      refused++;
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
  return {
    openFrom: (address) => open.get(address) ?? 0,
    get refused() {
      return refused;
    },
  };
}
