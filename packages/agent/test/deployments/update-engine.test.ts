import { existsSync } from 'node:fs';
import { readdir, rm, statfs, symlink, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { OnnxModelBuilder, deploymentResultSchema } from '@edgefleet/core';
import SqliteDatabase from 'better-sqlite3';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Registry } from 'prom-client';
import {
  DeploymentMetrics,
  DeploymentStorageFullError,
  PackageStore,
  ResultReporter,
  UpdateEngine,
  startDeploymentPoller,
} from '../../src/deployments/index.js';
import { DeviceApiClient } from '../../src/fleet/index.js';
import { DEFAULT_ORT_SESSION_CONFIG, InferencePool } from '../../src/inference/index.js';
import { ModelRegistry } from '../../src/models/index.js';
import {
  AgentDatabase,
  DeploymentsRepository,
  MIGRATIONS,
  migrate,
  type DeploymentModelRow,
} from '../../src/state/index.js';
import { until } from '../fleet/support.js';
import { rankLyingModel } from '../models/helpers.js';
import { scratch } from '../support/model-packages.js';
import {
  deployment,
  packageSigner,
  packBytes,
  startFakeDeviceApi,
  type FakeDeviceApi,
  type ServedPackage,
} from './support.js';

/** y = x (any length): version 1 of the model the tests deploy. */
function identityModel(): Uint8Array {
  return new OnnxModelBuilder({ graphName: 'identity' })
    .input('x', 'FLOAT32', ['n'])
    .node('Identity', ['x'], ['y'])
    .output('y', 'FLOAT32', ['n'])
    .build();
}

/** y = x + x: a later version with the same inputs and outputs. */
function doublingModel(): Uint8Array {
  return new OnnxModelBuilder({ graphName: 'double' })
    .input('x', 'FLOAT32', ['n'])
    .node('Add', ['x', 'x'], ['y'])
    .output('y', 'FLOAT32', ['n'])
    .build();
}

/** Loads (its warm-up failure is only a warning) but fails every request with an odd length: a broken release. */
function brokenModel(): Uint8Array {
  return new OnnxModelBuilder({ graphName: 'even_only' })
    .input('x', 'FLOAT32', ['n'])
    .initializer('shape', 'INT64', [1], new BigInt64Array([-1n]))
    .initializer('half', 'INT64', [2], new BigInt64Array([2n, -1n]))
    .node('Reshape', ['x', 'half'], ['h'])
    .node('Reshape', ['h', 'shape'], ['y'])
    .output('y', 'FLOAT32', ['n'])
    .build();
}

const x3 = () => [
  {
    name: Buffer.from('x'),
    dataType: 'FLOAT32' as const,
    shape: [3],
    data: Buffer.from(new Float32Array([1, 2, 3]).buffer),
  },
];

let files: Awaited<ReturnType<typeof scratch>>;
let api: FakeDeviceApi;
let pool: InferencePool;
let signer: Awaited<ReturnType<typeof packageSigner>>;
let counter = 0;

/** A signed package of `onnx` named `model`, served at a fresh path. */
async function publish(
  onnx: Uint8Array,
  version: string,
  options: { model?: string; stranger?: boolean } = {},
): Promise<ServedPackage> {
  const dir = await files.custom(onnx, options.model ?? 'detector', version);
  await (options.stranger ? signer.signAsStranger(dir) : signer.sign(dir));
  const bytes = await packBytes(dir, join(files.root, `pkg-${++counter}.tar.gz`));
  return api.serve(`/api/v1/device/packages/p${counter}`, bytes);
}

/**
 * Models a and b at 1.0 on `d` (deployment 'base'), then deployment 'two' under `policy`: a to 2.0, b to 2.0
 * from `b2` (with the digest `b2.sha256` claims, when the test gives one).
 */
async function upgradeAAndB(
  d: Device,
  packages: { a1: ServedPackage; a2: ServedPackage; b1: ServedPackage },
  b2: { pkg: ServedPackage; sha256?: string },
  policy: 'ROLLBACK_ON_FAILURE' | 'DO_NOTHING',
): Promise<void> {
  await d.engine.apply([
    deployment('base', [
      { handle: 'a', pkg: packages.a1, version: '1.0' },
      { handle: 'b', pkg: packages.b1, version: '1.0' },
    ]),
  ]);
  await d.engine.apply([
    deployment(
      'two',
      [
        { handle: 'a', pkg: packages.a2, version: '2.0' },
        { handle: 'b', version: '2.0', ...b2 },
      ],
      { policy },
    ),
  ]);
}

interface Device {
  registry: ModelRegistry;
  database: AgentDatabase;
  engine: UpdateEngine;
  store: PackageStore;
  dataRoot: string;
  logs: string[];
  /** The engine's and the registry's lines with their fields. */
  lines: { fields: Record<string, unknown>; message: string }[];
  /** The engine's own connection (device({ ownConnection: true })). */
  deploymentsDb?: SqliteDatabase.Database;
  close(): Promise<void>;
}

const devices: Device[] = [];

async function device(
  options: {
    healthWindowMs?: number;
    lockPath?: string;
    maxHoldMs?: number;
    availableMemory?: () => number;
    metrics?: DeploymentMetrics;
    maxPackageBytes?: number;
    minFreeBytes?: number;
    /**
     * The engine's repository on a connection of its own (Device.deploymentsDb), whose size limit a test sets
     * (PRAGMA max_page_count is per connection) to make its writes fail with a real SQLITE_FULL.
     */
    ownConnection?: boolean;
  } = {},
): Promise<Device> {
  const dataRoot = join(files.root, `device-${++counter}`);
  const lines: Device['lines'] = [];
  const registry = new ModelRegistry({
    logger: {
      info: (message: string, fields?: object) => lines.push({ fields: { ...fields }, message }),
      warn: (message: string, fields?: object) => lines.push({ fields: { ...fields }, message }),
    },
    pool,
    trust: signer.trust,
    cwd: dataRoot,
    ...(options.availableMemory && { availableMemory: options.availableMemory }),
  });
  const database = AgentDatabase.open({ path: join(dataRoot, 'agent.db'), walSyncIntervalMs: 0 });
  const deploymentsDb = options.ownConnection ? new SqliteDatabase(join(dataRoot, 'agent.db')) : undefined;
  const store = new PackageStore({
    root: join(dataRoot, 'deployments'),
    endpoint: api.endpoint,
    tls: async () => api.tls,
    timeoutMs: 5000,
    ...(options.maxPackageBytes !== undefined && { maxPackageBytes: options.maxPackageBytes }),
    ...(options.minFreeBytes !== undefined && { minFreeBytes: options.minFreeBytes }),
    ...(options.metrics && { onBytes: (bytes: number) => options.metrics!.downloaded(bytes) }),
  });
  const logs: string[] = [];
  const log = (fields: object, message: string) => {
    logs.push(message);
    lines.push({ fields: fields as Record<string, unknown>, message });
  };
  const engine = new UpdateEngine({
    registry,
    repository: deploymentsDb ? new DeploymentsRepository(deploymentsDb) : database.deployments,
    store,
    trust: signer.trust,
    requireSignatures: true,
    healthWindowMs: options.healthWindowMs ?? 50,
    ...(options.lockPath && { updateLock: { path: options.lockPath, maxHoldMs: options.maxHoldMs ?? 200 } }),
    logger: { info: log, warn: log, error: log },
    ...(options.metrics && { metrics: options.metrics }),
  });
  const created: Device = {
    registry,
    database,
    engine,
    store,
    dataRoot,
    logs,
    lines,
    ...(deploymentsDb && { deploymentsDb }),
    async close() {
      await engine.close();
      store.close();
      await registry.close();
      deploymentsDb?.close();
      database.close();
    },
  };
  devices.push(created);
  return created;
}

