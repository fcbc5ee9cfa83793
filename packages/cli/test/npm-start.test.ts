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

describe('npm start (scripts/start.mjs)', () => {
  it('packages the demo model, starts the agent serving it, answers an inference, and stops cleanly on SIGINT', async () => {
    work = await mkdtemp(join(tmpdir(), 'ef-start-'));
    const child = spawn(process.execPath, [join(repo, 'scripts', 'start.mjs')], {
      env: { ...process.env, EDGEFLEET_DEMO_DIR: work, EDGEFLEET_REST_PORT: '0' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (out += chunk.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    await new Promise<void>((resolve, reject) => {
      const poll = setInterval(() => {
        if (out.includes('Ctrl-C stops the agent.')) {
          clearInterval(poll);
          resolve();
        }
      }, 100);
      void exited.then((code) => {
        clearInterval(poll);
        reject(new Error(`npm start exited early (${code}):\n${out}`));
      });
    });
    expect(out).toContain('verified it as a device would: OK');
    expect(out).toContain('Serving demo-classifier, signature verified');
    // The first inference printed real probabilities: three numbers summing to 1, the first (setosa) largest.
    const probabilities = JSON.parse(/probabilities (\[[^\]]+\])/.exec(out)![1]!) as number[];
    expect(probabilities).toHaveLength(3);
    expect(probabilities.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 5);
    expect(probabilities[0]).toBeGreaterThan(0.9);
    child.kill('SIGINT');
    expect(await exited).toBe(0);
  }, 120_000);
});
