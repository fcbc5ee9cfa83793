/**
 * Restarts during an update, with a real agent process SIGKILLed at a chosen state: a restart counts against the
 * new version only while it serves (a crash loop it may cause ends in a rollback reported FailedAfterSwitch);
 * restarts before its switch — here while it waits, staged, on the update lock — are no sign of a bad version
 * and do not add up to a rollback.
 */
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectAgent } from '@edgefleet/core';
import { buildAgent, type LogLine } from '../daemon/process-helpers.js';
import { until as untilWithin } from '../fleet/support.js';
import { scratch } from '../support/model-packages.js';
import { deviceAgent, getStatus, type DeviceAgent } from './device-agent.js';
import {
  deployment,
  packageSigner,
  packBytes,
  startFakeDeviceApi,
  type FakeDeviceApi,
  type ServedPackage,
} from './support.js';

/** More than the engine's restarts bound (UpdateEngine's maxRestarts, 3). */
const KILLS = 4;
/** Each restart re-verifies and reloads a package: slow beside a full parallel test run, so waits are generous. */
const LOADED_MACHINE_MS = 60_000;
const until = <T>(check: () => Promise<T | undefined>, what: string): Promise<T> =>
  untilWithin(check, what, LOADED_MACHINE_MS);

let files: Awaited<ReturnType<typeof scratch>>;
let api: FakeDeviceApi;
let signer: Awaited<ReturnType<typeof packageSigner>>;
const agents: DeviceAgent[] = [];

beforeAll(async () => {
  buildAgent();
  files = await scratch('agent-restarts-');
  api = await startFakeDeviceApi();
  signer = await packageSigner(files.root);
});
afterAll(async () => {
  for (const agent of agents) await agent.kill();
  await api?.close();
  await files?.cleanup();
});

/** Versions 1.0 and 2.0 of "detector", signed and served. */
async function twoVersions(tag: string): Promise<[ServedPackage, ServedPackage]> {
  const served: ServedPackage[] = [];
  for (const major of [1, 2]) {
    const version = `${major}.0`;
    const dir = await files.catalogue('tiny', 'detector', version);
    await signer.sign(dir);
    served.push(
      api.serve(
        `/api/v1/device/packages/${tag}-v${major}`,
        await packBytes(dir, join(files.root, `${tag}-v${major}.tar.gz`)),
      ),
    );
  }
  return served as [ServedPackage, ServedPackage];
}

/** Deploys 1.0 on a fresh agent and waits until it is committed. */
async function agentOnVersion1(name: string, v1: ServedPackage): Promise<DeviceAgent> {
  const agent = await deviceAgent(join(files.root, name), api, signer.trustDir);
  agents.push(agent);
  api.deployments = [deployment(`${name}-base`, [{ handle: 'detector', pkg: v1, version: '1.0' }])];
  await agent.start();
  await until(
    async () => (agent.recorded('detector')?.state === 'Committed' ? true : undefined),
    'version 1.0 committed',
  );
  return agent;
}

/** The last DeploymentResult the fake device API heard in a heartbeat for `name`. */
function heardResult(name: string): Record<string, unknown> | undefined {
  return api.heartbeats.findLast((h) => h.DeploymentResult?.DeploymentName === name)?.DeploymentResult;
}

const staged = (line: LogLine) => line.msg === 'staged model detector';
const rolledBack = (line: LogLine) => line.event === 'deployment-rolled-back';

