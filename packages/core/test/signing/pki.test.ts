import { execFileSync, spawnSync } from 'node:child_process';
import { X509Certificate, createPublicKey } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  createIntermediateCa,
  createRootCa,
  generateKeyPair,
  issueCertificate,
  issueCodeSigningCertificate,
} from '../../src/signing/index.js';
import { tempDirs } from './helpers.js';

const dirs = tempDirs();
afterEach(() => dirs.cleanup());

const hasOpenssl = spawnSync('openssl', ['version']).status === 0;

/** OpenSSL's own reading of a certificate: an independent parser for what we build. */
function opensslText(pem: string): string {
  return execFileSync('openssl', ['x509', '-noout', '-text'], { input: pem }).toString();
}

describe('dev PKI', () => {
  it('generateKeyPair gives PEMs of the asked type', () => {
    const ec = generateKeyPair('ecdsa-p256');
    expect(createPublicKey(ec.publicKeyPem).asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    expect(ec.privateKeyPem).toMatch(/^-----BEGIN PRIVATE KEY-----\n/);
    expect(createPublicKey(generateKeyPair('ed25519').publicKeyPem).asymmetricKeyType).toBe('ed25519');
  });

  it('a root CA is self-signed, a CA, limited by pathLength when asked', () => {
    const root = createRootCa({
      commonName: 'Root',
      organization: 'EdgeFleet',
      validityDays: 10,
      keyType: 'ed25519',
      pathLength: 1,
    });
    const cert = new X509Certificate(root.certificatePem);
    expect(cert.subject).toBe('O=EdgeFleet\nCN=Root');
    expect(cert.issuer).toBe(cert.subject);
    expect(cert.ca).toBe(true);
    expect(cert.verify(cert.publicKey)).toBe(true);
    expect(cert.publicKey.export({ type: 'spki', format: 'pem' })).toBe(root.publicKeyPem);
    const days = (Date.parse(cert.validTo) - Date.parse(cert.validFrom)) / 86_400_000;
    expect(days).toBe(10);
  });

  it.skipIf(!hasOpenssl)(
    'OpenSSL reads our certificates as intended and verifies the chain strictly',
    async () => {
      const dir = await dirs.make();
      const root = createRootCa({
        commonName: 'Root',
        validityDays: 10,
        keyType: 'ecdsa-p256',
        pathLength: 1,
      });
      const intermediate = createIntermediateCa({
        issuer: root,
        commonName: 'Int',
        validityDays: 5,
        keyType: 'ed25519',
      });
      const leaf = issueCodeSigningCertificate({
        issuer: intermediate,
        commonName: 'Pub',
        validityDays: 2,
        keyType: 'ecdsa-p256',
      });

      const rootText = opensslText(root.certificatePem);
      expect(rootText).toMatch(/Basic Constraints: critical\s+CA:TRUE, pathlen:1/);
      expect(rootText).toMatch(/Key Usage: critical\s+Certificate Sign, CRL Sign/);
      expect(rootText).toContain('Signature Algorithm: ecdsa-with-SHA256');
      const leafText = opensslText(leaf.certificatePem);
      expect(leafText).toMatch(/Basic Constraints: critical\s+CA:FALSE/);
      expect(leafText).toMatch(/Key Usage: critical\s+Digital Signature/);
      expect(leafText).toMatch(/Extended Key Usage:\s+Code Signing/);
      expect(leafText).toContain('Signature Algorithm: ED25519');
      expect(leafText).toContain('X509v3 Authority Key Identifier');

      await writeFile(join(dir, 'root.pem'), root.certificatePem);
      await writeFile(join(dir, 'int.pem'), intermediate.certificatePem);
      await writeFile(join(dir, 'leaf.pem'), leaf.certificatePem);
      const verify = spawnSync('openssl', [
        'verify',
        '-x509_strict',
        '-CAfile',
        join(dir, 'root.pem'),
        '-untrusted',
        join(dir, 'int.pem'),
        join(dir, 'leaf.pem'),
      ]);
      expect(verify.stdout.toString() + verify.stderr.toString()).toContain(': OK');
    },
  );

  it('issueCertificate is generic: subject, key, validity, serial, SAN and EKU as given (device certificates)', () => {
    const ca = createRootCa({ commonName: 'Fleet CA', validityDays: 30, keyType: 'ecdsa-p256' });
    const device = generateKeyPair('ecdsa-p256');
    const notBefore = new Date('2030-01-01T00:00:00Z');
    const pem = issueCertificate(ca, {
      subject: {
        commonName: 'device-0042',
        organization: 'Acme',
        organizationalUnit: 'Fleet A',
        country: 'DE',
      },
      publicKeyPem: device.publicKeyPem,
      validityDays: 365,
      notBefore,
      serialNumberHex: 'ff01',
      basicConstraints: { ca: false },
      keyUsage: ['digitalSignature', 'keyAgreement'],
      extendedKeyUsage: ['clientAuth', '1.3.6.1.4.1.99999.1'],
      subjectAltName: {
        dnsNames: ['device-0042.fleet.local'],
        uris: ['spiffe://edgefleet/device/0042'],
        ipAddresses: ['10.1.2.3'],
        emails: ['ops@example.com'],
      },
    });
    const cert = new X509Certificate(pem);
    expect(cert.subject.split('\n')).toEqual(['C=DE', 'O=Acme', 'OU=Fleet A', 'CN=device-0042']);
    expect(cert.issuer).toBe('CN=Fleet CA');
    expect(cert.checkIssued(new X509Certificate(ca.certificatePem))).toBe(true);
    expect(cert.verify(new X509Certificate(ca.certificatePem).publicKey)).toBe(true);
    expect(cert.publicKey.export({ type: 'spki', format: 'pem' })).toBe(device.publicKeyPem);
    expect(new Date(cert.validFrom).toISOString()).toBe(notBefore.toISOString());
    expect(new Date(cert.validTo).toISOString()).toBe('2031-01-01T00:00:00.000Z');
    expect(cert.serialNumber).toBe('FF01');
    // High bit set: encoded with a leading zero byte so the INTEGER stays positive.
    if (hasOpenssl) expect(opensslText(pem)).toMatch(/Serial Number: 65281 \(0xff01\)/);
    expect(cert.ca).toBe(false);
    expect(cert.keyUsage).toEqual(['1.3.6.1.5.5.7.3.2', '1.3.6.1.4.1.99999.1']);
    expect(cert.subjectAltName).toBe(
      'DNS:device-0042.fleet.local, URI:spiffe://edgefleet/device/0042, IP Address:10.1.2.3, email:ops@example.com',
    );
  });

  it('rejects options that would make a bad certificate, saying which', () => {
    const ca = createRootCa({ commonName: 'CA', validityDays: 30, keyType: 'ed25519' });
    const { publicKeyPem } = generateKeyPair('ed25519');
    expect(() =>
      issueCertificate(ca, { subject: { commonName: 'x' }, publicKeyPem, validityDays: 0 }),
    ).toThrow(/validityDays/);
    expect(() =>
      issueCertificate(ca, {
        subject: { commonName: 'x', country: 'Germany' },
        publicKeyPem,
        validityDays: 1,
      }),
    ).toThrow(/two-letter/);
    expect(() =>
      issueCertificate(ca, {
        subject: { commonName: 'x' },
        publicKeyPem,
        validityDays: 1,
        notBefore: new Date('2030-01-02'),
        notAfter: new Date('2030-01-01'),
      }),
    ).toThrow(/notAfter must be after notBefore/);
    expect(() =>
      issueCertificate(ca, { subject: { commonName: 'x' }, publicKeyPem: 'nope', validityDays: 1 }),
    ).toThrow(/not a PEM public key/);
  });
});
