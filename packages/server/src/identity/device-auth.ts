import type { TLSSocket } from 'node:tls';
import type { FastifyRequest } from 'fastify';
import { bearerTokenOf } from '../auth/index.js';
import { DomainError } from '../errors/index.js';
import {
  ENROLLMENT_TOKEN_PREFIX,
  type AuthenticatedDevice,
  type DeviceIdentityService,
  type PresentedCertificate,
} from './identity-service.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** Set on device routes once the client certificate checked out. */
    device?: AuthenticatedDevice;
  }
}

/** What the TLS connection under a request presented. */
export function presentedCertificateOf(request: FastifyRequest): PresentedCertificate {
  const socket = request.raw.socket as Partial<TLSSocket>;
  if (typeof socket.getPeerCertificate !== 'function') return { authorized: false };
  const peer = socket.getPeerCertificate();
  const fingerprint = peer?.fingerprint256;
  const error = socket.authorizationError as unknown;
  return {
    authorized: socket.authorized === true,
    ...(error !== undefined && error !== null
      ? {
          authorizationError:
            typeof error === 'string' ? error : String((error as Error & { code?: string }).code ?? error),
        }
      : {}),
    ...(fingerprint ? { fingerprintSha256: fingerprint.replace(/:/g, '').toLowerCase() } : {}),
  };
}

/** The `device` requirement: a valid client certificate, mapped to its device. */
export function deviceAuthenticator(
  identity: DeviceIdentityService,
  /** Hears each request a device was authenticated for (the listener protects its connection from a cap). */
  onAuthenticated?: (request: FastifyRequest) => void,
): (request: FastifyRequest) => Promise<void> {
  // A TLS connection's client certificate cannot change (the server never renegotiates), so it is read once
  // per connection; revocation and expiry are still checked against the database on every request.
  const presentedBySocket = new WeakMap<object, PresentedCertificate>();
  return async (request) => {
    let presented = presentedBySocket.get(request.raw.socket);
    if (presented === undefined) {
      presented = presentedCertificateOf(request);
      presentedBySocket.set(request.raw.socket, presented);
    }
    request.device = await identity.authenticate(presented);
    onAuthenticated?.(request);
  };
}

/** The `enrollment-token` requirement: the header must carry one (the handler consumes it). */
export async function enrollmentTokenAuthenticator(request: FastifyRequest): Promise<void> {
  const token = bearerTokenOf(request.headers.authorization);
  if (token === undefined || !token.startsWith(ENROLLMENT_TOKEN_PREFIX)) {
    throw new DomainError(
      'EnrollmentTokenInvalid',
      `enrollment needs "Authorization: Bearer ${ENROLLMENT_TOKEN_PREFIX}…" with the token an operator created for the device`,
    );
  }
}

export function requireDevice(request: FastifyRequest): AuthenticatedDevice {
  if (request.device === undefined)
    throw new Error('device identity missing: route registered without device auth');
  return request.device;
}
