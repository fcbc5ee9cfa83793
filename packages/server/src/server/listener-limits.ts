import type { Server } from 'node:http';
import { capConnections, type ConnectionCapsHandle } from '@edgefleet/core';

/** Timeouts and connection caps of one HTTP(S) listener. Every value is documented in docs/security.md#limits. */
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
 * The device port faces the fleet (and whatever else reaches it): short timeouts, and caps well below the
 * process's file descriptor limit so that a flood of connections there leaves the operator port working.
 * Devices behind one NAT share an address, hence a per-address cap in the hundreds, not a handful.
 */
export const DEVICE_LISTENER_LIMITS: ListenerLimits = {
  handshakeTimeoutMs: 10_000,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 60_000,
  idleTimeoutMs: 60_000,
  keepAliveTimeoutMs: 30_000,
  maxConnections: 4096,
  maxConnectionsPerAddress: 256,
};

/** The operator port: few clients; uploads of large models need a long request timeout. */
export const OPERATOR_LISTENER_LIMITS: ListenerLimits = {
  handshakeTimeoutMs: 10_000,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 30 * 60_000,
  idleTimeoutMs: 60_000,
  keepAliveTimeoutMs: 30_000,
  maxConnections: 1024,
  maxConnectionsPerAddress: 128,
};

/**
 * How often Node checks the headers and request timeouts: every 30 s by default, which would let a slow client
 * hold on far past them.
 */
function checkingIntervalMs(limits: ListenerLimits): number {
  return Math.max(100, Math.min(1000, limits.headersTimeoutMs / 2));
}

/** Options that only a TLS server's constructor takes. */
export function constructorOptions(limits: ListenerLimits): {
  handshakeTimeout: number;
  connectionsCheckingInterval: number;
} {
  return { handshakeTimeout: limits.handshakeTimeoutMs, connectionsCheckingInterval: checkingIntervalMs(limits) };
}

/** Applies the timeouts and caps to an HTTP(S) server that is not listening yet. */
export function applyListenerLimits(server: Server, limits: ListenerLimits): ConnectionCapsHandle {
  // Read when the server starts listening (the timer starts then), so it may be set after construction.
  (server as { connectionsCheckingInterval?: number }).connectionsCheckingInterval = checkingIntervalMs(limits);
  server.headersTimeout = limits.headersTimeoutMs;
  server.requestTimeout = limits.requestTimeoutMs;
  server.keepAliveTimeout = limits.keepAliveTimeoutMs;
  server.setTimeout(limits.idleTimeoutMs);
  return capConnections(server, limits);
}
