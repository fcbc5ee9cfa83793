import type { FleetEventLog } from '../audit/index.js';
import { ApiTokenStore, openAccessKeyEncryptionKey } from '../auth/index.js';
import { accessKeyEncryptionKeyFileOf, type ServerConfig } from '../config/index.js';
import { bindBlobStore } from './blob-store-binding.js';
import {
  blobStoreLocationOf,
  checkBlobStore,
  openDeviceCa,
  openPackageSigning,
  openStores,
} from './start-server.js';

export interface InitResult {
  /** The first admin token, when this run created it (shown once). */
  adminToken?: string;
  dataDir: string;
  database: string;
  blobs: string;
  /** SHA-256 of the device CA certificate (devices trust it for the device API). */
  deviceCaSha256: string;
  deviceCaFile: string;
  /** The root certificate package signatures chain to: devices' root-certs folder needs it. */
  signingRootFile: string;
  signingRootSha256: string;
}

/**
 * Prepares a data dir and database: schema, key material, and the first admin API token. Running it again
 * is harmless: it creates no second admin token while an active one exists.
 */
export async function initServer(
  config: ServerConfig,
  options: {
    forceMigrate?: boolean;
    warn?: (message: string) => void;
    /** Where the first admin token's creation is logged (by name, id and scope; never the token). */
    events?: FleetEventLog;
  } = {},
): Promise<InitResult> {
  const { database, blobs } = await openStores(config, undefined, { besideServer: true, ...options });
  try {
    await checkBlobStore(blobs);
    const ca = await openDeviceCa(config, database);
    const signing = await openPackageSigning(config, database);
    await bindBlobStore(database.db, blobs, blobStoreLocationOf(config, blobs), {
      allowTakeover: config.allowEmptyDatabase,
    });
    // Created now so that a backup taken right after init already has every key file.
    await openAccessKeyEncryptionKey(database.db, accessKeyEncryptionKeyFileOf(config));
    const tokens = new ApiTokenStore(database.db, Date.now, options.events);
    const result: InitResult = {
      dataDir: config.dataDir,
      database: database.description,
      blobs: blobs.description,
      deviceCaSha256: ca.fingerprintSha256,
      deviceCaFile: config.deviceCa.certFile,
      signingRootFile: config.signing.rootCertFile,
      signingRootSha256: signing.rootFingerprintSha256,
    };
    if (!(await tokens.hasActiveAdmin())) {
      result.adminToken = (await tokens.create({ name: 'initial-admin', scope: 'admin' })).token;
    }
    return result;
  } finally {
    await blobs.close();
    await database.close();
  }
}
