/**
 * End to end, with real processes: edgefleet-server, the real agent enrolled with `edgefleet device enroll`,
 * and the CLI. Heartbeats reach the device's description and the fleet report; a restarted server keeps its
 * state; the agent outlives a server outage and resumes; a killed agent's restart counts as a crash.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createModelPackage, writeTestModel } from '@edgefleet/core';
import { describe, expect, it } from 'vitest';
import { edgefleet, operatorCli } from '../run-cli.js';
import {
  deviceEnrollArgs,
  freePort,
  until,
  useE2eFleet,
  type AgentProcess,
} from '../../../../test/support/control-plane.js';

const fleet = useE2eFleet('ef-e2e-');

const cli = (...args: string[]) => operatorCli(fleet.plane)(...args);

/** The next log line with this event, after the first `after` lines. */
const nextEvent = (agent: AgentProcess, event: string, after: number) =>
  until(() => agent.lines.slice(after).find((l) => l.event === event), `agent event ${event}`);

/** The latest value of an agent metric the server holds for the device. */
async function latestMetric(device: string, metric: string): Promise<number | undefined> {
  const since = new Date(Date.now() - 600_000).toISOString();
  const body = await cli('device', 'metrics', device, '--metric', metric, '--step', '1', '--since', since);
  return body.series[0]?.points.at(-1)?.max;
}

async function maxMetricSince(device: string, metric: string, since: number): Promise<number> {
  const from = new Date(since - 1000).toISOString();
  const body = await cli('device', 'metrics', device, '--metric', metric, '--step', '1', '--since', from);
  return Math.max(...(body.series[0]?.points ?? []).map((p: { max: number }) => p.max));
}

async function infer(port: number): Promise<void> {
  const response = await fetch(`http://127.0.0.1:${port}/v2/models/mlp/infer`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      inputs: [{ name: 'features', shape: [1, 4], datatype: 'FP32', data: [5.1, 3.5, 1.4, 0.2] }],
    }),
  });
  expect(response.status).toBe(200);
}

