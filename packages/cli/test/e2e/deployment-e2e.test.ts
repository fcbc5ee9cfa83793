/**
 * Deployments end to end, with real processes and real signed packages: edgefleet-server, three agents
 * enrolled with `edgefleet device enroll --deployments`, plans created and started with `edgefleet deployment …`
 * as an operator types them. A client keeps calling Predict on one agent during the rollouts and never sees an
 * error; a broken release goes back (ROLLBACK_ON_FAILURE) or stays half-applied (DO_NOTHING) as its stage says,
 * and is reported FAILED with the reason; an uploaded package arrives by its own route; a package replaced on
 * the server is refused; a rollout started just before a server outage completes once the server is back.
 */
import { createHash } from 'node:crypto';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { get as httpGet } from 'node:http';
import { join } from 'node:path';
import {
  connectAgent,
  createModelPackage,
  createRootCa,
  defaultRestSocketPath,
  issueCodeSigningCertificate,
  OnnxModelBuilder,
  packModelPackage,
  signPackage,
  writeTestModel,
  type AgentConnection,
} from '@edgefleet/core';
import { describe, expect, it } from 'vitest';
import { edgefleet, operatorCli } from '../run-cli.js';
import {
  deviceEnrollArgs,
  freePort,
  until,
  useE2eFleet,
  type AgentProcess,
} from '../../../../test/support/control-plane.js';

const fleet = useE2eFleet('ef-deploy-e2e-');

const cli = (...args: string[]) => operatorCli(fleet.plane)(...args);

interface Device {
  name: string;
  dir: string;
  restPort: number;
  socket: string;
  agent?: AgentProcess;
}

interface AgentStatusAnswer {
  models: Array<{ name: string; version: string; requests?: { succeeded: number; failed: number } }>;
  deployments?: {
    enabled: boolean;
    models?: Array<{ handle: string; deployment: string; state: string; reason: string | null }>;
  };
}

/** The agent status, from the REST Unix socket beside the gRPC one (TCP refuses it: docs/security.md). */
function agentStatus(device: Device): Promise<AgentStatusAnswer> {
  return new Promise((resolve, reject) => {
    const request = httpGet(
      { socketPath: defaultRestSocketPath(device.socket), path: '/edgefleet/v1/status' },
      (response) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('end', () => {
          try {
            expect(response.statusCode).toBe(200);
            resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')) as AgentStatusAnswer);
          } catch (error) {
            reject(error as Error);
          }
        });
      },
    );
    request.on('error', reject);
  });
}

/** The version each model handle is served at, e.g. {mlp: '2.0', aux: '1.0'}. */
async function served(device: Device): Promise<Record<string, string>> {
  const status = await agentStatus(device);
  return Object.fromEntries(status.models.map((m) => [m.name, m.version]));
}

/** Waits until every device of the stage shows `status`; resolves with ListStageDevices' answer. */
async function stageReaches(plan: string, stage: string, status: string) {
  return until(async () => {
    const answer = await cli('deployment', 'devices', plan, stage);
    return answer.devices.length > 0 && answer.devices.every((d: { status: string }) => d.status === status)
      ? answer
      : undefined;
  }, `${plan}/${stage}: every device ${status}`);
}

/** A model that cannot load (an operator ONNX Runtime does not have): a release that fails before its switch. */
function unloadableModel(): Uint8Array {
  return new OnnxModelBuilder({ graphName: 'unloadable' })
    .input('features', 'FLOAT32', ['batch', 4])
    .node('NoSuchOperator', ['features'], ['probabilities'])
    .output('probabilities', 'FLOAT32', ['batch', 3])
    .build();
}

/**
 * A model that loads and warms up but fails every request an application makes ([1, 4] features): a release
 * that fails its health window, after its switch.
 */
function widerInputModel(): Uint8Array {
  return new OnnxModelBuilder({ graphName: 'wider' })
    .input('features', 'FLOAT32', ['batch', 5])
    .initializer('w', 'FLOAT32', [5, 3], new Float32Array(15).fill(0.1))
    .node('MatMul', ['features', 'w'], ['probabilities'])
    .output('probabilities', 'FLOAT32', ['batch', 3])
    .build();
}

