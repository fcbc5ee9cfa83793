import { createHash, createPrivateKey, createPublicKey, sign, verify, type KeyObject } from 'node:crypto';

/** Key types we sign and verify with (P-384/P-521 because the reference signs with them; `pki init` makes P-256 or Ed25519). */
export type SigningKeyType = 'ecdsa-p256' | 'ecdsa-p384' | 'ecdsa-p521' | 'ed25519';

const CURVES: Record<string, { type: SigningKeyType; hash: string }> = {
  prime256v1: { type: 'ecdsa-p256', hash: 'sha256' },
  secp384r1: { type: 'ecdsa-p384', hash: 'sha384' },
  secp521r1: { type: 'ecdsa-p521', hash: 'sha512' },
};

/** The key's type, or an explanation of why we cannot use it. */
export function signingKeyType(key: KeyObject): SigningKeyType | { unsupported: string } {
  if (key.asymmetricKeyType === 'ed25519') return 'ed25519';
  if (key.asymmetricKeyType === 'ec') {
    const curve = key.asymmetricKeyDetails?.namedCurve ?? 'unknown';
    return CURVES[curve]?.type ?? { unsupported: `an EC key on curve ${curve}` };
  }
  return { unsupported: `a ${key.asymmetricKeyType ?? 'symmetric'} key` };
}

/** Digest for ECDSA by curve (as Sigstore and the reference do), null for Ed25519 (it hashes internally). */
function digestFor(key: KeyObject): string | null {
  if (key.asymmetricKeyType === 'ed25519') return null;
  const curve = key.asymmetricKeyDetails?.namedCurve ?? '';
  const hash = CURVES[curve]?.hash;
  if (!hash) throw new TypeError(`unsupported signing key: ${describeUnsupported(key)}`);
  return hash;
}

function describeUnsupported(key: KeyObject): string {
  const t = signingKeyType(key);
  return typeof t === 'string' ? t : `${t.unsupported}; expected ECDSA (P-256, P-384, P-521) or Ed25519`;
}

/** Parses a PEM private key and checks it is one we can sign with. */
export function loadSigningKey(privateKeyPem: string): KeyObject {
  let key: KeyObject;
  try {
    key = createPrivateKey(privateKeyPem);
  } catch (error) {
    throw new TypeError(`not a PEM private key (${(error as Error).message}); expected a PKCS#8 or SEC1 PEM`);
  }
  if (typeof signingKeyType(key) !== 'string')
    throw new TypeError(`unsupported signing key: ${describeUnsupported(key)}`);
  return key;
}

/** Parses a PEM public key (SubjectPublicKeyInfo) and checks it is one we can verify with. */
export function loadVerificationKey(publicKeyPem: string): KeyObject {
  let key: KeyObject;
  try {
    key = createPublicKey(publicKeyPem);
  } catch (error) {
    throw new TypeError(`not a PEM public key (${(error as Error).message}); expected "BEGIN PUBLIC KEY"`);
  }
  if (typeof signingKeyType(key) !== 'string')
    throw new TypeError(`unsupported public key: ${describeUnsupported(key)}`);
  return key;
}

/** Signature over `data`: DER-encoded ECDSA (as Sigstore uses) or raw Ed25519. */
export function signBytes(privateKey: KeyObject, data: Buffer): Buffer {
  return sign(digestFor(privateKey), data, { key: privateKey, dsaEncoding: 'der' });
}

/** True when `signature` is valid over `data`; false for any malformed signature rather than throwing. */
export function verifyBytes(publicKey: KeyObject, data: Buffer, signature: Buffer): boolean {
  try {
    return verify(digestFor(publicKey), data, { key: publicKey, dsaEncoding: 'der' }, signature);
  } catch {
    return false;
  }
}

/** Hex SHA-256 of the SubjectPublicKeyInfo DER: how EdgeFleet names a key to people. */
export function publicKeyFingerprint(key: KeyObject): string {
  const der = (key.type === 'private' ? createPublicKey(key) : key).export({ type: 'spki', format: 'der' });
  return createHash('sha256').update(der).digest('hex');
}

/**
 * The reference implementation's `publicKey.hint`: hex SHA-256 of the SubjectPublicKeyInfo *PEM text*
 * (64-column base64, `\n` line ends, final newline — what OpenSSL and Python's `cryptography` both write).
 */
export function publicKeyHint(key: KeyObject): string {
  const pem = (key.type === 'private' ? createPublicKey(key) : key).export({ type: 'spki', format: 'pem' });
  return createHash('sha256').update(pem).digest('hex');
}

/** True when both keys are the same public key (SubjectPublicKeyInfo DER compared). */
export function samePublicKey(a: KeyObject, b: KeyObject): boolean {
  const spki = (k: KeyObject) =>
    (k.type === 'private' ? createPublicKey(k) : k).export({ type: 'spki', format: 'der' });
  return spki(a).equals(spki(b));
}
