import { createPrivateKey, X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createRootCa, issueCodeSigningCertificate, type Signer } from '@edgefleet/core';
import type { Kysely } from 'kysely';
import { createOnce, fileExists, readSecretFile } from '../identity/key-files.js';
import { claimServerSetting, type DatabaseSchema } from '../storage/index.js';
import { KeyMaterialError } from '../config/key-material.js';

export interface SigningKeyFiles {
  rootCertFile: string;
  /** Only needed to create the signing certificate; absent when the operator provides the certificate. */
  rootKeyFile?: string;
  certFile: string;
  keyFile: string;
}

/** The server's package-signing identity: a code-signing certificate chained to a root devices trust. */
export interface PackageSigningIdentity {
  signer: Extract<Signer, { method: 'certificate' }>;
  rootCertificatePem: string;
  /** SHA-256 of the root certificate's DER, lowercase hex. */
  rootFingerprintSha256: string;
}

const fingerprint = (pem: string) => new X509Certificate(pem).fingerprint256.replace(/:/g, '').toLowerCase();

/**
 * Loads the signing identity from its files, or (when `generate` is allowed and none exist) creates a root
 * CA and a code-signing certificate under it and writes them (keys 0600). Operators distribute the root
 * certificate to devices as (part of) their root-certs folder.
 */
export async function openSigningIdentity(
  files: SigningKeyFiles,
  options: { generate: boolean; warn?: (message: string) => void },
): Promise<PackageSigningIdentity> {
  const required = [files.rootCertFile, files.certFile, files.keyFile];
  const presence = () => Promise.all(required.map(fileExists));
  // Also while another server's lock exists: it may be part-way through writing them.
  const lock = `${files.keyFile}.lock`;
  if (options.generate && ((await presence()).every((p) => !p) || (await fileExists(lock)))) {
    await createOnce(
      lock,
      async () => (await presence()).every(Boolean),
      async (publish) => {
        // Under the lock no creator is running: some files without the others are damage (reported below).
        if ((await presence()).some(Boolean)) return;
        const root = createRootCa({
          commonName: 'EdgeFleet package signing root',
          organization: 'EdgeFleet',
          validityDays: 20 * 365,
          keyType: 'ecdsa-p256',
          pathLength: 0,
        });
        const leaf = issueCodeSigningCertificate({
          issuer: root,
          commonName: 'EdgeFleet server package signing',
          organization: 'EdgeFleet',
          validityDays: 10 * 365,
          keyType: 'ecdsa-p256',
        });
        if (files.rootKeyFile !== undefined) await publish.secret(files.rootKeyFile, root.privateKeyPem);
        await publish.secret(files.keyFile, leaf.privateKeyPem);
        await publish.public(files.certFile, leaf.certificatePem);
        await publish.public(files.rootCertFile, root.certificatePem);
      },
    );
  }
  const present = await presence();
  if (!present.every(Boolean)) {
    const missing = required.filter((_, i) => !present[i]);
    throw new KeyMaterialError(
      `package-signing key material incomplete: missing ${missing.join(', ')}; restore the files ` +
        '(or remove all of them to generate new ones, after which devices need the new root certificate)',
    );
  }
  const rootCertificatePem = await readFile(files.rootCertFile, 'utf8');
  const certificatePem = await readFile(files.certFile, 'utf8');
  const key = await readSecretFile(files.keyFile);
  if (key.looseMode)
    options.warn?.(`package-signing key ${files.keyFile} is readable by others; chmod 600 it`);
  const leaf = new X509Certificate(certificatePem);
  if (!leaf.checkPrivateKey(createPrivateKey(key.content))) {
    throw new KeyMaterialError(
      `package-signing key ${files.keyFile} does not belong to certificate ${files.certFile}; the files must be ` +
        'one set: copy all three from the same server (signing/root.crt, signing/signing.crt and signing/signing.key ' +
        "in the first server's data dir, or its signing files)",
    );
  }
  if (!leaf.checkIssued(new X509Certificate(rootCertificatePem))) {
    throw new KeyMaterialError(
      `package-signing certificate ${files.certFile} was not issued by root ${files.rootCertFile}; the files must ` +
        'be one set: copy all three from the same server (signing/root.crt, signing/signing.crt and ' +
        "signing/signing.key in the first server's data dir, or its signing files)",
    );
  }
  return {
    signer: {
      method: 'certificate',
      privateKeyPem: key.content,
      certificateChainPem: [certificatePem, rootCertificatePem],
    },
    rootCertificatePem,
    rootFingerprintSha256: fingerprint(rootCertificatePem),
  };
}

const SETTING = 'signing_root_sha256';

/** Every replica must sign with the same root, or devices would trust some packages and not others. */
export async function bindSigningRoot(
  db: Kysely<DatabaseSchema>,
  rootFingerprintSha256: string,
): Promise<void> {
  const bound = await claimServerSetting(db, SETTING, rootFingerprintSha256);
  if (bound !== rootFingerprintSha256) {
    // A configuration error (exit 2): restarting cannot fix it.
    throw new KeyMaterialError(
      `this database belongs to a server whose package-signing root is SHA-256 ${bound}, not ` +
        `${rootFingerprintSha256}; every server replica must sign with the same files: copy the first ` +
        "server's (signing/root.crt, signing/signing.crt and signing/signing.key in its data dir, or its signing " +
        'files) to this host, key 0600, and set signing.rootCertFile, signing.certFile and signing.keyFile to them ' +
        '(packages/server/README.md, "Adding a replica"); after a restore, restore the files backed up with the database',
    );
  }
}
