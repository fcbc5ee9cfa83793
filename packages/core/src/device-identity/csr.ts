/**
 * A device key pair and its PKCS#10 certificate signing request (RFC 2986), DER-encoded by hand: the request
 * is four fixed structures, and the server ignores everything in it but the key and the self-signature, so a
 * few lines of DER beat another ASN.1 dependency in the CLI.
 */
import { createPublicKey, generateKeyPairSync, sign, type KeyObject } from 'node:crypto';

export type DeviceKeyType = 'ecdsa-p256' | 'ecdsa-p384' | 'ed25519';
export const DEVICE_KEY_TYPES: readonly DeviceKeyType[] = ['ecdsa-p256', 'ecdsa-p384', 'ed25519'];

export interface DeviceKeyPair {
  privateKey: KeyObject;
  /** PKCS#8 PEM. */
  privateKeyPem: string;
  /** SubjectPublicKeyInfo PEM. */
  publicKeyPem: string;
}

export function generateDeviceKey(type: DeviceKeyType = 'ecdsa-p256'): DeviceKeyPair {
  const pair =
    type === 'ed25519'
      ? generateKeyPairSync('ed25519')
      : generateKeyPairSync('ec', { namedCurve: type === 'ecdsa-p384' ? 'P-384' : 'P-256' });
  return {
    privateKey: pair.privateKey,
    privateKeyPem: pair.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string,
    publicKeyPem: pair.publicKey.export({ type: 'spki', format: 'pem' }) as string,
  };
}

// ---- DER -----------------------------------------------------------------------------------------------------

function length(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  const bytes: number[] = [];
  for (let rest = n; rest > 0; rest = Math.floor(rest / 256)) bytes.unshift(rest & 0xff);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

function tlv(tag: number, ...content: Buffer[]): Buffer {
  const body = Buffer.concat(content);
  return Buffer.concat([Buffer.from([tag]), length(body.length), body]);
}

const sequence = (...content: Buffer[]) => tlv(0x30, ...content);
const set = (...content: Buffer[]) => tlv(0x31, ...content);

function oid(dotted: string): Buffer {
  const [first, second, ...rest] = dotted.split('.').map(Number) as [number, number, ...number[]];
  const bytes = [first * 40 + second];
  for (const arc of rest) {
    const base128: number[] = [arc & 0x7f];
    for (let v = Math.floor(arc / 128); v > 0; v = Math.floor(v / 128)) base128.unshift(0x80 | (v & 0x7f));
    bytes.push(...base128);
  }
  return tlv(0x06, Buffer.from(bytes));
}

const OID = {
  commonName: '2.5.4.3',
  ecdsaWithSha256: '1.2.840.10045.4.3.2',
  ecdsaWithSha384: '1.2.840.10045.4.3.3',
  ed25519: '1.3.101.112',
};

function toPem(label: string, der: Buffer): string {
  const lines = der.toString('base64').match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join('\n')}\n-----END ${label}-----\n`;
}

/**
 * A CSR for `key` with subject `CN=<commonName>`, signed with the key (ECDSA with SHA-256 for P-256, SHA-384
 * for P-384, or Ed25519). The server replaces the subject with the device and fleet names.
 */
export function createCsr(key: KeyObject, commonName: string): string {
  const spki = createPublicKey(key).export({ type: 'spki', format: 'der' });
  const subject = sequence(set(sequence(oid(OID.commonName), tlv(0x0c, Buffer.from(commonName, 'utf8')))));
  const info = sequence(
    tlv(0x02, Buffer.from([0])), // version 0 (v1)
    subject,
    spki,
    tlv(0xa0), // attributes [0]: none
  );
  const curve = key.asymmetricKeyDetails?.namedCurve;
  const [algorithm, digest] =
    key.asymmetricKeyType === 'ed25519'
      ? [OID.ed25519, null]
      : curve === 'secp384r1'
        ? [OID.ecdsaWithSha384, 'sha384']
        : [OID.ecdsaWithSha256, 'sha256'];
  const signature = sign(digest, info, { key, dsaEncoding: 'der' });
  const der = sequence(
    info,
    sequence(oid(algorithm)), // ECDSA and Ed25519 identifiers take no parameters
    tlv(0x03, Buffer.from([0]), signature), // BIT STRING, no unused bits
  );
  return toPem('CERTIFICATE REQUEST', der);
}
