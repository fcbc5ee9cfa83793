import { existsSync } from 'node:fs';
import { mkdtemp, open, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import SqliteDatabase from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  AgentDatabase,
  agentDatabasePath,
  capturePayloadFolder,
  openAgentDatabase,
} from '../../src/state/index.js';
import { formBatch } from './form-batch.js';

let root: string;
let path: string;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'edgefleet-recovery-'));
  path = agentDatabasePath(root);
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

/** A database holding `count` queued captures (about 1.5 KB each, so they span many pages) and a model. */
function populate(count: number): void {
  const db = AgentDatabase.open({ path });
  db.captureQueue.enqueue(
    Array.from({ length: count }, (_, i) => ({
      captureId: `c${i}`,
      model: 'm',
      meta: JSON.stringify({ i }),
      payload: Buffer.alloc(1500, i % 256),
      enqueuedAt: 1000 + i,
    })),
  );
  db.loadedModels.record({ name: 'm', url: '/models/m', loadedAt: 1 });
  db.close();
}

/** Overwrites page `page` (1-based) of the database file with garbage, as a failing disk might. */
async function damagePage(page: number): Promise<void> {
  const raw = new SqliteDatabase(path);
  raw.pragma('wal_checkpoint(TRUNCATE)');
  const pageSize = raw.pragma('page_size', { simple: true }) as number;
  raw.close();
  const file = await open(path, 'r+');
  await file.write(Buffer.alloc(pageSize, 0xa5), 0, pageSize, (page - 1) * pageSize);
  await file.close();
}

function rootPage(table: string): number {
  const raw = new SqliteDatabase(path, { readonly: true });
  const { rootpage } = raw.prepare('SELECT rootpage FROM sqlite_master WHERE name = ?').get(table) as {
    rootpage: number;
  };
  raw.close();
  return rootpage;
}

/** The leaf pages of a table, in key order (dbstat is compiled into better-sqlite3's SQLite). */
function leafPages(table: string): number[] {
  const raw = new SqliteDatabase(path, { readonly: true });
  const pages = raw
    .prepare("SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY path")
    .all(table) as Array<{ pageno: number }>;
  raw.close();
  return pages.map((p) => p.pageno);
}

describe('a damaged agent.db (issue 15 item 6)', () => {
  it('opens a sound database as it is', () => {
    populate(3);
    const { database, recovery } = openAgentDatabase({ path });
    expect(recovery).toBeUndefined();
    expect(database.captureQueue.heldCount()).toBe(3);
    database.close();
  });

  it('moves a file that is not a database aside and starts fresh, keeping the damaged copy', async () => {
    populate(3);
    await damagePage(1);
    expect(() => AgentDatabase.open({ path })).toThrow(/agent database .*agent\.db/);
    const { database, recovery } = openAgentDatabase({ path }, new Date('2026-01-02T03:04:05Z'));
    expect(recovery).toMatchObject({
      path,
      damagedCopy: `${path}.damaged-2026-01-02T03-04-05-000Z`,
      captureQueueComplete: false,
    });
    expect(recovery!.reason).toMatch(/not a database|malformed/);
    expect(existsSync(recovery!.damagedCopy)).toBe(true);
    expect(database.captureQueue.heldCount()).toBe(0);
    // The fresh database works.
    database.captureQueue.enqueue([
      { captureId: 'new', model: 'm', meta: '{}', payload: Buffer.from('x'), enqueuedAt: 1 },
    ]);
    expect(database.captureQueue.status('new')?.status).toBe('IN_PROGRESS');
    database.close();
  });

  it('salvages every queued capture when only their statuses are damaged', async () => {
    populate(20);
    await damagePage(rootPage('capture_status'));
    const { database, recovery } = openAgentDatabase({ path });
    expect(recovery!.captureQueueComplete).toBe(true);
    expect(recovery!.salvaged.capture_queue).toBe(20);
    expect(recovery!.salvaged.loaded_models).toBe(1);
    expect(recovery!.lostCaptureIds).toEqual([]);
    expect(database.captureQueue.heldCount()).toBe(20);
    // Their statuses are back (in progress), and the batches form from the salvaged rows.
    expect(database.captureQueue.status('c7')?.status).toBe('IN_PROGRESS');
    const batch = formBatch(database.captureQueue, 'b', 100);
    expect(batch.map((row) => row.captureId)).toEqual(Array.from({ length: 20 }, (_, i) => `c${i}`));
    expect(batch[7]!.payload).toEqual(Buffer.alloc(1500, 7));
    expect(database.loadedModels.list().map((m) => m.name)).toEqual(['m']);
    database.close();
    expect(await readdir(root)).toEqual(
      expect.arrayContaining([expect.stringMatching(/^agent\.db\.damaged-/)]),
    );
  });

  it('salvages the captures on either side of a damaged page and reports the lost ones as FAILURE', async () => {
    populate(30);
    const leaves = leafPages('capture_queue');
    expect(leaves.length).toBeGreaterThan(4);
    await damagePage(leaves[2]!);
    const { database, recovery } = openAgentDatabase({ path });
    const lost = recovery!.lostCaptureIds;
    expect(recovery!.captureQueueComplete).toBe(false);
    expect(lost.length).toBeGreaterThan(0);
    expect(recovery!.salvaged.capture_queue + lost.length).toBe(30);
    expect(database.captureQueue.heldCount()).toBe(recovery!.salvaged.capture_queue);
    expect(database.captureQueue.status('c0')?.status).toBe('IN_PROGRESS');
    expect(database.captureQueue.status('c29')?.status).toBe('IN_PROGRESS');
    expect(database.captureQueue.status(lost[0]!)).toMatchObject({
      status: 'FAILURE',
      detail: expect.stringMatching(/damaged/),
    });
    database.close();
  });

  it('keeps the payload files of the captures it salvages; the files of lost ones are orphans, removed by the sweep', async () => {
    const db = AgentDatabase.open({ path });
    for (let i = 0; i < 30; i++) {
      const payloadFile = await db.captureQueue.storePayload([Buffer.alloc(2000, i)]);
      // A long meta, so that the rows span many pages.
      const meta = JSON.stringify({ i, pad: 'm'.repeat(1500) });
      db.captureQueue.enqueue([
        { captureId: `c${i}`, model: 'm', meta, payload: Buffer.alloc(0), payloadFile, enqueuedAt: 1000 + i },
      ]);
    }
    db.close();
    await damagePage(leafPages('capture_queue')[2]!);

    const { database, recovery } = openAgentDatabase({ path });
    const lost = recovery!.lostCaptureIds;
    expect(lost.length).toBeGreaterThan(0);
    expect(await database.captureQueue.removeOrphanPayloads()).toEqual({ removed: lost.length, failed: [] });
    const batch = formBatch(database.captureQueue, 'b', 100);
    expect(batch).toHaveLength(30 - lost.length);
    for (const row of batch) {
      const i = Number(row.captureId.slice(1));
      expect(await database.captureQueue.readPayload(row)).toEqual(Buffer.alloc(2000, i));
    }
    expect(await readdir(capturePayloadFolder(path))).toHaveLength(batch.length);
    database.close();
  });
});
