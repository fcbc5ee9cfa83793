import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { migrateTo, migrationNames, openDatabase } from '../../src/storage/index.js';
import { databaseEngines } from '../support/engines.js';
import { startTestServer } from '../support/server.js';

// After an upgrade the server's log showed only "Server listening" and "edgefleet-server started": no version, no
// schema, no migration applied. Each start now says which version runs on which schema, and what it migrated.

const serverVersion = (
  JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }
).version;
const latest = migrationNames[migrationNames.length - 1]!;
const engines = await databaseEngines();
const dataDirs: string[] = [];
afterAll(async () => {
  for (const dir of dataDirs) await rm(dir, { recursive: true, force: true });
});

interface LogLine {
  event?: string;
  msg: string;
  [key: string]: unknown;
}

async function startLogged(options: Parameters<typeof startTestServer>[0]): Promise<LogLine[]> {
  const lines: LogLine[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n').filter(Boolean))
        lines.push(JSON.parse(line) as LogLine);
      done();
    },
  });
  const t = await startTestServer({ ...options, logger: pino({ level: 'info' }, sink) });
  await t.stop();
  return lines;
}

describe.each(engines)('migrations in the server log ($engine)', ({ engine, available, createLocation }) => {
  it.skipIf(!available)(
    'names the version, the schema and each migration applied; a start that applies none says only the first',
    async () => {
      const database = await createLocation();
      // A database an older server left, three migrations behind this build.
      const older = migrationNames[migrationNames.length - 4]!;
      const opened = await openDatabase(database);
      await migrateTo(opened.db, older);
      await opened.close();
      const dataDir = await mkdtemp(path.join(os.tmpdir(), `edgefleet-migration-log-${engine}-`));
      dataDirs.push(dataDir);

      const upgrade = await startLogged({ database, dataDir });
      const start = upgrade.find((line) => line.event === 'database_opened');
      expect(start).toMatchObject({ serverVersion, schemaVersion: latest, migrationsApplied: 3 });
      expect(start!.msg).toContain(serverVersion);
      expect(upgrade.filter((l) => l.event === 'migration_applied').map((l) => l.migration)).toEqual(
        migrationNames.slice(-3),
      );

      const again = await startLogged({ database, dataDir });
      expect(again.find((line) => line.event === 'database_opened')).toMatchObject({
        schemaVersion: latest,
        migrationsApplied: 0,
      });
      expect(again.filter((l) => l.event === 'migration_applied')).toEqual([]);
    },
  );
});
