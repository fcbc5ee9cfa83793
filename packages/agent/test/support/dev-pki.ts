import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  createRootCa,
  issueCodeSigningCertificate,
  loadTrustFolder,
  type CertificateAuthority,
  type TrustPolicy,
} from '@edgefleet/core';

/** A package signer of the certificate method: the leaf's key and the chain (the leaf alone). */
export interface CertificateSigner {
  method: 'certificate';
  privateKeyPem: string;
  certificateChainPem: string[];
}

/** A development PKI: a root (valid 2 days) and a publisher's code-signing certificate under it (1 day). */
export function devPki(
  rootName: string,
  publisherName: string,
): { root: CertificateAuthority; signer: CertificateSigner } {
  const root = createRootCa({ commonName: rootName, validityDays: 2, keyType: 'ecdsa-p256' });
  const leaf = issueCodeSigningCertificate({
    issuer: root,
    commonName: publisherName,
    validityDays: 1,
    keyType: 'ecdsa-p256',
  });
  return {
    root,
    signer: {
      method: 'certificate',
      privateKeyPem: leaf.privateKeyPem,
      certificateChainPem: [leaf.certificatePem],
    },
  };
}

/** Writes `root` into the folder `dir` (made if needed) as root.pem and loads the folder as the agent would. */
export async function trustFolder(dir: string, root: CertificateAuthority): Promise<TrustPolicy> {
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'root.pem'), root.certificatePem);
  return loadTrustFolder(dir);
}