const stateOf = (d: Device, handle: string) => d.engine.status().find((s) => s.handle === handle);

/**
 * Records every state the engine writes to the device's database (an SQLite trigger on deployment_models, whose
 * saves are INSERT OR REPLACE), and returns a reader: the states a handle went through in one deployment, in the
 * order they were committed, repeated saves of one state counted once.
 */
function recordStates(d: Device): (handle: string, deploymentName: string) => string[] {
  const db = new SqliteDatabase(join(d.dataRoot, 'agent.db'));
  db.exec(`
    CREATE TABLE test_state_history (seq INTEGER PRIMARY KEY, handle TEXT, deployment TEXT, state TEXT);
    CREATE TRIGGER test_record_state AFTER INSERT ON deployment_models BEGIN
      INSERT INTO test_state_history (handle, deployment, state) VALUES (NEW.handle, NEW.deployment_name, NEW.state);
    END;
  `);
  db.close();
  return (handle, deploymentName) => {
    const reader = new SqliteDatabase(join(d.dataRoot, 'agent.db'), { readonly: true });
    const states = (
      reader
        .prepare('SELECT state FROM test_state_history WHERE handle = ? AND deployment = ? ORDER BY seq')
        .all(handle, deploymentName) as Array<{ state: string }>
    ).map((row) => row.state);
    reader.close();
    return states.filter((state, i) => state !== states[i - 1]);
  };
}

beforeAll(async () => {
  files = await scratch('agent-deployments-');
  api = await startFakeDeviceApi();
  pool = await InferencePool.start({ workers: 1, session: DEFAULT_ORT_SESSION_CONFIG });
  signer = await packageSigner(files.root);
});
afterEach(async () => {
  for (const d of devices.splice(0)) await d.close();
});
afterAll(async () => {
  await pool?.close();
  await api?.close();
  await files?.cleanup();
});

