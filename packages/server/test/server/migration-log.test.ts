import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { migrateTo, migrationNames, openDatabase, type DatabaseLocation } from '../../src/storage/index.js';
import { databaseEngines } from '../support/engines.js';
import { startTestServer } from '../support/server.js';

// After an upgrade the server's log showed only "Server listening" and "edgefleet-server started": no version, no
// schema, no migration applied. Each start now says which version runs on which schema, and what it migrated,
// naming the database without its password.

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

/** Starts and stops a server; its log's lines, and its text. */
async function startLogged(
  options: Parameters<typeof startTestServer>[0],
): Promise<LogLine[] & { text: string }> {
  const raw: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      raw.push(...chunk.toString('utf8').split('\n').filter(Boolean));
      done();
    },
  });
  const t = await startTestServer({ ...options, logger: pino({ level: 'info' }, sink) });
  await t.stop();
  return Object.assign(
    raw.map((line) => JSON.parse(line) as LogLine),
    { text: raw.join('\n') },
  );
}

/**
 * A PostgreSQL location whose URL carries a password (the test server trusts local connections, so any will do;
 * a URL that has one keeps it), and that password: the log names the database, and must not show it.
 */
function withPassword(location: DatabaseLocation): { location: DatabaseLocation; password?: string } {
  if (location.engine !== 'postgres') return { location };
  const url = new URL(location.url);
  url.password ||= 'pw-in-url-7f3a';
  return {
    location: { engine: 'postgres', url: url.toString() },
    password: decodeURIComponent(url.password),
  };
}

describe.each(engines)('migrations in the server log ($engine)', ({ engine, available, createLocation }) => {
  it.skipIf(!available)(
    'names the version, the schema and each migration applied; a start that applies none says only the first',
    async () => {
      const { location: database, password } = withPassword(await createLocation());
      // A database an older server left, three migrations behind this build.
      const older = migrationNames[migrationNames.length - 4]!;
      const opened = await openDatabase(database);
      await migrateTo(opened.db, older);
      await opened.close();
      const dataDir = await mkdtemp(path.join(os.tmpdir(), `edgefleet-migration-log-${engine}-`));
      dataDirs.push(dataDir);

      const upgrade = await startLogged({ database, dataDir });
      const start = upgrade.find((line) => line.event === 'database_opened');
      expect(start).toMatchObject({ version: serverVersion, schema: latest, migrationsApplied: 3 });
      expect(start!.msg).toContain(serverVersion);
      expect(upgrade.find((line) => line.msg === 'edgefleet-server started')).toMatchObject({
        version: serverVersion,
        schema: latest,
      });
      expect(upgrade.filter((l) => l.event === 'migration_applied').map((l) => l.migration)).toEqual(
        migrationNames.slice(-3),
      );

      const again = await startLogged({ database, dataDir });
      expect(again.find((line) => line.event === 'database_opened')).toMatchObject({
        schema: latest,
        migrationsApplied: 0,
      });
      expect(again.filter((l) => l.event === 'migration_applied')).toEqual([]);
      if (password !== undefined) {
        expect(start!.database).toContain('***');
        expect(upgrade.text).not.toContain(password);
        expect(again.text).not.toContain(password);
      }
    },
  );
});
