/**
 * The torture test (after Mender's 100 updates × 200 reboots): a real agent process is SIGKILLed at a seeded
 * random moment of each update; after every restart it must serve a verified model, and every update must end
 * committed. `npm test` runs a short variant; `npm run test:torture` runs ≥ 100 updates
 * (EDGEFLEET_TORTURE_UPDATES, EDGEFLEET_TORTURE_SEED).
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { OnnxModelBuilder } from '@edgefleet/core';
import SqliteDatabase from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildAgent } from '../daemon/process-helpers.js';
import { promisify } from 'node:util';
import { CLI_MAIN, requireBuilt } from '../../../../test/support/control-plane.js';
import { until } from '../fleet/support.js';
import { scratch } from '../support/model-packages.js';
import { seeded } from '../support/seeded.js';
import { deviceAgent, getStatus, type DeviceAgent } from './device-agent.js';
import {
  deployment,
  packageSigner,
  packBytes,
  startFakeDeviceApi,
  type FakeDeviceApi,
  type ServedPackage,
} from './support.js';

const UPDATES = Number(process.env.EDGEFLEET_TORTURE_UPDATES ?? 7);
const SEED = Number(process.env.EDGEFLEET_TORTURE_SEED ?? 20261206);
/**
 * The states the kills aim at, in turn, one per update (the kill lands a seeded few ms after the first state seen
 * at or past the target). WarmingUp is 4th: update 1 is a first install, which has no WarmingUp.
 */
const TARGETS = [
  'Downloading',
  'Verifying',
  'Loading',
  'WarmingUp',
  'Switching',
  'HealthCheck',
  'Committed',
] as const;
const ORDER: readonly string[] = ['Idle', ...TARGETS];

/**
 * y = x × k: each version answers differently, so the test sees which one serves. Its second output, `work`,
 * sums a 1536×1536 matrix product built from sum(x) (tens of ms): it depends on the input, so ONNX Runtime
 * cannot fold it when it creates the session, and the warm-up (WarmingUp) is a step a kill can land in, not a
 * blink. The package stays small (no large initializer to download).
 */
function scaleModel(k: number): Uint8Array {
  return new OnnxModelBuilder({ graphName: `scale_${k}` })
    .input('x', 'FLOAT32', ['n'])
    .initializer('k', 'FLOAT32', [1], new Float32Array([k]))
    .node('Mul', ['x', 'k'], ['y'])
    .output('y', 'FLOAT32', ['n'])
    .initializer('square', 'INT64', [2], new BigInt64Array([1536n, 1536n]))
    .node('ReduceSum', ['x'], ['total'])
    .node('ConstantOfShape', ['square'], ['zeros'])
    .node('Add', ['zeros', 'total'], ['filled'])
    .node('MatMul', ['filled', 'filled'], ['product'])
    .node('ReduceSum', ['product'], ['work'])
    .output('work', 'FLOAT32', [1, 1])
    .build();
}

let files: Awaited<ReturnType<typeof scratch>>;
let api: FakeDeviceApi;
let agent: DeviceAgent | undefined;

beforeAll(async () => {
  buildAgent();
  files = await scratch('agent-torture-');
  api = await startFakeDeviceApi();
});
afterAll(async () => {
  await agent?.kill();
  await api?.close();
  await files?.cleanup();
});