describe('UpdateEngine against a device API over mutual TLS', () => {
  it('installs, upgrades with no failed request during the switch, keeps the previous version, and reports', async () => {
    const v1 = await publish(identityModel(), '1.0');
    const v2 = await publish(doublingModel(), '2.0');
    const d = await device();
    const statesOf = recordStates(d);
    await d.engine.apply([
      deployment('plan-a', [{ handle: 'detector', pkg: v1, modelName: 'detector', version: '1.0' }]),
    ]);
    // A first install: nothing to stage beside, the load (warm-up included) goes straight to its health window.
    expect(statesOf('detector', 'plan-a')).toEqual([
      'Downloading',
      'Verifying',
      'Loading',
      'HealthCheck',
      'Committed',
    ]);
    expect(stateOf(d, 'detector')).toMatchObject({
      state: 'Committed',
      version: '1.0',
      committedVersion: '1.0',
    });
    expect(d.registry.describe('detector').version).toBe('1.0');
    expect(d.engine.deploymentResult()).toMatchObject({
      DeploymentName: 'plan-a',
      DeploymentStatus: 'SUCCESS',
      DeploymentModels: [
        { ModelHandle: 'detector', ModelVersion: '1.0', State: 'DEPLOY', Status: 'SUCCESS' },
      ],
    });

    // A client keeps calling the model by name during the whole upgrade.
    let stop = false;
    const answers: number[] = [];
    const client = (async () => {
      while (!stop)
        answers.push(
          Array.from(
            new Float32Array((await d.registry.predict('detector', x3())).outputs[0]!.data.slice().buffer),
          )[0]!,
        );
    })();
    await d.engine.apply([
      deployment('plan-b', [{ handle: 'detector', pkg: v2, modelName: 'detector', version: '2.0' }]),
    ]);
    stop = true;
    await client; // rejects if any request failed
    expect(stateOf(d, 'detector')).toMatchObject({
      state: 'Committed',
      version: '2.0',
      previousVersion: '1.0',
    });
    expect(d.registry.describe('detector').version).toBe('2.0');
    expect(answers).toContain(2); // served by version 2 after the switch
    // Each step is a line naming the deployment (event deployment-step), and the registry's lines have events.
    expect(
      d.lines
        .filter((l) => l.fields.event === 'deployment-step' && l.fields.deployment === 'plan-b')
        .map((l) => [l.fields.state, l.fields.model, l.fields.version, l.message]),
    ).toEqual([
      [
        'Downloading',
        'detector',
        '2.0',
        'deployment plan-b: detector 2.0: received; downloading the package',
      ],
      ['Verifying', 'detector', '2.0', 'deployment plan-b: detector 2.0: downloaded; verifying the package'],
      ['Loading', 'detector', '2.0', 'deployment plan-b: detector 2.0: verified; loading it'],
      [
        'WarmingUp',
        'detector',
        '2.0',
        'deployment plan-b: detector 2.0: loaded beside the serving version; warming up',
      ],
      ['Switching', 'detector', '2.0', 'deployment plan-b: detector 2.0: ready; switching to it'],
      [
        'HealthCheck',
        'detector',
        '2.0',
        'deployment plan-b: detector 2.0: switched; serving it, health window open',
      ],
    ]);
    expect(d.lines.map((l) => l.fields.event)).toEqual(
      expect.arrayContaining(['model-loaded', 'model-staged', 'model-promoted', 'deployment-committed']),
    );
    expect(d.lines.find((l) => l.fields.event === 'model-promoted')?.fields).toMatchObject({
      model: 'detector',
      version: '2.0',
      replaced: '1.0',
    });
    // An upgrade: staged beside version 1 (Loading), warmed up there (WarmingUp), then switched.
    expect(statesOf('detector', 'plan-b')).toEqual([
      'Downloading',
      'Verifying',
      'Loading',
      'WarmingUp',
      'Switching',
      'HealthCheck',
      'Committed',
    ]);
    // The previous good version stays in the store for rollback; the download is collected.
    const kept = await readdir(join(d.dataRoot, 'deployments', 'packages', 'detector'));
    expect(kept.sort()).toEqual([expect.stringMatching(/^1\.0-/), expect.stringMatching(/^2\.0-/)]);
    expect(await readdir(join(d.dataRoot, 'deployments', 'downloads'))).toEqual([]);
    // Applying the same answer again changes nothing.
    await d.engine.apply([
      deployment('plan-b', [{ handle: 'detector', pkg: v2, modelName: 'detector', version: '2.0' }]),
    ]);
    expect(stateOf(d, 'detector')?.state).toBe('Committed');
  });

  it('fails a deployment with a clear reason and keeps the old version: 404, bad checksum, tampered, another model', async () => {
    const v1 = await publish(identityModel(), '1.0');
    const v2 = await publish(doublingModel(), '2.0');
    const stranger = await publish(doublingModel(), '2.0', { stranger: true });
    const other = await publish(doublingModel(), '2.0', { model: 'classifier' });
    const d = await device();
    await d.engine.apply([deployment('base', [{ handle: 'detector', pkg: v1, version: '1.0' }])]);

    const cases: Array<[string, Parameters<typeof deployment>[1][number], RegExp]> = [
      [
        'missing',
        { handle: 'detector', pkg: { ...v2, path: '/api/v1/device/packages/nowhere' }, version: '2.0' },
        /HTTP 404/,
      ],
      [
        'bad-sum',
        { handle: 'detector', pkg: v2, version: '2.0', sha256: 'a'.repeat(64) },
        /SHA-256 .* announced a{64}/,
      ],
      ['tampered', { handle: 'detector', pkg: stranger, version: '2.0' }, /refused/],
      [
        'other-model',
        { handle: 'detector', pkg: other, modelName: 'detector', version: '2.0' },
        /another model/,
      ],
    ];
    for (const [name, model, reason] of cases) {
      await d.engine.apply([deployment(name, [model])]);
      expect(stateOf(d, 'detector'), name).toMatchObject({
        state: 'Failed',
        reason: expect.stringMatching(reason),
      });
      expect(d.engine.deploymentResult()).toMatchObject({
        DeploymentName: name,
        DeploymentStatus: 'FAIL',
        // Before the switch: the old version kept serving, so the server may retry it.
        DeploymentModels: [
          { Status: 'FAIL', StatusReason: expect.stringMatching(reason), FailedAfterSwitch: false },
        ],
      });
      expect(d.registry.describe('detector').version).toBe('1.0');
      // Nothing half-installed stays: only version 1's folder, no download.
      expect(await readdir(join(d.dataRoot, 'deployments', 'packages', 'detector'))).toEqual([
        expect.stringMatching(/^1\.0-/),
      ]);
      expect(await readdir(join(d.dataRoot, 'deployments', 'downloads'))).toEqual([]);
    }
  });

  it('never follows a PackageUrl out of the package routes (.., %2e%2e, backslashes)', async () => {
    const v1 = await publish(identityModel(), '1.0');
    const v2 = await publish(doublingModel(), '2.0');
    // The same package, also served outside the package routes: what a URL climbing out of them would reach.
    const outside = api.serve('/api/v1/secret', v2.bytes);
    const d = await device();
    await d.engine.apply([deployment('base', [{ handle: 'detector', pkg: v1, version: '1.0' }])]);
    const climbing: Array<[string, string]> = [
      ['dots', '/api/v1/device/packages/../../secret'],
      ['encoded', '/api/v1/device/packages/%2e%2e/%2e%2e/secret'],
      ['backslashes', '/api/v1/device/packages/..\\..\\secret'],
    ];
    for (const [name, path] of climbing) {
      await d.engine.apply([
        deployment(name, [{ handle: 'detector', pkg: { ...outside, path }, version: '2.0' }]),
      ]);
      expect(stateOf(d, 'detector'), name).toMatchObject({
        state: 'Failed',
        reason: expect.stringMatching(/PackageUrl .* expected \/api\/v1\/device\/packages\/<job name>/),
      });
      expect(d.registry.describe('detector').version).toBe('1.0');
    }
    expect(api.ranges.filter((r) => r.path === outside.path)).toEqual([]);
  });

  it('resumes a download cut off mid-way with an HTTP Range request', async () => {
    const v1 = await publish(identityModel(), '1.0');
    api.faults.set(v1.path, [{ cutAfter: 100 }]);
    const d = await device();
    await d.engine.apply([deployment('resume', [{ handle: 'detector', pkg: v1, version: '1.0' }])]);
    expect(stateOf(d, 'detector')).toMatchObject({
      state: 'Downloading',
      reason: expect.stringMatching(/cut off/),
    });
    expect(d.engine.deploymentResult()).toMatchObject({ DeploymentStatus: 'INPROGRESS' });
    await d.engine.apply([deployment('resume', [{ handle: 'detector', pkg: v1, version: '1.0' }])]);
    expect(stateOf(d, 'detector')?.state).toBe('Committed');
    expect(api.ranges.filter((r) => r.path === v1.path).map((r) => r.range)).toEqual([
      undefined,
      'bytes=100-',
    ]);
  });

  it('fails cleanly when the disk is full during the download', async () => {
    const v1 = await publish(identityModel(), '1.0');
    const d = await device();
    // The download file is the kernel's "always full" device: every write fails with ENOSPC.
    await d.store.collectGarbage(new Set());
    await (
      await import('node:fs/promises')
    ).mkdir(join(d.dataRoot, 'deployments', 'downloads'), { recursive: true });
    await symlink('/dev/full', d.store.downloadPath(v1.sha256));
    await d.engine.apply([deployment('full', [{ handle: 'detector', pkg: v1, version: '1.0' }])]);
    expect(stateOf(d, 'detector')).toMatchObject({
      state: 'Failed',
      reason: expect.stringMatching(/no space left/),
    });
    expect(existsSync(d.store.downloadPath(v1.sha256))).toBe(false);
    expect(d.registry.has('detector')).toBe(false);
  });

  it("refuses a package announced larger than the agent's cap (or its free space) before downloading a byte", async () => {
    const v1 = await publish(identityModel(), '1.0');
    // A compromised control plane announces a huge Size for a URL that streams bytes: the agent's own cap holds.
    const d = await device({ maxPackageBytes: 64 * 1024 });
    const huge = deployment('huge', [{ handle: 'detector', pkg: v1, version: '1.0' }]);
    huge.Definitions![0]!.Size = 256 * 1024 ** 2;
    await d.engine.apply([huge]);
    expect(stateOf(d, 'detector')).toMatchObject({
      state: 'Failed',
      reason: expect.stringMatching(
        /announces a package of 268435456 bytes; this agent downloads packages of at most 65536 bytes \(edgefleet_deployment_max_package_bytes\); nothing was downloaded/,
      ),
    });
    expect(d.engine.deploymentResult()).toMatchObject({ DeploymentName: 'huge', DeploymentStatus: 'FAIL' });
    expect(api.ranges.filter((r) => r.path === v1.path)).toEqual([]);

    // More than the file system has free above the space the agent keeps: refused before downloading too.
    const cramped = await device({ minFreeBytes: 1024 ** 5 });
    await cramped.engine.apply([deployment('cramped', [{ handle: 'detector', pkg: v1, version: '1.0' }])]);
    expect(stateOf(cramped, 'detector')).toMatchObject({
      state: 'Failed',
      reason: expect.stringMatching(
        /needs \d+ more bytes; the file system of .* has 0 bytes free above the 1125899906842624 bytes/,
      ),
    });
    expect(api.ranges.filter((r) => r.path === v1.path)).toEqual([]);
    expect(cramped.registry.has('detector')).toBe(false);
  });

  it('cuts off a download that announces no Size at the free space the agent keeps, as well as at its cap', async () => {
    const v1 = await publish(identityModel(), '1.0');
    const unsized = (name: string) => {
      const d = deployment(name, [{ handle: 'detector', pkg: v1, version: '1.0' }]);
      delete d.Definitions![0]!.Size;
      return d;
    };
    // A compromised control plane leaves Size out (the contract allows it) to fill the disk: no free space above
    // what the agent keeps, so the first bytes stop it, and the message names the setting that did.
    const cramped = await device({ minFreeBytes: 1024 ** 5 });
    await cramped.engine.apply([unsized('unsized-cramped')]);
    expect(stateOf(cramped, 'detector')).toMatchObject({
      state: 'Failed',
      reason: expect.stringMatching(
        /is larger than 0 bytes \(the file system of .* has 0 bytes free above the 1125899906842624 bytes the agent keeps free \(edgefleet_deployment_min_free_bytes\)\); the download was stopped there/,
      ),
    });
    expect(existsSync(cramped.store.downloadPath(v1.sha256))).toBe(false);
    expect(cramped.registry.has('detector')).toBe(false);

    // With room to spare, the cap is what stops it.
    const capped = await device({ maxPackageBytes: 1024 });
    await capped.engine.apply([unsized('unsized-capped')]);
    expect(stateOf(capped, 'detector')).toMatchObject({
      state: 'Failed',
      reason: expect.stringMatching(
        /is larger than 1024 bytes \(edgefleet_deployment_max_package_bytes\); the download was stopped there/,
      ),
    });

    // Within both bounds, a package without a Size installs (its SHA-256 still decides).
    const roomy = await device();
    await roomy.engine.apply([unsized('unsized-roomy')]);
    expect(stateOf(roomy, 'detector')).toMatchObject({ state: 'Committed' });
  });

  it('stops extracting an archive that expands far past its compressed size, before the signature check', async () => {
    // A signed package plus 64 MiB of zeros (a sparse file): about 64 KiB gzipped, a gzip bomb in miniature.
    const dir = await files.custom(identityModel(), 'detector', '1.0');
    await signer.sign(dir);
    await writeFile(join(dir, 'padding.bin'), '');
    await truncate(join(dir, 'padding.bin'), 64 * 1024 ** 2);
    const bytes = await packBytes(dir, join(files.root, `bomb-${++counter}.tar.gz`));
    expect(bytes.length).toBeLessThan(1024 ** 2);
    const bomb = api.serve(`/api/v1/device/packages/bomb${counter}`, bytes);
    const d = await device();
    await d.engine.apply([deployment('bomb', [{ handle: 'detector', pkg: bomb, version: '1.0' }])]);
    expect(stateOf(d, 'detector')).toMatchObject({
      state: 'Failed',
      reason: expect.stringMatching(
        new RegExp(
          `cannot be extracted: it expands to more than ${16 * bytes.length + 16 * 1024 ** 2} bytes \\(16 times its ${bytes.length} compressed bytes`,
        ),
      ),
    });
    expect(d.registry.has('detector')).toBe(false);
    expect(await readdir(join(d.dataRoot, 'deployments', 'packages', 'detector')).catch(() => [])).toEqual(
      [],
    );
  });

  it("says the device's disk lacks the space to unpack a package, how much, and the setting (N1)", async () => {
    // 15 MiB of zeros (a sparse file), a few KiB gzipped: within the proportion a package may expand by, so only
    // the free space can stop it.
    const dir = await files.custom(identityModel(), 'detector', '1.0');
    await signer.sign(dir);
    await writeFile(join(dir, 'padding.bin'), '');
    await truncate(join(dir, 'padding.bin'), 15 * 1024 ** 2);
    const bytes = await packBytes(dir, join(files.root, `roomy-${++counter}.tar.gz`));
    const pkg = api.serve(`/api/v1/device/packages/roomy${counter}`, bytes);
    // About 6 MiB free above what the agent keeps: room for the download, not for what it unpacks to.
    const fs = await statfs(files.root);
    const d = await device({ minFreeBytes: fs.bavail * fs.bsize - 6 * 1024 ** 2 });
    await d.engine.apply([deployment('cramped-unpack', [{ handle: 'detector', pkg, version: '1.0' }])]);
    expect(stateOf(d, 'detector')).toMatchObject({
      state: 'Failed',
      reason: expect.stringMatching(
        /cannot be extracted: the device's disk has too little free space to unpack it: it needs more than \d+ bytes \(.*\), and the file system of .* has \d+ bytes free above the \d+ bytes the agent keeps free \(edgefleet_deployment_min_free_bytes\); free space there, or lower edgefleet_deployment_min_free_bytes$/,
      ),
    });
    expect(d.registry.has('detector')).toBe(false);
  });

  it('refuses an older version (anti-rollback) unless the deployment is a rollback', async () => {
    const v1 = await publish(identityModel(), '1.0');
    const v2 = await publish(doublingModel(), '2.0');
    const d = await device();
    await d.engine.apply([deployment('up', [{ handle: 'detector', pkg: v2, version: '2.0' }])]);
    await d.engine.apply([deployment('down', [{ handle: 'detector', pkg: v1, version: '1.0' }])]);
    expect(stateOf(d, 'detector')).toMatchObject({
      state: 'Failed',
      reason: expect.stringMatching(/anti-rollback: .*--allow-downgrade/),
    });
    expect(d.registry.describe('detector').version).toBe('2.0');
    await d.engine.apply([
      deployment('rollback-plan', [{ handle: 'detector', pkg: v1, version: '1.0' }], {
        allowDowngrade: true,
      }),
    ]);
    expect(stateOf(d, 'detector')).toMatchObject({ state: 'Committed', version: '1.0' });
    expect(d.registry.describe('detector').version).toBe('1.0');
  });

  it('rolls a version that fails its health window back to the previous one', async () => {
    const v1 = await publish(identityModel(), '1.0');
    const broken = await publish(brokenModel(), '2.0');
    const d = await device({ healthWindowMs: 1500 });
    await d.engine.apply([deployment('base', [{ handle: 'detector', pkg: v1, version: '1.0' }])]);
    let stop = false;
    let failures = 0;
    const client = (async () => {
      while (!stop) {
        await d.registry.predict('detector', x3()).catch(() => failures++);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    })();
    await d.engine.apply([deployment('broken', [{ handle: 'detector', pkg: broken, version: '2.0' }])]);
    stop = true;
    await client;
    expect(failures).toBeGreaterThan(0);
    expect(stateOf(d, 'detector')).toMatchObject({
      state: 'RolledBack',
      reason: expect.stringMatching(/health window/),
    });
    expect(d.registry.describe('detector').version).toBe('1.0');
    expect(d.engine.deploymentResult()).toMatchObject({
      DeploymentStatus: 'FAIL',
      // It served and failed: the server must not switch it in again.
      DeploymentModels: [{ Status: 'FAIL', State: 'DEPLOY', FailedAfterSwitch: true }],
    });
  });

  it('ROLLBACK_ON_FAILURE takes every model of the deployment back; DO_NOTHING keeps the good one', async () => {
    const a1 = await publish(identityModel(), '1.0', { model: 'a' });
    const a2 = await publish(doublingModel(), '2.0', { model: 'a' });
    const b1 = await publish(identityModel(), '1.0', { model: 'b' });
    const b2 = await publish(doublingModel(), '2.0', { model: 'b' });
    for (const policy of ['ROLLBACK_ON_FAILURE', 'DO_NOTHING'] as const) {
      const d = await device();
      await upgradeAAndB(d, { a1, a2, b1 }, { pkg: b2, sha256: 'b'.repeat(64) }, policy);
      expect(stateOf(d, 'b')?.state).toBe('Failed');
      expect(d.registry.describe('b').version).toBe('1.0');
      if (policy === 'ROLLBACK_ON_FAILURE') {
        expect(stateOf(d, 'a')).toMatchObject({
          state: 'RolledBack',
          reason: expect.stringMatching(/ROLLBACK_ON_FAILURE/),
        });
        expect(d.registry.describe('a').version).toBe('1.0');
      } else {
        expect(stateOf(d, 'a')?.state).toBe('Committed');
        expect(d.registry.describe('a').version).toBe('2.0');
      }
      expect(d.engine.deploymentResult()).toMatchObject({ DeploymentName: 'two', DeploymentStatus: 'FAIL' });
      // b failed before its switch; a (healthy) went back only with it: neither failed after a switch.
      const reported = d.engine.deploymentResult()!.DeploymentModels!;
      expect(
        reported.filter((m) => m.Status === 'FAIL').map((m) => [m.ModelHandle, m.FailedAfterSwitch]),
      ).toEqual(
        policy === 'ROLLBACK_ON_FAILURE'
          ? expect.arrayContaining([
              ['a', false],
              ['b', false],
            ])
          : [['b', false]],
      );
      // Registries of one pool would share its session keys: one device at a time.
      await devices.pop()!.close();
    }
  });

  it('"rolled back only with the deployment" is the row\'s recorded fact, not its message; rows of schema 5 keep their meaning', async () => {
    const d = await device();
    const now = Date.now();
    const row = {
      handle: 'a',
      deploymentName: 'two',
      state: 'RolledBack',
      desired: 'DEPLOY' as const,
      failurePolicy: 'ROLLBACK_ON_FAILURE',
      allowDowngrade: false,
      modelName: null,
      version: '2.0',
      packageUrl: null,
      sha256: null,
      size: null,
      packageDir: '/pkg/2.0',
      previousUrl: '/pkg/1.0',
      previousVersion: '1.0',
      committedVersion: '1.0',
      reason: 'rolled back with the deployment (ROLLBACK_ON_FAILURE): b failed',
      rollbackFailureReason: null,
      rolledBackWithDeployment: true,
      restarts: 0,
      startedAt: now,
      updatedAt: now,
      endedAt: now,
      reported: false,
    };
    const failedAfterSwitch = (engine: UpdateEngine) =>
      Object.fromEntries(
        engine.finalResults(16)[0]!.DeploymentModels!.map((m) => [m.ModelHandle, m.FailedAfterSwitch]),
      );
    // The flag decides, whatever the words: a reason is for people.
    d.database.deployments.saveAll([
      { ...row, handle: 'a', reason: 'b of this deployment failed' },
      { ...row, handle: 'b', rolledBackWithDeployment: false },
    ]);
    expect(failedAfterSwitch(d.engine)).toEqual({ a: false, b: true });

    // A database written by schema 5 (no flag): a row whose reason says so is still a rollback with the deployment.
    const path = join(files.root, `schema-5-${++counter}.db`);
    const old = new SqliteDatabase(path);
    migrate(old, MIGRATIONS.slice(0, 5));
    const insert = old.prepare(
      `INSERT INTO deployment_models (handle, deployment_name, state, desired, failure_policy, version, package_dir,
         previous_url, previous_version, reason, started_at, updated_at, ended_at, reported)
       VALUES (?, 'two', ?, 'DEPLOY', 'ROLLBACK_ON_FAILURE', '2.0', '/pkg/2.0', '/pkg/1.0', '1.0', ?, ?, ?, ?, 0)`,
    );
    insert.run(
      'a',
      'RolledBack',
      'rolled back with the deployment (ROLLBACK_ON_FAILURE): c failed',
      now,
      now,
      now,
    );
    insert.run(
      'b',
      'RolledBack',
      'version 2.0 of b failed its health window: 3 of 3 requests failed',
      now,
      now,
      now,
    );
    insert.run('c', 'Failed', 'bad checksum', now, now, now);
    old.close();
    const upgraded = AgentDatabase.open({ path, walSyncIntervalMs: 0 });
    try {
      const engine = new UpdateEngine({
        registry: d.registry,
        repository: upgraded.deployments,
        store: d.store,
        trust: signer.trust,
        requireSignatures: true,
        healthWindowMs: 10,
        logger: { info: () => {}, warn: () => {}, error: () => {} },
      });
      expect(failedAfterSwitch(engine)).toEqual({ a: false, b: true, c: false });
      expect(upgraded.deployments.get('a')?.rolledBackWithDeployment).toBe(true);
      expect(upgraded.deployments.get('b')?.rolledBackWithDeployment).toBe(false);
      await engine.close();
    } finally {
      upgraded.close();
    }
  });

  it('the update lock defers the switch; held past its maximum, the deployment is reported HELD, then completes', async () => {
    const v1 = await publish(identityModel(), '1.0');
    const v2 = await publish(doublingModel(), '2.0');
    const lockPath = join(files.root, `updates-${++counter}.lock`);
    const d = await device({ lockPath, maxHoldMs: 300 });
    await d.engine.apply([deployment('base', [{ handle: 'detector', pkg: v1, version: '1.0' }])]);
    await writeFile(lockPath, '');
    await d.engine.apply([deployment('locked', [{ handle: 'detector', pkg: v2, version: '2.0' }])]);
    expect(stateOf(d, 'detector')).toMatchObject({ state: 'Loading', held: true });
    expect(d.engine.deploymentResult()).toMatchObject({ DeploymentStatus: 'HELD' });
    expect(d.registry.describe('detector')).toMatchObject({ version: '1.0' });
    expect(d.registry.describe('detector').staged).toBeUndefined(); // the staged version does not sit in memory
    await rm(lockPath);
    await d.engine.apply([deployment('locked', [{ handle: 'detector', pkg: v2, version: '2.0' }])]);
    expect(stateOf(d, 'detector')).toMatchObject({ state: 'Committed', held: false });
  });

  it('undeploys a model', async () => {
    const v1 = await publish(identityModel(), '1.0');
    const d = await device();
    await d.engine.apply([deployment('base', [{ handle: 'detector', pkg: v1, version: '1.0' }])]);
    await d.engine.apply([deployment('remove', [{ handle: 'detector', state: 'UNDEPLOY' }])]);
    expect(stateOf(d, 'detector')).toMatchObject({ state: 'Committed', desired: 'UNDEPLOY' });
    expect(d.registry.has('detector')).toBe(false);
    expect(d.engine.deploymentResult()).toMatchObject({
      DeploymentStatus: 'SUCCESS',
      DeploymentModels: [{ State: 'UNDEPLOY' }],
    });
  });
});

describe('UpdateEngine, more', () => {
  it('fails a definition without download members at once, as a finished update with its end time', async () => {
    const d = await device();
    // An Edge Manager-style definition (no PackageUrl, Sha256, ModelVersion): nothing EdgeFleet can fetch.
    await d.engine.apply([deployment('bare', [{ handle: 'detector' }])]);
    const status = stateOf(d, 'detector');
    expect(status).toMatchObject({ state: 'Failed', reason: expect.stringMatching(/gives no PackageUrl/) });
    expect(status?.endedAt).not.toBeNull();
    expect(d.engine.deploymentResult()).toMatchObject({ DeploymentStatus: 'FAIL' });
  });

  it('refuses a version there is no memory for, with the reason, and keeps the old one', async () => {
    const v1 = await publish(identityModel(), '1.0');
    const v2 = await publish(doublingModel(), '2.0');
    let memory = 1024 ** 3;
    const d = await device({ availableMemory: () => memory });
    await d.engine.apply([deployment('base', [{ handle: 'detector', pkg: v1, version: '1.0' }])]);
    memory = 100; // bytes: not enough for a second version beside the first
    await d.engine.apply([deployment('up', [{ handle: 'detector', pkg: v2, version: '2.0' }])]);
    expect(stateOf(d, 'detector')).toMatchObject({
      state: 'Failed',
      reason: expect.stringMatching(/not enough memory/),
    });
    expect(d.registry.describe('detector')).toMatchObject({ version: '1.0' });
    expect(d.registry.describe('detector').staged).toBeUndefined();
  });

  it('stops sending a final result once the server accepted it, and a newer deployment replaces one still downloading', async () => {
    const v1 = await publish(identityModel(), '1.0');
    const v2 = await publish(doublingModel(), '2.0');
    const d = await device();
    await d.engine.apply([deployment('base', [{ handle: 'detector', pkg: v1, version: '1.0' }])]);
    const result = d.engine.deploymentResult()!;
    d.engine.reported(result);
    expect(d.engine.deploymentResult()).toBeUndefined();

    api.faults.set(v2.path, [{ status: 503 }]);
    await d.engine.apply([deployment('stuck', [{ handle: 'detector', pkg: v2, version: '2.0' }])]);
    expect(stateOf(d, 'detector')).toMatchObject({
      state: 'Downloading',
      reason: expect.stringMatching(/HTTP 503/),
    });
    const v3 = await publish(doublingModel(), '3.0');
    await d.engine.apply([deployment('newer', [{ handle: 'detector', pkg: v3, version: '3.0' }])]);
    expect(stateOf(d, 'detector')).toMatchObject({ deployment: 'newer', state: 'Committed', version: '3.0' });
    expect(d.registry.describe('detector').version).toBe('3.0');
  });

  it('retries a failed deployment the server offers again after accepting its failure (the server’s retries)', async () => {
    const v1 = await publish(identityModel(), '1.0');
    const v2 = await publish(doublingModel(), '2.0');
    const d = await device();
    await d.engine.apply([deployment('base', [{ handle: 'detector', pkg: v1, version: '1.0' }])]);
    d.engine.reported(d.engine.deploymentResult()!);
    api.faults.set(v2.path, [{ status: 404 }]);
    const upgrade = deployment('up', [{ handle: 'detector', pkg: v2, version: '2.0' }]);
    await d.engine.apply([upgrade]);
    expect(stateOf(d, 'detector')).toMatchObject({ deployment: 'up', state: 'Failed' });
    const failure = d.engine.deploymentResult()!;
    expect(failure).toMatchObject({ DeploymentName: 'up', DeploymentStatus: 'FAIL' });
    // Offered again before the server has the failure: the same result waits for the next heartbeat.
    await d.engine.apply([upgrade]);
    expect(stateOf(d, 'detector')?.state).toBe('Failed');
    // Accepted, then offered again: the server retries (the device went back to READYTODEPLOY).
    d.engine.reported(failure);
    await d.engine.apply([upgrade]);
    expect(stateOf(d, 'detector')).toMatchObject({ deployment: 'up', state: 'Committed', version: '2.0' });
    expect(d.engine.deploymentResult()).toMatchObject({ DeploymentName: 'up', DeploymentStatus: 'SUCCESS' });
    expect(d.registry.describe('detector').version).toBe('2.0');
  });

  it('final results for the result route: each deployment once; one the server accepted alone is not sent again, in a heartbeat either', async () => {
    const v1 = await publish(identityModel(), '1.0');
    const v2 = await publish(doublingModel(), '2.0');
    const o1 = await publish(identityModel(), '1.0', { model: 'other' });
    const d = await device();
    await d.engine.apply([
      deployment('left', [{ handle: 'detector', pkg: v1, version: '1.0' }]),
      deployment('right', [{ handle: 'other', pkg: o1, version: '1.0' }]),
    ]);
    // Both final at once: both to send, oldest first (a heartbeat would carry only the newest).
    const results = d.engine.finalResults(16);
    expect(results.map((r) => [r.DeploymentName, r.DeploymentStatus])).toEqual([
      ['left', 'SUCCESS'],
      ['right', 'SUCCESS'],
    ]);
    expect(d.engine.finalResults(1)).toHaveLength(1);
    // Before the server took them, the heartbeat carries the newest too.
    expect(d.engine.deploymentResult()).toEqual(results[1]);
    for (const result of results) d.engine.reported(result);
    expect(d.engine.finalResults(16)).toEqual([]);
    // The server records the device's last result from the result route as well: no heartbeat repeats it.
    expect(d.engine.deploymentResult()).toBeUndefined();

    // A failure the server accepted alone is not sent again; the server's retry then starts it over.
    api.faults.set(v2.path, [{ status: 404 }]);
    const upgrade = deployment('up', [{ handle: 'detector', pkg: v2, version: '2.0' }]);
    await d.engine.apply([upgrade]);
    const [failure] = d.engine.finalResults(16);
    expect(failure).toMatchObject({ DeploymentName: 'up', DeploymentStatus: 'FAIL' });
    d.engine.reported(failure!);
    expect(d.engine.deploymentResult()).toBeUndefined();
    api.faults.set(v2.path, [{ status: 503 }]);
    await d.engine.apply([upgrade]);
    expect(stateOf(d, 'detector')).toMatchObject({ deployment: 'up', state: 'Downloading' });
    expect(d.engine.deploymentResult()).toMatchObject({
      DeploymentName: 'up',
      DeploymentStatus: 'INPROGRESS',
    });
    await d.engine.apply([upgrade]);
    expect(stateOf(d, 'detector')).toMatchObject({ deployment: 'up', state: 'Committed' });
    const [success] = d.engine.finalResults(16);
    expect(success).toMatchObject({ DeploymentName: 'up', DeploymentStatus: 'SUCCESS' });
    // The old failure, arriving late, does not mark the new attempt reported.
    d.engine.reported(failure!);
    expect(d.engine.finalResults(16)).toEqual([success]);
    expect(d.engine.deploymentResult()).toEqual(success);
    d.engine.reported(success!);
    expect(d.engine.finalResults(16)).toEqual([]);
    expect(d.engine.deploymentResult()).toBeUndefined();
  });

  it('a final result the result route accepted is not sent again: not by the route, not in a heartbeat', async () => {
    const v1 = await publish(identityModel(), '1.0');
    const d = await device();
    const client = new DeviceApiClient(api.endpoint, api.tls, { timeoutMs: 5000 });
    const reporter = new ResultReporter({
      engine: d.engine,
      sink: client,
      ids: { DeviceName: 'device-1', DeviceFleetName: 'fleet-1' },
      logger: { info: () => {}, warn: () => {}, error: () => {} },
    });
    api.acceptResults = true;
    try {
      await d.engine.apply([deployment('alone', [{ handle: 'detector', pkg: v1, version: '1.0' }])]);
      reporter.kick();
      await until(() => (d.engine.finalResults(16).length === 0 ? true : undefined), 'the result accepted');
      expect(api.results.filter((r) => r.DeploymentName === 'alone')).toMatchObject([
        { DeploymentStatus: 'SUCCESS' },
      ]);
      // The server records the device's last result from the route: the heartbeat has nothing to carry.
      expect(d.engine.deploymentResult()).toBeUndefined();
      reporter.kick();
      await reporter.stop();
      expect(api.results.filter((r) => r.DeploymentName === 'alone')).toHaveLength(1);
    } finally {
      api.acceptResults = false;
      await reporter.stop();
      client.close();
    }
  });

  it('a deployment of the package already serving is committed at once, without a download', async () => {
    const v1 = await publish(identityModel(), '1.0');
    const d = await device();
    await d.engine.apply([deployment('first', [{ handle: 'detector', pkg: v1, version: '1.0' }])]);
    const downloads = api.ranges.filter((r) => r.path === v1.path).length;
    const loadedAt = d.registry.describe('detector').loadedAt;
    await d.engine.apply([deployment('again', [{ handle: 'detector', pkg: v1, version: '1.0' }])]);
    expect(stateOf(d, 'detector')).toMatchObject({ deployment: 'again', state: 'Committed', version: '1.0' });
    expect(api.ranges.filter((r) => r.path === v1.path)).toHaveLength(downloads);
    expect(d.registry.describe('detector').loadedAt).toEqual(loadedAt);
  });

  it('resumes from the recorded state: a switched model whose sibling failed before the crash rolls back', async () => {
    const a1 = await publish(identityModel(), '1.0', { model: 'a' });
    const a2 = await publish(doublingModel(), '2.0', { model: 'a' });
    const d = await device();
    await d.engine.apply([deployment('base', [{ handle: 'a', pkg: a1, version: '1.0' }])]);
    const base = d.database.deployments.get('a')!;
    // What a crash leaves: "a" switched to 2.0 and in its health window, "b" of the same deployment failed.
    const a2Dir = d.store.packageDir('a', '2.0', a2.sha256);
    await d.store.extract(await d.store.download({ url: a2.path, sha256: a2.sha256 }), a2Dir);
    await d.registry.stage('a', a2Dir);
    await d.registry.promote('a');
    const now = Date.now();
    const row = {
      ...base,
      deploymentName: 'two',
      state: 'HealthCheck',
      version: '2.0',
      sha256: a2.sha256,
      packageUrl: a2.path,
      packageDir: a2Dir,
      previousUrl: base.packageDir,
      previousVersion: '1.0',
      endedAt: null,
      startedAt: now,
      updatedAt: now,
    };
    d.database.deployments.saveAll([
      row,
      { ...row, handle: 'b', state: 'Failed', reason: 'bad checksum', previousUrl: null, endedAt: now },
    ]);
    const engine = new UpdateEngine({
      registry: d.registry,
      repository: d.database.deployments,
      store: d.store,
      trust: signer.trust,
      requireSignatures: true,
      healthWindowMs: 10,
      logger: { info: () => {}, warn: () => {}, error: () => {} },
    });
    await engine.resume();
    expect(engine.status().find((s) => s.handle === 'a')).toMatchObject({
      state: 'RolledBack',
      reason: expect.stringMatching(/ROLLBACK_ON_FAILURE/),
    });
    expect(d.registry.describe('a').version).toBe('1.0');
    await engine.close();
  });

  it('a version whose warm-up fails ends Failed from WarmingUp; under ROLLBACK_ON_FAILURE its sibling rolls back', async () => {
    const a1 = await publish(identityModel(), '1.0', { model: 'a' });
    const a2 = await publish(doublingModel(), '2.0', { model: 'a' });
    const b1 = await publish(identityModel(), '1.0', { model: 'b' });
    // Its warm-up output has rank 1 where its manifest declares rank 2: refused by the warm-up, not before.
    const b2 = await publish(rankLyingModel(), '2.0', { model: 'b' });
    const d = await device();
    const statesOf = recordStates(d);
    await upgradeAAndB(d, { a1, a2, b1 }, { pkg: b2 }, 'ROLLBACK_ON_FAILURE');
    expect(stateOf(d, 'b')).toMatchObject({
      state: 'Failed',
      reason: expect.stringMatching(/did not load: .*warm-up output does not match its manifest/),
    });
    expect(statesOf('b', 'two')).toEqual(['Downloading', 'Verifying', 'Loading', 'WarmingUp', 'Failed']);
    expect(d.registry.describe('b')).toMatchObject({ version: '1.0' });
    expect(d.registry.describe('b').staged).toBeUndefined(); // its sessions were released
    expect(stateOf(d, 'a')).toMatchObject({
      state: 'RolledBack',
      reason: expect.stringMatching(/ROLLBACK_ON_FAILURE\): b failed/),
    });
    expect(statesOf('a', 'two')).toEqual([
      'Downloading',
      'Verifying',
      'Loading',
      'WarmingUp',
      'Switching',
      'HealthCheck',
      'RollingBack',
      'RolledBack',
    ]);
    expect(d.registry.describe('a').version).toBe('1.0');
  });

  /**
   * What a crash during version 2's warm-up leaves on a device that serves version 1: version 2 verified,
   * extracted and recorded in WarmingUp (`row` overrides), its staged sessions gone with the process.
   */
  async function crashedDuringWarmUp(
    d: Device,
    v1: ServedPackage,
    v2: ServedPackage,
    row: Partial<DeploymentModelRow>,
  ): Promise<void> {
    await d.engine.apply([deployment('base', [{ handle: 'detector', pkg: v1, version: '1.0' }])]);
    const base = d.database.deployments.get('detector')!;
    const v2Dir = d.store.packageDir('detector', '2.0', v2.sha256);
    await d.store.extract(await d.store.download({ url: v2.path, sha256: v2.sha256 }), v2Dir);
    const now = Date.now();
    d.database.deployments.save({
      ...base,
      state: 'WarmingUp',
      version: '2.0',
      sha256: v2.sha256,
      packageUrl: v2.path,
      packageDir: v2Dir,
      previousUrl: base.packageDir,
      previousVersion: '1.0',
      endedAt: null,
      startedAt: now,
      updatedAt: now,
      ...row,
    });
  }

  it('resumes an update recorded in WarmingUp as from Loading: stages the version again, then switches', async () => {
    const v1 = await publish(identityModel(), '1.0');
    const v2 = await publish(doublingModel(), '2.0');
    const d = await device();
    const statesOf = recordStates(d);
    // What a crash during the warm-up leaves: version 2 verified and recorded in WarmingUp; its staged sessions
    // died with the process, version 1 serves (restored from loaded_models).
    await crashedDuringWarmUp(d, v1, v2, { deploymentName: 'warm' });
    await d.engine.resume();
    expect(stateOf(d, 'detector')).toMatchObject({ state: 'Committed', version: '2.0' });
    expect(d.registry.describe('detector').version).toBe('2.0');
    expect(statesOf('detector', 'warm')).toEqual([
      'WarmingUp',
      'Loading',
      'WarmingUp',
      'Switching',
      'HealthCheck',
      'Committed',
    ]);
  });

  it('a version whose staging keeps taking the agent down ends Failed before its switch, the old one serving', async () => {
    const v1 = await publish(identityModel(), '1.0');
    const v2 = await publish(doublingModel(), '2.0');
    const d = await device();
    // What the fourth crash during version 2's warm-up leaves: three restarts counted already.
    await crashedDuringWarmUp(d, v1, v2, { deploymentName: 'crashing', reported: false, restarts: 3 });
    await d.engine.resume();
    expect(stateOf(d, 'detector')).toMatchObject({
      state: 'Failed',
      reason: 'the agent restarted 4 times while version 2.0 of detector was being staged (a crash loop)',
    });
    expect(d.database.deployments.get('detector')!.restarts).toBe(4);
    expect(d.registry.describe('detector')).toMatchObject({ version: '1.0' });
    expect(d.registry.describe('detector').staged).toBeUndefined();
    expect(d.engine.deploymentResult()?.DeploymentModels?.[0]).toMatchObject({
      Status: 'FAIL',
      FailedAfterSwitch: false,
    });
  });

  it('counts in edgefleet_deployment_* metrics', async () => {
    const v1 = await publish(identityModel(), '1.0');
    const registry = new Registry();
    const d = await device({ metrics: new DeploymentMetrics(registry) });
    await d.engine.apply([deployment('base', [{ handle: 'detector', pkg: v1, version: '1.0' }])]);
    const text = await registry.metrics();
    expect(text).toContain('edgefleet_deployment_state{model="detector",state="Committed"} 1');
    expect(text).toContain('edgefleet_deployment_state{model="detector",state="Downloading"} 0');
    expect(text).toContain('edgefleet_deployment_results_total{result="committed"} 1');
    expect(text).toContain(`edgefleet_deployment_download_bytes_total ${v1.bytes.length}`);
  });
});

