import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const repo = join(import.meta.dirname, '..', '..', '..');
let work: string | undefined;
afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

/** Runs scripts/start.mjs until it has announced everything; returns its output and a Ctrl-C. */
async function start(home: string) {
  const child = spawn(process.execPath, [join(repo, 'scripts', 'start.mjs')], {
    // Port 0: any free port, for the operator API, the device API and the agent's REST.
    env: {
      ...process.env,
      EDGEFLEET_HOME: home,
      EDGEFLEET_REST_PORT: '0',
      EDGEFLEET_SERVER_PORT: '0',
      EDGEFLEET_DEVICE_PORT: '0',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (out += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  await new Promise<void>((resolve, reject) => {
    const poll = setInterval(() => {
      if (out.includes('Ctrl-C stops the agent and the control plane')) {
        clearInterval(poll);
        resolve();
      }
    }, 100);
    void exited.then((code) => {
      clearInterval(poll);
      reject(new Error(`npm start exited early (${code}):\n${out}`));
    });
  });
  return {
    out,
    stop: async () => {
      child.kill('SIGINT');
      return exited;
    },
  };
}

describe('npm start (scripts/start.mjs)', () => {
  it('runs the control plane, deploys the server-signed demo model to an enrolled agent through a plan; a second run reuses the state', async () => {
    work = await mkdtemp(join(tmpdir(), 'ef-start-'));
    const first = await start(work);
    expect(first.out).toContain('verified it as a device would: OK');
    expect(first.out).toContain('Enrolled the agent as demo-device of demo-fleet');
    expect(first.out).toContain('Packaged and signed demo-classifier 1.0 on the server');
    // Deployed through a plan: the agent's update engine went through its states and committed.
    expect(first.out).toContain('Created the deployment plan demo-rollout');
    expect(first.out).toContain('Started stage demo');
    expect(first.out).toMatch(/agent: Committed 1\.0; server: demo-device DEPLOYED/);
    expect(first.out).toContain(
      "Deployed: the agent serves demo-classifier 1.0, signature verified against the server's signing root",
    );
    expect(first.out).toContain('The device is online in the control plane');
    // The first inference printed real probabilities: three numbers summing to 1, the first (setosa) largest.
    const probabilities = JSON.parse(/probabilities (\[[^\]]+\])/.exec(first.out)![1]!) as number[];
    expect(probabilities).toHaveLength(3);
    expect(probabilities.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 5);
    expect(probabilities[0]).toBeGreaterThan(0.9);
    const token = /admin API token: (efo_\S+)/.exec(first.out)![1];
    // The console answers on the operator port.
    const consoleUrl = /Console: +(http:\/\/\S+\/)/.exec(first.out)![1]!;
    const page = await fetch(consoleUrl);
    expect(page.status).toBe(200);
    expect(await page.text()).toContain('EdgeFleet console');
    const plan = (await fetch(`${consoleUrl}api/v1/deployment-plans/demo-rollout`, {
      headers: { authorization: `Bearer ${token}` },
    }).then((r) => r.json())) as { successCount: number; failedCount: number };
    expect(plan).toMatchObject({ successCount: 1, failedCount: 0 });
    expect(await first.stop()).toBe(0);

    const second = await start(work);
    try {
      expect(second.out).toContain(
        'The agent is enrolled as demo-device of demo-fleet (kept from the last run)',
      );
      expect(second.out).toContain(`admin API token: ${token}`);
      // The plan exists (no 409), and the agent serves the deployed model again from its own state.
      expect(second.out).toContain('The deployment plan demo-rollout exists (kept from the last run)');
      expect(second.out).not.toContain('Started stage demo');
      expect(second.out).toContain('Deployed: the agent serves demo-classifier 1.0');
      expect(second.out).toMatch(/probabilities \[0\.9/);
      expect(second.out).toContain('The device is online in the control plane');
    } finally {
      expect(await second.stop()).toBe(0);
    }
  }, 180_000);
});
