import { connect } from 'node:tls';

/** The issuer of the device API certificates edgefleet-server generates (server identity/device-ca.ts). */
const DEVICE_CA_NAME = 'EdgeFleet device CA';
const PROBE_TIMEOUT_MS = 3000;

/**
 * Failures a `--server` pointed at a TLS port gives: plain HTTP to it is cut off (UND_ERR_SOCKET, ECONNRESET),
 * HTTPS to it stops at the certificate, which no public CA signed.
 */
const TLS_PORT_SYMPTOMS = new Set([
  'UND_ERR_SOCKET',
  'ECONNRESET',
  'EPROTO',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

export function looksLikeTlsPort(code: string | undefined): boolean {
  return code !== undefined && TLS_PORT_SYMPTOMS.has(code);
}

/**
 * What answers at `server`'s host and port when it speaks TLS: 'device-api' when its certificate is issued by an
 * EdgeFleet device CA, 'tls' for any other TLS service, undefined when no TLS handshake completes. Reads the
 * certificate only (nothing is trusted or sent), within `timeoutMs` in all.
 */
export function probeTlsPort(
  server: string,
  timeoutMs = PROBE_TIMEOUT_MS,
): Promise<'device-api' | 'tls' | undefined> {
  const url = new URL(server);
  const port = Number(url.port || (url.protocol === 'https:' ? 443 : 80));
  const host = url.hostname.replace(/^\[|\]$/g, '');
  return new Promise((resolve) => {
    const socket = connect({ host, port, rejectUnauthorized: false }, () => {
      const issuer = socket.getPeerCertificate().issuer as Record<string, string | string[]> | undefined;
      const names = [issuer?.CN ?? []].flat();
      socket.destroy();
      resolve(names.includes(DEVICE_CA_NAME) ? 'device-api' : 'tls');
    });
    // A limit on the whole probe, not socket.setTimeout's idle one, whose reset by bytes is Node's detail.
    const timer = setTimeout(() => {
      socket.destroy();
      resolve(undefined);
    }, timeoutMs);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve(undefined);
    });
    socket.once('error', () => resolve(undefined));
  });
}
