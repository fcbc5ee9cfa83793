/**
 * The path a new user walks, with the commands as the README and docs/cli.md write them, run as a user runs
 * them (`node packages/cli/bin/edgefleet.js …`, a child process, EDGEFLEET_SERVER/EDGEFLEET_TOKEN in the
 * environment): a control plane, a fleet with an output location, a model uploaded and packaged (signed) on
 * the server, two devices enrolled on one host (own config, socket and REST port each) running real agents,
 * a deployment plan (canary, then everyone) that the agents install after verifying the package against the
 * trust folder enrollment wrote, a prediction with capture, and the
 * capture arriving in the fleet's output through the control plane (no cloud credentials on the devices).
 */
import { execFile } from 'node:child_process';
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { writeTestModel } from '@edgefleet/core';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT, freePort, until, useE2eFleet } from '../../../../test/support/control-plane.js';

const run = promisify(execFile);
const EDGEFLEET_BIN = join(REPO_ROOT, 'packages/cli/bin/edgefleet.js');

const fleet = useE2eFleet('ef-walk-');

/** `edgefleet <args>` as a user types it; resolves with its output, rejects with its stderr on failure. */
async function edgefleet(...args: string[]): Promise<string> {
  try {
    const { stdout } = await run(process.execPath, [EDGEFLEET_BIN, ...args], {
      cwd: fleet.work,
      env: {
        ...process.env,
        EDGEFLEET_SERVER: fleet.plane.operatorUrl,
        EDGEFLEET_TOKEN: fleet.plane.adminToken,
      },
      timeout: 60_000,
    });
    return stdout;
  } catch (error) {
    const { stderr, code } = error as { stderr?: string; code?: number };
    throw new Error(`edgefleet ${args.join(' ')} exited ${code}: ${stderr}`);
  }
}

/** Every file under `dir`, relative, or [] when it does not exist. */
async function filesUnder(dir: string): Promise<string[]> {
  return (await readdir(dir, { recursive: true }).catch(() => [])).map(String);
}

