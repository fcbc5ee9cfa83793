/**
 * The device side, for tests: key pairs and PKCS#10 CSRs (built with asn1-csr and Node's crypto), and a
 * mutual-TLS HTTPS client for the device API.
 */
import { createPublicKey, generateKeyPairSync, sign, type KeyObject } from 'node:crypto';
import https from 'node:https';
import { CertificationRequest, CertificationRequestInfo } from '@peculiar/asn1-csr';
import { AsnConvert } from '@peculiar/asn1-schema';
import {
  AlgorithmIdentifier,
  AttributeTypeAndValue,
  AttributeValue,
  Name,
  RelativeDistinguishedName,
  SubjectPublicKeyInfo,
} from '@peculiar/asn1-x509';
import type { TlsIdentity } from '../../../../test/support/device-tls.js';

export type DeviceKeyType = 'ecdsa-p256' | 'ecdsa-p384' | 'ed25519' | 'rsa';

export interface DeviceKey {
  privateKeyPem: string;
  publicKeyPem: string;
  privateKey: KeyObject;
}

export function deviceKey(type: DeviceKeyType = 'ecdsa-p256'): DeviceKey {
  const pair =
    type === 'ed25519'
      ? generateKeyPairSync('ed25519')
      : type === 'rsa'
        ? generateKeyPairSync('rsa', { modulusLength: 2048 })
        : generateKeyPairSync('ec', { namedCurve: type === 'ecdsa-p384' ? 'P-384' : 'P-256' });
  return {
    privateKey: pair.privateKey,
    privateKeyPem: pair.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string,
    publicKeyPem: pair.publicKey.export({ type: 'spki', format: 'pem' }) as string,
  };
}

function toPem(label: string, der: Buffer): string {
  return `-----BEGIN ${label}-----\n${(der.toString('base64').match(/.{1,64}/g) ?? []).join('\n')}\n-----END ${label}-----\n`;
}

/** A CSR for `key`, self-signed as PKCS#10 requires; `tamper` flips one byte of the signed part afterwards. */
export function createCsr(key: DeviceKey, commonName: string, options: { tamper?: boolean } = {}): string {
  const spki = AsnConvert.parse(
    createPublicKey(key.privateKey).export({ type: 'spki', format: 'der' }),
    SubjectPublicKeyInfo,
  );
  const info = new CertificationRequestInfo({
    subject: new Name([
      new RelativeDistinguishedName([
        new AttributeTypeAndValue({ type: '2.5.4.3', value: new AttributeValue({ utf8String: commonName }) }),
      ]),
    ]),
    subjectPKInfo: spki,
  });
  const infoDer = Buffer.from(AsnConvert.serialize(info));
  const type = key.privateKey.asymmetricKeyType;
  const curve = key.privateKey.asymmetricKeyDetails?.namedCurve;
  const [algorithm, digest] =
    type === 'ed25519'
      ? ['1.3.101.112', null]
      : type === 'rsa'
        ? ['1.2.840.113549.1.1.11', 'sha256']
        : curve === 'secp384r1'
          ? ['1.2.840.10045.4.3.3', 'sha384']
          : ['1.2.840.10045.4.3.2', 'sha256'];
  const signature = sign(digest, infoDer, { key: key.privateKey, dsaEncoding: 'der' });
  const request = new CertificationRequest({
    certificationRequestInfo: info,
    signatureAlgorithm: new AlgorithmIdentifier({ algorithm: algorithm as string }),
    signature: new Uint8Array(signature).buffer,
  });
  const der = Buffer.from(AsnConvert.serialize(request));
  if (options.tamper) {
    // Change a byte inside the subject's common name: still well-formed, no longer what was signed.
    const at = der.indexOf(Buffer.from(commonName));
    der[at] = (der[at] as number) ^ 0x01;
  }
  return toPem('CERTIFICATE REQUEST', der);
}

export type { TlsIdentity };

export interface DeviceResponse {
  status: number;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- tests assert on bodies field by field
  body: any;
}

/** One HTTPS request to the device API with (optionally) a client certificate; a fresh connection each time. */
export function deviceCall(
  baseUrl: string,
  tls: TlsIdentity,
  method: string,
  urlPath: string,
  options: { body?: unknown; headers?: Record<string, string> } = {},
): Promise<DeviceResponse> {
  return new Promise((resolve, reject) => {
    const payload = options.body === undefined ? undefined : JSON.stringify(options.body);
    const request = https.request(
      `${baseUrl}${urlPath}`,
      {
        method,
        ca: tls.ca,
        ...(tls.cert ? { cert: tls.cert } : {}),
        ...(tls.key ? { key: tls.key } : {}),
        agent: false,
        headers: {
          ...(payload !== undefined ? { 'content-type': 'application/json' } : {}),
          ...options.headers,
        },
      },
      (response) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let body: unknown = text;
          try {
            body = text === '' ? undefined : JSON.parse(text);
          } catch {
            // keep text
          }
          resolve({ status: response.statusCode ?? 0, body });
        });
      },
    );
    request.on('error', reject);
    request.end(payload);
  });
}
