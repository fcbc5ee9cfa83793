import { describe, expect, it } from 'vitest';
import { bindDeviceCa } from '../../src/identity/index.js';
import { bindSigningRoot } from '../../src/packaging/index.js';
import { databaseEngines, openFreshDatabase } from '../support/engines.js';

const engines = await databaseEngines();

describe.each(engines)('package-signing root binding on $engine', (fixture) => {
  it.skipIf(!fixture.available)('ties a database to one signing root, apart from the device CA', async () => {
    const database = await openFreshDatabase(fixture);
    try {
      await bindDeviceCa(database.db, 'aa'.repeat(32));
      // A different value under the other setting: the two bindings do not see each other.
      await bindSigningRoot(database.db, 'cc'.repeat(32));
      await bindSigningRoot(database.db, 'cc'.repeat(32));
      await expect(bindSigningRoot(database.db, 'dd'.repeat(32))).rejects.toThrow(
        new RegExp(`package-signing root is SHA-256 ${'cc'.repeat(32)}, not ${'dd'.repeat(32)}`),
      );
      await bindDeviceCa(database.db, 'aa'.repeat(32));
    } finally {
      await database.close();
    }
  });
});
