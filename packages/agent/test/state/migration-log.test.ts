import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import SqliteDatabase from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { MIGRATIONS, migrate } from '../../src/state/migrations.js';
import { useAgentProcesses } from '../capture/helpers.js';

// After an upgrade the agent's log said nothing of its database: no schema version, no migration applied.
// Tested on the real agent process, upgrading a database left at an older schema.

const agents = useAgentProcesses('edgefleet-migration-log-');
const agentVersion = (
  JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }
).version;
const latest = MIGRATIONS[MIGRATIONS.length - 1]!.version;

describe('the agent logs its database schema at start (real agent process)', () => {
  it('names each migration it applies, then on the next start only the schema version', async () => {
    const { dataRoot, start } = await agents.databaseAgent({});
    // A database an older agent left: the first two migrations only.
    mkdirSync(dataRoot, { recursive: true, mode: 0o700 });
    const old = new SqliteDatabase(join(dataRoot, 'agent.db'));
    migrate(old, MIGRATIONS.slice(0, 2));
    old.close();

    let agent = await start();
    const opened = agent.lines.find((line) => line.event === 'database-opened');
    expect(opened).toMatchObject({ agentVersion, schemaVersion: latest, migrationsApplied: latest - 2 });
    const applied = agent.lines.filter((line) => line.event === 'migration-applied');
    expect(applied.map((line) => line.version)).toEqual(
      MIGRATIONS.slice(2).map((migration) => migration.version),
    );
    expect(applied[0]!.msg).toContain(MIGRATIONS[2]!.description);
    agent.child.kill('SIGKILL');
    await agent.exited;

    agent = await start();
    expect(agent.lines.find((line) => line.event === 'database-opened')).toMatchObject({
      schemaVersion: latest,
      migrationsApplied: 0,
    });
    expect(agent.lines.filter((line) => line.event === 'migration-applied')).toEqual([]);
  });
});
