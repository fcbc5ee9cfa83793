import { closeSync, openSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { loadSysvShmAddon, peerMay, type PeerCredentials, type SegmentStat } from '../../src/shm/index.js';

const addon = loadSysvShmAddon();

describe("peerMay(…, 'read'): the kernel’s rule for attaching a segment read-only", () => {
  // A segment owned by uid 1000 / gid 100, created by uid 1001 / gid 101.
  const stat = (mode: number): SegmentStat => ({
    size: 16,
    mode,
    attachCount: 0,
    changeTime: 0,
    creatorPid: 1,
    ownerUid: 1000,
    ownerGid: 100,
    creatorUid: 1001,
    creatorGid: 101,
    markedForRemoval: false,
  });
  const peer = (uid: number, gid: number, groups: number[] = []): PeerCredentials => ({
    pid: 1,
    uid,
    gid,
    groups,
  });

  it.each([
    ['owner, 0400', peer(1000, 5), 0o400, true],
    ['owner, 0040 (the owner uses the owner bits only)', peer(1000, 100), 0o040, false],
    ['creator, 0400', peer(1001, 5), 0o400, true],
    ['owner group, 0040', peer(2000, 100), 0o040, true],
    ['creator group as a supplementary group, 0040', peer(2000, 5, [7, 101]), 0o040, true],
    ['group member, 0404 without group read', peer(2000, 100), 0o004, false],
    ['anyone else, 0600', peer(2000, 5), 0o600, false],
    ['anyone else, 0604', peer(2000, 5), 0o604, true],
    ['root, 0000', peer(0, 0), 0o000, true],
  ] as const)('%s → %s', (_, caller, mode, allowed) => {
    expect(peerMay(stat(mode), caller, 'read')).toBe(allowed);
  });

  it.each([
    ['owner, 0600', peer(1000, 5), 0o600, true],
    ['owner, 0400 (read-only)', peer(1000, 5), 0o400, false],
    ['owner group, 0660', peer(2000, 100), 0o660, true],
    ['owner group, 0640', peer(2000, 100), 0o640, false],
    ['anyone else, 0644', peer(2000, 5), 0o644, false],
    ['anyone else, 0646', peer(2000, 5), 0o646, true],
    ['root, 0400', peer(0, 0), 0o400, true],
  ] as const)("peerMay(…, 'write'): %s → %s", (_, caller, mode, allowed) => {
    expect(peerMay(stat(mode), caller, 'write')).toBe(allowed);
  });
});

describe('peerCredentials: SO_PEERCRED on a real Unix socket', () => {
  it('gives the connecting process’s pid, uid and gid', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'agent-peercred-'));
    const path = join(dir, 'peer.sock');
    let seen: ReturnType<typeof addon.peerCredentials> | undefined;
    const server = createServer((socket) => {
      seen = addon.peerCredentials((socket as unknown as { _handle: { fd: number } })._handle.fd);
      socket.end();
    });
    await new Promise<void>((resolve) => server.listen(path, resolve));
    await new Promise<void>((resolve) =>
      createConnection(path)
        .on('close', () => resolve())
        .resume(),
    );
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await rm(dir, { recursive: true, force: true });
    expect(seen).toMatchObject({ pid: process.pid, uid: process.getuid!(), gid: process.getgid!() });
    expect(Array.isArray(seen!.groups)).toBe(true);
    const file = openSync(fileURLToPath(import.meta.url), 'r'); // not a socket
    try {
      expect(() => addon.peerCredentials(file)).toThrow(/ENOTSOCK/);
    } finally {
      closeSync(file);
    }
  });
});