/**
 * Fills the engine's database up to SQLite's own size limit (PRAGMA max_page_count on the engine's connection)
 * with small rows of finished updates of other handles: from then on the engine's next state write does not fit,
 * and fails with a real SQLITE_FULL, as on a full data root.
 */
function fillDatabase(db: SqliteDatabase.Database): void {
  db.pragma(`max_page_count = ${db.pragma('page_count', { simple: true }) as number}`);
  const repository = new DeploymentsRepository(db);
  for (let i = 0; ; i++) {
    try {
      repository.save({
        handle: `o${i}`,
        deploymentName: 'o',
        state: 'Committed',
        desired: 'UNDEPLOY',
        failurePolicy: 'DO_NOTHING',
        allowDowngrade: false,
        modelName: null,
        version: null,
        packageUrl: null,
        sha256: null,
        size: null,
        packageDir: null,
        previousUrl: null,
        previousVersion: null,
        committedVersion: null,
        reason: null,
        rollbackFailureReason: null,
        rolledBackWithDeployment: false,
        restarts: 0,
        startedAt: 1,
        updatedAt: 1,
        endedAt: 1,
        reported: true,
      });
    } catch (error) {
      expect((error as { code?: string }).code).toBe('SQLITE_FULL');
      return;
    }
  }
}

