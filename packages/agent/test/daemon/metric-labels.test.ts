import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { HttpClient, targetOf } from '../rest/helpers.js';
import { listening, spawnAgent, useAgentScratch } from './process-helpers.js';

// Audit s8 finding 4: every failed load of a made-up name became a permanent Prometheus series, so a loop of
// loads grew the agent's memory and /metrics without bound. Now only loaded models and the most recent
// `edgefleet_metrics_unloaded_models` others have series.

const KEPT = 5;

const agents = useAgentScratch('agent-metric-labels-', ['tiny']);
const { running, clients } = agents;

/** The distinct `model` label values in an exposition. */
function modelLabels(text: string): Set<string> {
  return new Set([...text.matchAll(/\{(?:[^}]*,)?model="([^"]*)"/g)].map((m) => m[1]!));
}

describe('per-model metric series', () => {
  it('many failed loads of distinct names, and load/unload cycles under new names, leave /metrics bounded', async () => {
    const config = join(agents.files.root, 'agent.json');
    await writeFile(
      config,
      JSON.stringify({ edgefleet_inference_workers: 1, edgefleet_metrics_unloaded_models: KEPT }),
    );
    const agent = spawnAgent(['-a', join(agents.files.root, 'a.sock'), '-c', config], agents.files.root);
    running.push(agent);
    const ready = await agent.waitFor(listening, 'that it listens');
    const client = new HttpClient(targetOf((ready.rest as string[])[0]!));
    clients.push(client);
    const load = (name: string, url: string) =>
      client.postJson(`/v2/repository/models/${name}/load`, { parameters: { url } });
    const scrape = async () => (await client.get('/metrics')).text();

    expect((await load('kept', agents.packageOf('tiny'))).status).toBe(200);
    const infer = await client.postJson('/v2/models/kept/infer', {
      inputs: [{ name: 'x', shape: [1, 16], datatype: 'FP32', data: Array.from({ length: 16 }, () => 1) }],
    });
    expect(infer.status).toBe(200);

    const longName = (i: number) => `flood-${i}-${'x'.repeat(180)}`;
    for (let i = 0; i < 20; i++) {
      expect((await load(longName(i), join(agents.files.root, 'no-such-package'))).status).toBe(404);
    }
    const after20 = await scrape();
    for (let i = 20; i < 400; i++) {
      expect((await load(longName(i), join(agents.files.root, 'no-such-package'))).status).toBe(404);
    }
    const after400 = await scrape();
    // The loaded model and the KEPT most recent failures; the page did not grow with the flood.
    const labels = modelLabels(after400);
    expect(labels).toEqual(new Set(['kept', ...Array.from({ length: KEPT }, (_, i) => longName(395 + i))]));
    // Counted in lines, not bytes: counters and histograms of the load route grow a digit or two as they count.
    const lines = (page: string) => page.split('\n').length;
    expect(lines(after400)).toBeLessThanOrEqual(lines(after20) + 32);
    expect(after400).toContain('edgefleet_inference_request_success_total{model="kept"} 1');

    // Models loaded and unloaded under new names: the most recent KEPT keep their series, the loaded one stays.
    for (let i = 0; i < 12; i++) {
      expect((await load(`cycle${i}`, agents.packageOf('tiny'))).status).toBe(200);
      expect((await client.postJson(`/v2/repository/models/cycle${i}/unload`, {})).status).toBe(200);
    }
    const cycled = modelLabels(await scrape());
    expect(cycled).toEqual(new Set(['kept', ...Array.from({ length: KEPT }, (_, i) => `cycle${7 + i}`)]));
  }, 120_000);
});
