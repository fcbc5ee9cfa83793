import { X509Certificate } from 'node:crypto';
import { AsnConvert } from '@peculiar/asn1-schema';
import {
  BasicConstraints,
  Certificate,
  ExtendedKeyUsage,
  KeyUsage,
  KeyUsageFlags,
  id_ce_authorityKeyIdentifier,
  id_ce_basicConstraints,
  id_ce_extKeyUsage,
  id_ce_keyUsage,
  id_ce_subjectAltName,
  id_ce_subjectKeyIdentifier,
  id_kp_codeSigning,
} from '@peculiar/asn1-x509';
import { PackageVerificationError } from './errors.js';

/** A certificate with the parts chain validation needs, decoded once. */
export interface ParsedCertificate {
  der: Buffer;
  x509: X509Certificate;
  /** `CN=…, O=…` on one line, for messages. */
  subject: string;
  issuer: string;
  serialNumber: string;
  notBefore: Date;
  notAfter: Date;
  basicConstraints?: { ca: boolean; pathLength?: number };
  /** Bit flags as `KeyUsageFlags`; undefined when the extension is absent. */
  keyUsage?: number;
  /** Key purpose OIDs; undefined when the extension is absent. */
  extendedKeyUsage?: string[];
  /** OIDs of critical extensions this verifier does not understand (RFC 5280 says: reject). */
  unknownCriticalExtensions: string[];
}

/**
 * The X.509 extensions this code writes (pki.ts) and understands when it verifies a chain: one list, so that
 * the verifier never meets a critical extension from our own CA that it would have to reject.
 */
export const EXTENSION = {
  basicConstraints: id_ce_basicConstraints,
  keyUsage: id_ce_keyUsage,
  extendedKeyUsage: id_ce_extKeyUsage,
  subjectAltName: id_ce_subjectAltName,
  subjectKeyIdentifier: id_ce_subjectKeyIdentifier,
  authorityKeyIdentifier: id_ce_authorityKeyIdentifier,
} as const;

const UNDERSTOOD_EXTENSIONS = new Set<string>(Object.values(EXTENSION));

/** Decodes a DER certificate; throws a plain Error naming what failed. */
export function parseCertificate(der: Buffer): ParsedCertificate {
  const x509 = new X509Certificate(der);
  const asn = AsnConvert.parse(der, Certificate);
  const tbs = asn.tbsCertificate;
  const parsed: ParsedCertificate = {
    der,
    x509,
    subject: oneLine(x509.subject),
    issuer: oneLine(x509.issuer),
    serialNumber: x509.serialNumber,
    notBefore: tbs.validity.notBefore.getTime(),
    notAfter: tbs.validity.notAfter.getTime(),
    unknownCriticalExtensions: [],
  };
  for (const ext of tbs.extensions ?? []) {
    const value = ext.extnValue.buffer;
    if (ext.extnID === EXTENSION.basicConstraints) {
      const bc = AsnConvert.parse(value, BasicConstraints);
      parsed.basicConstraints = {
        ca: bc.cA,
        ...(bc.pathLenConstraint !== undefined && { pathLength: bc.pathLenConstraint }),
      };
    } else if (ext.extnID === EXTENSION.keyUsage) {
      parsed.keyUsage = AsnConvert.parse(value, KeyUsage).toNumber();
    } else if (ext.extnID === EXTENSION.extendedKeyUsage) {
      parsed.extendedKeyUsage = [...AsnConvert.parse(value, ExtendedKeyUsage)];
    } else if (ext.critical && !UNDERSTOOD_EXTENSIONS.has(ext.extnID)) {
      parsed.unknownCriticalExtensions.push(ext.extnID);
    }
  }
  return parsed;
}

export function parseCertificatePem(pem: string): ParsedCertificate {
  return parseCertificate(new X509Certificate(pem).raw);
}

/** True when `cert` names itself as issuer and its signature verifies under its own key. */
export function isSelfSigned(cert: ParsedCertificate): boolean {
  return cert.x509.checkIssued(cert.x509) && cert.x509.verify(cert.x509.publicKey);
}

/** `issuer` issued `cert`: names (and key identifiers) match and the signature verifies. */
function issuedBy(cert: ParsedCertificate, issuer: ParsedCertificate): boolean {
  try {
    return cert.x509.checkIssued(issuer.x509) && cert.x509.verify(issuer.x509.publicKey);
  } catch {
    return false;
  }
}

/** Most certificates the verifier takes from a bundle for a path to a trusted root (the signer's included). */
const MAX_CHAIN_LENGTH = 8;

/**
 * The path the verifier checks: the signing certificate (`chain[0]`), then certificates of `chain` (in any
 * order) each issuing the one before, up to the first trusted root that issued the last (`anchor`). No anchor:
 * no path of at most MAX_CHAIN_LENGTH certificates leads to one of `roots`, and `path` ends where it stopped.
 * It checks nothing more (constraints, validity, usage: verifyCertificateChain); exported so that what reports
 * on a chain (the server's trust facts) follows the path the verifier checks, bound included.
 */
