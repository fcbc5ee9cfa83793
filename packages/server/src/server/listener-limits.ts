import type { ListenerLimits } from '@edgefleet/core';

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