describe(
  'the README walkthrough: a control plane and two enrolled agents with capture',
  { timeout: 180_000 },
  () => {
    it('works as the docs say, end to end', async () => {
      const { plane, work } = fleet;
      // Operator (README "A fleet", docs/cli.md).
      await edgefleet('fleet', 'create', 'plant-a', '--output', 's3://captures/plant-a');
      expect(await edgefleet('device', 'register', 'plant-a', 'cam-01', 'cam-02')).toMatch(
        /^Registered 2 devices in fleet plant-a: cam-01, cam-02/,
      );
      const onnx = await writeTestModel('mlp', join(work, 'src'));
      await edgefleet('model', 'upload', onnx, '--name', 'mlp', '--version', '1.0');
      // Uploading it again is a clear conflict, not "cannot reach the server".
      await expect(edgefleet('model', 'upload', onnx, '--name', 'mlp', '--version', '1.0')).rejects.toThrow(
        /exited 1: edgefleet: model mlp version 1\.0 already exists .*\[HTTP 409 Conflict\]/,
      );
      await edgefleet('packaging', 'create', 'mlp-1', '--model', 'mlp', '--version', '1.0', '--wait');

      // Two devices on this host: each its own config, socket and REST port; enrollment writes the rest.
      const devices = await Promise.all(
        ['cam-01', 'cam-02'].map(async (name) => ({
          name,
          dir: join(work, name),
          restPort: await freePort(),
        })),
      );
      for (const device of devices) {
        const token = (await edgefleet('device', 'enrollment-token', device.name)).trim();
        const config = join(device.dir, 'agent.json');
        const enrolled = await edgefleet(
          'device',
          'enroll',
          '--token',
          token,
          '--config',
          config,
          '--rest-port',
          String(device.restPort),
          '--deployments',
          '5',
        );
        expect(enrolled).toMatch(new RegExp(`^Enrolled as device ${device.name} of fleet plant-a`));
        expect(enrolled).toMatch(/captures\s+EdgeFleet/);
        expect(enrolled).not.toMatch(/warning/);
        const agent = fleet.startAgent(join(device.dir, 'agent.sock'), config, device.dir);
        await agent.waitFor((l) => l.event === 'listening', `${device.name} listening`);
        // The config enrollment wrote runs as it is: no warning at start (one on every start teaches
        // operators to ignore the agent's warnings).
        expect(agent.lines.filter((l) => l.level >= 40).map((l) => l.msg)).toEqual([]);
      }

      // The model reaches the devices by a deployment plan: a canary, then everyone. Each device downloads the
      // signed package and verifies it against the trust folder enrollment filled with the server's root.
      await edgefleet(
        'deployment',
        'create',
        'first-rollout',
        '--fleet',
        'plant-a',
        '--model',
        'mlp=mlp-1',
        '--stage',
        'canary:devices=cam-01',
        '--stage',
        'rest:percentage=100',
      );
      for (const stage of ['canary', 'rest']) {
        await edgefleet('deployment', 'start-stage', 'first-rollout', stage);
        // Off a terminal --watch prints one line when the stage finishes (and exits 1 if it FAILED).
        expect(await edgefleet('deployment', 'devices', 'first-rollout', stage, '--watch')).toMatch(
          /: DEPLOYED — 1 deployed, 0 pending, 0 failed\n$/,
        );
      }

      for (const device of devices) {
        const socket = join(device.dir, 'agent.sock');
        const predicted = JSON.parse(
          await edgefleet(
            'agent',
            'predict',
            'mlp',
            '--socket',
            socket,
            '--capture',
            '--json',
            '--input',
            '{"features": [[6.7, 3.0, 5.2, 2.3]]}',
          ),
        );
        expect(predicted.outputs[0]).toMatchObject({ name: 'probabilities', shape: [1, 3] });
        const captureId: string = predicted.capture.captureId;
        expect(
          await edgefleet('agent', 'capture', 'status', captureId, '--wait', '60', '--socket', socket),
        ).toBe(`capture ${captureId}: SUCCESS\n`);

        // The capture is in the fleet's output (a local blob store: fleet-output/<bucket>/<key>), sent by the
        // control plane from the device's upload over mutual TLS.
        const output = join(plane.dataDir, 'blobs', 'fleet-output', 'captures', 'plant-a', 'plant-a', 'mlp');
        const manifests = (await filesUnder(output)).filter((f) => f.endsWith('.jsonl'));
        const records = (await Promise.all(manifests.map((f) => readFile(join(output, f), 'utf8'))))
          .join('')
          .split('\n')
          .filter(Boolean)
          .map((line) => JSON.parse(line));
        expect(records).toContainEqual(
          expect.objectContaining({
            eventMetadata: expect.objectContaining({
              eventId: captureId,
              deviceId: device.name,
              deviceFleetName: 'plant-a',
              modelName: 'mlp',
            }),
          }),
        );

        // KServe REST on the port enrollment set.
        const rest = await fetch(`http://127.0.0.1:${device.restPort}/v2/models/mlp/infer`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({
            inputs: [{ name: 'features', shape: [1, 4], datatype: 'FP32', data: [5.1, 3.5, 1.4, 0.2] }],
          }),
        });
        expect(rest.status).toBe(200);
      }

      // At least once: a capture made while the control plane is down waits in the agent's spool and arrives,
      // once, when it is back.
      const cam1 = devices[0]!;
      const cam1Socket = join(cam1.dir, 'agent.sock');
      expect(await plane.stop()).toBe(0);
      const offline = JSON.parse(
        await edgefleet(
          'agent',
          'predict',
          'mlp',
          '--socket',
          cam1Socket,
          '--capture',
          '--capture-id',
          'while-offline',
          '--json',
          '--input',
          '{"features": [5.9, 3.0, 5.1, 1.8]}',
        ),
      );
      expect(offline.capture).toEqual({ captureId: 'while-offline', status: 'IN_PROGRESS' });
      await plane.start();
      expect(
        await edgefleet(
          'agent',
          'capture',
          'status',
          'while-offline',
          '--wait',
          '90',
          '--socket',
          cam1Socket,
        ),
      ).toBe('capture while-offline: SUCCESS\n');
      const output = join(plane.dataDir, 'blobs', 'fleet-output', 'captures', 'plant-a', 'plant-a', 'mlp');
      const all = (
        await Promise.all(
          (await filesUnder(output))
            .filter((f) => f.endsWith('.jsonl'))
            .map((f) => readFile(join(output, f), 'utf8')),
        )
      ).join('');
      expect(all.split('"eventId":"while-offline"').length - 1).toBe(1);

      // Heartbeats: both devices report the model; metrics name counts as counts.
      const report = await until(async () => {
        const body = JSON.parse(await edgefleet('fleet', 'report', 'plant-a', '--json'));
        return body.modelStats[0]?.connectedDeviceCount === 2 ? body : undefined;
      }, 'both devices reporting mlp 1.0');
      expect(report).toMatchObject({ deviceStats: { connectedDeviceCount: 2, registeredDeviceCount: 2 } });
      const metrics = await until(async () => {
        const text = await edgefleet('device', 'metrics', 'cam-01', '--step', '3600');
        return /^InferenceCount +mlp 1\.0 +3 +sum over the window/m.test(text) ? text : undefined;
      }, 'cam-01 counting its 3 inferences');
      expect(metrics).toMatch(/^Gauges/m);
    });
  },
);
