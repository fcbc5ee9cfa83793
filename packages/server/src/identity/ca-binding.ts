import type { Kysely } from 'kysely';
import { claimServerSetting, type DatabaseSchema } from '../storage/index.js';

const SETTING = 'device_ca_sha256';

/**
 * Ties the database to one device CA. Every certificate in it was issued by that CA, so a server (or a
 * second replica) that starts with different CA files would refuse every device: fail at start-up instead.
 */
export async function bindDeviceCa(db: Kysely<DatabaseSchema>, fingerprintSha256: string): Promise<void> {
  const bound = await claimServerSetting(db, SETTING, fingerprintSha256);
  if (bound !== fingerprintSha256) {
    throw new Error(
      `this database belongs to a different device CA (SHA-256 ${bound}) than the one configured ` +
        `(${fingerprintSha256}); give every server replica the same deviceCa certFile and keyFile`,
    );
  }
}
