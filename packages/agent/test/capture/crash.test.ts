import { AgentCaptureDataStatus, type CaptureDataRequest, type MessageInit } from '@edgefleet/core';
import { describe, expect, it } from 'vitest';
import { seeded } from '../support/seeded.js';
import { agentClient, captureRequest, diskRecords, useAgentProcesses } from './helpers.js';

// The durability promise of the local database, tested on the real agent process (dist/main.js): captures
// acknowledged by CaptureData survive SIGKILL at random moments and are delivered exactly once after restarts.

const agents = useAgentProcesses('edgefleet-capture-crash-');

describe('crash safety with the local database (real agent process, SIGKILL)', () => {
  it('delivers every acknowledged capture exactly once across kills at random moments and restarts', async () => {
    const { tiny } = agents;
    const seed = Number(process.env.CAPTURE_CRASH_SEED ?? Date.now() % 2 ** 31);
    const random = seeded(seed);
    const { socket, diskPath, start } = await agents.databaseAgent({
      sagemaker_edge_core_folder_prefix: 'sme-capture',
      sagemaker_edge_core_capture_data_buffer_size: '200',
      sagemaker_edge_core_capture_data_batch_size: '7',
      sagemaker_edge_core_capture_data_push_period_seconds: '1',
    });

    const acknowledged = new Set<string>();
    let next = 0;
    const kills = 4;
    let agent = await start();
    let client = agentClient(`unix://${socket}`);
    await client.call('LoadModel', { url: tiny, handle: 'tiny' });

    for (let round = 0; round <= kills; round++) {
      if (round > 0) {
        agent = await start();
        client = agentClient(`unix://${socket}`);
        // The database brought the model back.
        expect((await client.call('ListModels', {})).models.map((m) => m.handle)).toEqual(['tiny']);
      }
      if (round === kills) break;
      // Four clients send captures back to back; the agent is killed after a random delay.
      let dead = false;
      const sender = async () => {
        while (!dead) {
          const id = `crash-${next++}`;
          try {
            await client.call('CaptureData', captureRequest(id) as MessageInit<CaptureDataRequest>);
            if (!dead) acknowledged.add(id);
          } catch {
            if (!dead) await new Promise((resolve) => setTimeout(resolve, 5));
          }
        }
      };
      const senders = Array.from({ length: 4 }, sender);
      await new Promise((resolve) => setTimeout(resolve, 150 + random() * 1200));
      // Acknowledgements that arrive after the kill was decided are not counted: the client cannot know.
      dead = true;
      agent.child.kill('SIGKILL');
      await agent.exited;
      await Promise.all(senders);
      client.close();
    }

    // Everything acknowledged is reported, and reaches SUCCESS, after the last restart.
    const until = Date.now() + 30_000;
    const pending = new Set(acknowledged);
    while (pending.size > 0 && Date.now() < until) {
      for (const id of [...pending]) {
        const { status } = await client.call('GetCaptureDataStatus', { captureId: id });
        expect([id, status]).not.toEqual([id, AgentCaptureDataStatus.FAILURE]);
        if (status === AgentCaptureDataStatus.SUCCESS) pending.delete(id);
      }
      if (pending.size > 0) await new Promise((resolve) => setTimeout(resolve, 100));
    }
    expect([...pending], `seed ${seed}: acknowledged but never delivered`).toEqual([]);
    client.close();
    agent.child.kill('SIGTERM');
    await agent.exited;

    const counts = new Map<string, number>();
    for (const { record } of await diskRecords(diskPath)) {
      const id = record.eventMetadata.eventId as string;
      counts.set(id, (counts.get(id) ?? 0) + 1);
    }
    expect(acknowledged.size, `seed ${seed}`).toBeGreaterThan(20);
    const missing = [...acknowledged].filter((id) => !counts.has(id));
    const twice = [...counts].filter(([, n]) => n > 1).map(([id]) => id);
    expect({ missing, twice }, `seed ${seed}`).toEqual({ missing: [], twice: [] });
  }, 180_000);
});
