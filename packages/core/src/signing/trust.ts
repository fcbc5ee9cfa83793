import { X509Certificate } from 'node:crypto';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { isSelfSigned, parseCertificate } from './certificates.js';
import { TrustPolicyError } from './errors.js';
import { loadVerificationKey } from './keys.js';

/** What a verifier trusts: public keys (key method) and self-signed root certificates (certificate method). */
export const TrustPolicySchema = z.strictObject({
  publicKeysPem: z.array(z.string().min(1)).optional(),
  rootCertificatesPem: z.array(z.string().min(1)).optional(),
});
export type TrustPolicy = z.infer<typeof TrustPolicySchema>;

const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----[\s\S]*?-----END \1-----/g;

/**
 * Reads every `*.pem` / `*.crt` in `dir` (not recursive): root certificates and/or public keys, PEM or, for
 * `.crt`, DER. As the agent's `sagemaker_edge_core_root_certs_path`. Throws `TrustPolicyError` when the folder
 * is missing, holds nothing usable, or holds something that must not be there (a private key, a certificate
 * that is not a self-signed root), naming the file.
 */
export async function loadTrustFolder(dir: string): Promise<TrustPolicy> {
  const st = await stat(dir).catch(() => undefined);
  if (!st)
    throw new TrustPolicyError(
      `trust folder ${dir} does not exist; expected a folder of root certificates (*.pem, *.crt) and/or public keys (*.pem)`,
    );
  if (!st.isDirectory()) throw new TrustPolicyError(`trust folder ${dir} is a file; expected a folder`);
  const names = (await readdir(dir)).filter((n) => /\.(pem|crt)$/i.test(n)).sort();
  if (names.length === 0)
    throw new TrustPolicyError(
      `trust folder ${dir} holds no *.pem or *.crt files; expected root certificates or public keys`,
    );

  const publicKeysPem: string[] = [];
  const rootCertificatesPem: string[] = [];
  for (const name of names) {
    const path = join(dir, name);
    const bytes = await readFile(path);
    const text = bytes.toString('utf8');
    const blocks = [...text.matchAll(PEM_BLOCK)];
    if (blocks.length === 0) {
      if (/\.crt$/i.test(name)) rootCertificatesPem.push(checkRoot(path, derCertificate(path, bytes)));
      else throw new TrustPolicyError(`${path} holds no PEM blocks; expected certificates or public keys`);
      continue;
    }
    for (const [block, label] of blocks) {
      if (label === 'CERTIFICATE') rootCertificatesPem.push(checkRoot(path, pemCertificate(path, block)));
      else if (label === 'PUBLIC KEY') {
        try {
          publicKeysPem.push(loadVerificationKey(block).export({ type: 'spki', format: 'pem' }) as string);
        } catch (error) {
          throw new TrustPolicyError(`${path}: ${(error as Error).message}`);
        }
      } else
        throw new TrustPolicyError(
          `${path} holds a ${label}; a trust folder may hold only certificates and public keys` +
            (label?.includes('PRIVATE') ? ' (never private keys)' : ''),
        );
    }
  }
  return { publicKeysPem, rootCertificatesPem };
}

function pemCertificate(path: string, block: string): X509Certificate {
  try {
    return new X509Certificate(block);
  } catch (error) {
    throw new TrustPolicyError(
      `${path} holds a CERTIFICATE block that does not parse (${(error as Error).message})`,
    );
  }
}

function derCertificate(path: string, bytes: Buffer): X509Certificate {
  try {
    return new X509Certificate(bytes);
  } catch {
    throw new TrustPolicyError(`${path} is neither PEM nor a DER certificate`);
  }
}

function checkRoot(path: string, cert: X509Certificate): string {
  const parsed = parseCertificate(cert.raw);
  if (!isSelfSigned(parsed))
    throw new TrustPolicyError(
      `${path} holds certificate ${parsed.subject}, issued by ${parsed.issuer}: not self-signed; ` +
        'only root certificates can anchor trust (intermediates travel in the signature bundle)',
    );
  return cert.toString();
}
