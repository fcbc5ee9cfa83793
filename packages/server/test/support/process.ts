/** Runs edgefleet-server as a real process (from source, through tsx) for end-to-end tests. */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const MAIN = fileURLToPath(new URL('../../src/main.ts', import.meta.url));
const REPO_ROOT = path.resolve(path.dirname(MAIN), '../../..');
// Absolute, so the child finds tsx whatever its working directory.
const TSX_LOADER = pathToFileURL(
  path.join(REPO_ROOT, 'node_modules', 'tsx', 'dist', 'loader.mjs'),
).toString();

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

function spawnMain(args: string[], cwd: string, env: Record<string, string> = {}): ChildProcess {
  return spawn(process.execPath, ['--import', TSX_LOADER, MAIN, ...args], {
    cwd,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

/** The command that runs this source's edgefleet-server: node, its tsx loader, main.ts; arguments follow. */
export function serverCommand(): string[] {
  return [process.execPath, '--import', TSX_LOADER, MAIN];
}

export function runServerCli(args: string[], cwd: string, env?: Record<string, string>): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawnMain(args, cwd, env);
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/**
 * Runs `commandLine`, which starts with `edgefleet-server `, in a POSIX shell (sh -c), as a person pasting it would,
 * with that first word running this source: so that a test sees how the shell reads the rest of a printed command.
 */
export function runServerCliInShell(commandLine: string, cwd: string): Promise<CliResult> {
  const program = 'edgefleet-server ';
  if (!commandLine.startsWith(program)) throw new Error(`expected a command line starting with ${program}`);
  return new Promise((resolve, reject) => {
    const child = spawn(
      'sh',
      ['-c', `"$EF_NODE" --import "$EF_TSX" "$EF_MAIN" ${commandLine.slice(program.length)}`],
      {
        cwd,
        env: { ...process.env, EF_NODE: process.execPath, EF_TSX: TSX_LOADER, EF_MAIN: MAIN },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

export interface ServerProcess {
  child: ChildProcess;
  operatorUrl: string;
  deviceUrl?: string;
  /** Log lines (JSON) seen so far. */
  logs: Record<string, unknown>[];
  /** What it wrote on stderr so far. */
  stderr(): string;
  /** Sends SIGTERM and resolves with the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/** Starts `edgefleet-server serve …` and resolves once it logs that it listens. */
export function startServerProcess(
  args: string[],
  cwd: string,
  env?: Record<string, string>,
): Promise<ServerProcess> {
  return new Promise((resolve, reject) => {
    const child = spawnMain(['serve', ...args], cwd, env);
    const logs: Record<string, unknown>[] = [];
    let buffered = '';
    let stderr = '';
    const exited = new Promise<number | null>((done) => child.once('exit', (code) => done(code)));
    child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.stdout?.on('data', (chunk: Buffer) => {
      buffered += chunk.toString();
      const lines = buffered.split('\n');
      buffered = lines.pop() ?? '';
      for (const line of lines) {
        let entry: Record<string, unknown>;
        try {
          entry = JSON.parse(line) as Record<string, unknown>;
        } catch {
          continue;
        }
        logs.push(entry);
        if (entry.msg === 'edgefleet-server started') {
          resolve({
            child,
            operatorUrl: String(entry.operatorUrl),
            ...(entry.deviceUrl !== undefined ? { deviceUrl: String(entry.deviceUrl) } : {}),
            logs,
            stderr: () => stderr,
            stop: async (signal = 'SIGTERM') => {
              if (child.exitCode === null) child.kill(signal);
              return exited;
            },
          });
        }
      }
    });
    child.once('exit', (code) =>
      reject(new Error(`edgefleet-server exited (${code}) before listening: ${stderr}`)),
    );
  });
}
