/**
 * The two state engines as test fixtures, so one suite runs against both. Call at the top level of a test
 * file (top-level await): PostgreSQL starts once per file and stops after it.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll } from 'vitest';
import {
  migrateToLatest,
  openDatabase,
  type DatabaseEngine,
  type DatabaseLocation,
  type ServerDatabase,
} from '../../src/storage/index.js';
import { startTestPostgres } from './postgres.js';

export interface EngineFixture {
  engine: DatabaseEngine;
  /** False only for PostgreSQL outside CI when none is installed. */
  available: boolean;
  /** A fresh, empty database location. */
  createLocation(): Promise<DatabaseLocation>;
}

export async function databaseEngines(): Promise<EngineFixture[]> {
  const tempDirs: string[] = [];
  const postgres = await startTestPostgres();
  afterAll(async () => {
    await postgres?.stop();
    for (const dir of tempDirs) await rm(dir, { recursive: true, force: true });
  });
  return [
    {
      engine: 'sqlite',
      available: true,
      createLocation: async () => {
        const dir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-sqlite-'));
        tempDirs.push(dir);
        return { engine: 'sqlite', file: path.join(dir, 'state.db') };
      },
    },
    {
      engine: 'postgres',
      available: postgres !== undefined,
      createLocation: async () => {
        if (!postgres) throw new Error('PostgreSQL is not available');
        return { engine: 'postgres', url: await postgres.createDatabase() };
      },
    },
  ];
}

/** Opens a fresh database on the engine, migrated; closed when the caller's cleanup runs. */
export async function openFreshDatabase(fixture: EngineFixture): Promise<ServerDatabase> {
  const database = await openDatabase(await fixture.createLocation());
  await migrateToLatest(database.db);
  return database;
}
