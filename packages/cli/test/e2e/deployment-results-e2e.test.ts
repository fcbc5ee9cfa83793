/**
 * What a device tells about its deployments, end to end with real processes: edgefleet-server and one agent
 * enrolled with `edgefleet device enroll --deployments`, whose heartbeats are a day apart, so that nothing in
 * this file can reach the server by a heartbeat after the first. Two plans for two model handles both reach the
 * server (each final result is sent on its own, at once).
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeTestModel } from '@edgefleet/core';
import { describe, expect, it } from 'vitest';
import { edgefleet, operatorCli } from '../run-cli.js';
import { deviceEnrollArgs, freePort, until, useE2eFleet } from '../../../../test/support/control-plane.js';

const fleet = useE2eFleet('ef-results-e2e-');
const cli = (...args: string[]) => operatorCli(fleet.plane)(...args);

/** Waits until every device of the stage shows `status`; resolves with ListStageDevices' answer. */
async function stageReaches(plan: string, stage: string, status: string) {
  return until(async () => {
    const answer = await cli('deployment', 'devices', plan, stage);
    return answer.devices.length > 0 && answer.devices.every((d: { status: string }) => d.status === status)
      ? answer
      : undefined;
  }, `${plan}/${stage}: every device ${status}`);
}

describe('deployment results of one device (real processes)', { timeout: 300_000 }, () => {
  it('two plans for two handles: both final results reach the server without a heartbeat', async () => {
    const { plane, work } = fleet;
    await cli('fleet', 'create', 'yard', '--output', 's3://captures/yard');
    await cli('device', 'register', 'yard', 'cam-1');
    const mlp = await writeTestModel('mlp', join(work, 'src'));
    for (const name of ['left', 'right']) {
      await cli('model', 'upload', mlp, '--name', name, '--version', '1.0');
      await cli('packaging', 'create', `${name}-1`, '--model', name, '--version', '1.0', '--wait');
    }

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
        // One heartbeat at start, the next a day later: results must come some other way.
        edgefleet_heartbeat_interval_seconds: 86_400,
        edgefleet_inference_workers: 1,
        edgefleet_deployment_health_window_seconds: 1,
      }),
    );
    const agent = fleet.startAgent(join(dir, 'agent.sock'), config, dir);
    await agent.waitFor((l) => l.event === 'listening', 'cam-1 listening');

    for (const name of ['left', 'right']) {
      await cli(
        'deployment',
        'create',
        `${name}-plan`,
        '--fleet',
        'yard',
        '--model',
        `${name}=${name}-1`,
        '--stage',
        'all:percentage=100',
      );
      await cli('deployment', 'start-stage', `${name}-plan`, 'all');
    }
    await stageReaches('left-plan', 'all', 'DEPLOYED');
    await stageReaches('right-plan', 'all', 'DEPLOYED');
    // Each went by the result route, acknowledged by the server, once.
    const sent = agent.lines.filter((l) => l.event === 'deployment-result-sent');
    expect(sent.map((l) => [l.deployment, l.status]).sort()).toEqual([
      ['left-plan', 'SUCCESS'],
      ['right-plan', 'SUCCESS'],
    ]);
    expect(agent.lines.filter((l) => l.event === 'fleet-starting')).toHaveLength(1);
  });
});
