import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { capConnections, type ConnectionRefusal } from './connection-limits.js';

/** Timeouts and connection caps of one HTTP(S) listener (the values in use: docs/security.md#limits). */
export interface ListenerLimits {
  /** A TLS handshake not finished by then is dropped (Node's default is 120 s). TLS listeners only. */
  handshakeTimeoutMs: number;
  /** The request line and headers must arrive within this time of the request's start. */
  headersTimeoutMs: number;
  /** The whole request, body included, must arrive within this time (0: no limit). */
  requestTimeoutMs: number;
  /** A connection on which nothing is sent or received for this long is closed. */
  idleTimeoutMs: number;
  /** How long an idle keep-alive connection waits for its next request. */
  keepAliveTimeoutMs: number;
  maxConnections: number;
  maxConnectionsPerAddress: number;
}

/**
 * How often Node checks the headers and request timeouts: every 30 s by default, which would let a slow client
 * hold on far past them.
 */
function checkingIntervalMs(limits: ListenerLimits): number {
  const timeouts = [limits.headersTimeoutMs, limits.requestTimeoutMs].filter((ms) => ms > 0);
  return Math.max(100, Math.min(1000, ...timeouts.map((ms) => ms / 2)));
}

/** Options that only a TLS server's constructor takes (with applyListenerLimits for the rest). */
export function tlsServerLimitOptions(limits: ListenerLimits): {
  handshakeTimeout: number;
  connectionsCheckingInterval: number;
} {
  return {
    handshakeTimeout: limits.handshakeTimeoutMs,
    connectionsCheckingInterval: checkingIntervalMs(limits),
  };
}

/**
 * Applies the timeouts and caps to an HTTP(S) server that is not listening yet; `onRefused` hears of each
 * connection a cap refused (ConnectionRefusalLog.refused). `authenticated` says whether a request was
 * authenticated, which protects its connection from the total cap (capConnections); absent, none is (a listener
 * where anyone may send a request: the agent's REST, the operator port before its token is checked).
 */
export function applyListenerLimits(
  server: Server,
  limits: ListenerLimits,
  onRefused?: (refusal: ConnectionRefusal) => void,
  authenticated?: (req: IncomingMessage) => boolean,
): void {
  // Read when the server starts listening (the timer starts then), so it may be set after construction.
  (server as { connectionsCheckingInterval?: number }).connectionsCheckingInterval =
    checkingIntervalMs(limits);
  // Node refuses to check a headers timeout longer than the request timeout (the request includes its headers).
  server.headersTimeout =
    limits.requestTimeoutMs > 0
      ? Math.min(limits.headersTimeoutMs, limits.requestTimeoutMs)
      : limits.headersTimeoutMs;
  server.requestTimeout = limits.requestTimeoutMs;
  server.keepAliveTimeout = limits.keepAliveTimeoutMs;
  server.setTimeout(limits.idleTimeoutMs);
  // Requests in progress per connection (the raw socket: a TLS request's socket wraps it as _parent), so that a
  // full address group may close one of its idle connections for a newcomer; and which have carried one, or an
  // authenticated one, which a full listener never closes for another group's newcomer (capConnections).
  const inProgress = new WeakMap<Socket, number>();
  const capped = capConnections(server, limits, {
    ...(onRefused && { onRefused }),
    idle: (socket) => (inProgress.get(socket) ?? 0) === 0,
  });
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const socket = ((req.socket as Socket & { _parent?: Socket })._parent ?? req.socket) as Socket;
    capped.carriedRequest(socket);
    inProgress.set(socket, (inProgress.get(socket) ?? 0) + 1);
    res.once('close', () => {
      inProgress.set(socket, (inProgress.get(socket) ?? 1) - 1);
      // Asked once the request was handled: its authentication (a device's certificate, checked against
      // revocation in the database) is known only then.
      if (authenticated?.(req) === true) capped.authenticated(socket);
    });
  });
}
