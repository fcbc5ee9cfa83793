/** secretConfigFileWarning on real files: which settings count as secrets. */
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { secretConfigFileWarning } from '../../src/config/index.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-secret-mode-'));
});
afterAll(() => rm(dir, { recursive: true, force: true }));

async function worldReadable(name: string, settings: unknown): Promise<string> {
  const file = path.join(dir, name);
  await writeFile(file, JSON.stringify(settings));
  await chmod(file, 0o644);
  return file;
}

describe('secretConfigFileWarning', () => {
  it('counts an S3 endpoint with credentials in its URL as a secret, and one without as none', async () => {
    const keyed = await worldReadable('keyed.json', {
      s3: { endpoint: 'https://minio-user:minio-pass@minio.example:9000' },
    });
    expect(await secretConfigFileWarning(keyed)).toBe(
      `the config file ${keyed} holds the credentials in s3.endpoint and is readable by every local user (mode 0644); expected 0600, or 0640 with the server's own group: chmod 0600 ${keyed}`,
    );
    const plain = await worldReadable('plain.json', { s3: { endpoint: 'https://minio.example:9000' } });
    expect(await secretConfigFileWarning(plain)).toBeUndefined();
  });

  it('names the secret parameters of database, and counts path-valued keywords as none', async () => {
    const keyed = await worldReadable('db-keyed.json', {
      database: 'postgres://edge:pw@db.example/fleet?sslpassword=k&sslkey=/etc/k.pem',
    });
    expect(await secretConfigFileWarning(keyed)).toMatch(
      new RegExp(`^the config file ${keyed} holds the password, sslpassword in database and is readable`),
    );
    const paths = await worldReadable('db-paths.json', {
      database: 'postgres://edge@db.example/fleet?sslkey=/etc/k.pem&passfile=/etc/pgpass',
    });
    expect(await secretConfigFileWarning(paths)).toBeUndefined();
  });
});
