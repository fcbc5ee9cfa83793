import { createPrivateKey, createPublicKey, X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { createRootCa, generateKeyPair, issueCertificate, type CertificateAuthority } from '@edgefleet/core';
import { KeyMaterialError } from '../config/key-material.js';
import { createOnce, fileExists, readSecretFile } from './key-files.js';

export interface IssuedCertificate {
  certificatePem: string;
  /** Lowercase hex, as Node's X509Certificate reports it (upper-cased there). */
  serial: string;
  /** SHA-256 of the DER, lowercase hex without separators. */
  fingerprintSha256: string;
  subject: string;
  notBefore: number;
  notAfter: number;
}

export interface DeviceCertificateRequest {
  deviceName: string;
  fleetName: string;
  publicKeyPem: string;
  validityDays: number;
  /** Explicit validity window (tests issue already-expired certificates this way). */
  notBefore?: Date;
  notAfter?: Date;
}

export function fingerprintOf(certificatePem: string): string {
  return new X509Certificate(certificatePem).fingerprint256.replace(/:/g, '').toLowerCase();
}

function describe(certificatePem: string): Omit<IssuedCertificate, 'notBefore' | 'notAfter'> {
  const x509 = new X509Certificate(certificatePem);
  return {
    certificatePem,
    serial: x509.serialNumber.toLowerCase(),
    fingerprintSha256: x509.fingerprint256.replace(/:/g, '').toLowerCase(),
    subject: x509.subject.split('\n').join(', '),
  };
}

/** X.509 times have whole seconds; store what the certificate will say. */
const wholeSeconds = (date: Date) => new Date(Math.floor(date.getTime() / 1000) * 1000);

/**
 * The device certificate authority: issues device client certificates (subject CN=<device>, OU=<fleet>)
 * and the device API's TLS server certificate. Its key lives on disk with mode 0600.
 */
export class DeviceCa {
  readonly fingerprintSha256: string;

  private constructor(
    private readonly authority: CertificateAuthority,
    private readonly now: () => number,
  ) {
    this.fingerprintSha256 = fingerprintOf(authority.certificatePem);
  }

  get certificatePem(): string {
    return this.authority.certificatePem;
  }

  /**
   * Loads the CA from its files, or (when `generate` is allowed and neither file exists) creates one and
   * writes it there. `warn` hears about a key file that others can read.
   */
  static async open(
    files: { certFile: string; keyFile: string },
    options: { generate: boolean; now?: () => number; warn?: (message: string) => void },
  ): Promise<DeviceCa> {
    const now = options.now ?? Date.now;
    const both = async () => (await fileExists(files.certFile)) && (await fileExists(files.keyFile));
    const neither = async () => !(await fileExists(files.certFile)) && !(await fileExists(files.keyFile));
    // Also while another server's lock exists: it may be between writing the key and the certificate.
    const lock = `${files.keyFile}.lock`;
    if (options.generate && ((await neither()) || (await fileExists(lock)))) {
      await createOnce(lock, both, async (publish) => {
        // Under the lock no creator is running: one file without the other is damage (reported below).
        if (!(await neither())) return;
        const authority = createRootCa({
          commonName: 'EdgeFleet device CA',
          organization: 'EdgeFleet',
          validityDays: 20 * 365,
          keyType: 'ecdsa-p256',
          pathLength: 0,
        });
        await publish.secret(files.keyFile, authority.privateKeyPem);
        await publish.public(files.certFile, authority.certificatePem);
      });
    }
    const [haveCert, haveKey] = await Promise.all([fileExists(files.certFile), fileExists(files.keyFile)]);
    if (!haveCert && !haveKey && !options.generate) {
      throw new KeyMaterialError(
        `deviceCa.certFile and deviceCa.keyFile are set but neither ${files.certFile} nor ${files.keyFile} ` +
          'exists; configured key files are never generated: copy them from the first server (ca/device-ca.crt ' +
          "and ca/device-ca.key in its data dir), or unset deviceCa to use (or generate) the CA in the data dir's ca/ folder",
      );
    }
    if (!haveCert || !haveKey) {
      throw new KeyMaterialError(
        `device CA incomplete: ${haveCert ? '' : `certificate ${files.certFile} missing`}${!haveCert && !haveKey ? ', ' : ''}${haveKey ? '' : `key ${files.keyFile} missing`}; ` +
          (options.generate
            ? 'restore both files (or remove both to generate a new CA, which invalidates every enrolled device)'
            : 'restore both files (configured key files are never generated)'),
      );
    }
    const certificatePem = await readFile(files.certFile, 'utf8');
    const key = await readSecretFile(files.keyFile);
    if (key.looseMode) options.warn?.(`device CA key ${files.keyFile} is readable by others; chmod 600 it`);
    const x509 = new X509Certificate(certificatePem);
    if (!x509.ca)
      throw new KeyMaterialError(
        `device CA certificate ${files.certFile} is not a CA certificate; copy the first server's ` +
          '(ca/device-ca.crt in its data dir, or its deviceCa.certFile)',
      );
    const privateKey = createPrivateKey(key.content);
    const publicKeyPem = createPublicKey(privateKey).export({ type: 'spki', format: 'pem' }) as string;
    if (!x509.checkPrivateKey(privateKey)) {
      throw new KeyMaterialError(
        `device CA key ${files.keyFile} does not belong to certificate ${files.certFile}; the two must be a pair: ` +
          "copy both from the same server (ca/device-ca.crt and ca/device-ca.key in the first server's data dir, " +
          'or its deviceCa files)',
      );
    }
    return new DeviceCa({ certificatePem, privateKeyPem: key.content, publicKeyPem }, now);
  }

  /** A client certificate naming the device and its fleet, for a key the device holds. */
  issueDeviceCertificate(request: DeviceCertificateRequest): IssuedCertificate {
    const notBefore = wholeSeconds(request.notBefore ?? new Date(this.now() - 60_000));
    const notAfter = wholeSeconds(
      request.notAfter ?? new Date(notBefore.getTime() + request.validityDays * 86_400_000),
    );
    const certificatePem = issueCertificate(this.authority, {
      subject: {
        commonName: request.deviceName,
        organizationalUnit: request.fleetName,
        organization: 'EdgeFleet device',
      },
      publicKeyPem: request.publicKeyPem,
      validityDays: request.validityDays,
      notBefore,
      notAfter,
      basicConstraints: { ca: false },
      keyUsage: ['digitalSignature'],
      extendedKeyUsage: ['clientAuth'],
      subjectAltName: { uris: [deviceUri(request.fleetName, request.deviceName)] },
    });
    return { ...describe(certificatePem), notBefore: notBefore.getTime(), notAfter: notAfter.getTime() };
  }

  /** A TLS server certificate for the device API, for the given host names and IP addresses. */
  issueServerCertificate(
    names: string[],
    validityDays = 825,
  ): { certificatePem: string; privateKeyPem: string } {
    const keys = generateKeyPair('ecdsa-p256');
    const ipAddresses = names.filter((n) => isIP(n) !== 0);
    const dnsNames = names.filter((n) => !ipAddresses.includes(n));
    const certificatePem = issueCertificate(this.authority, {
      subject: { commonName: names[0] ?? 'edgefleet-server', organization: 'EdgeFleet' },
      publicKeyPem: keys.publicKeyPem,
      validityDays,
      basicConstraints: { ca: false },
      keyUsage: ['digitalSignature'],
      extendedKeyUsage: ['serverAuth'],
      subjectAltName: {
        ...(dnsNames.length > 0 ? { dnsNames } : {}),
        ...(ipAddresses.length > 0 ? { ipAddresses } : {}),
      },
    });
    return { certificatePem, privateKeyPem: keys.privateKeyPem };
  }
}

/** Names the device in its certificate's subjectAltName. */
export function deviceUri(fleetName: string, deviceName: string): string {
  return `urn:edgefleet:device:${fleetName}:${deviceName}`;
}
