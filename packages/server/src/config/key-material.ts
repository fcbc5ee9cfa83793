import path from 'node:path';
import type { ServerConfig } from './config-schema.js';

/**
 * The key material the configuration names cannot be used: configured files that do not exist, or files other
 * than the ones the database is tied to (another replica's, another host's generated ones). A person must copy
 * or restore files or change the configuration, and a restart would fail alike: `serve` exits 2, which the unit
 * does not restart.
 */
export class KeyMaterialError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'KeyMaterialError';
  }
}

/** Where the key encrypting SageMaker access-key secrets lives (backups must carry it with the database). */
export function accessKeyEncryptionKeyFileOf(config: ServerConfig): string {
  return path.resolve(
    config.dataDir,
    config.sagemaker.accessKeyEncryptionKeyFile ?? path.join('access-keys', 'encryption.key'),
  );
}

/**
 * The key folders and files a backup must carry with the database: the database is tied to each of them
 * (device CA, package-signing root, access-key encryption key), and a server refuses to start without them.
 * Not deviceTls: generated at every start unless the operator provides it, and then it is the operator's own
 * TLS files (a folder such as /etc/letsencrypt/live/…), which the database is not tied to.
 */
export function keyMaterialToBackUp(config: ServerConfig): string[] {
  const places = [
    path.dirname(config.deviceCa.keyFile),
    path.dirname(config.signing.keyFile),
    path.dirname(config.signing.rootKeyFile ?? config.signing.keyFile),
    accessKeyEncryptionKeyFileOf(config),
  ];
  return [...new Set(places)];
}
