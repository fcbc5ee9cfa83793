import { X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import {
  certificatePath,
  openModelPackage,
  PackageVerificationError,
  parseCertificate,
  pathRole,
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

const TIME_ADVICE =
  ' Devices check the certificates at the time they install the package; sign it again ' +
  'with a signing certificate that is valid now (renew it if it expired)';

const fingerprintOf = (certificate: X509Certificate) =>
  certificate.fingerprint256.replace(/:/g, '').toLowerCase();

const oneLine = (name: string) => name.split('\n').filter(Boolean).join(', ');

function describeRoot(root: X509Certificate): string {
  return `the server's package-signing root (${oneLine(root.subject)}, SHA-256 ${fingerprintOf(root)})`;
}

/** A certificate of the chain from the package's signer to the root, and the time it is valid in (ms). */
const chainCertificateSchema = z.object({
  /** As the verifier names it: "signing certificate CN=…", "intermediate …", "root …". */
  certificate: z.string(),
  notBefore: z.number(),
  notAfter: z.number(),
});

/**
 * What the upload's signature check found, kept on the version row (model_versions.device_trust), so that a
 * later check (plan create, the versions API) answers at its own `now` without reading the package: which
 * root it was checked against, why devices refuse it whatever the time, and the validity of each certificate
 * from its signer to that root, in the verifier's order (absent: the signature does not lead to that root,
 * so time changes nothing).
 */
export const deviceTrustFactsSchema = z.object({
  /** SHA-256 (hex) of the package-signing root the check trusted. */
  root: z.string(),
  warning: z.string().optional(),
  chain: z.array(chainCertificateSchema).optional(),
});
export type DeviceTrustFacts = z.infer<typeof deviceTrustFactsSchema>;

/**
 * Checks an extracted package as deviceTrustWarning does (the upload's `warning`, at `now`), and answers the
 * facts to keep. A package refused at `now` only for its certificates' time is checked again at a time inside
 * their validity, so the kept warning is what stays true at any time; when there is no such time (its
 * certificates are never all valid at once), no warning is kept for it: deviceTrustWarningAt says, at its own
 * time, which certificate is not valid yet or has expired then.
 */
export async function checkDeviceTrust(
  dir: string,
  input: { name: string; version: string },
  rootPem: string,
  now: Date,
): Promise<{ facts: DeviceTrustFacts; warning?: string }> {
  const checked = await trustCheck(dir, input, rootPem, now);
  const root = new X509Certificate(rootPem);
  const chain = await chainToRoot(dir, root);
  let timeless = checked.warning;
  if (chain !== undefined && checked.reason !== undefined && TIME_REASONS.has(checked.reason)) {
    const from = Math.max(...chain.map((c) => c.notBefore));
    timeless =
      from <= Math.min(...chain.map((c) => c.notAfter))
        ? await deviceTrustWarning(dir, input, rootPem, new Date(from)).catch((error: unknown) => {
            if (error instanceof DomainError) return error.message;
            throw error;
          })
        : undefined;
  }
  return {
    facts: {
      root: fingerprintOf(root),
      ...(timeless !== undefined && { warning: timeless }),
      ...(chain !== undefined && { chain }),
    },
    ...(checked.warning !== undefined && { warning: checked.warning }),
  };
}

/** The verifier's refusals for a certificate's time: what a check at another time may not repeat. */
const TIME_REASONS: ReadonlySet<PackageVerificationReason> = new Set([
  'certificate-expired',
  'certificate-not-yet-valid',
]);

/** The verifier's time check (certificates.ts): the first certificate, signer first, not valid at `now`. */
function timeFault(chain: z.infer<typeof chainCertificateSchema>[], now: Date): string | undefined {
  const t = now.getTime();
  for (const c of chain) {
    if (t < c.notBefore)
      return `${c.certificate} is not valid until ${new Date(c.notBefore).toISOString()} (now is ${now.toISOString()})`;
    if (t > c.notAfter)
      return `${c.certificate} expired at ${new Date(c.notAfter).toISOString()} (now is ${now.toISOString()})`;
  }
  return undefined;
}

/**
 * Why devices enrolled by this server will refuse the package at `now`, from the facts its upload kept; no
 * package read. Undefined when they will take it.
 */
export function deviceTrustWarningAt(
  facts: DeviceTrustFacts,
  input: { name: string; version: string },
  rootPem: string,
  now: Date,
): string | undefined {
  const root = new X509Certificate(rootPem);
  const pkg = `package ${input.name} ${input.version}`;
  if (facts.root !== fingerprintOf(root)) {
    return (
      `${pkg} was checked at its upload against another package-signing root (SHA-256 ${facts.root}), not ` +
      `${describeRoot(root)}, so whether devices enrolled by this server will take it is not known; they ` +
      'verify it when they install it'
    );
  }
  if (facts.warning !== undefined) return facts.warning;
  const fault = facts.chain !== undefined ? timeFault(facts.chain, now) : undefined;
  return fault === undefined
    ? undefined
    : `devices enrolled by this server will refuse ${pkg}: ${fault}.${TIME_ADVICE}`;
}

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
  return (await trustCheck(dir, input, rootPem, now)).warning;
}

/** deviceTrustWarning's check, with the verifier's reason for the refusal the warning is about. */
async function trustCheck(
  dir: string,
  input: { name: string; version: string },
  rootPem: string,
  now: Date,
): Promise<{ warning?: string; reason?: PackageVerificationReason }> {
  try {
    await openModelPackage(dir, { trust: { rootCertificatesPem: [rootPem] }, now });
    return {};
  } catch (error) {
    // (What the verifier refuses; anything else is not the package's fault and is not hidden as advice.)
    if (!(error instanceof PackageVerificationError || error instanceof UnsupportedFileError)) throw error;
    const root = new X509Certificate(rootPem);
    const trusted = describeRoot(root);
    const pkg = `package ${input.name} ${input.version}`;
    const reason = error instanceof PackageVerificationError ? error.reason : 'file-unsupported';
    const refused = (warning: string) => ({ warning, reason });
    if (reason === 'bundle-missing') {
      return refused(
        `${pkg} is not signed: devices enrolled by this server require a signature that leads to ${trusted} ` +
          "and will refuse it; sign it under that root (edgefleet package sign with the server's signing key " +
          'and certificate)',
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
        return refused(
          `${refuse} It is signed with a key, and devices trust only the public keys and roots in their ` +
            'root-certs folder (sagemaker_edge_core_root_certs_path); to deploy it, add the public key of its ' +
            `signer (PEM) there, or sign it under ${trusted}`,
        );
      case 'certificate-expired':
      case 'certificate-not-yet-valid':
        return refused(`${refuse}${TIME_ADVICE}`);
      case 'certificate-not-code-signing':
        return refused(
          `${refuse} Sign it with a code-signing certificate (keyUsage digitalSignature, extendedKeyUsage ` +
            `codeSigning) under ${trusted}`,
        );
      default:
        if (await issuedUnder(dir, root)) {
          // The chain reaches the server's root, but a link in it is not a valid CA (or is otherwise unusable).
          return refused(
            `${refuse} Its certificate chain leads to ${trusted} but is not valid; sign it again with the server's signing certificate`,
          );
        }
        return refused(
          `${refuse} They trust ${trusted}; to deploy this package, add the root of its signer to their ` +
            "root-certs folder (sagemaker_edge_core_root_certs_path), or sign it under the server's root",
        );
    }
  }
}

/**
 * The certificates in the package's model.sig (leaf first) that parse, or none when it has none or cannot be
 * read: enough to tell whether one was issued under a root (issuedUnder), not to name a chain (chainToRoot).
 */
async function bundleCertificates(dir: string): Promise<X509Certificate[]> {
  return (await bundleCertificateBytes(dir)).flatMap((der) => {
    try {
      return [new X509Certificate(der)];
    } catch {
      return [];
    }
  });
}

/** The DER of each certificate in the package's model.sig (leaf first), or none when it cannot be read. */
async function bundleCertificateBytes(dir: string): Promise<Buffer[]> {
  let parsed;
  try {
    // (The verifier has read this bounded file already; it parsed, or the reason would be bundle-malformed.)
    parsed = BundleCertificatesSchema.safeParse(
      JSON.parse(await readFile(path.join(dir, SIGNATURE_FILE), 'utf8')),
    );
  } catch {
    return [];
  }
  if (!parsed.success) return [];
  const material = parsed.data.verificationMaterial;
  const raw =
    material.x509CertificateChain?.certificates ?? (material.certificate ? [material.certificate] : []);
  return raw.map(({ rawBytes }) => Buffer.from(rawBytes, 'base64'));
}

const issuedBy = (certificate: X509Certificate, issuer: X509Certificate) => {
  try {
    return certificate.checkIssued(issuer) && certificate.verify(issuer.publicKey);
  } catch {
    return false;
  }
};

/** Whether a certificate in the package's model.sig was issued by `root` (its chain reaches the server's root). */
async function issuedUnder(dir: string, root: X509Certificate): Promise<boolean> {
  return (await bundleCertificates(dir)).some((certificate) => issuedBy(certificate, root));
}

/**
 * The chain from model.sig's signing certificate to `root` (root included), the path the verifier builds (core's
 * certificatePath, its bound included), with each certificate's validity and the verifier's name for it;
 * undefined when no path leads there, or when a certificate of the bundle does not parse: the verifier refuses
 * such a bundle (bundle-malformed), and skipping one would make the next the "signing certificate".
 */
async function chainToRoot(
  dir: string,
  root: X509Certificate,
): Promise<z.infer<typeof chainCertificateSchema>[] | undefined> {
  const raw = await bundleCertificateBytes(dir);
  const certificates = [];
  for (const der of raw) {
    try {
      certificates.push(parseCertificate(der));
    } catch {
      return undefined;
    }
  }
  const { path: found, anchor } = certificatePath(certificates, [parseCertificate(root.raw)]);
  if (anchor === undefined) return undefined;
  const all = [...found, anchor];
  return all.map((certificate, i) => ({
    certificate: `${pathRole(i, all.length)} ${certificate.subject}`,
    notBefore: certificate.notBefore.getTime(),
    notAfter: certificate.notAfter.getTime(),
  }));
}