describe('server + enrolled agent + CLI (real processes)', { timeout: 120_000 }, () => {
  it('heartbeats show in describe and the report, survive server restarts and outages, and count crashes', async () => {
    const { plane, work } = fleet;
    // Operator: a fleet, a device, an enrollment token.
    await cli('fleet', 'create', 'shop', '--output', 's3://captures/shop');
    await cli('device', 'register', 'shop', 'till-1');
    const { token } = await cli('device', 'enrollment-token', 'till-1');

    // Device: a model package, enrollment into the agent config, the agent.
    const pkg = await createModelPackage({
      modelPath: await writeTestModel('mlp', join(work, 'model')),
      name: 'mlp',
      version: '1.0',
      outDir: join(work, 'mlp-1.0'),
    });
    const configFile = join(work, 'agent.json');
    const restPort = await freePort();
    await writeFile(
      configFile,
      JSON.stringify({
        edgefleet_heartbeat_interval_seconds: 1,
        sagemaker_edge_log_verbose: true, // retries are logged at debug level
        edgefleet_inference_workers: 1,
        edgefleet_rest_socket_path: false,
        edgefleet_rest_tcp: `127.0.0.1:${restPort}`,
        edgefleet_preload_models: [{ url: pkg.dir, name: 'mlp' }],
        // Enrollment makes the server's signing root the trust folder; this package is unsigned (the
        // walkthrough test loads a server-signed one).
        edgefleet_require_signatures: false,
        sagemaker_edge_local_data_root_path: join(work, 'data'),
      }),
    );
    const enrolled = await edgefleet(...deviceEnrollArgs(plane, token, configFile));
    expect(enrolled.code).toBe(0);
    expect(JSON.parse(await readFile(configFile, 'utf8'))).toMatchObject({
      edgefleet_preload_models: [{ name: 'mlp' }],
      sagemaker_edge_core_endpoint_override: plane.deviceEndpoint,
    });

    const socket = join(work, 'agent.sock');
    let agent = fleet.startAgent(socket, configFile, work);
    await agent.waitFor((l) => l.event === 'fleet-registered', 'registration');
    await infer(restPort);
    await infer(restPort);

    const described = await until(async () => {
      const device = await cli('device', 'describe', 'till-1');
      return device.models[0]?.latestInference ? device : undefined;
    }, 'a heartbeat with the model’s latest inference');
    expect(described).toMatchObject({
      status: 'online',
      agentVersion: '0.1.0',
      identity: { status: 'ENROLLED' },
      models: [{ name: 'mlp', version: '1.0' }],
    });
    const human = await edgefleet(
      'device',
      'describe',
      'till-1',
      '--server',
      plane.operatorUrl,
      '--token',
      plane.adminToken,
    );
    expect(human.stdout).toMatch(/status\s+online/);
    expect(human.stdout).toMatch(/^mlp\s+1\.0\s+\d{4}-/m);
    expect(await cli('fleet', 'report', 'shop')).toMatchObject({
      deviceStats: { connectedDeviceCount: 1, registeredDeviceCount: 1 },
      agentVersions: [{ version: '0.1.0', agentCount: 1 }],
      modelStats: [{ modelName: 'mlp', modelVersion: '1.0', connectedDeviceCount: 1, activeDeviceCount: 1 }],
    });
    expect(await latestMetric('till-1', 'AgentStarts')).toBe(1);

    // A restarted server has kept everything.
    expect(await plane.stop()).toBe(0);
    await plane.start();
    const afterRestart = await cli('device', 'describe', 'till-1');
    expect(afterRestart).toMatchObject({
      fleetName: 'shop',
      agentVersion: '0.1.0',
      identity: { status: 'ENROLLED', certificate: described.identity.certificate },
      models: [{ name: 'mlp', version: '1.0', latestInference: expect.any(String) }],
    });
    expect(Date.parse(afterRestart.latestHeartbeat)).toBeGreaterThanOrEqual(
      Date.parse(described.latestHeartbeat),
    );
    const restartedAt = Date.now();
    await until(async () => {
      const device = await cli('device', 'describe', 'till-1');
      return Date.parse(device.latestHeartbeat) >= restartedAt ? device : undefined;
    }, 'a heartbeat to the restarted server');

    // An outage: the agent keeps running (and serving), warns once, and resumes when the server is back.
    let mark = agent.lines.length;
    expect(await plane.stop()).toBe(0);
    await nextEvent(agent, 'fleet-heartbeat-failed', mark);
    await infer(restPort);
    const failures = () =>
      agent.lines
        .slice(mark)
        .filter((l) => l.event === 'fleet-heartbeat-failed' || l.event === 'fleet-registration-failed');
    await until(() => (failures().length >= 3 ? true : undefined), 'three failed attempts');
    expect(failures().filter((l) => l.level === 40)).toHaveLength(1); // one warning, retries at debug level
    expect(agent.child.exitCode).toBeNull();
    mark = agent.lines.length;
    const backAt = Date.now();
    await plane.start();
    await nextEvent(agent, 'fleet-resumed', mark);
    const resumed = await until(async () => {
      const device = await cli('device', 'describe', 'till-1');
      return Date.parse(device.latestHeartbeat) >= backAt ? device : undefined;
    }, 'a heartbeat after the outage');
    expect(resumed.status).toBe('online');
    // The first heartbeat after the outage says how many attempts failed during it.
    expect(await maxMetricSince('till-1', 'HeartbeatsMissed', backAt)).toBeGreaterThanOrEqual(3);
    // The data root's free space rides along, so that a disk filling shows before the agent refuses work.
    expect(await maxMetricSince('till-1', 'DataRootFreeBytes', backAt)).toBeGreaterThan(0);

    // Killed without a chance to stop: the next start reports one crash.
    agent.child.kill('SIGKILL');
    await agent.exited;
    agent = fleet.startAgent(socket, configFile, work, ['-f']); // -f: the killed agent left its socket file
    await agent.waitFor((l) => l.event === 'fleet-registered', 'registration after the restart');
    expect(
      await until(
        async () => ((await latestMetric('till-1', 'AgentCrashes')) === 1 ? 1 : undefined),
        'AgentCrashes 1',
      ),
    ).toBe(1);
    expect(await latestMetric('till-1', 'AgentStarts')).toBe(2);

    agent.child.kill('SIGTERM');
    expect((await agent.exited).code).toBe(0);
    expect(JSON.parse(await readFile(join(work, 'data', 'fleet', 'agent-runs.json'), 'utf8'))).toEqual({
      starts: 2,
      crashes: 1,
      running: false,
    });
  });
});