describe('UpdateEngine on a full data root', () => {
  it('a deployment whose state cannot be recorded is reported INPROGRESS with the reason, claims no state, and goes on once space returns', async () => {
    const v1 = await publish(identityModel(), '1.0');
    const v2 = await publish(doublingModel(), '2.0');
    const d = await device({ ownConnection: true });
    await d.engine.apply([deployment('base', [{ handle: 'detector', pkg: v1, version: '1.0' }])]);
    expect(stateOf(d, 'detector')).toMatchObject({ state: 'Committed', version: '1.0' });
    // The server accepted base's SUCCESS (else that final result would be sent first).
    d.engine.reported(d.engine.deploymentResult()!);
    fillDatabase(d.deploymentsDb!);

    const upgrade = [
      deployment('two', [{ handle: 'detector', pkg: v2, version: '2.0', modelName: 'detector' }]),
    ];
    // Before: the SqliteError itself reached the poller, which logged it with its stack on every poll.
    const refused = await d.engine.apply(upgrade).then(
      () => undefined,
      (error: unknown) => error,
    );
    expect(refused).toBeInstanceOf(DeploymentStorageFullError);
    expect((refused as Error).message).toMatch(
      /^the device's storage is full: database or disk is full; the state of deployment two cannot be recorded/,
    );
    // Nothing claimed that is not recorded: the handle is still on its committed update, 1.0 serving.
    expect(stateOf(d, 'detector')).toMatchObject({ deployment: 'base', state: 'Committed', version: '1.0' });
    expect(d.registry.describe('detector').version).toBe('1.0');
    expect(d.engine.storageFull()).toMatchObject({
      deployment: 'two',
      reason: 'database or disk is full',
      message: expect.stringMatching(/storage is full.*goes on by itself once space is freed/),
    });
    // What the heartbeat carries to the server: the deployment under way, and why it does not move.
    const result = d.engine.deploymentResult();
    expect(deploymentResultSchema.safeParse(result).success).toBe(true);
    expect(result).toMatchObject({
      DeploymentName: 'two',
      DeploymentStatus: 'INPROGRESS',
      DeploymentStatusMessage: expect.stringMatching(/^the device's storage is full/),
      DeploymentModels: [
        {
          ModelHandle: 'detector',
          ModelName: 'detector',
          ModelVersion: '2.0',
          DesiredState: 'DEPLOY',
          // 2.0 is not deployed: 1.0 serves, and the reason says so (before: State DEPLOY for 2.0).
          State: 'UNDEPLOY',
          StatusReason: expect.stringMatching(/^version 1\.0 serves the handle .*storage is full/),
        },
      ],
    });
    // An in-progress result is never taken as accepted.
    d.engine.reported(result!);

    d.deploymentsDb!.pragma('max_page_count = 1073741823');
    await d.engine.apply(upgrade);
    expect(stateOf(d, 'detector')).toMatchObject({ deployment: 'two', state: 'Committed', version: '2.0' });
    expect(d.engine.storageFull()).toBeNull();
    expect(d.engine.deploymentResult()).toMatchObject({ DeploymentName: 'two', DeploymentStatus: 'SUCCESS' });
  });

  it('a final result the server has not accepted is still sent while another deployment waits for space', async () => {
    const v1 = await publish(identityModel(), '1.0');
    const d = await device({ ownConnection: true });
    await d.engine.apply([
      deployment('bad', [{ handle: 'camera', pkg: v1, version: '1.0', sha256: 'a'.repeat(64) }]),
    ]);
    expect(stateOf(d, 'camera')).toMatchObject({ state: 'Failed' });
    fillDatabase(d.deploymentsDb!);
    const refused = await d.engine
      .apply([deployment('two', [{ handle: 'detector', pkg: v1, version: '1.0' }])])
      .then(
        () => undefined,
        (error: unknown) => error,
      );
    expect(refused).toBeInstanceOf(DeploymentStorageFullError);
    // Before: the storage-full INPROGRESS of 'two' hid the FAIL of 'bad', whose stage waited for its timeout.
    const first = d.engine.deploymentResult();
    expect(first).toMatchObject({ DeploymentName: 'bad', DeploymentStatus: 'FAIL' });
    d.engine.reported(first!);
    expect(d.engine.deploymentResult()).toMatchObject({
      DeploymentName: 'two',
      DeploymentStatus: 'INPROGRESS',
      DeploymentStatusMessage: expect.stringMatching(/^the device's storage is full/),
    });
  });

  it('the poller says a full disk once, then at most once a minute, without a stack; and when it passes', async () => {
    const v1 = await publish(identityModel(), '1.0');
    const d = await device({ ownConnection: true });
    fillDatabase(d.deploymentsDb!);
    api.deployments = [deployment('first', [{ handle: 'detector', pkg: v1, version: '1.0' }])];
    const client = new DeviceApiClient(api.endpoint, api.tls, { timeoutMs: 5000 });
    let passes = 0;
    const lines: { level: string; fields: Record<string, unknown>; message: string }[] = [];
    const poller = startDeploymentPoller({
      // The real engine, its passes counted.
      engine: {
        resume: () => d.engine.resume(),
        apply: (deployments) => {
          passes++;
          return d.engine.apply(deployments);
        },
      },
      source: client,
      ids: { DeviceName: 'device-1', DeviceFleetName: 'fleet-1' },
      intervalMs: 5,
      // A clock that stands still: every pass after the first is within the minute.
      now: () => 1_000_000,
      logger: {
        info: (fields, message) => lines.push({ level: 'info', fields: { ...fields }, message }),
        warn: (fields, message) => lines.push({ level: 'warn', fields: { ...fields }, message }),
        error: (fields, message) => lines.push({ level: 'error', fields: { ...fields }, message }),
      },
    });
    try {
      await until(() => (passes >= 5 ? true : undefined), 'five passes on the full disk');
      expect(d.engine.storageFull()).toMatchObject({ deployment: 'first' });
      expect(lines.filter((l) => l.level === 'error')).toEqual([]);
      const warnings = lines.filter((l) => l.fields.event === 'deployment-storage-full');
      expect(warnings).toHaveLength(1);
      expect(warnings[0]).toMatchObject({
        level: 'warn',
        message: expect.stringMatching(/storage is full: database or disk is full.*at most once a minute/),
      });
      expect(warnings[0]!.fields.err).toBeUndefined();

      d.deploymentsDb!.pragma('max_page_count = 1073741823');
      await until(() => (stateOf(d, 'detector')?.state === 'Committed' ? true : undefined), 'committed');
      await until(
        () => (lines.some((l) => l.fields.event === 'deployment-storage-writable') ? true : undefined),
        'the line that the state can be written again',
      );
      expect(d.engine.storageFull()).toBeNull();
    } finally {
      await poller.stop();
      client.close();
      api.deployments = [];
    }
  });
});