export function certificatePath(
  chain: readonly ParsedCertificate[],
  roots: readonly ParsedCertificate[],
): { path: ParsedCertificate[]; anchor?: ParsedCertificate } {
  const leaf = chain[0];
  if (!leaf) return { path: [] };
  const path: ParsedCertificate[] = [leaf];
  for (;;) {
    const current = path[path.length - 1] as ParsedCertificate;
    const anchor = roots.find((r) => issuedBy(current, r));
    if (anchor) return { path, anchor };
    const next = chain.find((c) => !path.includes(c) && issuedBy(current, c));
    if (!next || path.length >= MAX_CHAIN_LENGTH) return { path };
    path.push(next);
  }
}

/** How the verifier names the certificate at `index` of a path of `length` certificates, root included. */
export function pathRole(index: number, length: number): string {
  return index === 0 ? 'signing certificate' : index === length - 1 ? 'root' : 'intermediate';
}

/**
 * Validates a signing certificate chain (leaf first, then any intermediates, in any order) against trusted
 * self-signed roots at time `now`: every link's signature, validity periods, CA constraints, and that the
 * leaf may sign code. Returns the leaf; throws `PackageVerificationError` naming the certificate at fault.
 */
export function verifyCertificateChain(
  chain: readonly ParsedCertificate[],
  roots: readonly ParsedCertificate[],
  now: Date,
): ParsedCertificate {
  const leaf = chain[0];
  if (!leaf)
    throw new PackageVerificationError('bundle-malformed', 'the certificate chain in model.sig is empty');
  if (roots.length === 0)
    throw new PackageVerificationError(
      'untrusted-chain',
      `model.sig is signed with certificate ${leaf.subject}, but the trust policy holds no root certificates`,
      { path: 'model.sig', certificate: leaf.subject },
    );

  // Build the path leaf → … → root from the bundle's certificates; stop at the first trusted root.
  const { path, anchor } = certificatePath(chain, roots);
  if (!anchor) {
    const current = path[path.length - 1] as ParsedCertificate;
    throw new PackageVerificationError(
      'untrusted-chain',
      `the certificate chain in model.sig does not lead to a trusted root: ${current.subject} was issued by ` +
        `${current.issuer}, which is neither in the bundle nor one of the ${roots.length} trusted root(s) ` +
        `(${roots.map((r) => r.subject).join('; ')})`,
      { path: 'model.sig', certificate: current.subject },
    );
  }

  const all = [...path, anchor];
  const role = (i: number) => pathRole(i, all.length);

  for (const [i, cert] of all.entries()) {
    const fault = { path: 'model.sig', certificate: cert.subject };
    if (cert.unknownCriticalExtensions.length > 0)
      throw new PackageVerificationError(
        'untrusted-chain',
        `${role(i)} ${cert.subject} has critical extension(s) ${cert.unknownCriticalExtensions.join(', ')} ` +
          'that this verifier does not understand',
        fault,
      );
    if (i === 0) continue;
    // A CA: must say so, may sign certificates, and must allow this many intermediates below it.
    if (!cert.basicConstraints?.ca)
      throw new PackageVerificationError(
        'untrusted-chain',
        `${role(i)} ${cert.subject} issued ${all[i - 1]?.subject} but is not a CA (expected basicConstraints cA=true)`,
        fault,
      );
    if (cert.keyUsage !== undefined && (cert.keyUsage & KeyUsageFlags.keyCertSign) === 0)
      throw new PackageVerificationError(
        'untrusted-chain',
        `${role(i)} ${cert.subject} lacks keyUsage keyCertSign, so it may not issue certificates`,
        fault,
      );
    const below = i - 1;
    const limit = cert.basicConstraints.pathLength;
    if (limit !== undefined && below > limit)
      throw new PackageVerificationError(
        'untrusted-chain',
        `${role(i)} ${cert.subject} allows ${limit} intermediate(s) below it (pathLenConstraint) but the chain has ${below}`,
        fault,
      );
  }

  for (const [i, cert] of all.entries()) {
    const fault = { path: 'model.sig', certificate: cert.subject };
    if (now < cert.notBefore)
      throw new PackageVerificationError(
        'certificate-not-yet-valid',
        `${role(i)} ${cert.subject} is not valid until ${cert.notBefore.toISOString()} (now is ${now.toISOString()})`,
        fault,
      );
    if (now > cert.notAfter)
      throw new PackageVerificationError(
        'certificate-expired',
        `${role(i)} ${cert.subject} expired at ${cert.notAfter.toISOString()} (now is ${now.toISOString()})`,
        fault,
      );
  }

  const lacks: string[] = [];
  if (leaf.keyUsage === undefined || (leaf.keyUsage & KeyUsageFlags.digitalSignature) === 0)
    lacks.push('keyUsage digitalSignature');
  if (!leaf.extendedKeyUsage?.includes(id_kp_codeSigning)) lacks.push('extendedKeyUsage codeSigning');
  if (lacks.length > 0)
    throw new PackageVerificationError(
      'certificate-not-code-signing',
      `signing certificate ${leaf.subject} may not sign code: it lacks ${lacks.join(' and ')}`,
      { path: 'model.sig', certificate: leaf.subject },
    );
  return leaf;
}

/** Node prints distinguished names one attribute per line; messages want one line. */
function oneLine(name: string): string {
  return name.split('\n').filter(Boolean).join(', ');
}
