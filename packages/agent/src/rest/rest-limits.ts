import type { ListenerLimits } from '@edgefleet/core';

/**
 * Timeouts and connection caps of each REST listener (Unix socket and TCP; see docs/security.md#limits).
 * Clients are local or on the device's network: seconds are plenty for headers, and a few hundred connections
 * for any real use. The caps keep a flood on the TCP port from using up the descriptors the gRPC socket needs.
 */
export const REST_LISTENER_LIMITS: ListenerLimits = {
  handshakeTimeoutMs: 10_000, // no TLS on these listeners; kept for the shared type
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  idleTimeoutMs: 30_000,
  keepAliveTimeoutMs: 30_000,
  maxConnections: 256,
  maxConnectionsPerAddress: 64,
};
