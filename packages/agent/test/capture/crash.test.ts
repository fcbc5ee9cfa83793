import { createHash } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import {
  AgentCaptureDataStatus,
  AgentDataType,
  type CaptureDataRequest,
  type MessageInit,
} from '@edgefleet/core';
import { describe, expect, it } from 'vitest';
import { agentDatabasePath, capturePayloadFolder } from '../../src/state/index.js';
import { seeded } from '../support/seeded.js';
import {
  agentClient,
  captureRequest,
  diskRecords,
  readDataRef,
  useAgentProcesses,
  type FoundRecord,
} from './helpers.js';

// The durability promise of the local database, tested on the real agent process (dist/main.js): captures
// acknowledged by CaptureData survive SIGKILL at random moments and are delivered exactly once after restarts.

const agents = useAgentProcesses('edgefleet-capture-crash-');

type Client = ReturnType<typeof agentClient>;

/**
 * `senders` clients send captures back to back until the agent is SIGKILLed after a random delay; the ids of the
 * captures acknowledged before the kill was decided are added to `acknowledged` (later ones are not counted: the
 * client cannot know).
 */
async function captureUntilKilled(options: {
  client: Client;
  agent: { child: { kill(signal: NodeJS.Signals): unknown }; exited: Promise<unknown> };
  request: (id: string) => MessageInit<CaptureDataRequest>;
  nextId: () => string;
  senders: number;
  random: () => number;
  acknowledged: Set<string>;
}): Promise<void> {
  const { client, agent, request, nextId, acknowledged } = options;
  let dead = false;
  const sender = async () => {
    while (!dead) {
      const id = nextId();
      try {
        await client.call('CaptureData', request(id));
        if (!dead) acknowledged.add(id);
      } catch {
        if (!dead) await new Promise((resolve) => setTimeout(resolve, 5));
      }
    }
  };
  const senders = Array.from({ length: options.senders }, sender);
  await new Promise((resolve) => setTimeout(resolve, 150 + options.random() * 1200));
  dead = true;
  agent.child.kill('SIGKILL');
  await agent.exited;
  await Promise.all(senders);
  client.close();
}

/** Acknowledged captures with no record in `records` (missing), and ids with more than one record (twice). */
function deliveryGaps(acknowledged: Set<string>, records: FoundRecord[]) {
  const counts = new Map<string, number>();
  for (const { record } of records) {
    const id = record.eventMetadata.eventId as string;
    counts.set(id, (counts.get(id) ?? 0) + 1);
  }
  return {
    missing: [...acknowledged].filter((id) => !counts.has(id)),
    twice: [...counts].filter(([, n]) => n > 1).map(([id]) => id),
  };
}

/** Every acknowledged capture reaches SUCCESS (none FAILURE) within 30 s after the last restart. */
async function expectAllDelivered(client: Client, acknowledged: Set<string>, seed: number): Promise<void> {
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
}

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
      await captureUntilKilled({
        client,
        agent,
        request: (id) => captureRequest(id) as MessageInit<CaptureDataRequest>,
        nextId: () => `crash-${next++}`,
        senders: 4,
        random,
        acknowledged,
      });
    }

    // Everything acknowledged is reported, and reaches SUCCESS, after the last restart.
    await expectAllDelivered(client, acknowledged, seed);
    client.close();
    agent.child.kill('SIGTERM');
    await agent.exited;

    expect(acknowledged.size, `seed ${seed}`).toBeGreaterThan(20);
    expect(deliveryGaps(acknowledged, await diskRecords(diskPath)), `seed ${seed}`).toEqual({
      missing: [],
      twice: [],
    });
  }, 180_000);

  it('keeps large captures (payload files beside the database) intact across kills, and leaves no file behind', async () => {
    const { tiny } = agents;
    const seed = Number(process.env.CAPTURE_CRASH_SEED ?? Date.now() % 2 ** 31);
    const random = seeded(seed);
    const { socket, diskPath, dataRoot, start } = await agents.databaseAgent({
      sagemaker_edge_core_folder_prefix: 'sme-large',
      sagemaker_edge_core_capture_data_buffer_size: '100',
      sagemaker_edge_core_capture_data_batch_size: '3',
      sagemaker_edge_core_capture_data_push_period_seconds: '1',
    });
    const diskFolder = `${diskPath}/sme-large`;
    // 256 KiB per capture (above the 64 KiB inline limit), bytes derived from the id so a mix-up shows.
    const bytesOf = (id: string) => Buffer.alloc(256 * 1024, createHash('sha256').update(id).digest());
    const request = (id: string) =>
      captureRequest(id, {
        inputTensors: [
          {
            tensorMetadata: { name: Buffer.from('x'), dataType: AgentDataType.FLOAT32, shape: [1, 65536] },
            byteData: bytesOf(id),
            data: 'byteData',
          },
        ],
      }) as MessageInit<CaptureDataRequest>;

    const acknowledged = new Set<string>();
    let next = 0;
    const kills = 3;
    let agent = await start();
    let client = agentClient(`unix://${socket}`);
    // The fixture's data folder is shared with the test above, whose database may have brought the model back.
    if (!(await client.call('ListModels', {})).models.some((m) => m.handle === 'tiny'))
      await client.call('LoadModel', { url: tiny, handle: 'tiny' });
    for (let round = 0; round <= kills; round++) {
      if (round > 0) {
        agent = await start();
        client = agentClient(`unix://${socket}`);
      }
      if (round === kills) break;
      await captureUntilKilled({
        client,
        agent,
        request,
        nextId: () => `large-${next++}`,
        senders: 3,
        random,
        acknowledged,
      });
    }

    await expectAllDelivered(client, acknowledged, seed);
    client.close();
    agent.child.kill('SIGTERM');
    await agent.exited;

    const records = await diskRecords(diskFolder);
    const damaged: string[] = [];
    for (const { record } of records) {
      const id = record.eventMetadata.eventId as string;
      const written = await readDataRef(record.deviceFleetInputs[0]['data-ref'] as string);
      if (!written.equals(bytesOf(id))) damaged.push(id);
    }
    expect(acknowledged.size, `seed ${seed}`).toBeGreaterThan(5);
    expect({ ...deliveryGaps(acknowledged, records), damaged }, `seed ${seed}`).toEqual({
      missing: [],
      twice: [],
      damaged: [],
    });
    // Orphans of each kill were removed at the next start; the files of delivered captures once written.
    expect(await readdir(capturePayloadFolder(agentDatabasePath(dataRoot)))).toEqual([]);
  }, 180_000);
});
