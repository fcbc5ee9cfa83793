import { X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import {
  openModelPackage,
  PackageVerificationError,
  SIGNATURE_FILE,
  UnsupportedFileError,
  type PackageVerificationReason,
} from '@edgefleet/core';
import { z } from 'zod';
import { DomainError } from '../errors/index.js';

/**
 * Reasons that say the package's files or its signature bundle are not what was signed: a damaged model.sig (any
 * signer's: the bundle is read before the trust check), or files changed after a signature under the server's
 * root (files are checked once the signer is trusted). A device that checks signatures (the default) refuses
 * it whatever roots it holds.
 */
const ALTERED: ReadonlySet<PackageVerificationReason> = new Set([
  'bundle-malformed',
  'signature-invalid',
  'file-modified',
  'file-missing',
  'file-unlisted',
  'file-unsupported',
]);

/** The part of model.sig that says who signed it: enough to tell which root its certificates lead to. */
const BundleCertificatesSchema = z.object({
  verificationMaterial: z.object({
    x509CertificateChain: z.object({ certificates: z.array(z.object({ rawBytes: z.string() })) }).optional(),
    certificate: z.object({ rawBytes: z.string() }).optional(),
  }),
});

/**
 * Verifies an extracted package as an enrolled device will (trusting the server's package-signing root at
 * `now`) and answers what the operator should know. A package altered after signing is refused (400: it was
 * never useful to store); any other refusal is advice (`warning`) fitted to why devices will refuse it.
 * Nothing is weakened: the device verifies again itself.
 */
export async function deviceTrustWarning(
  dir: string,
  input: { name: string; version: string },
  rootPem: string,
  now: Date,
): Promise<string | undefined> {
  try {
    await openModelPackage(dir, { trust: { rootCertificatesPem: [rootPem] }, now });
    return undefined;
  } catch (error) {
    // (What the verifier refuses; anything else is not the package's fault and is not hidden as advice.)
    if (!(error instanceof PackageVerificationError || error instanceof UnsupportedFileError)) throw error;
    const root = new X509Certificate(rootPem);
    const trusted =
      `the server's package-signing root (${root.subject.replace(/\n/g, ', ')}, SHA-256 ` +
      `${root.fingerprint256.replace(/:/g, '').toLowerCase()})`;
    const pkg = `package ${input.name} ${input.version}`;
    const reason = error instanceof PackageVerificationError ? error.reason : 'file-unsupported';
    if (reason === 'bundle-missing') {
      return (
        `${pkg} is not signed: devices enrolled by this server require a signature that leads to ${trusted} ` +
        "and will refuse it; sign it under that root (edgefleet package sign with the server's signing key " +
        'and certificate)'
      );
    }
    // The verifier's reason names files by path: the server's scratch folder is not the client's business.
    const why = error.message.replaceAll(dir, 'the package');
    if (ALTERED.has(reason)) {
      throw new DomainError(
        'ValidationError',
        `${pkg} is damaged, or was altered after it was signed, so devices that check signatures (the default) will refuse it: ${why}; ` +
          'pack it again from the signed files, or sign it again',
        { reason },
      );
    }
    const refuse = `devices enrolled by this server will refuse ${pkg}: ${why}.`;
    switch (reason) {
      case 'untrusted-key':
        return (
          `${refuse} It is signed with a key, and devices trust only the public keys and roots in their ` +
          'root-certs folder (sagemaker_edge_core_root_certs_path); to deploy it, add the public key of its ' +
          `signer (PEM) there, or sign it under ${trusted}`
        );
      case 'certificate-expired':
      case 'certificate-not-yet-valid':
        return (
          `${refuse} Devices check the certificates at the time they install the package; sign it again ` +
          'with a signing certificate that is valid now (renew it if it expired)'
        );
      case 'certificate-not-code-signing':
        return (
          `${refuse} Sign it with a code-signing certificate (keyUsage digitalSignature, extendedKeyUsage ` +
          `codeSigning) under ${trusted}`
        );
      default:
        if (await issuedUnder(dir, root)) {
          // The chain reaches the server's root, but a link in it is not a valid CA (or is otherwise unusable).
          return `${refuse} Its certificate chain leads to ${trusted} but is not valid; sign it again with the server's signing certificate`;
        }
        return (
          `${refuse} They trust ${trusted}; to deploy this package, add the root of its signer to their ` +
          "root-certs folder (sagemaker_edge_core_root_certs_path), or sign it under the server's root"
        );
    }
  }
}

/** Whether a certificate in the package's model.sig was issued by `root` (its chain reaches the server's root). */
async function issuedUnder(dir: string, root: X509Certificate): Promise<boolean> {
  let parsed;
  try {
    // (The verifier has read this bounded file already; it parsed, or the reason would be bundle-malformed.)
    parsed = BundleCertificatesSchema.safeParse(
      JSON.parse(await readFile(path.join(dir, SIGNATURE_FILE), 'utf8')),
    );
  } catch {
    return false;
  }
  if (!parsed.success) return false;
  const material = parsed.data.verificationMaterial;
  const raw =
    material.x509CertificateChain?.certificates ?? (material.certificate ? [material.certificate] : []);
  return raw.some(({ rawBytes }) => {
    try {
      const certificate = new X509Certificate(Buffer.from(rawBytes, 'base64'));
      return certificate.checkIssued(root) && certificate.verify(root.publicKey);
    } catch {
      return false;
    }
  });
}
