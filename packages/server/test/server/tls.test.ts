import { X509Certificate } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import https from 'node:https';
import type { TLSSocket } from 'node:tls';
import os from 'node:os';
import path from 'node:path';
import { createRootCa, generateKeyPair, issueCertificate } from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../support/server.js';

/** GETs a URL over HTTPS trusting `ca`; resolves with the status and the server certificate's fingerprint. */
function get(url: string, ca: string): Promise<{ status: number; fingerprint: string }> {
  return new Promise((resolve, reject) => {
    https
      .get(url, { ca, agent: false }, (res) => {
        const fingerprint = (res.socket as TLSSocket).getPeerCertificate().fingerprint256;
        res.resume();
        res.on('end', () => resolve({ status: res.statusCode ?? 0, fingerprint }));
      })
      .on('error', reject);
  });
}

describe('operator-provided TLS certificates', () => {
  let dir: string;
  let t: TestServer;
  let rootPem: string;
  let leafPem: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-tls-'));
    const root = createRootCa({ commonName: 'Ops root', validityDays: 30, keyType: 'ecdsa-p256' });
    const keys = generateKeyPair('ecdsa-p256');
    leafPem = issueCertificate(root, {
      subject: { commonName: 'edgefleet.test' },
      publicKeyPem: keys.publicKeyPem,
      validityDays: 30,
      basicConstraints: { ca: false },
      keyUsage: ['digitalSignature'],
      extendedKeyUsage: ['serverAuth'],
      subjectAltName: { ipAddresses: ['127.0.0.1'] },
    });
    rootPem = root.certificatePem;
    await writeFile(path.join(dir, 'server.crt'), leafPem);
    await writeFile(path.join(dir, 'server.key'), keys.privateKeyPem, { mode: 0o600 });
    const pair = { certFile: path.join(dir, 'server.crt'), keyFile: path.join(dir, 'server.key') };
    t = await startTestServer({ config: { tls: pair, deviceTls: pair } });
  });
  afterAll(async () => {
    await t?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('serves the operator API over HTTPS with them', async () => {
    expect(t.url).toMatch(/^https:/);
    const answer = await get(`${t.url}/healthz`, rootPem);
    expect(answer.status).toBe(200);
    expect(answer.fingerprint).toBe(new X509Certificate(leafPem).fingerprint256);
  });

  it('serves the device API with the provided certificate instead of generating one', async () => {
    const answer = await get(`${t.server.deviceUrl}/healthz`, rootPem);
    expect(answer.status).toBe(200);
    expect(answer.fingerprint).toBe(new X509Certificate(leafPem).fingerprint256);
  });
});
