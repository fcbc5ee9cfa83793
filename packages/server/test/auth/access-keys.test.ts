import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AccessKeyStore, loadAccessKeyEncryptionKey } from '../../src/auth/index.js';
import type { ServerDatabase } from '../../src/storage/index.js';
import { databaseEngines, openFreshDatabase } from '../support/engines.js';
import { startTestServer, type TestServer } from '../support/server.js';

const engines = await databaseEngines();

describe.each(engines)('access key store on $engine', (fixture) => {
  let database: ServerDatabase;
  beforeAll(async () => {
    if (fixture.available) database = await openFreshDatabase(fixture);
  });
  afterAll(() => database?.close());

  it.skipIf(!fixture.available)(
    'keeps the secret encrypted: a dump shows no secret and another server key cannot read it',
    async () => {
      const key = randomBytes(32);
      const keys = new AccessKeyStore(database.db, key);
      const { secretAccessKey, record } = await keys.create({ name: 'ci', scope: 'admin' });
      expect(record.accessKeyId).toMatch(/^AKEF[A-Z2-7]{16}$/);
      expect(secretAccessKey).toHaveLength(40);
      const dump = JSON.stringify(await database.db.selectFrom('access_keys').selectAll().execute());
      expect(dump).not.toContain(secretAccessKey);
      expect((await keys.findActive(record.accessKeyId))?.secretAccessKey).toBe(secretAccessKey);

      const otherServer = new AccessKeyStore(database.db, randomBytes(32));
      await expect(otherServer.findActive(record.accessKeyId)).rejects.toThrow(/cannot be decrypted/);

      expect(await keys.revoke(record.accessKeyId)).toBe(true);
      expect(await keys.findActive(record.accessKeyId)).toBeUndefined();
      expect(await keys.revoke(record.accessKeyId)).toBe(false);
    },
  );
});

describe('access-key encryption key file', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-akey-'));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('is created once with mode 0600 and read back the same; a wrong-sized one is refused', async () => {
    const file = path.join(dir, 'keys', 'encryption.key');
    const first = await loadAccessKeyEncryptionKey(file);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect(await loadAccessKeyEncryptionKey(file)).toEqual(first);
    const short = path.join(dir, 'short.key');
    await import('node:fs/promises').then((fs) => fs.writeFile(short, 'AAAA\n'));
    await expect(loadAccessKeyEncryptionKey(short)).rejects.toThrow(/32 bytes/);
    expect((await readFile(file, 'utf8')).trim()).toBe(first.toString('base64'));
  });

  it('gives servers starting together on an empty folder one key, each loading the same', async () => {
    // Replicas sharing a data folder: each finds no key file and would create its own. Exactly one may, and
    // the others must neither fail on its file (EEXIST) nor read it half-written.
    const file = path.join(dir, 'together', 'encryption.key');
    const keys = await Promise.all(Array.from({ length: 4 }, () => loadAccessKeyEncryptionKey(file)));
    for (const key of keys) expect(key).toEqual(keys[0]);
    expect((await readFile(file, 'utf8')).trim()).toBe(keys[0]!.toString('base64'));
    expect((await stat(file)).mode & 0o777).toBe(0o600);
  });
});

describe('access key REST routes', () => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer();
  });
  afterAll(() => t?.stop());

  it('creates (secret once), lists without secrets, revokes; read-only tokens may not', async () => {
    const created = await t.call('POST', '/api/v1/access-keys', {
      token: t.adminToken,
      body: { name: 'ci', scope: 'read-only' },
    });
    expect(created.status).toBe(201);
    expect(created.body).toMatchObject({ name: 'ci', scope: 'read-only' });
    const listed = await t.call('GET', '/api/v1/access-keys', { token: t.adminToken });
    expect(listed.body.accessKeys).toHaveLength(1);
    expect(JSON.stringify(listed.body)).not.toContain(created.body.secretAccessKey);
    const denied = await t.call('POST', '/api/v1/access-keys', {
      token: t.readToken,
      body: { name: 'x', scope: 'admin' },
    });
    expect(denied.status).toBe(403);
    const revoked = await t.call('DELETE', `/api/v1/access-keys/${created.body.accessKeyId}`, {
      token: t.adminToken,
    });
    expect(revoked.status).toBe(204);
    const again = await t.call('DELETE', `/api/v1/access-keys/${created.body.accessKeyId}`, {
      token: t.adminToken,
    });
    expect(again.status).toBe(404);
    const openapi = await t.call('GET', '/api/docs');
    expect(Object.keys(openapi.body.paths)).toContain('/api/v1/access-keys');
  });
});
