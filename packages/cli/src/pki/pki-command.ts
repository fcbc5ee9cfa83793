import { chmod, mkdir, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Command } from 'commander';
import { createRootCa, issueCodeSigningCertificate } from '@edgefleet/core';
import { CliError, type Output } from '../cli-io.js';

export interface PkiInitOptions {
  out: string;
  keyType: 'ecdsa-p256' | 'ed25519';
  organization: string;
  days: number;
  force?: boolean;
}

export interface PkiFiles {
  rootCertificate: string;
  rootKey: string;
  signingCertificate: string;
  signingKey: string;
  trustFolder: string;
}

/**
 * A development PKI: a root CA and a code-signing certificate issued by it, plus a trust folder holding only
 * the root — what a device's `sagemaker_edge_core_root_certs_path` points at. Private keys are written 0600.
 * For production, issue the code-signing certificate from your own CA and keep the root key offline.
 */
export async function initPki(opts: PkiInitOptions): Promise<PkiFiles> {
  const out = resolve(opts.out);
  const files: PkiFiles = {
    rootCertificate: join(out, 'root-ca.pem'),
    rootKey: join(out, 'root-ca.key'),
    signingCertificate: join(out, 'signing.pem'),
    signingKey: join(out, 'signing.key'),
    trustFolder: join(out, 'trust'),
  };
  if (!opts.force) {
    for (const path of Object.values(files)) {
      if (await stat(path).catch(() => undefined)) {
        throw new CliError(`${path} already exists; pass --force to replace the PKI in ${out}`);
      }
    }
  }
  const root = await createRootCa({
    commonName: `${opts.organization} EdgeFleet Root CA`,
    validityDays: opts.days,
    keyType: opts.keyType,
  });
  const signing = await issueCodeSigningCertificate({
    issuer: root,
    commonName: `${opts.organization} EdgeFleet model signing`,
    validityDays: Math.min(opts.days, 825),
    keyType: opts.keyType,
  });
  await mkdir(files.trustFolder, { recursive: true });
  await writeSecret(files.rootKey, root.privateKeyPem);
  await writeFile(files.rootCertificate, root.certificatePem);
  await writeSecret(files.signingKey, signing.privateKeyPem);
  await writeFile(files.signingCertificate, signing.certificatePem);
  await writeFile(join(files.trustFolder, 'root-ca.pem'), root.certificatePem);
  return files;
}

async function writeSecret(path: string, pem: string): Promise<void> {
  await writeFile(path, pem, { mode: 0o600 });
  await chmod(path, 0o600); // the mode above is ignored when the file already existed (--force)
}

export function registerPkiCommands(program: Command, output: () => Output): void {
  const pki = program.command('pki').description('certificates for signing model packages (development use)');
  pki
    .command('init')
    .description('create a root CA, a code-signing certificate it issues, and a trust folder for devices')
    .option('--out <dir>', 'folder to write into', './pki')
    .option('--key-type <type>', 'ecdsa-p256 or ed25519', 'ecdsa-p256')
    .option('--organization <name>', 'name put in the certificates', 'Development')
    .option('--days <n>', 'validity of the root CA in days', '3650')
    .option('--force', 'replace existing files')
    .action(
      async (raw: { out: string; keyType: string; organization: string; days: string; force?: boolean }) => {
        if (raw.keyType !== 'ecdsa-p256' && raw.keyType !== 'ed25519') {
          throw new CliError(
            `--key-type must be ecdsa-p256 or ed25519, not ${JSON.stringify(raw.keyType)}`,
            2,
          );
        }
        const days = Number(raw.days);
        if (!Number.isInteger(days) || days < 1)
          throw new CliError(`--days must be a positive whole number, not ${raw.days}`, 2);
        const files = await initPki({ ...raw, keyType: raw.keyType, days });
        const out = output();
        out.result(files, () => [
          `Root CA certificate      ${files.rootCertificate}`,
          `Root CA private key      ${files.rootKey}  (keep offline; 0600)`,
          `Code-signing certificate ${files.signingCertificate}`,
          `Code-signing private key ${files.signingKey}  (0600)`,
          `Device trust folder      ${files.trustFolder}  (set sagemaker_edge_core_root_certs_path to it)`,
          '',
          `Sign a package: ${out.invocation} package sign <dir> --key ${files.signingKey} --cert ${files.signingCertificate}`,
          'This PKI is for development and tests. In production, use your own CA and keep its key offline.',
        ]);
      },
    );
}
