// The C library allocator settings the agent is deployed with (deploy/systemd/edgefleet-agent.service sets
// GLIBC_TUNABLES), for benchmarks: the baseline and the agent should run with the same allocator as each other
// and as a deployed agent. glibc reads GLIBC_TUNABLES once, when a process starts, so a benchmark that lacks it
// runs itself again with it; its children (agents, echo servers) inherit it.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const UNIT = join(dirname(fileURLToPath(import.meta.url)), '../../deploy/systemd/edgefleet-agent.service');

/** The unit's GLIBC_TUNABLES value (one source of truth: the unit). */
export function deployedGlibcTunables() {
  const line = readFileSync(UNIT, 'utf8')
    .split('\n')
    .find((l) => l.startsWith('Environment=GLIBC_TUNABLES='));
  if (line === undefined) throw new Error(`${UNIT} sets no GLIBC_TUNABLES`);
  return line.slice('Environment=GLIBC_TUNABLES='.length).trim();
}

/**
 * Unless `--system-malloc` is given, makes sure this process runs with the deployed allocator settings: returns
 * a description when it does, or runs the script again with them and exits with its status.
 */
export function withDeployedAllocator() {
  if (process.argv.includes('--system-malloc')) return 'the C library defaults (--system-malloc)';
  const tunables = deployedGlibcTunables();
  if (process.env.GLIBC_TUNABLES === tunables) return `GLIBC_TUNABLES=${tunables}, as deployed`;
  const again = spawnSync(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
    stdio: 'inherit',
    env: { ...process.env, GLIBC_TUNABLES: tunables },
  });
  process.exit(again.status ?? 1);
}
