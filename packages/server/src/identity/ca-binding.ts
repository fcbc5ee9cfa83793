import type { Kysely } from 'kysely';
import { KeyMaterialError } from '../config/key-material.js';
import { claimServerSetting, type DatabaseSchema } from '../storage/index.js';

const SETTING = 'device_ca_sha256';

/**
 * Ties the database to one device CA. Every certificate in it was issued by that CA, so a server (or a
 * second replica) that starts with different CA files would refuse every device: fail at start-up instead.
 */
export async function bindDeviceCa(db: Kysely<DatabaseSchema>, fingerprintSha256: string): Promise<void> {
  const bound = await claimServerSetting(db, SETTING, fingerprintSha256);
  if (bound !== fingerprintSha256) {
    throw new KeyMaterialError(
      `this database belongs to a different device CA (SHA-256 ${bound}) than the one configured ` +
        `(${fingerprintSha256}); every server replica must use the same device CA: copy the CA files of the ` +
        'first server (ca/device-ca.crt and ca/device-ca.key in its data dir, or its deviceCa files) to this ' +
        'host, key 0600, and set deviceCa.certFile and deviceCa.keyFile to them (packages/server/README.md, ' +
        '"Adding a replica"); after a restore, restore the CA files backed up with the database',
    );
  }
}
