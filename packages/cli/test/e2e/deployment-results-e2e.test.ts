/**
 * What a device tells about its deployments, end to end with real processes: edgefleet-server and one agent
 * enrolled with `edgefleet device enroll --deployments`, whose heartbeats are a day apart, so that nothing in
 * this file can reach the server by a heartbeat after the first. Two plans for two model handles both reach the
 * server (each final result is sent on its own, at once); a release that fails stays in the device's own status
 * after the server gave up on it, beside the commit the handle went back to, which keeps its own times.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { OnnxModelBuilder, writeTestModel } from '@edgefleet/core';
import { describe, expect, it } from 'vitest';
import { edgefleet, operatorCli } from '../run-cli.js';
import { deviceEnrollArgs, freePort, until, useE2eFleet } from '../../../../test/support/control-plane.js';

const fleet = useE2eFleet('ef-results-e2e-');
const cli = (...args: string[]) => operatorCli(fleet.plane)(...args);
/** The agent's folder (its sockets are agent.sock and agent.rest.sock there); set by the first test. */
let deviceDir: string;

interface UpdateStatus {
  handle: string;
  deployment: string;
  state: string;
  version: string | null;
  reason: string | null;
  startedAt: string;
  updatedAt: string;
  endedAt: string | null;
  lastFailure: {
    deployment: string;
    state: string;
    version: string | null;
    reason: string | null;
    endedAt: string;
  } | null;
}

/** `edgefleet agent status --json` on the agent's REST socket (as its own user: reasons shown). */
async function agentStatus(): Promise<UpdateStatus[]> {
  const run = await edgefleet(
    'agent',
    'status',
    '--rest-socket',
    join(deviceDir, 'agent.rest.sock'),
    '--json',
  );
  expect(run.stderr).toBe('');
  return JSON.parse(run.stdout).deployments.models as UpdateStatus[];
}

/** A model that cannot load (an operator ONNX Runtime does not have): a release that fails before its switch. */
function unloadableModel(): Uint8Array {
  return new OnnxModelBuilder({ graphName: 'unloadable' })
    .input('features', 'FLOAT32', ['batch', 4])
    .node('NoSuchOperator', ['features'], ['probabilities'])
    .output('probabilities', 'FLOAT32', ['batch', 3])
    .build();
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
    deviceDir = dir;
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
    // Each went by the result route, acknowledged by the server, once. (The agent logs the acknowledgment after the
    // server has committed it: its line may come a moment after the stage shows DEPLOYED.)
    const sent = await until(() => {
      const lines = agent.lines.filter((l) => l.event === 'deployment-result-sent');
      return lines.length >= 2 ? lines : undefined;
    }, 'both deployment-result-sent lines');
    expect(sent.map((l) => [l.deployment, l.status]).sort()).toEqual([
      ['left-plan', 'SUCCESS'],
      ['right-plan', 'SUCCESS'],
    ]);
    expect(agent.lines.filter((l) => l.event === 'fleet-starting')).toHaveLength(1);
  });

  it('a release that failed stays in the agent status beside the commit it went back to', async () => {
    const { work } = fleet;
    const before = (await agentStatus()).find((d) => d.handle === 'left')!;
    expect(before).toMatchObject({ deployment: 'left-plan', state: 'Committed' });
    expect(before.lastFailure ?? null).toBeNull();

    const broken = join(work, 'src', 'broken.onnx');
    await writeFile(broken, unloadableModel());
    await cli('model', 'upload', broken, '--name', 'left', '--version', '2.0');
    await cli('packaging', 'create', 'left-2', '--model', 'left', '--version', '2.0', '--wait');
    await cli(
      'deployment',
      'create',
      'left-broken',
      '--fleet',
      'yard',
      '--model',
      'left=left-2',
      '--stage',
      'all:percentage=100',
      '--max-retries',
      '0',
    );
    await cli('deployment', 'start-stage', 'left-broken', 'all');
    await stageReaches('left-broken', 'all', 'FAILED');
    // The server gave up: it offers left-plan again, which the device already runs.
    const after = await until(async () => {
      const left = (await agentStatus()).find((d) => d.handle === 'left');
      return left?.deployment === 'left-plan' ? left : undefined;
    }, 'the agent back on left-plan');
    expect(after).toMatchObject({
      state: 'Committed',
      version: '1.0',
      // Its own times, not those of the moment it was offered again.
      startedAt: before.startedAt,
      updatedAt: before.updatedAt,
      endedAt: before.endedAt,
      lastFailure: {
        deployment: 'left-broken',
        state: 'Failed',
        version: '2.0',
        reason: expect.stringMatching(/version 2\.0 of left did not load/),
      },
    });
    expect(Date.parse(after.lastFailure!.endedAt)).toBeGreaterThan(Date.parse(before.endedAt!));
    // The other handle is untouched.
    expect((await agentStatus()).find((d) => d.handle === 'right')).toMatchObject({
      deployment: 'right-plan',
      state: 'Committed',
      lastFailure: null,
    });

    // The table shows both lines for the handle.
    const table = await edgefleet('agent', 'status', '--rest-socket', join(deviceDir, 'agent.rest.sock'));
    expect(table.stdout).toMatch(/^left\s+left-plan\s+Committed\s+1\.0\s/m);
    expect(table.stdout).toMatch(
      /^left\s+left-broken\s+Failed \(last failure\)\s+2\.0\s+-\s+\S+\s+version 2\.0 of left did not load/m,
    );
  });
});
