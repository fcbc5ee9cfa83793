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

/**
 * The operator port: few clients. Its request timeout is as short as the device port's; the model-upload route
 * alone (admin-authenticated before its body is read) has a longer deadline of its own (uploads.modelUploadTimeoutSeconds).
 */
export const OPERATOR_LISTENER_LIMITS: ListenerLimits = {
  handshakeTimeoutMs: 10_000,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 60_000,
  idleTimeoutMs: 60_000,
  keepAliveTimeoutMs: 30_000,
  maxConnections: 1024,
  maxConnectionsPerAddress: 128,
};

/**
 * The device port's body limit for every route that sets none of its own: devices send small JSON bodies
 * (registration, identity, deployment results), and an unauthenticated peer's body (a 404 included) is read
 * before it is refused. The heartbeat and capture routes set their own (`heartbeat.maxBodyBytes`, captures).
 */
export const DEVICE_BODY_LIMIT_BYTES = 64 * 1024;
