import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { createRootCa, generateKeyPair, issueCertificate } from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ServerClient } from '../../src/server-client/server-client.js';

/** An HTTPS operator port whose certificate a private CA issued, for 127.0.0.1 only. */
describe('the CLI against an https server with a private CA', () => {
  let server: https.Server;
  let port: number;
  beforeAll(async () => {
    const root = createRootCa({ commonName: 'Ops root', validityDays: 30, keyType: 'ecdsa-p256' });
    const keys = generateKeyPair('ecdsa-p256');
    const cert = issueCertificate(root, {
      subject: { commonName: '127.0.0.1' },
      publicKeyPem: keys.publicKeyPem,
      validityDays: 30,
      basicConstraints: { ca: false },
      keyUsage: ['digitalSignature'],
      extendedKeyUsage: ['serverAuth'],
      subjectAltName: { ipAddresses: ['127.0.0.1'] },
    });
    server = https.createServer({ cert, key: keys.privateKeyPem }, (_req, res) => res.end('{}'));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(() => new Promise((resolve) => server.close(resolve)));

  it('says the certificate is not trusted and names NODE_EXTRA_CA_CERTS', async () => {
    const client = new ServerClient({ server: `https://127.0.0.1:${port}`, token: 'efo_x' });
    await expect(client.listFleets()).rejects.toThrow(
      /^cannot reach the EdgeFleet server at https:\/\/127\.0\.0\.1:\d+: UNABLE_TO_VERIFY_LEAF_SIGNATURE; the server's certificate is not trusted: set NODE_EXTRA_CA_CERTS to the file of the CA that issued it/,
    );
  });
});
