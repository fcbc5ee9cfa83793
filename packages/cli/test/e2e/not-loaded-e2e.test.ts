/**
 * A deployed model an application unloads, end to end with real processes: edgefleet-server and one agent
 * enrolled with `edgefleet device enroll --deployments`, heartbeating every second. After `edgefleet agent
 * unload` (an application's UnLoadModel) the server knows the device is deployed but not serving
 * (`device describe`, `device list`, the device's API answer); loaded again, the next heartbeat clears it.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeTestModel } from '@edgefleet/core';
import { describe, expect, it } from 'vitest';
import { edgefleet, operatorCli } from '../run-cli.js';
import { deviceEnrollArgs, freePort, until, useE2eFleet } from '../../../../test/support/control-plane.js';

const fleet = useE2eFleet('ef-not-loaded-e2e-');
const cli = (...args: string[]) => operatorCli(fleet.plane)(...args);

describe('a deployed model unloaded on the device (real processes)', { timeout: 300_000 }, () => {
  it('the server shows it deployed but not loaded, and why, until it is loaded again', async () => {
    const { plane, work } = fleet;
    await cli('fleet', 'create', 'dock', '--output', 's3://captures/dock');
    await cli('device', 'register', 'dock', 'cam-1');
    const mlp = await writeTestModel('mlp', join(work, 'src'));
    await cli('model', 'upload', mlp, '--name', 'detector', '--version', '1.0');
    await cli('packaging', 'create', 'detector-1', '--model', 'detector', '--version', '1.0', '--wait');

    const dir = join(work, 'cam-1');
    const config = join(dir, 'agent.json');
    const restPort = await freePort();
    const { token } = await cli('device', 'enrollment-token', 'cam-1');
    const enrolled = await edgefleet(
      ...deviceEnrollArgs(plane, token, config, '--rest-port', String(restPort), '--deployments', '1'),
    );
    expect(enrolled.stderr).toBe('');
    const written = JSON.parse(await readFile(config, 'utf8'));
    await writeFile(
      config,
      JSON.stringify({
        ...written,
        edgefleet_heartbeat_interval_seconds: 1,
        edgefleet_inference_workers: 1,
        edgefleet_deployment_health_window_seconds: 1,
      }),
    );
    const socket = join(dir, 'agent.sock');
    const agent = fleet.startAgent(socket, config, dir);
    await agent.waitFor((l) => l.event === 'listening', 'cam-1 listening');

    await cli(
      'deployment',
      'create',
      'dock-rollout',
      '--fleet',
      'dock',
      '--model',
      'detector=detector-1',
      '--stage',
      'all:percentage=100',
    );
    await cli('deployment', 'start-stage', 'dock-rollout', 'all');
    await until(async () => {
      const answer = await cli('deployment', 'devices', 'dock-rollout', 'all');
      return answer.devices[0]?.status === 'DEPLOYED' ? true : undefined;
    }, 'cam-1 DEPLOYED');
    // Serving, and reported so: the list is there, empty.
    const serving = await until(async () => {
      const device = await cli('device', 'describe', 'cam-1');
      return device.models.some((m: { name: string }) => m.name === 'detector') &&
        device.deployedModelsNotLoaded !== undefined
        ? device
        : undefined;
    }, 'cam-1 reporting detector loaded');
    expect(serving.deployedModelsNotLoaded).toEqual([]);
    // Its package folder, from the agent's status on its REST socket (as its own user: paths shown).
    const status = await edgefleet(
      'agent',
      'status',
      '--rest-socket',
      join(dir, 'agent.rest.sock'),
      '--json',
    );
    expect(status.stderr).toBe('');
    const packageDir = (
      JSON.parse(status.stdout) as { models: Array<{ name: string; path?: string }> }
    ).models.find((m) => m.name === 'detector')?.path;
    expect(packageDir).toBeDefined();

    // An application unloads it (as Edge Manager apps do): the agent obeys, and its heartbeats say so.
    const unloaded = await edgefleet('agent', 'unload', 'detector', '--socket', socket);
    expect(unloaded).toMatchObject({ code: 0, stderr: '' });
    const notServing = await until(async () => {
      const device = await cli('device', 'describe', 'cam-1');
      return device.deployedModelsNotLoaded?.length === 1 ? device : undefined;
    }, 'the server knowing detector is not loaded');
    expect(notServing.deployedModelsNotLoaded).toEqual([
      {
        modelHandle: 'detector',
        deploymentName: 'dock-rollout',
        modelName: 'detector',
        modelVersion: '1.0',
        unloadedByApplication: true,
        since: expect.stringMatching(/^\d{4}-\d\d-\d\dT/),
        reason: expect.stringMatching(/^unloaded by an application \(UnLoadModel or the REST unload\) at /),
      },
    ]);
    expect(notServing.deployedModelsNotLoadedCount).toBe(1);
    expect(notServing.models).toEqual([]);
    const described = await edgefleet(
      'device',
      'describe',
      'cam-1',
      '--server',
      plane.operatorUrl,
      '--token',
      plane.adminToken,
    );
    expect(described.stdout).toContain('deployed but NOT LOADED (1):');
    expect(described.stdout).toMatch(
      /^ {2}detector 1\.0 \(deployment dock-rollout\) is not loaded: unloaded by an application at \S+ \(.+ ago\); it stays unloaded until it is loaded or deployed again$/m,
    );
    const listed = await edgefleet(
      'device',
      'list',
      '--server',
      plane.operatorUrl,
      '--token',
      plane.adminToken,
    );
    expect(listed.stdout).toMatch(/^cam-1\s.*\s- \(1 NOT LOADED\)$/m);

    // Loaded again under its handle: the next heartbeat's list is empty, and the server shows nothing amiss.
    const loaded = await edgefleet('agent', 'load', 'detector', packageDir!, '--socket', socket);
    expect(loaded).toMatchObject({ code: 0, stderr: '' });
    await until(async () => {
      const device = await cli('device', 'describe', 'cam-1');
      return device.deployedModelsNotLoaded?.length === 0 ? true : undefined;
    }, 'the server knowing detector serves again');
    const again = await edgefleet(
      'device',
      'describe',
      'cam-1',
      '--server',
      plane.operatorUrl,
      '--token',
      plane.adminToken,
    );
    expect(again.stdout).not.toContain('NOT LOADED');
  });
});
