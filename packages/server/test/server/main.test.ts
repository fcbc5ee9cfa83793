import { mkdtemp, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCsr, deviceCall, deviceKey } from '../support/device.js';
import { runServerCli, runServerCliInShell, startServerProcess } from '../support/process.js';

let cwd: string;
beforeAll(async () => {
  cwd = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-main-'));
});
afterAll(() => rm(cwd, { recursive: true, force: true }));

const flags = ['--listen', '127.0.0.1:0', '--device-listen', '127.0.0.1:0', '--log-level', 'info'];

// Each CLI run starts Node with tsx; on a busy two-core machine that takes seconds.
describe('edgefleet-server (real processes)', { timeout: 90_000 }, () => {
  let adminToken: string;

  it('init creates the data dir and prints the first admin token once', async () => {
    const first = await runServerCli(['init'], cwd);
    expect(first.code).toBe(0);
    adminToken = first.stdout.trim();
    expect(adminToken).toMatch(/^efo_[A-Za-z0-9_-]{43}$/);
    expect(first.stderr).toMatch(/shown once/);
    const dataDir = path.join(cwd, '.edgefleet', 'server');
    expect((await stat(dataDir)).mode & 0o777).toBe(0o700);
    expect((await stat(path.join(dataDir, 'state.db'))).isFile()).toBe(true);

    const second = await runServerCli(['init'], cwd);
    expect(second.code).toBe(0);
    expect(second.stdout).toBe('');
    expect(second.stderr).toMatch(/already exists/);
  });

  it('a second init names a token command that runs as printed in a shell, on the same data dir', async () => {
    // A data dir given on the command line: the printed command must carry it, or it would make a token in
    // another (fresh) database. Its name holds what a shell would expand or end a word at, were it not quoted.
    const dataDir = path.join(cwd, "it's $HOME and `false` dir");
    expect((await runServerCli(['init', '--data-dir', dataDir], cwd)).code).toBe(0);
    // Started from a shell, not by npm: the bare name. Vitest may itself run under npx: npm's marker is cleared.
    const again = await runServerCli(['init', '--data-dir', dataDir], cwd, { npm_command: '' });
    expect(again.code).toBe(0);
    const printed = /create another with `(edgefleet-server token create .*)`$/m.exec(again.stderr)?.[1];
    expect(printed, again.stderr).toBeDefined();
    const created = await runServerCliInShell(printed!, cwd);
    expect(created.code, created.stderr).toBe(0);
    expect(created.stdout.trim()).toMatch(/^efo_/);
    const listed = await runServerCli(['token', 'list', '--data-dir', dataDir], cwd);
    expect(listed.stdout).toMatch(/admin-2/);
    // Through npx (npm sets npm_command=exec), the command names npx too: in a clone the binary is not on PATH.
    const throughNpx = await runServerCli(['init', '--data-dir', dataDir], cwd, { npm_command: 'exec' });
    expect(throughNpx.stderr).toMatch(/create another with `npx edgefleet-server token create /);
  });

  it('serves with that token, shuts down cleanly on SIGTERM and keeps its state across restarts', async () => {
    const created = await runServerCli(['token', 'create', '--name', 'reader', '--scope', 'read-only'], cwd);
    expect(created.code).toBe(0);
    const readToken = created.stdout.trim();

    const first = await startServerProcess(flags, cwd);
    const who = await fetch(`${first.operatorUrl}/api/v1/whoami`, {
      headers: { authorization: `Bearer ${adminToken}` },
    });
    expect(await who.json()).toMatchObject({ scope: 'admin', name: 'initial-admin' });
    expect(await first.stop()).toBe(0);
    expect(first.logs.map((l) => l.msg)).toEqual(expect.arrayContaining(['edgefleet-server stopped']));

    const second = await startServerProcess(flags, cwd);
    try {
      const again = await fetch(`${second.operatorUrl}/api/v1/whoami`, {
        headers: { authorization: `Bearer ${readToken}` },
      });
      expect(await again.json()).toMatchObject({ scope: 'read-only', name: 'reader' });
    } finally {
      expect(await second.stop('SIGINT')).toBe(0);
    }
  });

  it('end to end: an enrolled device heartbeats, and everything survives a restart', async () => {
    const admin = { authorization: `Bearer ${adminToken}`, 'content-type': 'application/json' };
    const first = await startServerProcess(flags, cwd);
    const api = (base: string, method: string, url: string, body?: unknown) =>
      fetch(`${base}${url}`, {
        method,
        headers: admin,
        ...(body ? { body: JSON.stringify(body) } : {}),
      }).then(async (r) => ({ status: r.status, body: await r.json() }));
    let tls: { ca: string; cert: string; key: string };
    try {
      expect(
        (
          await api(first.operatorUrl, 'POST', '/api/v1/fleets', {
            name: 'e2e',
            outputConfig: { s3OutputLocation: 's3://b/e2e' },
          })
        ).status,
      ).toBe(201);
      await api(first.operatorUrl, 'POST', '/api/v1/fleets/e2e/devices', { devices: [{ name: 'edge-1' }] });
      const token = await api(first.operatorUrl, 'POST', '/api/v1/devices/edge-1/enrollment-tokens', {});
      const key = deviceKey();
      const enrolled = await fetch(`${first.operatorUrl}/api/v1/enroll`, {
        method: 'POST',
        headers: {
          authorization: `Bearer ${(token.body as { token: string }).token}`,
          'content-type': 'application/json',
        },
        body: JSON.stringify({ csr: createCsr(key, 'edge-1') }),
      }).then((r) => r.json() as Promise<{ caCertificatePem: string; certificatePem: string }>);
      tls = { ca: enrolled.caCertificatePem, cert: enrolled.certificatePem, key: key.privateKeyPem };
      const beat = await deviceCall(first.deviceUrl!, tls, 'POST', '/api/v1/device/heartbeat', {
        body: {
          DeviceName: 'edge-1',
          DeviceFleetName: 'e2e',
          AgentVersion: '0.9.0',
          Models: [{ ModelName: 'resnet', ModelVersion: '1', LatestInference: Date.now() / 1000 }],
        },
      });
      expect(beat.status).toBe(200);
      const report = await api(first.operatorUrl, 'GET', '/api/v1/fleets/e2e/report');
      expect(report.body).toMatchObject({
        deviceStats: { registeredDeviceCount: 1, connectedDeviceCount: 1 },
        agentVersions: [{ version: '0.9.0', agentCount: 1 }],
        modelStats: [{ modelName: 'resnet', modelVersion: '1', activeDeviceCount: 1 }],
      });
    } finally {
      expect(await first.stop()).toBe(0);
    }

    const second = await startServerProcess(flags, cwd);
    try {
      const described = await api(second.operatorUrl, 'GET', '/api/v1/devices/edge-1');
      expect(described.body).toMatchObject({
        agentVersion: '0.9.0',
        identity: { status: 'ENROLLED' },
        models: [{ name: 'resnet', version: '1' }],
      });
      // Same CA after the restart: the device's certificate still works.
      const again = await deviceCall(second.deviceUrl!, tls, 'POST', '/api/v1/device/heartbeat', {
        body: { DeviceName: 'edge-1', DeviceFleetName: 'e2e', AgentVersion: '1.0.0' },
      });
      expect(again.status).toBe(200);
      expect(
        ((await api(second.operatorUrl, 'GET', '/api/v1/devices/edge-1')).body as { agentVersion: string })
          .agentVersion,
      ).toBe('1.0.0');
    } finally {
      expect(await second.stop()).toBe(0);
    }
  });

  it('lists and revokes tokens from the command line', async () => {
    const listed = await runServerCli(['token', 'list'], cwd);
    const reader = listed.stdout.split('\n').find((line) => line.endsWith('\treader'));
    expect(reader).toMatch(/^[0-9a-f]{16}\tread-only\tactive\treader$/);
    const id = reader!.split('\t')[0]!;
    expect((await runServerCli(['token', 'revoke', id], cwd)).code).toBe(0);
    expect((await runServerCli(['token', 'list'], cwd)).stdout).toContain(
      `${id}\tread-only\trevoked\treader`,
    );
    const missing = await runServerCli(['token', 'revoke', id], cwd);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/no active token/);
  });

  it('warns at start when it serves the operator API in clear, or hands devices a loopback endpoint (W3, W4)', async () => {
    const exposed = await startServerProcess(
      ['--listen', '0.0.0.0:0', '--device-listen', '0.0.0.0:0', '--log-level', 'info'],
      cwd,
    );
    try {
      const warned = exposed.logs.filter((l) => l.level === 40).map((l) => String(l.msg));
      expect(warned).toEqual([
        expect.stringMatching(/operator API listens on 0\.0\.0\.0:\d+ over plain HTTP.*set tls/),
        expect.stringMatching(
          /enrollment hands devices https:\/\/localhost:\d+, this machine's loopback address.*--device-endpoint.*--device-server-names/,
        ),
      ]);
    } finally {
      expect(await exposed.stop()).toBe(0);
    }
    // serve prints them plainly only at a terminal: with stderr not one (as under systemd, where stdout and stderr
    // both go to the journal), each warning is written once, in the log (N6).
    expect(exposed.stderr()).not.toMatch(/warning/);

    // Set as the warning says: the generated certificate carries the name devices are given. The device API
    // itself still listens on loopback only (as an upgraded server.env that set only the endpoint would): that
    // is the one warning left (F1).
    const named = await startServerProcess(
      [
        ...flags,
        '--device-endpoint',
        'https://fleet.example:8443',
        '--device-server-names',
        'fleet.example,192.0.2.2',
      ],
      cwd,
    );
    try {
      expect(named.logs.filter((l) => l.level === 40).map((l) => String(l.msg))).toEqual([
        expect.stringMatching(
          /hands devices https:\/\/fleet\.example:8443, but the device API listens on 127\.0\.0\.1:\d+ only.*--device-listen/,
        ),
      ]);
      const port = Number(new URL(named.deviceUrl!).port);
      const names = await new Promise<string>((resolve, reject) => {
        const socket = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => {
          resolve(socket.getPeerCertificate().subjectaltname ?? '');
          socket.destroy();
        });
        socket.once('error', reject);
      });
      expect(names).toBe('DNS:fleet.example, IP Address:192.0.2.2');
    } finally {
      expect(await named.stop()).toBe(0);
    }
    expect(named.stderr()).not.toMatch(/warning/);
  });

  it('fails with a clear message on bad configuration, exit 2 (which the unit does not restart)', async () => {
    const result = await runServerCli(['serve', '--listen', 'nowhere'], cwd);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/invalid server configuration[\s\S]*listen[\s\S]*host:port/);
  });
});
