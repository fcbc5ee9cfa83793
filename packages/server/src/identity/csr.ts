import { createPublicKey, verify, type KeyObject } from 'node:crypto';
import { CertificationRequest } from '@peculiar/asn1-csr';
import { AsnConvert } from '@peculiar/asn1-schema';

export class CsrError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CsrError';
  }
}

/** Signature algorithms we accept on a CSR, and the digest each uses (null: Ed25519 hashes internally). */
const SIGNATURE_ALGORITHMS: Record<string, string | null> = {
  '1.2.840.10045.4.3.2': 'sha256', // ecdsa-with-SHA256
  '1.2.840.10045.4.3.3': 'sha384', // ecdsa-with-SHA384
  '1.2.840.10045.4.3.4': 'sha512', // ecdsa-with-SHA512
  '1.3.101.112': null, // Ed25519
};

const ACCEPTED_KEYS = 'ECDSA (P-256, P-384, P-521) or Ed25519';

export interface ParsedCsr {
  /** The requested key as SubjectPublicKeyInfo PEM. */
  publicKeyPem: string;
  publicKey: KeyObject;
}

function derOf(pem: string): Buffer {
  const match =
    /-----BEGIN (?:NEW )?CERTIFICATE REQUEST-----([A-Za-z0-9+/=\s]+)-----END (?:NEW )?CERTIFICATE REQUEST-----/.exec(
      pem,
    );
  if (!match?.[1]) throw new CsrError('expected a PEM "CERTIFICATE REQUEST" (PKCS#10)');
  return Buffer.from(match[1].replace(/\s+/g, ''), 'base64');
}

/**
 * Parses a PKCS#10 CSR and checks its self-signature, which proves the requester holds the private key.
 * The requested subject and extensions are ignored: the server decides what a device certificate says.
 */
export function parseCsr(pem: string): ParsedCsr {
  let request: CertificationRequest;
  try {
    request = AsnConvert.parse(derOf(pem), CertificationRequest);
  } catch (error) {
    if (error instanceof CsrError) throw error;
    throw new CsrError(`the CSR is not valid PKCS#10 DER: ${(error as Error).message}`);
  }
  const spkiDer = Buffer.from(AsnConvert.serialize(request.certificationRequestInfo.subjectPKInfo));
  let publicKey: KeyObject;
  try {
    publicKey = createPublicKey({ key: spkiDer, format: 'der', type: 'spki' });
  } catch (error) {
    throw new CsrError(`the CSR's public key cannot be read: ${(error as Error).message}`);
  }
  const keyType = publicKey.asymmetricKeyType;
  const curve = publicKey.asymmetricKeyDetails?.namedCurve;
  const supported =
    keyType === 'ed25519' ||
    (keyType === 'ec' && (curve === 'prime256v1' || curve === 'secp384r1' || curve === 'secp521r1'));
  if (!supported) {
    throw new CsrError(`the CSR's key is ${keyType}${curve ? ` ${curve}` : ''}; expected ${ACCEPTED_KEYS}`);
  }
  const algorithm = request.signatureAlgorithm.algorithm;
  if (!(algorithm in SIGNATURE_ALGORITHMS)) {
    throw new CsrError(`the CSR is signed with algorithm ${algorithm}; expected ECDSA with SHA-2 or Ed25519`);
  }
  const info = Buffer.from(AsnConvert.serialize(request.certificationRequestInfo));
  let valid = false;
  try {
    valid = verify(
      SIGNATURE_ALGORITHMS[algorithm] ?? null,
      info,
      { key: publicKey, dsaEncoding: 'der' },
      Buffer.from(request.signature),
    );
  } catch {
    valid = false;
  }
  if (!valid) throw new CsrError("the CSR's signature does not verify with its own public key");
  return { publicKey, publicKeyPem: publicKey.export({ type: 'spki', format: 'pem' }) as string };
}
