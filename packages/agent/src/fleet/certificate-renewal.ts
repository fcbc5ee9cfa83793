import { X509Certificate, createPrivateKey, createPublicKey, randomBytes } from 'node:crypto';
import { open, readFile, rename, rm } from 'node:fs/promises';
import { z } from 'zod';
import { createCsr, generateDeviceKey, type DeviceKeyType } from '@edgefleet/core';
import type { DeviceApiClient } from './device-api.js';

/** The server's answer to `POST /api/v1/device/certificate` (the fields renewal uses). */
export const renewedCertificateSchema = z.object({
  certificatePem: z.string().min(1),
  caCertificatePem: z.string().min(1),
  serial: z.string(),
  notAfter: z.string(),
});

export const RENEWAL_OPERATION = 'api/v1/device/certificate';

/** Where the device's identity lives: the config's `…_aws_cert_file`, `…_aws_cert_pk_file`, `…_aws_ca_cert_file`. */
export interface CertificateFiles {
  certFile: string;
  keyFile: string;
  caFile?: string;
}

export interface CertificateRenewalOptions {
  files: CertificateFiles;
  /** Renew once this fraction of the certificate's lifetime has passed; default 2/3 (a third left). */
  renewAfterFraction?: number;
  /** After a failed attempt, wait this long before trying again (the current certificate still works). */
  retryAfterMs?: number;
  now?: () => number;
  /** Test seam: decides whether `certificate` is due; the default is the lifetime fraction above. */
  isDue?: (certificate: X509Certificate, now: number) => boolean;
}

export interface RenewalResult {
  serial: string;
  notAfter: string;
}

export const DEFAULT_RENEW_AFTER_FRACTION = 2 / 3;
const DEFAULT_RETRY_AFTER_MS = 15 * 60_000;

/** When a certificate valid from `notBefore` to `notAfter` is due for renewal. */
export function renewalDueAt(notBefore: Date, notAfter: Date, fraction = DEFAULT_RENEW_AFTER_FRACTION): Date {
  return new Date(notBefore.getTime() + (notAfter.getTime() - notBefore.getTime()) * fraction);
}

function keyTypeOf(keyPem: string): DeviceKeyType {
  const key = createPrivateKey(keyPem);
  if (key.asymmetricKeyType === 'ed25519') return 'ed25519';
  return key.asymmetricKeyDetails?.namedCurve === 'secp384r1' ? 'ecdsa-p384' : 'ecdsa-p256';
}

const spki = (pem: string) => createPublicKey(pem).export({ type: 'spki', format: 'der' });