describe('deployment plans to three enrolled agents (real processes)', { timeout: 300_000 }, () => {
  it('rolls out, upgrades, and handles a broken release per failure policy', async () => {
    const { plane, work } = fleet;
    // Operator: a fleet of three, two models in two versions each, packaged and signed on the server.
    await cli('fleet', 'create', 'line', '--output', 's3://captures/line');
    await cli('device', 'register', 'line', 'dev-1', 'dev-2', 'dev-3');
    const mlp = await writeTestModel('mlp', join(work, 'src'));
    const broken = join(work, 'src', 'broken.onnx');
    await writeFile(broken, unloadableModel());
    const wider = join(work, 'src', 'wider.onnx');
    await writeFile(wider, widerInputModel());
    for (const [name, version, onnx] of [
      ['mlp', '1.0', mlp],
      ['mlp', '2.0', mlp],
      ['mlp', '3.0', broken],
      ['mlp', '4.0', wider],
      ['aux', '1.0', mlp],
      ['aux', '2.0', mlp],
      ['aux', '3.0', mlp],
    ] as const) {
      await cli('model', 'upload', onnx, '--name', name, '--version', version);
      await cli(
        'packaging',
        'create',
        `${name}-${version.replace('.', '-')}`,
        '--model',
        name,
        '--version',
        version,
        '--wait',
      );
    }

    // An uploaded package: built and signed by the operator's own publisher key (dev-3 trusts its root too).
    const publisherCa = createRootCa({
      commonName: 'Line publisher',
      validityDays: 2,
      keyType: 'ecdsa-p256',
    });
    const publisher = issueCodeSigningCertificate({
      issuer: publisherCa,
      commonName: 'Line publisher',
      validityDays: 1,
      keyType: 'ecdsa-p256',
    });
    const extra = await createModelPackage({
      modelPath: mlp,
      name: 'extra',
      version: '1.0',
      outDir: join(work, 'extra-1.0'),
    });
    await signPackage(extra.dir, {
      method: 'certificate',
      privateKeyPem: publisher.privateKeyPem,
      certificateChainPem: [publisher.certificatePem],
    });
    const extraArchive = join(work, 'extra-1.0.tar.gz');
    await packModelPackage(extra.dir, extraArchive);
    await cli('model', 'upload', extraArchive, '--name', 'extra', '--version', '1.0');

    // Devices: enrolled with deployments on, polling every second.
    const devices: Device[] = [];
    for (const name of ['dev-1', 'dev-2', 'dev-3']) {
      const dir = join(work, name);
      const device: Device = { name, dir, restPort: await freePort(), socket: join(dir, 'agent.sock') };
      const { token } = await cli('device', 'enrollment-token', name);
      const config = join(dir, 'agent.json');
      const enrolled = await edgefleet(
        ...deviceEnrollArgs(
          plane,
          token,
          config,
          '--rest-port',
          String(device.restPort),
          '--deployments',
          '1',
        ),
      );
      expect(enrolled.stderr).toBe('');
      expect(enrolled.code).toBe(0);
      const written = JSON.parse(await readFile(config, 'utf8'));
      expect(written).toMatchObject({ edgefleet_deployment_poll_interval_seconds: '1' });
      await writeFile(
        config,
        JSON.stringify({
          ...written,
          edgefleet_heartbeat_interval_seconds: 1,
          edgefleet_inference_workers: 1,
          // dev-1's is longer: its health-window case below calls the new version once the agent says it is
          // in its window, and must land there however slowly this machine runs.
          edgefleet_deployment_health_window_seconds: name === 'dev-1' ? 5 : 1,
        }),
      );
      if (name === 'dev-3')
        await writeFile(
          join(written.sagemaker_edge_core_root_certs_path, 'publisher.pem'),
          publisherCa.certificatePem,
        );
      device.agent = fleet.startAgent(device.socket, config, dir);
      await device.agent.waitFor((l) => l.event === 'listening', `${name} listening`);
      devices.push(device);
    }
    const [dev1, dev2, dev3] = devices as [Device, Device, Device];
    expect((await agentStatus(dev1)).deployments?.enabled).toBe(true);

    // Plan 1: a canary by name, then everyone.
    await cli(
      'deployment',
      'create',
      'first',
      '--fleet',
      'line',
      '--model',
      'mlp=mlp-1-0',
      '--model',
      'aux=aux-1-0',
      '--stage',
      'canary:devices=dev-1',
      '--stage',
      'rest:percentage=100',
    );
    await cli('deployment', 'start-stage', 'first', 'canary');
    const canary = await stageReaches('first', 'canary', 'DEPLOYED');
    expect(canary.devices.map((d: { deviceName: string }) => d.deviceName)).toEqual(['dev-1']);
    expect(await served(dev1)).toEqual({ mlp: '1.0', aux: '1.0' });

    // From now on a client calls Predict on dev-1 for the whole rollout: every call must succeed.
    const connection: AgentConnection = connectAgent(`unix://${dev1.socket}`);
    const predictErrors: string[] = [];
    let predictions = 0;
    let predicting = true;
    const features = Buffer.from(new Float32Array([5.1, 3.5, 1.4, 0.2]).buffer);
    const client = (async () => {
      while (predicting) {
        await connection
          .call('Predict', {
            name: 'mlp',
            handle: 'mlp',
            tensors: [
              {
                tensorMetadata: { name: Buffer.from('features'), dataType: 5, shape: [1, 4] },
                byteData: features,
              },
            ],
          })
          .then(() => predictions++)
          .catch((error: unknown) => predictErrors.push((error as Error).message));
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    })();

    await cli('deployment', 'start-stage', 'first', 'rest');
    const rest = await stageReaches('first', 'rest', 'DEPLOYED');
    expect(rest.devices.map((d: { deviceName: string }) => d.deviceName).sort()).toEqual(['dev-2', 'dev-3']);
    const human = await edgefleet(
      'deployment',
      'devices',
      'first',
      'rest',
      '--server',
      plane.operatorUrl,
      '--token',
      plane.adminToken,
    );
    expect(human.stdout).toMatch(/^dev-2\s+DEPLOYED/m);
    expect(human.stdout).toMatch(/^dev-3\s+DEPLOYED/m);
    expect(await cli('deployment', 'describe', 'first')).toMatchObject({
      stages: [{ status: 'DEPLOYED' }, { status: 'DEPLOYED' }],
    });
    const report = await until(async () => {
      const body = await cli('fleet', 'report', 'line');
      const stat = body.modelStats.find(
        (m: { modelName: string; modelVersion: string }) => m.modelName === 'mlp' && m.modelVersion === '1.0',
      );
      return stat?.connectedDeviceCount === 3 ? body : undefined;
    }, 'the fleet report: three devices run mlp 1.0');
    expect(report.deviceStats).toMatchObject({ connectedDeviceCount: 3, registeredDeviceCount: 3 });

    // Plan 2: version 2 of mlp, to everyone at once.
    await cli(
      'deployment',
      'create',
      'upgrade',
      '--fleet',
      'line',
      '--model',
      'mlp=mlp-2-0',
      '--stage',
      'all:percentage=100',
    );
    await cli('deployment', 'start-stage', 'upgrade', 'all');
    await stageReaches('upgrade', 'all', 'DEPLOYED');
    for (const device of devices) expect(await served(device)).toEqual({ mlp: '2.0', aux: '1.0' });

    predicting = false;
    await client;
    connection.close();
    expect(predictErrors).toEqual([]);
    expect(predictions).toBeGreaterThan(10);

    // Plan 3: aux 2.0 (good) with mlp 3.0 (cannot load). dev-1 under ROLLBACK_ON_FAILURE, dev-2 under DO_NOTHING.
    await cli(
      'deployment',
      'create',
      'mixed',
      '--fleet',
      'line',
      '--model',
      'aux=aux-2-0',
      '--model',
      'mlp=mlp-3-0',
      '--stage',
      'strict:devices=dev-1',
      '--stage',
      'lenient:devices=dev-2:policy=DO_NOTHING',
      '--max-retries',
      '1',
    );
    await cli('deployment', 'start-stage', 'mixed', 'strict');
    const strict = await stageReaches('mixed', 'strict', 'FAILED');
    expect(strict.devices[0].statusMessage ?? strict.devices[0].reason).toMatch(/mlp.*did not load/);
    // One retry (--max-retries 1): the device took the deployment again after its first failure.
    expect(strict.devices[0].attempts).toBe(2);
    expect(await served(dev1)).toEqual({ mlp: '2.0', aux: '1.0' });
    // Every model of the deployment went back: the good one with it, the broken one never switched.
    expect(strict.devices[0].statusMessage).toMatch(
      /aux: rolled back with the deployment \(ROLLBACK_ON_FAILURE\)/,
    );

    // The canary (strict) FAILED: the next stage starts only when forced.
    const operator = (...args: string[]) =>
      edgefleet(...args, '--server', plane.operatorUrl, '--token', plane.adminToken);
    const refusedStart = await operator('deployment', 'start-stage', 'mixed', 'lenient');
    expect(refusedStart.code).toBe(1);
    expect(refusedStart.stderr).toMatch(/stage strict of plan mixed FAILED .*--force/);
    expect((await cli('deployment', 'describe', 'mixed')).stages[1]).toMatchObject({
      status: 'READYTODEPLOY',
    });
    expect((await operator('deployment', 'start-stage', 'mixed', 'lenient', '--force')).code).toBe(0);
    const lenient = await stageReaches('mixed', 'lenient', 'FAILED');
    expect(lenient.devices[0].statusMessage ?? lenient.devices[0].reason).toMatch(/mlp.*did not load/);
    expect(await served(dev2)).toEqual({ mlp: '2.0', aux: '2.0' });
    // The device keeps what DO_NOTHING left it: no earlier plan takes aux back to 1.0 (which anti-rollback
    // would refuse, failing a plan that had succeeded).
    // (Heartbeats and polls are both every second: three more heartbeats are three more polls.)
    const mark = Date.now() + 3000;
    await until(async () => {
      const device = await cli('device', 'describe', 'dev-2');
      return Date.parse(device.latestHeartbeat) >= mark ? true : undefined;
    }, 'three more heartbeats from dev-2');
    expect(await served(dev2)).toEqual({ mlp: '2.0', aux: '2.0' });
    expect((await cli('deployment', 'devices', 'first', 'rest')).devices).toEqual(
      expect.arrayContaining([expect.objectContaining({ deviceName: 'dev-2', status: 'DEPLOYED' })]),
    );
    // dev-3 was in no stage of the plan: untouched.
    expect(await served(dev3)).toEqual({ mlp: '2.0', aux: '1.0' });

    // Version 3.0 never served a request: every device serves mlp 2.0, whose requests all succeeded (dev-1's
    // client called it throughout).
    for (const device of devices) {
      const status = await agentStatus(device);
      expect(status.models.find((m) => m.name === 'mlp')).toMatchObject({
        version: '2.0',
        requests: { failed: 0 },
      });
    }
    const events = await cli('deployment', 'events', 'mixed');
    expect(JSON.stringify(events)).toMatch(/DeviceRolledBack/);

    // A release that fails its health window (after its switch) on dev-1, while a client calls it: rolled
    // back, and FAILED at once although a retry is left — a retry would switch it in again, a second outage.
    await cli(
      'deployment',
      'create',
      'wider',
      '--fleet',
      'line',
      '--model',
      'mlp=mlp-4-0',
      '--stage',
      'canary:devices=dev-1',
      '--max-retries',
      '1',
    );
    await cli('deployment', 'start-stage', 'wider', 'canary');
    // Calls made once the agent says the new version is in its health window, until the agent has counted a
    // failed one against it (what its health check reads): no dependence on a call rate.
    await until(async () => {
      const status = await agentStatus(dev1);
      return status.deployments?.models?.some(
        (m) => m.deployment === 'wider' && m.handle === 'mlp' && m.state === 'HealthCheck',
      )
        ? true
        : undefined;
    }, 'dev-1 serving mlp 4.0 in its health window');
    const windowClient = connectAgent(`unix://${dev1.socket}`);
    await until(async () => {
      const answer = await windowClient
        .call('Predict', {
          name: 'mlp',
          handle: 'mlp',
          tensors: [
            {
              tensorMetadata: { name: Buffer.from('features'), dataType: 5, shape: [1, 4] },
              byteData: features,
            },
          ],
        })
        .then(
          () => 'answered',
          () => 'refused',
        );
      const mlp = (await agentStatus(dev1)).models.find((m) => m.name === 'mlp');
      if (mlp?.version !== '4.0') throw new Error(`dev-1 serves mlp ${mlp?.version}, not 4.0`);
      expect(answer).toBe('refused');
      return (mlp.requests?.failed ?? 0) > 0 ? true : undefined;
    }, 'dev-1 counting a failed request on mlp 4.0');
    windowClient.close();
    const health = await stageReaches('wider', 'canary', 'FAILED');
    expect(health.devices[0]).toMatchObject({ attempts: 1 });
    expect(health.devices[0].statusMessage).toMatch(/failed its health window.*\(not retried: /);
    expect(await served(dev1)).toEqual({ mlp: '2.0', aux: '1.0' });
    const windowEvents = (await cli('deployment', 'events', 'wider')).events.map(
      (e: { kind: string }) => e.kind,
    );
    expect(windowEvents).not.toContain('DeviceRetried');
    expect(windowEvents).toContain('DeviceFailed');

    // An uploaded package (not a packaging job) reaches the device through its own device API route.
    await cli(
      'deployment',
      'create',
      'uploaded',
      '--fleet',
      'line',
      '--package',
      'extra=extra@1.0',
      '--stage',
      'one:devices=dev-3',
    );
    await cli('deployment', 'start-stage', 'uploaded', 'one');
    await stageReaches('uploaded', 'one', 'DEPLOYED');
    expect(await served(dev3)).toEqual({ mlp: '2.0', aux: '1.0', extra: '1.0' });

    // A package replaced on the server (same size, one byte changed): the device refuses it by its SHA-256
    // and keeps its version.
    const job = await cli('packaging', 'describe', 'aux-3-0');
    const blob = await until(async () => {
      for (const file of await readdir(join(plane.dataDir, 'blobs'), { recursive: true })) {
        const path = join(plane.dataDir, 'blobs', String(file));
        const bytes = await readFile(path).catch(() => undefined);
        if (bytes && createHash('sha256').update(bytes).digest('hex') === job.artifact.sha256)
          return { path, bytes };
      }
      return undefined;
    }, 'the package aux-3-0 in the server’s blob folder');
    const tampered = Buffer.from(blob.bytes);
    tampered[tampered.length >> 1]! ^= 0xff;
    await writeFile(blob.path, tampered);
    await cli(
      'deployment',
      'create',
      'tampered',
      '--fleet',
      'line',
      '--model',
      'aux=aux-3-0',
      '--stage',
      'one:devices=dev-3',
      '--max-retries',
      '0',
    );
    await cli('deployment', 'start-stage', 'tampered', 'one');
    const refused = await stageReaches('tampered', 'one', 'FAILED');
    expect(refused.devices[0].statusMessage).toMatch(/aux: .*SHA-256/i);
    expect(await served(dev3)).toEqual({ mlp: '2.0', aux: '1.0', extra: '1.0' });

    // The server goes away just after a stage started: dev-3's polls fail while it is down (it keeps serving),
    // and the rollout completes once it is back.
    await cli(
      'deployment',
      'create',
      'outage',
      '--fleet',
      'line',
      '--model',
      'aux=aux-2-0',
      '--stage',
      'one:devices=dev-3',
    );
    await cli('deployment', 'start-stage', 'outage', 'one');
    const linesBefore = dev3.agent!.lines.length;
    expect(await plane.stop()).toBe(0);
    await dev3.agent!.waitFor(
      (l) => dev3.agent!.lines.indexOf(l) >= linesBefore && l.event === 'deployment-poll-failed',
      'a failed poll while the server is down',
    );
    expect((await served(dev3)).mlp).toBe('2.0');
    await plane.start();
    await stageReaches('outage', 'one', 'DEPLOYED');
    expect(await served(dev3)).toEqual({ mlp: '2.0', aux: '2.0', extra: '1.0' });
  });
});
