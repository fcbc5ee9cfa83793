import { X509Certificate } from 'node:crypto';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import https from 'node:https';
import type { TLSSocket } from 'node:tls';
import os from 'node:os';
import path from 'node:path';
import { createRootCa, generateKeyPair, issueCertificate } from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readTlsPair } from '../../src/server/tls-files.js';
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

describe('TLS file mistakes name the config key and the file', () => {
  let dir: string;
  const file = (name: string) => path.join(dir, name);
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-tls-mistakes-'));
    const root = createRootCa({ commonName: 'Ops root', validityDays: 30, keyType: 'ecdsa-p256' });
    const keys = generateKeyPair('ecdsa-p256');
    const other = generateKeyPair('ecdsa-p256');
    await writeFile(
      file('server.crt'),
      issueCertificate(root, {
        subject: { commonName: 'edgefleet.test' },
        publicKeyPem: keys.publicKeyPem,
        validityDays: 30,
        basicConstraints: { ca: false },
        keyUsage: ['digitalSignature'],
        extendedKeyUsage: ['serverAuth'],
        subjectAltName: { ipAddresses: ['127.0.0.1'] },
      }),
    );
    await writeFile(file('server.key'), keys.privateKeyPem, { mode: 0o600 });
    await writeFile(file('other.key'), other.privateKeyPem, { mode: 0o600 });
    await writeFile(file('locked.key'), keys.privateKeyPem, { mode: 0o600 });
    await chmod(file('locked.key'), 0o000);
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('reads a matching pair', async () => {
    const pair = await readTlsPair('tls', { certFile: file('server.crt'), keyFile: file('server.key') });
    expect(pair.cert).toMatch(/BEGIN CERTIFICATE/);
    expect(pair.key).toMatch(/PRIVATE KEY/);
  });

  it('names a missing file, swapped files and a key of another certificate', async () => {
    await expect(
      readTlsPair('tls', { certFile: file('nope.pem'), keyFile: file('server.key') }),
    ).rejects.toThrow(`cannot read tls.certFile (${file('nope.pem')}): no such file`);
    await expect(
      readTlsPair('deviceTls', { certFile: file('server.key'), keyFile: file('server.crt') }),
    ).rejects.toThrow(
      `deviceTls.certFile (${file('server.key')}): not a PEM certificate (it holds a private key: are certFile and keyFile swapped?)`,
    );
    await expect(
      readTlsPair('tls', { certFile: file('server.crt'), keyFile: file('server.crt') }),
    ).rejects.toThrow(
      `tls.keyFile (${file('server.crt')}): not a PEM private key (it holds a certificate: are certFile and keyFile swapped?)`,
    );
    await expect(
      readTlsPair('tls', { certFile: file('server.crt'), keyFile: file('other.key') }),
    ).rejects.toThrow(
      `tls.certFile (${file('server.crt')}) and tls.keyFile (${file('other.key')}) do not match`,
    );
  });

  // root reads any file whatever its mode: nothing to refuse there.
  it.skipIf(process.getuid?.() === 0)('names a key file the server may not read, and its uid', async () => {
    await expect(
      readTlsPair('tls', { certFile: file('server.crt'), keyFile: file('locked.key') }),
    ).rejects.toThrow(
      new RegExp(
        `cannot read tls\\.keyFile \\(.*locked\\.key\\): permission denied \\(the server runs as uid ${process.getuid?.()}`,
      ),
    );
  });

  it('stops the server at start with that message', async () => {
    await expect(
      startTestServer({ config: { tls: { certFile: file('server.crt'), keyFile: file('other.key') } } }),
    ).rejects.toThrow(/tls\.certFile .* and tls\.keyFile .* do not match/);
  });
});
