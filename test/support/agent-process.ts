/**
 * A real agent process as tests see it: its JSON log lines as they come, its stderr, and waiting for a line.
 * Who spawns it (the agent's tests with their own options, the CLI's and the console's end-to-end tests) is
 * up to them; this file only watches.
 */
import type { ChildProcess } from 'node:child_process';

export interface AgentLogLine {
  level: number;
  msg: string;
  event?: string;
  [key: string]: unknown;
}

export interface AgentProcess {
  child: ChildProcess;
  /** Every line the agent logged so far (a line that is not JSON comes as `{ level: 0, msg }`). */
  lines: AgentLogLine[];
  /** All the agent wrote to stderr so far. */
  stderr: () => string;
  /** Resolves with the first log line (seen so far or later) that matches; rejects if the agent exits first. */
  waitFor(match: (line: AgentLogLine) => boolean, what: string): Promise<AgentLogLine>;
  /** Resolves once the process has exited. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Watches `child`, an agent spawned with stdout and stderr piped. */
export function watchAgentProcess(child: ChildProcess): AgentProcess {
  const lines: AgentLogLine[] = [];
  const waiters = new Set<{
    match: (line: AgentLogLine) => boolean;
    resolve: (line: AgentLogLine) => void;
  }>();
  let buffered = '';
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
    buffered += chunk;
    const complete = buffered.split('\n');
    buffered = complete.pop() ?? '';
    for (const text of complete) {
      let line: AgentLogLine;
      try {
        line = JSON.parse(text) as AgentLogLine;
      } catch {
        line = { level: 0, msg: text };
      }
      lines.push(line);
      for (const waiter of [...waiters])
        if (waiter.match(line)) {
          waiters.delete(waiter);
          waiter.resolve(line);
        }
    }
  });
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
        waiters.add({ match, resolve });
        void exited.then(({ code, signal }) =>
          reject(
            new Error(
              `the agent exited (${code ?? signal}) before logging ${what}; stdout:\n${lines.map((l) => l.msg).join('\n')}\nstderr:\n${stderr.slice(-2000)}`,
            ),
          ),
        );
      });
    },
  };
}
