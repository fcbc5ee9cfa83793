import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = fileURLToPath(new URL('../../../../', import.meta.url));
export const AGENT_MAIN = fileURLToPath(new URL('../../dist/main.js', import.meta.url));

/**
 * Builds the agent (`tsc -b packages/agent`) so the tests run the real `edgefleet-agent` binary. Type errors in
 * folders being worked on elsewhere do not stop tsc from emitting, so only a missing main.js is fatal.
 */
export function buildAgent(): void {
  spawnSync(process.execPath, [`${REPO_ROOT}node_modules/typescript/bin/tsc`, '-b', 'packages/agent'], {
    cwd: REPO_ROOT,
    stdio: 'ignore',
  });
  if (!existsSync(AGENT_MAIN)) throw new Error(`building the agent did not produce ${AGENT_MAIN}`);
}

export interface LogLine {
  level: number;
  msg: string;
  event?: string;
  [key: string]: unknown;
}

/** A running `node dist/main.js …` with its JSON log lines and plain stderr. */
export interface AgentProcess {
  child: ChildProcess;
  lines: LogLine[];
  stderr: () => string;
  /** Resolves with the first log line matching, or rejects if the process exits first. */
  waitFor(match: (line: LogLine) => boolean, what: string): Promise<LogLine>;
  /** Resolves with the exit code (or 128 + signal number when killed by a signal). */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export interface SpawnAgentOptions {
  /** Start the agent with this open file limit (`ulimit -n`, soft and hard). */
  openFileLimit?: number;
}

export function spawnAgent(args: string[], cwd: string, options: SpawnAgentOptions = {}): AgentProcess {
  const stdio: ['ignore', 'pipe', 'pipe'] = ['ignore', 'pipe', 'pipe'];
  const child =
    options.openFileLimit === undefined
      ? spawn(process.execPath, [AGENT_MAIN, ...args], { cwd, stdio })
      : spawn(
          '/bin/sh',
          [
            '-c',
            `ulimit -n ${Math.trunc(options.openFileLimit)} && exec "$@"`,
            'sh',
            process.execPath,
            AGENT_MAIN,
            ...args,
          ],
          { cwd, stdio },
        );
  const lines: LogLine[] = [];
  const waiters: Array<{ match: (line: LogLine) => boolean; resolve: (line: LogLine) => void }> = [];
  let buffered = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
    buffered += chunk;
    let newline: number;
    while ((newline = buffered.indexOf('\n')) >= 0) {
      const text = buffered.slice(0, newline);
      buffered = buffered.slice(newline + 1);
      let line: LogLine;
      try {
        line = JSON.parse(text) as LogLine;
      } catch {
        line = { level: 0, msg: text };
      }
      lines.push(line);
      for (const waiter of [...waiters]) {
        if (waiter.match(line)) {
          waiters.splice(waiters.indexOf(waiter), 1);
          waiter.resolve(line);
        }
      }
    }
  });
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  return {
    child,
    lines,
    stderr: () => stderr,
    exited,
    waitFor(match, what) {
      const seen = lines.find(match);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        waiters.push({ match, resolve });
        void exited.then(({ code, signal }) =>
          reject(
            new Error(
              `the agent exited (${code ?? signal}) before logging ${what}; stdout:\n${lines.map((l) => l.msg).join('\n')}\nstderr:\n${stderr}`,
            ),
          ),
        );
      });
    },
  };
}

export const listening = (line: LogLine): boolean => line.event === 'listening';
