import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AccessKeyStore,
  accessKeyEncryptionKeyFingerprint,
  loadAccessKeyEncryptionKey,
  openAccessKeyEncryptionKey,
} from '../../src/auth/index.js';
import { fileExists } from '../../src/identity/key-files.js';
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

  it.skipIf(!fixture.available)(
    'of two keys created at once with names of one ~/.aws/credentials profile, one is refused (review N9)',
    async () => {
      const keys = new AccessKeyStore(database.db, randomBytes(32));
      // `ci bot` and `ci.bot` are both profile [ci-bot].
      const results = await Promise.allSettled([
        keys.create({ name: 'ci bot', scope: 'admin' }),
        keys.create({ name: 'ci.bot', scope: 'admin' }),
      ]);
      expect(results.map((r) => r.status).sort()).toEqual(['fulfilled', 'rejected']);
      const refused = results.find((r) => r.status === 'rejected')!;
      expect(String(refused.reason)).toMatch(/already has the ~\/\.aws\/credentials profile \[ci-bot\]/);
      // Revoked, the profile is free again.
      const kept = results.find((r) => r.status === 'fulfilled')!;
      expect(await keys.revoke(kept.value.record.accessKeyId)).toBe(true);
      expect((await keys.create({ name: 'ci bot', scope: 'admin' })).record.name).toBe('ci bot');
    },
  );
});

describe.each(engines)('access-key encryption key bound to the database on $engine', (fixture) => {
  let database: ServerDatabase;
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-akey-bind-'));
    if (fixture.available) database = await openFreshDatabase(fixture);
  });
  afterAll(async () => {
    await database?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it.skipIf(!fixture.available)(
    'refuses a missing or different key file while access keys exist, instead of making a new key',
    async () => {
      const file = path.join(dir, 'access-keys', 'encryption.key');
      const key = await openAccessKeyEncryptionKey(database.db, file);
      expect(await openAccessKeyEncryptionKey(database.db, file)).toEqual(key);
      const keys = new AccessKeyStore(database.db, key);
      const { record } = await keys.create({ name: 'boto', scope: 'admin' });

      // A restore that forgot the key file: refused, and no new key is written in its place.
      await rm(file);
      await expect(openAccessKeyEncryptionKey(database.db, file)).rejects.toThrow(
        /holds SageMaker access keys .*sagemaker\.accessKeyEncryptionKeyFile.*does not exist: restore the key file/,
      );
      expect(await fileExists(file)).toBe(false);

      // Another server's key: refused, since the stored keys do not decrypt under it.
      await writeFile(file, `${randomBytes(32).toString('base64')}\n`, { mode: 0o600 });
      await expect(openAccessKeyEncryptionKey(database.db, file)).rejects.toThrow(
        new RegExp(`cannot decrypt \\(access key ${record.accessKeyId} does not decrypt\\)`),
      );

      // A database from before the fingerprint: the stored keys themselves tell.
      await database.db
        .deleteFrom('server_settings')
        .where('key', '=', 'access_key_encryption_key_fingerprint')
        .execute();
      await expect(openAccessKeyEncryptionKey(database.db, file)).rejects.toThrow(
        new RegExp(`access key ${record.accessKeyId} does not decrypt`),
      );

      // The right key restored: accepted, and the secrets read.
      await writeFile(file, `${key.toString('base64')}\n`);
      expect(await openAccessKeyEncryptionKey(database.db, file)).toEqual(key);
      expect(await keys.findActive(record.accessKeyId)).toBeDefined();

      // Keys under K but the database bound to K' (a replica that overwrote the binding): refused by the
      // fingerprint itself, even though K reads the keys.
      const otherFingerprint = accessKeyEncryptionKeyFingerprint(randomBytes(32));
      await database.db
        .updateTable('server_settings')
        .set({ value: otherFingerprint })
        .where('key', '=', 'access_key_encryption_key_fingerprint')
        .execute();
      await expect(openAccessKeyEncryptionKey(database.db, file)).rejects.toThrow(
        new RegExp(`the database is bound to the key of fingerprint ${otherFingerprint.slice(0, 16)}\\)`),
      );

      await database.db
        .updateTable('server_settings')
        .set({ value: accessKeyEncryptionKeyFingerprint(key) })
        .where('key', '=', 'access_key_encryption_key_fingerprint')
        .execute();

      // With no active access key nothing is lost: a new key becomes the database's key, with a warning.
      await keys.revoke(record.accessKeyId);
      await rm(file);
      const warnings: string[] = [];
      const warn = (message: string) => warnings.push(message);
      const fresh = await openAccessKeyEncryptionKey(database.db, file, { warn });
      expect(fresh).not.toEqual(key);
      expect(warnings).toEqual([
        expect.stringMatching(
          `access-key encryption key changes from fingerprint ${accessKeyEncryptionKeyFingerprint(key).slice(0, 16)} to ${accessKeyEncryptionKeyFingerprint(fresh).slice(0, 16)}`,
        ),
      ]);
      expect(await openAccessKeyEncryptionKey(database.db, file, { warn })).toEqual(fresh);
      expect(warnings).toHaveLength(1);
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
