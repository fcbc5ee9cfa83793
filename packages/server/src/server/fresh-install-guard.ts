import { readdir, stat } from 'node:fs/promises';
import type { ServerConfig } from '../config/index.js';
import { hasNoSchema, type ServerDatabase } from '../storage/index.js';

/** Raised when the database is empty but the data dir says this server has state: starting would lose it. */
export class EmptyDatabaseError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'EmptyDatabaseError';
  }
}

const exists = (file: string) =>
  stat(file).then(
    () => true,
    () => false,
  );
const nonEmptyFolder = (folder: string) =>
  readdir(folder).then(
    (entries) => entries.length > 0,
    () => false,
  );

/** What in the data dir shows this server ran before: generated key material and local blobs. */
async function leftoverState(config: ServerConfig): Promise<string[]> {
  const found: string[] = [];
  // Key material the operator provides exists before the first start; only what the server generated counts.
  if (!config.provided.deviceCa && (await exists(config.deviceCa.keyFile)))
    found.push(config.deviceCa.keyFile);
  if (!config.provided.signing && (await exists(config.signing.keyFile))) found.push(config.signing.keyFile);
  if (config.blobLocation.kind === 'local' && (await nonEmptyFolder(config.blobLocation.root))) {
    found.push(config.blobLocation.root);
  }
  return found;
}

/**
 * Refuses to treat an empty database as a fresh install while the data dir holds what an earlier run made (a
 * truncated state.db, a wrong database URL): starting would forget every fleet, device, certificate and token
 * and lock out every enrolled device. `allowEmptyDatabase` is the operator saying that is intended.
 */
export async function refuseSilentFreshInstall(
  config: ServerConfig,
  database: ServerDatabase,
): Promise<void> {
  if (config.allowEmptyDatabase) return;
  if (!(await hasNoSchema(database.db))) return;
  const found = await leftoverState(config);
  if (found.length === 0) return;
  throw new EmptyDatabaseError(
    `the database ${database.description} is empty, but this server has run before: ${found.join(', ')} ` +
      'exist. Starting would forget every fleet, device, certificate and token. Restore the database ' +
      '(or point --database at the right one); to start afresh on purpose, set allowEmptyDatabase ' +
      '(--allow-empty-database true, or EDGEFLEET_ALLOW_EMPTY_DATABASE=true).',
  );
}