describe('restarts during an update (a real agent, SIGKILLed)', () => {
  it(`killed ${KILLS} times in Switching, staged and waiting on the update lock, it still commits the new version once the lock goes`, async () => {
    const [v1, v2] = await twoVersions('locked');
    const agent = await agentOnVersion1('locked', v1);
    await writeFile(agent.updateLock, '');
    api.deployments = [deployment('locked-upgrade', [{ handle: 'detector', pkg: v2, version: '2.0' }])];
    for (let kill = 1; kill <= KILLS; kill++) {
      // Staged (the engine records Switching right after) and held by the lock: the new version never served.
      const line = await agent.process!.waitFor(
        (l) => staged(l) || rolledBack(l),
        'the new version staged (or a rollback)',
      );
      expect(line.msg, `before kill ${kill}`).toBe('staged model detector');
      await until(
        async () => (agent.recorded('detector')?.state === 'Switching' ? true : undefined),
        'the update recorded in Switching',
      );
      expect((await getStatus(agent.restSocket)).models).toMatchObject([
        { name: 'detector', version: '1.0' },
      ]);
      await agent.kill();
      await agent.start();
    }
    // The restarts before the switch were not counted against 2.0: it is staged again, not rolled back.
    const line = await agent.process!.waitFor((l) => staged(l) || rolledBack(l), 'the new version staged');
    expect(line.msg).toBe('staged model detector');
    expect(agent.recorded('detector')).toMatchObject({ deployment_name: 'locked-upgrade', restarts: 0 });

    await rm(agent.updateLock);
    await until(async () => {
      const status = await getStatus(agent.restSocket);
      return status.deployments.models?.[0]?.state === 'Committed' && status.models[0]?.version === '2.0'
        ? true
        : undefined;
    }, 'version 2.0 committed and serving');
    await until(
      async () => (heardResult('locked-upgrade')?.DeploymentStatus === 'SUCCESS' ? true : undefined),
      'the SUCCESS result in a heartbeat',
    );
  }, 420_000);

  it(`killed ${KILLS} times in HealthCheck (the new version serving), it rolls back as a crash loop, reported FailedAfterSwitch`, async () => {
    const [v1, v2] = await twoVersions('looping');
    const agent = await agentOnVersion1('looping', v1);
    // From now on a window no test waits out: the new version is in HealthCheck, serving, at every kill.
    await agent.kill();
    await agent.configure({ edgefleet_deployment_health_window_seconds: 3600 });
    await agent.start();
    // The server does not offer a release that failed after its switch again (the agent would take that for its
    // retry and start over).
    api.withdrawFailedAfterSwitch = true;
    api.deployments = [deployment('looping-upgrade', [{ handle: 'detector', pkg: v2, version: '2.0' }])];
    for (let kill = 1; kill <= KILLS; kill++) {
      await until(
        async () => {
          const recorded = agent.recorded('detector');
          return recorded?.deployment_name === 'looping-upgrade' &&
            recorded.state === 'HealthCheck' &&
            recorded.restarts === kill - 1
            ? true
            : undefined;
        },
        `the update in HealthCheck after ${kill - 1} restart(s)`,
      );
      expect((await getStatus(agent.restSocket)).models).toMatchObject([
        { name: 'detector', version: '2.0' },
      ]);
      await agent.kill();
      await agent.start();
    }
    await until(
      async () => (agent.recorded('detector')?.state === 'RolledBack' ? true : undefined),
      'the crash loop rolled back',
    );
    expect((await getStatus(agent.restSocket)).models).toMatchObject([{ name: 'detector', version: '1.0' }]);
    await until(
      async () => (heardResult('looping-upgrade')?.DeploymentStatus === 'FAIL' ? true : undefined),
      'the FAIL result in a heartbeat',
    );
    expect(heardResult('looping-upgrade')).toMatchObject({
      DeploymentModels: [
        {
          ModelHandle: 'detector',
          Status: 'FAIL',
          FailedAfterSwitch: true,
          StatusReason: `the agent restarted ${KILLS} times while version 2.0 of detector served (a crash loop)`,
        },
      ],
    });
  }, 420_000);

  it("an application's UnLoadModel of a deployed model: obeyed, said in status and heartbeats, kept across a restart, cleared by a load", async () => {
    const [v1] = await twoVersions('unloaded');
    const agent = await agentOnVersion1('unloaded', v1);
    const before = await getStatus(agent.restSocket);
    const packageDir = before.models.find((m) => m.name === 'detector')!.path!;
    const notLoaded = () =>
      (api.heartbeats as Array<{ DeployedModelsNotLoaded?: Array<Record<string, unknown>> }>).at(-1)
        ?.DeployedModelsNotLoaded;
    const client = connectAgent(`unix://${join(agent.dir, 'agent.sock')}`);
    try {
      // Edge Manager's apps unload models themselves: the agent obeys.
      await client.call('UnLoadModel', { name: 'detector' });
      const expectNotLoaded = async () => {
        const status = await getStatus(agent.restSocket);
        expect(status.models).toEqual([]);
        expect(status.deployments.models).toMatchObject([
          {
            handle: 'detector',
            deployment: 'unloaded-base',
            state: 'Committed',
            loaded: false,
            notLoadedReason: expect.stringMatching(
              /^unloaded by an application \(UnLoadModel or the REST unload\) at .*; not loaded again, also after a restart, until the handle is loaded or deployed again$/,
            ),
            unloadedByApplicationAt: expect.any(String),
          },
        ]);
        await until(async () => (notLoaded()?.length === 1 ? true : undefined), 'a heartbeat saying so');
        expect(notLoaded()).toMatchObject([
          {
            ModelHandle: 'detector',
            DeploymentName: 'unloaded-base',
            ModelVersion: '1.0',
            UnloadedByApplication: true,
            Reason: expect.stringMatching(/^unloaded by an application/),
          },
        ]);
      };
      await expectNotLoaded();
      expect(agent.process!.lines.some((l: LogLine) => l.event === 'deployment-model-unloaded')).toBe(true);

      // A restart does not load it again: the application's unload stands.
      await agent.kill();
      api.heartbeats.length = 0;
      await agent.start();
      await expectNotLoaded();
    } finally {
      client.close();
    }
    // Loaded again (here by the application): serving, and the heartbeats' list empties.
    const again = connectAgent(`unix://${join(agent.dir, 'agent.sock')}`);
    try {
      await again.call('LoadModel', { name: 'detector', url: packageDir });
    } finally {
      again.close();
    }
    const status = await getStatus(agent.restSocket);
    expect(status.deployments.models).toMatchObject([
      {
        handle: 'detector',
        state: 'Committed',
        loaded: true,
        notLoadedReason: null,
        unloadedByApplicationAt: null,
      },
    ]);
    api.heartbeats.length = 0;
    await until(
      async () => (notLoaded()?.length === 0 ? true : undefined),
      'a heartbeat with none not loaded',
    );
  }, 420_000);
});

