import { existsSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import SqliteDatabase from 'better-sqlite3';
import { AgentCaptureDataStatus, type CaptureDataRequest, type MessageInit } from '@edgefleet/core';
import { describe, expect, it } from 'vitest';
import { agentClient, captureRequest, diskRecords, useAgentProcesses } from './helpers.js';

// A damaged agent.db used to stop the agent for good ("database disk image is malformed", exit 1, the file not
// named): a crash loop under systemd. Tested on the real agent process with a really damaged file.

const agents = useAgentProcesses('edgefleet-damaged-db-');

/** Overwrites the root page of `table` with garbage, after folding the WAL into the file. */
async function damageTable(path: string, table: string): Promise<void> {
  const raw = new SqliteDatabase(path);
  raw.pragma('wal_checkpoint(TRUNCATE)');
  const pageSize = raw.pragma('page_size', { simple: true }) as number;
  const { rootpage } = raw.prepare('SELECT rootpage FROM sqlite_master WHERE name = ?').get(table) as {
    rootpage: number;
  };
  raw.close();
  const file = await open(path, 'r+');
  await file.write(Buffer.alloc(pageSize, 0xa5), 0, pageSize, (rootpage - 1) * pageSize);
  await file.close();
}

describe('a damaged agent.db (real agent process)', () => {
  it('starts anyway, keeps the damaged copy, names it loudly, and still delivers the queued captures', async () => {
    const { tiny } = agents;
    const { socket, diskPath, dataRoot, start } = await agents.databaseAgent({
      sagemaker_edge_core_capture_data_buffer_size: '200',
      sagemaker_edge_core_capture_data_batch_size: '100',
      // Nothing is written before the kill: the captures stay queued in the database.
      sagemaker_edge_core_capture_data_push_period_seconds: '3600',
    });

    let agent = await start();
    let client = agentClient(`unix://${socket}`);
    await client.call('LoadModel', { url: tiny, handle: 'tiny' });
    const ids = Array.from({ length: 5 }, (_, i) => `queued-${i}`);
    for (const id of ids)
      await client.call('CaptureData', captureRequest(id) as MessageInit<CaptureDataRequest>);
    client.close();
    agent.child.kill('SIGKILL');
    await agent.exited;

    const path = join(dataRoot, 'agent.db');
    await damageTable(path, 'capture_status');
    agent = await start();
    const warning = await agent.waitFor(
      (line) => line.event === 'database-recovered',
      'the recovery warning',
    );
    expect(warning.level).toBeGreaterThanOrEqual(50);
    expect(warning.msg).toContain(path);
    expect(warning.msg).toMatch(/salvaged 5 queued capture/);
    expect(warning.lostCaptures).toBe(0);
    expect(existsSync(String(warning.damagedCopy))).toBe(true);

    client = agentClient(`unix://${socket}`);
    // The loaded models were saved too, and inference works.
    expect((await client.call('ListModels', {})).models.map((m) => m.handle)).toEqual(['tiny']);
    const { status } = await client.call('GetCaptureDataStatus', { captureId: ids[0]! });
    expect(status).toBe(AgentCaptureDataStatus.IN_PROGRESS);
    client.close();
    // On a graceful stop the queued captures are written.
    agent.child.kill('SIGTERM');
    expect((await agent.exited).code).toBe(0);
    const written = (await diskRecords(diskPath)).map((found) => found.record.eventMetadata.eventId).sort();
    expect(written).toEqual(ids);
  });
});
