/**
 * Servers starting together on one empty shared folder create the device CA and the package-signing
 * identity once; one that starts while another is part-way through writing them waits and loads the
 * winner's, instead of finding "half a CA".
 */
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { createRootCa } from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeviceCa } from '../../src/identity/index.js';
import { openSigningIdentity } from '../../src/packaging/index.js';

const OPENER = fileURLToPath(new URL('../support/open-key-material.ts', import.meta.url));
const TSX_LOADER = pathToFileURL(
  path.resolve(path.dirname(OPENER), '../../../../node_modules/tsx/dist/loader.mjs'),
).toString();

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-key-race-'));
});
afterAll(() => rm(dir, { recursive: true, force: true }));

const rootCa = () =>
  createRootCa({ commonName: 'winner', validityDays: 2, keyType: 'ecdsa-p256', pathLength: 0 });

describe('key material created by servers starting together', () => {
  it('waits for a creator between writing the CA key and its certificate, then loads its CA', async () => {
    const files = {
      certFile: path.join(dir, 'ca', 'device-ca.crt'),
      keyFile: path.join(dir, 'ca', 'device-ca.key'),
    };
    // What the winning server has done so far: its lock taken, its key written, its certificate not yet.
    const winner = rootCa();
    await mkdir(path.dirname(files.keyFile), { recursive: true, mode: 0o700 });
    await writeFile(`${files.keyFile}.lock`, '', { mode: 0o600 });
    await writeFile(files.keyFile, winner.privateKeyPem, { mode: 0o600 });
    const opened = DeviceCa.open(files, { generate: true });
    const outcome = opened.then(
      () => 'loaded',
      (error: Error) => error.message,
    );
    // Several checks of the folder later, the second server is still waiting (not refusing half a CA) …
    await sleep(300);
    expect(await Promise.race([outcome, Promise.resolve('waiting')])).toBe('waiting');
    // … until the winner writes its certificate and lets go of the lock.
    await writeFile(files.certFile, winner.certificatePem);
    await rm(`${files.keyFile}.lock`);
    expect(await outcome).toBe('loaded');
    expect((await opened).certificatePem).toBe(winner.certificatePem);
  });

  it('waits for a creator part-way through the signing files, then loads them', async () => {
    const signingDir = path.join(dir, 'signing');
    const files = {
      rootCertFile: path.join(signingDir, 'root.crt'),
      rootKeyFile: path.join(signingDir, 'root.key'),
      certFile: path.join(signingDir, 'signing.crt'),
      keyFile: path.join(signingDir, 'signing.key'),
    };
    const expected = await openSigningIdentity(
      {
        ...files,
        rootCertFile: path.join(dir, 'source', 'root.crt'),
        rootKeyFile: path.join(dir, 'source', 'root.key'),
        certFile: path.join(dir, 'source', 'signing.crt'),
        keyFile: path.join(dir, 'source', 'signing.key'),
      },
      { generate: true },
    );
    await mkdir(signingDir, { recursive: true, mode: 0o700 });
    await writeFile(`${files.keyFile}.lock`, '', { mode: 0o600 });
    await writeFile(files.keyFile, await readFile(path.join(dir, 'source', 'signing.key')), { mode: 0o600 });
    const opened = openSigningIdentity(files, { generate: true });
    const outcome = opened.then(
      () => 'loaded',
      (error: Error) => error.message,
    );
    await sleep(300);
    expect(await Promise.race([outcome, Promise.resolve('waiting')])).toBe('waiting');
    await writeFile(files.certFile, await readFile(path.join(dir, 'source', 'signing.crt')));
    await writeFile(files.rootCertFile, await readFile(path.join(dir, 'source', 'root.crt')));
    await rm(`${files.keyFile}.lock`);
    expect(await outcome).toBe('loaded');
    expect((await opened).rootFingerprintSha256).toBe(expected.rootFingerprintSha256);
  });

  // The certificate's name is taken by a dangling symbolic link: it reads as absent, so the server generates,
  // and publishing the certificate then fails for real (EEXIST) after the key was published.
  it('removes the CA key it published when writing the certificate fails, so the next start creates a CA', async () => {
    const caDir = path.join(dir, 'ca-fails');
    const files = { certFile: path.join(caDir, 'device-ca.crt'), keyFile: path.join(caDir, 'device-ca.key') };
    await mkdir(caDir, { recursive: true, mode: 0o700 });
    await symlink(path.join(caDir, 'nowhere'), files.certFile);
    await expect(DeviceCa.open(files, { generate: true })).rejects.toThrow(/device-ca\.crt already exists/);
    // Neither the key nor the lock is left behind: no "half a CA" for the servers that start next.
    expect(await readdir(caDir)).toEqual(['device-ca.crt']);
    await rm(files.certFile);
    const ca = await DeviceCa.open(files, { generate: true });
    expect((await DeviceCa.open(files, { generate: false })).fingerprintSha256).toBe(ca.fingerprintSha256);
  });

  it('removes the signing keys it published when writing the last certificate fails', async () => {
    const signingDir = path.join(dir, 'signing-fails');
    const files = {
      rootCertFile: path.join(signingDir, 'root.crt'),
      rootKeyFile: path.join(signingDir, 'root.key'),
      certFile: path.join(signingDir, 'signing.crt'),
      keyFile: path.join(signingDir, 'signing.key'),
    };
    await mkdir(signingDir, { recursive: true, mode: 0o700 });
    await symlink(path.join(signingDir, 'nowhere'), files.rootCertFile);
    await expect(openSigningIdentity(files, { generate: true })).rejects.toThrow(/root\.crt already exists/);
    expect(await readdir(signingDir)).toEqual(['root.crt']);
    await rm(files.rootCertFile);
    const identity = await openSigningIdentity(files, { generate: true });
    expect((await openSigningIdentity(files, { generate: false })).rootFingerprintSha256).toBe(
      identity.rootFingerprintSha256,
    );
  });

  it('creates one CA and one signing identity when three server processes start at once', async () => {
    const folder = path.join(dir, 'shared');
    const gate = path.join(dir, 'go');
    const children = [1, 2, 3].map(() =>
      spawn(process.execPath, ['--import', TSX_LOADER, OPENER, folder, gate], {
        stdio: ['ignore', 'pipe', 'pipe'],
      }),
    );
    try {
      const results = children.map(
        (child) =>
          new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
            let out = '';
            let err = '';
            child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
            child.stderr.on('data', (chunk: Buffer) => (err += chunk.toString()));
            child.once('close', (code) => resolve({ code, out, err }));
          }),
      );
      // Every process loaded and waits at the gate: open it for all at once.
      await Promise.all(
        children.map(
          (child) =>
            new Promise<void>((resolve, reject) => {
              let out = '';
              child.stdout.on('data', (chunk: Buffer) => {
                out += chunk.toString();
                if (out.includes('ready\n')) resolve();
              });
              child.once('close', (code) => reject(new Error(`an opener exited (${code}) before the gate`)));
            }),
        ),
      );
      await writeFile(gate, '');
      const finished = await Promise.all(results);
      for (const { code, err } of finished) expect({ code, err }).toEqual({ code: 0, err: '' });
      const printed = finished.map(({ out }) => JSON.parse(out.split('\n')[1] ?? '') as object);
      expect(printed[1]).toEqual(printed[0]);
      expect(printed[2]).toEqual(printed[0]);
    } finally {
      for (const child of children)
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  }, 60_000);
});
