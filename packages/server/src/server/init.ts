import { ApiTokenStore } from '../auth/index.js';
import type { ServerConfig } from '../config/index.js';
import { openStores } from './start-server.js';

export interface InitResult {
  /** The first admin token, when this run created it (shown once). */
  adminToken?: string;
  dataDir: string;
  database: string;
  blobs: string;
}

/**
 * Prepares a data dir and database: schema, key material, and the first admin API token. Running it again
 * is harmless: it creates no second admin token while an active one exists.
 */
export async function initServer(config: ServerConfig): Promise<InitResult> {
  const { database, blobs } = await openStores(config);
  try {
    await blobs.check();
    const tokens = new ApiTokenStore(database.db);
    const result: InitResult = {
      dataDir: config.dataDir,
      database: database.description,
      blobs: blobs.description,
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
