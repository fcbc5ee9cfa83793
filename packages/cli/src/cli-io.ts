import { mkdir } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import type { Command } from 'commander';
import { shellWord } from '@edgefleet/core';

/**
 * What every command shares: how results are printed (human text or `--json`), progress on long work, and how
 * failures become exit codes. Commands throw; `runCommand` decides what the user sees.
 */

/** Exit codes, documented in docs/cli.md. */
export const EXIT = {
  ok: 0,
  /** The operation failed: bad model, unreachable agent, refused input. */
  failed: 1,
  /** The command line was wrong: unknown option, missing argument. */
  usage: 2,
  /** A package was checked and refused: signature, digest or certificate did not verify. */
  refused: 3,
  /** A --wait ran out while the thing waited for was still in progress (it may still finish). */
  waitRanOut: 4,
  /** A bug in edgefleet itself; the stack trace is printed. */
  internal: 70,
} as const;

/** An error whose message is already written for the user; `exitCode` says which kind of failure it is. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number = EXIT.failed,
  ) {
    super(message);
  }
}

export interface Output {
  json: boolean;
  /**
   * How the user started this CLI (`npx edgefleet` or `edgefleet`, from `commandPrefix`): every hint that names a
   * command to run next starts with it, so it can be pasted as is.
   */
  invocation: string;
  /** A line for people; suppressed under --json. */
  say(line?: string): void;
  /** The command's result: printed as JSON under --json, else as the given human text. */
  result(value: unknown, human: () => string | string[]): void;
  progress(label: string): Progress;
}

export interface Progress {
  update(done: number, total: number, detail?: string): void;
  done(): void;
}

export function createOutput(opts: {
  json: boolean;
  invocation: string;
  stdout?: NodeJS.WritableStream;
  stderr?: NodeJS.WriteStream;
}): Output {
  const stdout = opts.stdout ?? process.stdout;
  const stderr = opts.stderr ?? process.stderr;
  return {
    json: opts.json,
    invocation: opts.invocation,
    say(line = '') {
      if (!opts.json) stdout.write(`${line}\n`);
    },
    result(value, human) {
      if (opts.json) stdout.write(`${JSON.stringify(value, null, 2)}\n`);
      else {
        const text = human();
        stdout.write(`${Array.isArray(text) ? text.join('\n') : text}\n`);
      }
    },
    progress(label) {
      // A redrawn line only makes sense on a terminal; logs and pipes get nothing rather than hundreds of lines.
      if (opts.json || !stderr.isTTY) return { update() {}, done() {} };
      let last = 0;
      let drawn = false;
      return {
        update(done, total, detail) {
          const now = Date.now();
          if (now - last < 100 && done < total) return;
          last = now;
          drawn = true;
          const pct = total > 0 ? Math.floor((done / total) * 100) : 100;
          stderr.write(
            `\r\x1b[K${label} ${pct}% ${formatBytes(done)}/${formatBytes(total)}${detail ? ` ${detail}` : ''}`,
          );
        },
        done() {
          if (drawn) stderr.write('\r\x1b[K');
        },
      };
    },
  };
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let value = n / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(1)} ${units[unit]}`;
}

/** Lays rows out in aligned columns under a header. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => c.padEnd(widths[i] ?? 0))
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}

/**
 * Creates the folder an `--out` file goes into (and its parents, 0755), so `--out /etc/edgefleet/trust/root.pem`
 * works on a fresh host. Returns the file's absolute path. A folder that cannot be made is a clear error.
 */
export async function prepareOutFile(file: string): Promise<string> {
  const path = resolve(file);
  await makeFolder(dirname(path), `--out ${file}`);
  return path;
}

/** Creates `dir` and its parents (0755); a failure names the folder, what it was for, and why. */
export async function makeFolder(dir: string, purpose: string): Promise<void> {
  try {
    await mkdir(dir, { recursive: true, mode: 0o755 });
  } catch (error) {
    const reason =
      (error as NodeJS.ErrnoException).code === 'EEXIST'
        ? 'a file is in the way (expected a folder there)'
        : describeFsError(error);
    throw new CliError(`cannot create the folder ${dir} for ${purpose}: ${reason}`);
  }
}

const FS_REASONS: Record<string, string> = {
  ENOENT: 'no such file or folder',
  EACCES: 'permission denied (run as a user who may write there, or choose another path)',
  EPERM: 'operation not permitted',
  EEXIST: 'it already exists',
  ENOTDIR: 'a part of the path is a file, not a folder',
  EISDIR: 'it is a folder, expected a file',
  EROFS: 'the file system is read-only',
  ENOSPC: 'no space left on the device',
};

/** A file-system error (ENOENT, EACCES, …) as words, without Node's prefix. */
export function describeFsError(error: unknown): string {
  const code = (error as NodeJS.ErrnoException).code;
  return (code !== undefined && FS_REASONS[code]) || (error as Error).message;
}

/** A Node file-system error (it has an errno code, a syscall and a path): the user's path, not a bug. */
export function isFsError(error: unknown): error is NodeJS.ErrnoException & { path: string } {
  const e = error as NodeJS.ErrnoException;
  return (
    error instanceof Error &&
    typeof e.code === 'string' &&
    typeof e.syscall === 'string' &&
    typeof e.path === 'string'
  );
}

/**
 * Makes a command that takes no arguments (a `list`: it filters by options) refuse one with a usage error that
 * says what was probably meant, e.g. `device list plant-a` → "add --fleet plant-a", instead of commander's bare
 * "too many arguments". `meant` gets the first stray argument as a shell word, and how the CLI was started.
 */
export function refuseArguments(
  command: Command,
  output: () => Output,
  meant: (arg: string, invocation: string) => string,
): Command {
  return command.allowExcessArguments().hook('preAction', (_, action) => {
    const [first, ...rest] = action.args;
    if (first === undefined) return;
    const got = [first, ...rest].map(shellWord).join(' ');
    throw new CliError(
      `${commandPath(action)} takes no arguments (got ${got}); ${meant(shellWord(first), output().invocation)}`,
      EXIT.usage,
    );
  });
}

/** `device list`: a command's names from below the program down to it. */
function commandPath(command: Command): string {
  const names: string[] = [];
  for (let c: Command | null = command; c?.parent; c = c.parent) names.unshift(c.name());
  return names.join(' ');
}