describe('a committed package changed on disk', () => {
  it('is refused at the restart, and status and heartbeats say why, and how to put it back', async () => {
    const [v1] = await twoVersions('tampered');
    const agent = await agentOnVersion1('tampered', v1);
    const packageDir = (await getStatus(agent.restSocket)).models.find((m) => m.name === 'detector')!.path!;
    await agent.kill();
    // One byte of the model file flipped after its deployment (a disk fault, or someone's hand).
    const modelFile = join(packageDir, 'model.onnx');
    const bytes = await readFile(modelFile);
    bytes.writeUInt8(bytes.readUInt8(bytes.length - 1) ^ 0xff, bytes.length - 1);
    await writeFile(modelFile, bytes);
    api.heartbeats.length = 0;
    await agent.start();
    const status = await until(async () => {
      const s = await getStatus(agent.restSocket);
      return s.deployments.models?.[0]?.loadFailure ? s : undefined;
    }, 'the load failure in status');
    expect(status.models).toEqual([]);
    expect(status.deployments.models).toMatchObject([
      {
        handle: 'detector',
        state: 'Committed',
        loaded: false,
        // Before: "still loading, or its load failed (the agent log says why)".
        notLoadedReason: expect.stringMatching(
          /^its load at the agent's start failed.*deploy the version again/,
        ),
        loadFailure: expect.stringMatching(/signature.*model\.onnx was modified/),
      },
    ]);
    const notLoaded = () =>
      (api.heartbeats as Array<{ DeployedModelsNotLoaded?: Array<Record<string, unknown>> }>).at(-1)
        ?.DeployedModelsNotLoaded;
    await until(async () => (notLoaded()?.length === 1 ? true : undefined), 'a heartbeat saying so');
    expect(notLoaded()).toMatchObject([
      {
        ModelHandle: 'detector',
        UnloadedByApplication: false,
        // The category, not the load's message: that names the package folder (status keeps it).
        Reason: expect.stringMatching(
          /^its load at the agent's start failed.*: the package failed signature verification \(file-modified: model\.onnx\)$/,
        ),
      },
    ]);
    expect(JSON.stringify(notLoaded())).not.toContain(packageDir);
  }, 420_000);
});
