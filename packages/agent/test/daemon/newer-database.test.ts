// A data root a newer agent migrated (a downgrade, a rolled-back bundle), with a real agent process: it refuses
// with the exit status the unit does not restart on, says why once, and leaves the database as it was.
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import SqliteDatabase from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { AgentDatabase, agentDatabasePath, LATEST_SCHEMA_VERSION } from '../../src/state/index.js';
import { useAgentScratch } from './process-helpers.js';

const agents = useAgentScratch('newer-database-', []);

describe('an agent on a newer agent’s data root', () => {
  it('exits 2 with the reason once, in its stderr and its start-failed line, changing nothing', async () => {
    const dataRoot = join(agents.files.root, 'data');
    const file = agentDatabasePath(dataRoot);
    AgentDatabase.open({ path: file }).close();
    const raw = new SqliteDatabase(file);
    raw.pragma(`user_version = ${LATEST_SCHEMA_VERSION + 1}`);
    raw.close();
    const config = join(agents.files.root, 'agent.json');
    await writeFile(
      config,
      JSON.stringify({
        edgefleet_inference_workers: 1,
        edgefleet_rest_socket_path: 'none',
        sagemaker_edge_local_data_root_path: dataRoot,
        sagemaker_edge_db_module_path: join(agents.files.root, 'db'),
      }),
    );

    const agent = agents.start(['-a', join(agents.files.root, 'agent.sock'), '-c', config]);
    expect((await agent.exited).code).toBe(2);
    const reason = `the agent database ${file} has schema version ${LATEST_SCHEMA_VERSION + 1}, newer than this agent knows (${LATEST_SCHEMA_VERSION}); it was written by a newer agent: upgrade this agent, or move the database aside`;
    expect(agent.stderr()).toBe(`edgefleet-agent: cannot start: ${reason}\n`);
    const failed = agent.lines.find((l) => l.event === 'start-failed');
    expect(failed).toMatchObject({ exitCode: 2, msg: `cannot start: ${reason}` });
    expect(JSON.stringify(failed).split('newer than this agent knows')).toHaveLength(2);

    const after = new SqliteDatabase(file, { readonly: true });
    try {
      expect(after.pragma('user_version', { simple: true })).toBe(LATEST_SCHEMA_VERSION + 1);
    } finally {
      after.close();
    }
  }, 60_000);
});
