import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentRunsLedger } from '../../src/fleet/index.js';

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'ef-runs-'));
});
afterAll(() => rm(root, { recursive: true, force: true }));

describe('AgentRunsLedger', () => {
  it('counts starts, and a start after a run that never stopped cleanly as a crash', async () => {
    const data = join(root, 'a');
    expect(await new AgentRunsLedger(data).recordStart()).toEqual({ starts: 1, crashes: 0, running: true });
    // That run died (no recordCleanStop): the next start counts it.
    const second = new AgentRunsLedger(data);
    expect(await second.recordStart()).toEqual({ starts: 2, crashes: 1, running: true });
    await second.recordCleanStop();
    expect(await new AgentRunsLedger(data).recordStart()).toEqual({ starts: 3, crashes: 1, running: true });
    const file = join(data, 'fleet', 'agent-runs.json');
    expect(JSON.parse(await readFile(file, 'utf8'))).toEqual({ starts: 3, crashes: 1, running: true });
    expect((await stat(file)).mode & 0o777).toBe(0o600);
  });

  it('starts over from a damaged file', async () => {
    const data = join(root, 'b');
    const ledger = new AgentRunsLedger(data);
    await ledger.recordStart();
    await writeFile(ledger.file, '{"starts": "many"');
    expect(await new AgentRunsLedger(data).recordStart()).toEqual({ starts: 1, crashes: 0, running: true });
  });
});
