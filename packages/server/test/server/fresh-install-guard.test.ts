import { mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { databaseEngines } from '../support/engines.js';
import { startTestServer } from '../support/server.js';

const engines = await databaseEngines();
const dirs: string[] = [];
afterAll(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

describe('an empty database in a data dir that has state (issue 15, item 7)', () => {
  it('refuses a 0-byte SQLite state.db next to generated keys, naming the path; starts when told', async () => {
    const dataDir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-guard-'));
    dirs.push(dataDir);
    const first = await startTestServer({ dataDir });
    const created = await first.call('POST', '/api/v1/fleets', {
      token: first.adminToken,
      body: { name: 'cams', outputConfig: { s3OutputLocation: 's3://captures/cams' } },
    });
    expect(created.status).toBe(201);
    await first.stop();

    const stateDb = path.join(dataDir, 'state.db');
    await truncate(stateDb, 0);
    await rm(`${stateDb}-wal`, { force: true });
    await rm(`${stateDb}-shm`, { force: true });
    await expect(startTestServer({ dataDir })).rejects.toThrow(
      new RegExp(`database sqlite:${stateDb} is empty.*device-ca\\.key.*allowEmptyDatabase`, 's'),
    );

    const fresh = await startTestServer({ dataDir, config: { allowEmptyDatabase: true } });
    expect((await fresh.call('GET', '/api/v1/fleets', { token: fresh.adminToken })).body.fleets).toEqual([]);
    await fresh.stop();
  });

  it('names the database file when it cannot be opened', async () => {
    const dataDir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-guard-'));
    dirs.push(dataDir);
    const stateDb = path.join(dataDir, 'state.db');
    await writeFile(stateDb, 'this is not a SQLite database, it is text long enough to have a header....');
    await expect(startTestServer({ dataDir })).rejects.toThrow(stateDb);
  });

  describe.each(engines)('on $engine', (fixture) => {
    it.skipIf(!fixture.available)('refuses an empty database when blobs or keys exist', async () => {
      const dataDir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-guard-'));
      dirs.push(dataDir);
      const first = await startTestServer({ dataDir, database: await fixture.createLocation() });
      await first.stop();
      // The same data dir pointed at another, empty database (a wrong URL, a lost volume).
      await expect(startTestServer({ dataDir, database: await fixture.createLocation() })).rejects.toThrow(
        /is empty, but this server has run before/,
      );
    });
  });
});