describe(`torture: ${UPDATES} updates, the agent SIGKILLed at a random moment of each (seed ${SEED})`, () => {
  it(
    'after every restart the agent serves a verified model, and every update ends committed',
    { timeout: 60_000 + UPDATES * 30_000 },
    async () => {
      const random = seeded(SEED);
      const signer = await packageSigner(files.root);
      agent = await deviceAgent(join(files.root, 'device'), api, signer.trustDir);
      const { dataRoot, restSocket } = agent;
      const start = () => agent!.start();
      const kill = () => agent!.kill();
      const statesAtKill: string[] = [];
      const packages: ServedPackage[] = [];
      api.throttle = { chunkBytes: 256, delayMs: 15 };
      await start();
      for (let update = 1; update <= UPDATES; update++) {
        const pkgDir = await files.custom(scaleModel(update), 'detector', `${update}.0`);
        await signer.sign(pkgDir);
        packages.push(
          api.serve(
            `/api/v1/device/packages/v${update}`,
            await packBytes(pkgDir, join(files.root, `v${update}.tar.gz`)),
          ),
        );
        api.deployments = [
          deployment(`update-${update}`, [
            { handle: 'detector', pkg: packages[update - 1]!, modelName: 'detector', version: `${update}.0` },
          ]),
        ];
        // Watch the agent's own record of the update; kill it once it reaches the target state, a few ms in.
        const target = TARGETS[(update - 1) % TARGETS.length]!;
        const jitterMs = Math.floor(random() * 5);
        const db = new SqliteDatabase(join(dataRoot, 'agent.db'), { readonly: true, fileMustExist: true });
        const read = () => {
          const row = db
            .prepare('SELECT deployment_name, state FROM deployment_models WHERE handle = ?')
            .get('detector') as { deployment_name: string; state: string } | undefined;
          return row?.deployment_name === `update-${update}` ? row.state : 'Idle';
        };
        const watchUntil = Date.now() + 15_000;
        while (ORDER.indexOf(read()) < ORDER.indexOf(target) && Date.now() < watchUntil)
          await new Promise((resolve) => setTimeout(resolve, 2));
        await new Promise((resolve) => setTimeout(resolve, jitterMs));
        await kill();
        statesAtKill.push(read());
        db.close();
        await start();
        // At once after the restart: a verified version serves (from the second update on; the first may not be in yet).
        const status = await getStatus(restSocket);
        const served = status.models.find((m) => m.name === 'detector');
        if (update > 1) {
          expect(served, `after the kill in update ${update}`).toBeDefined();
          expect(served!.signatureVerified).toBe(true);
          expect([`${update - 1}.0`, `${update}.0`]).toContain(served!.version);
        }
        // And it converges: the update ends committed, the new version serving.
        await until(
          async () => {
            const now = await getStatus(restSocket);
            const engine = now.deployments.models?.find((m) => m.handle === 'detector');
            return engine?.deployment === `update-${update}` &&
              engine.state === 'Committed' &&
              now.models.find((m) => m.name === 'detector')?.version === `${update}.0`
              ? true
              : undefined;
          },
          `update ${update} to be committed (killed in ${statesAtKill.at(-1)})`,
        );
      }
      // The last result reached the server in a heartbeat.
      await until(
        async () =>
          api.heartbeats.some(
            (h) =>
              h.DeploymentResult?.DeploymentName === `update-${UPDATES}` &&
              h.DeploymentResult.DeploymentStatus === 'SUCCESS',
          )
            ? true
            : undefined,
        'the last DeploymentResult in a heartbeat',
      );
      // `edgefleet agent status` shows what the device runs and what its update engine did.
      requireBuilt(CLI_MAIN);
      const cli = (...args: string[]) =>
        promisify(execFile)(process.execPath, [
          CLI_MAIN,
          'agent',
          'status',
          '--rest-socket',
          restSocket,
          ...args,
        ]);
      expect(JSON.parse((await cli('--json')).stdout)).toMatchObject({
        models: [{ name: 'detector', version: `${UPDATES}.0`, signatureVerified: true }],
        deployments: {
          enabled: true,
          models: [{ handle: 'detector', deployment: `update-${UPDATES}`, state: 'Committed' }],
        },
      });
      expect((await cli()).stdout).toMatch(
        new RegExp(`detector\\s+update-${UPDATES}\\s+Committed\\s+${UPDATES}\\.0`),
      );
      if (UPDATES >= 50) expect(new Set(statesAtKill).size).toBeGreaterThanOrEqual(5);
      console.log(
        `torture (seed ${SEED}): states at kill: ${JSON.stringify(statesAtKill.reduce<Record<string, number>>((n, s) => ({ ...n, [s]: (n[s] ?? 0) + 1 }), {}))}`,
      );
    },
  );
});
