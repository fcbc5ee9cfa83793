/**
 * A replica set up with key material other than the database's (its own generated CA or signing files, as a
 * second host following the single-server steps gets), or with configured key files that do not exist, is a
 * configuration a person must fix: `serve` exits 2 (the unit does not restart it) with a message saying what to
 * copy or unset, rather than 1 and a restart every 2 s. Real processes on one SQLite database, one at a time.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runServerCli, startServerProcess } from '../support/process.js';

let cwd: string;
beforeAll(async () => {
  cwd = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-key-material-'));
});
afterAll(async () => {
  await rm(cwd, { recursive: true, force: true });
});

/** Runs serve with this config; resolves with its exit code and stderr when it exits before listening. */
async function serveOutcome(
  name: string,
  config: Record<string, unknown>,
): Promise<{ code: number | null; stderr: string } | 'it started'> {
  const file = path.join(cwd, `${name}.json`);
  await writeFile(file, JSON.stringify(config), { mode: 0o600 });
  const started = await startServerProcess(['--config', file], cwd).catch((error: Error) => error);
  if (started instanceof Error) {
    const exited = /exited \((\d+|null)\) before listening: ([\s\S]*)$/.exec(started.message);
    if (exited === null) throw started;
    return { code: exited[1] === 'null' ? null : Number(exited[1]), stderr: exited[2]! };
  }
  expect(await started.stop()).toBe(0);
  return 'it started';
}

// Each CLI run starts Node with tsx; on a busy two-core machine that takes seconds.
describe('serve with key material that cannot be used (real processes)', { timeout: 180_000 }, () => {
  it('exits 2 with what to copy or unset; starts once the first server’s files are configured', async () => {
    const first = path.join(cwd, 'first');
    expect((await runServerCli(['init', '--data-dir', first], cwd)).code).toBe(0);
    const shared = {
      dataDir: path.join(cwd, 'second'),
      database: path.join(first, 'state.db'),
      blob: path.join(first, 'blobs'),
      listen: '127.0.0.1:0',
      deviceListen: '127.0.0.1:0',
      logLevel: 'info',
    };
    const firstCa = {
      certFile: path.join(first, 'ca', 'device-ca.crt'),
      keyFile: path.join(first, 'ca', 'device-ca.key'),
    };
    const firstSigning = {
      rootCertFile: path.join(first, 'signing', 'root.crt'),
      certFile: path.join(first, 'signing', 'signing.crt'),
      keyFile: path.join(first, 'signing', 'signing.key'),
    };
    const empty = path.join(cwd, 'empty');
    await mkdir(empty, { mode: 0o700 });

    // Its own data dir and nothing else: a CA generated there, not the database's.
    const ownCa = await serveOutcome('own-ca', shared);
    expect(ownCa).toMatchObject({ code: 2 });
    expect(ownCa !== 'it started' && ownCa.stderr).toMatch(
      /this database belongs to a different device CA \(SHA-256 [0-9a-f]{64}\) than the one configured \([0-9a-f]{64}\); every server replica must use the same device CA: copy the CA files of the first server \(ca\/device-ca\.crt and ca\/device-ca\.key in its data dir, or its deviceCa files\) to this host, key 0600, and set deviceCa\.certFile and deviceCa\.keyFile to them/,
    );

    // Configured paths that hold nothing yet: never generated, so say to copy or unset, not "remove both".
    const noCa = await serveOutcome('no-ca', {
      ...shared,
      deviceCa: { certFile: path.join(empty, 'device-ca.crt'), keyFile: path.join(empty, 'device-ca.key') },
    });
    expect(noCa).toEqual({
      code: 2,
      stderr: expect.stringContaining(
        `deviceCa.certFile and deviceCa.keyFile are set but neither ${path.join(empty, 'device-ca.crt')} nor ${path.join(empty, 'device-ca.key')} exists; configured key files are never generated: copy them from the first server (ca/device-ca.crt and ca/device-ca.key in its data dir), or unset deviceCa`,
      ),
    });
    expect(noCa !== 'it started' && noCa.stderr).not.toMatch(/remove both/);

    // The CA copied, the signing files not: its own signing root.
    const ownSigning = await serveOutcome('own-signing', { ...shared, deviceCa: firstCa });
    expect(ownSigning).toMatchObject({ code: 2 });
    expect(ownSigning !== 'it started' && ownSigning.stderr).toMatch(
      /this database belongs to a server whose package-signing root is SHA-256 [0-9a-f]{64}, not [0-9a-f]{64}; every server replica must sign with the same files: copy the first server's \(signing\/root\.crt, signing\/signing\.crt and signing\/signing\.key in its data dir, or its signing files\)/,
    );

    const noSigning = await serveOutcome('no-signing', {
      ...shared,
      deviceCa: firstCa,
      signing: {
        rootCertFile: path.join(empty, 'root.crt'),
        certFile: path.join(empty, 'signing.crt'),
        keyFile: path.join(empty, 'signing.key'),
      },
    });
    expect(noSigning).toEqual({
      code: 2,
      stderr: expect.stringContaining(
        `signing is set but none of its files exists: signing.rootCertFile ${path.join(empty, 'root.crt')}, signing.certFile ${path.join(empty, 'signing.crt')}, signing.keyFile ${path.join(empty, 'signing.key')}; configured key files are never generated: copy them from the first server`,
      ),
    });

    // Files copied from two hosts: the first server's certificate with another host's key (this one's own).
    const ownCaKey = path.join(shared.dataDir, 'ca', 'device-ca.key');
    expect(
      await serveOutcome('mixed-ca', { ...shared, deviceCa: { ...firstCa, keyFile: ownCaKey } }),
    ).toEqual({
      code: 2,
      stderr: expect.stringContaining(
        `device CA key ${ownCaKey} does not belong to certificate ${firstCa.certFile}; the two must be a pair`,
      ),
    });
    const ownSigningKey = path.join(shared.dataDir, 'signing', 'signing.key');
    expect(
      await serveOutcome('mixed-signing', {
        ...shared,
        deviceCa: firstCa,
        signing: { ...firstSigning, keyFile: ownSigningKey },
      }),
    ).toEqual({
      code: 2,
      stderr: expect.stringContaining(
        `package-signing key ${ownSigningKey} does not belong to certificate ${firstSigning.certFile}; the files must be one set`,
      ),
    });

    // Review s15 L1: a configured access-key encryption key file that is not there is not made: a new key would
    // rebind the database (while it holds no access key) and the first server would be refused at its next start.
    const missingKey = path.join(empty, 'encryption.key');
    expect(
      await serveOutcome('missing-access-key-file', {
        ...shared,
        deviceCa: firstCa,
        signing: firstSigning,
        sagemaker: { accessKeyEncryptionKeyFile: missingKey },
      }),
    ).toEqual({
      code: 2,
      stderr: expect.stringContaining(
        `sagemaker.accessKeyEncryptionKeyFile is set but ${missingKey} does not exist; configured key files are never generated`,
      ),
    });

    // The recipe: the first server's CA, signing files and access-key encryption key, its own data dir.
    expect(
      await serveOutcome('replica', {
        ...shared,
        deviceCa: firstCa,
        signing: firstSigning,
        sagemaker: { accessKeyEncryptionKeyFile: path.join(first, 'access-keys', 'encryption.key') },
      }),
    ).toBe('it started');
  });
});
