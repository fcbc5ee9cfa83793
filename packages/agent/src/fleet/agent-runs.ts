import { randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { z } from 'zod';

export const AGENT_RUNS_FILE = 'agent-runs.json';

const agentRunsSchema = z.object({
  starts: z.int().nonnegative(),
  crashes: z.int().nonnegative(),
  /** True from start-up until a clean stop: still true at the next start means the last run died. */
  running: z.boolean(),
});
export type AgentRuns = z.infer<typeof agentRunsSchema>;

/**
 * How often the agent has started on this device, and how many of those runs ended without a clean stop
 * (a crash, a kill, a power cut): what heartbeats report as start-up and crash counts. Kept in a small JSON file
 * under the local data root, written atomically.
 */
export class AgentRunsLedger {
  readonly file: string;
  #runs: AgentRuns = { starts: 0, crashes: 0, running: false };

  constructor(localDataRootPath: string) {
    this.file = join(localDataRootPath, 'fleet', AGENT_RUNS_FILE);
  }

  get runs(): Readonly<AgentRuns> {
    return this.#runs;
  }

  /** Counts this start (and the last run as a crash if it never stopped cleanly). */
  async recordStart(): Promise<AgentRuns> {
    const previous = await this.#read();
    this.#runs = {
      starts: previous.starts + 1,
      crashes: previous.crashes + (previous.running ? 1 : 0),
      running: true,
    };
    await this.#write();
    return this.#runs;
  }

  async recordCleanStop(): Promise<void> {
    this.#runs = { ...this.#runs, running: false };
    await this.#write();
  }

  async #read(): Promise<AgentRuns> {
    let text: string;
    try {
      text = await readFile(this.file, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT')
        return { starts: 0, crashes: 0, running: false };
      throw error;
    }
    try {
      return agentRunsSchema.parse(JSON.parse(text));
    } catch {
      // A damaged file (a torn write on a file system without atomic rename) restarts the counts.
      return { starts: 0, crashes: 0, running: false };
    }
  }

  async #write(): Promise<void> {
    await mkdir(dirname(this.file), { recursive: true, mode: 0o700 });
    const temporary = `${this.file}.tmp-${randomBytes(4).toString('hex')}`;
    const handle = await open(temporary, 'w', 0o600);
    try {
      try {
        await handle.writeFile(`${JSON.stringify(this.#runs)}\n`);
        await handle.sync();
      } finally {
        await handle.close();
      }
      await rename(temporary, this.file);
    } catch (error) {
      // A full disk fails the write: no temporary file is left behind, one more per start.
      await rm(temporary, { force: true });
      throw error;
    }
  }
}