/** Writes a temporary sibling with `mode`, fsynced; the caller renames it into place. */
async function writeSynced(path: string, content: string, mode: number): Promise<void> {
  const handle = await open(path, 'w', mode);
  try {
    await handle.writeFile(content);
    await handle.chmod(mode);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Renews the device certificate before it expires, over the device API with the current certificate (the
 * server issues a new one for a new key while the old is still valid). A new key pair of the same type is
 * made each time; the private key never leaves the device. The new key and certificate are written next to
 * the old ones and renamed over them key first, then certificate; `recover()` completes a renewal a crash
 * cut between the two renames, so the files never stay a mismatched pair. The fleet client reads the files
 * before every heartbeat, so the next heartbeat already uses the new certificate.
 */
export class CertificateRenewal {
  readonly #files: CertificateFiles;
  readonly #fraction: number;
  readonly #retryAfterMs: number;
  readonly #now: () => number;
  readonly #isDue: (certificate: X509Certificate, now: number) => boolean;
  #nextAttemptAt = 0;

  constructor(options: CertificateRenewalOptions) {
    this.#files = options.files;
    this.#fraction = options.renewAfterFraction ?? DEFAULT_RENEW_AFTER_FRACTION;
    this.#retryAfterMs = options.retryAfterMs ?? DEFAULT_RETRY_AFTER_MS;
    this.#now = options.now ?? Date.now;
    this.#isDue =
      options.isDue ??
      ((certificate, now) =>
        now >=
        renewalDueAt(
          new Date(certificate.validFrom),
          new Date(certificate.validTo),
          this.#fraction,
        ).getTime());
  }

  get #pending() {
    const suffix = '.renewing';
    return { cert: `${this.#files.certFile}${suffix}`, key: `${this.#files.keyFile}${suffix}` };
  }

  /** Finishes or discards a renewal interrupted by a crash. True when it finished one. */
  async recover(): Promise<boolean> {
    const pending = this.#pending;
    const pendingCert = await readFile(pending.cert, 'utf8').catch(() => undefined);
    if (pendingCert === undefined) {
      await rm(pending.key, { force: true });
      return false;
    }
    const pendingKey = await readFile(pending.key, 'utf8').catch(() => undefined);
    if (pendingKey !== undefined) {
      // Neither was renamed: the old pair is whole; start again later.
      await rm(pending.key, { force: true });
      await rm(pending.cert, { force: true });
      return false;
    }
    // The key was renamed, the certificate not: finish if they match.
    const key = await readFile(this.#files.keyFile, 'utf8');
    if (
      spki(key).equals(new X509Certificate(pendingCert).publicKey.export({ type: 'spki', format: 'der' }))
    ) {
      await rename(pending.cert, this.#files.certFile);
      return true;
    }
    await rm(pending.cert, { force: true });
    return false;
  }

  /** Renews through `client` when the current certificate is due (and no failed attempt is recent). */
  async renewIfDue(client: DeviceApiClient, signal?: AbortSignal): Promise<RenewalResult | undefined> {
    const now = this.#now();
    if (now < this.#nextAttemptAt) return undefined;
    const current = new X509Certificate(await readFile(this.#files.certFile, 'utf8'));
    if (!this.#isDue(current, now)) return undefined;
    try {
      return await this.#renew(client, current, signal);
    } catch (error) {
      this.#nextAttemptAt = now + this.#retryAfterMs;
      throw error;
    }
  }

  async #renew(
    client: DeviceApiClient,
    current: X509Certificate,
    signal?: AbortSignal,
  ): Promise<RenewalResult> {
    const key = generateDeviceKey(keyTypeOf(await readFile(this.#files.keyFile, 'utf8')));
    const commonName =
      current.subject
        .split('\n')
        .find((part) => part.startsWith('CN='))
        ?.slice(3) ?? 'device';
    const issued = await client.post(
      RENEWAL_OPERATION,
      { csr: createCsr(key.privateKey, commonName) },
      renewedCertificateSchema,
      signal,
    );

    const certificate = new X509Certificate(issued.certificatePem);
    const ca = new X509Certificate(issued.caCertificatePem);
    if (!certificate.publicKey.export({ type: 'spki', format: 'der' }).equals(spki(key.publicKeyPem))) {
      throw new Error('the renewed certificate is for another key than the one sent');
    }
    if (!certificate.checkIssued(ca) || !certificate.verify(ca.publicKey)) {
      throw new Error('the renewed certificate is not signed by the CA certificate returned with it');
    }
    if (certificate.subject !== current.subject) {
      throw new Error(
        `the renewed certificate names ${certificate.subject.replace(/\n/g, ', ')}, not this device`,
      );
    }

    const pending = this.#pending;
    await writeSynced(pending.key, key.privateKeyPem, 0o600);
    await writeSynced(pending.cert, issued.certificatePem, 0o644);
    if (this.#files.caFile !== undefined) {
      const currentCa = await readFile(this.#files.caFile, 'utf8').catch(() => '');
      if (currentCa !== issued.caCertificatePem) {
        const caTemp = `${this.#files.caFile}.${randomBytes(4).toString('hex')}`;
        await writeSynced(caTemp, issued.caCertificatePem, 0o644);
        await rename(caTemp, this.#files.caFile);
      }
    }
    await rename(pending.key, this.#files.keyFile);
    await rename(pending.cert, this.#files.certFile);
    return { serial: issued.serial, notAfter: issued.notAfter };
  }
}
