/** What the commands that talk to a server share: connection flags, error mapping, small parsers/formatters. */
import type { Command } from 'commander';
import { CliError, EXIT } from '../cli-io.js';
import { ConnectionConfigError, resolveConnection, type ConnectionFlags } from './connection.js';
import type { Tag } from './schemas.js';
import {
  ServerApiError,
  ServerClient,
  ServerResponseError,
  ServerUnreachableError,
} from './server-client.js';

/** `--server`, `--token`, `--profile` on a command that calls the operator API. */
export function addServerOptions(command: Command): Command {
  return command
    .option('--server <url>', 'operator API of the EdgeFleet server (env EDGEFLEET_SERVER)')
    .option('--token <token>', 'API token (env EDGEFLEET_TOKEN; prefer the env or a profile over this flag)')
    .option('--profile <name>', 'profile in ~/.config/edgefleet/profiles.json (env EDGEFLEET_PROFILE)');
}

/**
 * A failure of the server client, as the one line and exit code the user sees. A 401 is about the operator's API
 * token, unless `enrollment` says it is about a device's single-use enrollment token (its hint names the command
 * that makes one, started as the user started the CLI: `invocation`).
 */
export function cliErrorFrom(
  error: unknown,
  enrollment?: { credential: 'enrollment-token'; invocation: string },
): unknown {
  if (error instanceof ConnectionConfigError) return new CliError(error.message, EXIT.usage);
  if (error instanceof ServerUnreachableError || error instanceof ServerResponseError)
    return new CliError(error.message);
  if (error instanceof ServerApiError) {
    const hint =
      error.status === 401
        ? enrollment
          ? ` (enrollment tokens are single-use and expire: an operator makes a new one with "${enrollment.invocation} device enrollment-token <device>"; pass it with --token or EDGEFLEET_ENROLLMENT_TOKEN)`
          : ' (check --token, EDGEFLEET_TOKEN or the profile)'
        : error.status === 403 && error.code === 'Forbidden'
          ? ' (use an admin token)'
          : '';
    return new CliError(
      `${error.message}${hint} [HTTP ${error.status} ${error.code}]`,
      error.code === 'ValidationError' ? EXIT.usage : EXIT.failed,
    );
  }
  return error;
}

/** Resolves the connection from flags, env and profile, runs `fn` with a client, and maps its failures. */
export async function withServer<T>(
  flags: ConnectionFlags,
  fn: (client: ServerClient) => Promise<T>,
  env: Record<string, string | undefined> = process.env,
): Promise<T> {
  try {
    const connection = await resolveConnection(flags, { env });
    return await fn(new ServerClient(connection));
  } catch (error) {
    throw cliErrorFrom(error);
  }
}

/** Repeatable `--tag key=value` → tags; a bare `key` has the empty value. */
export function parseTags(values: string[]): Tag[] {
  return values.map((text) => {
    const eq = text.indexOf('=');
    if (eq === 0) throw new CliError(`--tag ${JSON.stringify(text)}: expected KEY=VALUE`, EXIT.usage);
    return eq < 0 ? { key: text, value: '' } : { key: text.slice(0, eq), value: text.slice(eq + 1) };
  });
}

export const collect = (value: string, previous: string[]): string[] => [...previous, value];

/** `--tag` (replacing every tag) and `--clear-tags`, last on an `update` command. */
export function addTagUpdateOptions(command: Command): Command {
  return command
    .option('--tag <key=value>', 'replace all tags with these (repeatable)', collect, [])
    .option('--clear-tags', 'remove every tag');
}

export interface DescriptionAndTagFlags {
  description?: string;
  tag: string[];
  clearTags?: boolean;
}

/** The part of an update every described, tagged resource shares: a new description, new tags or none. */
export function descriptionAndTagPatch(flags: DescriptionAndTagFlags): {
  description?: string | null;
  tags?: Tag[];
} {
  if (flags.clearTags && flags.tag.length > 0)
    throw new CliError('give --tag or --clear-tags, not both', EXIT.usage);
  return {
    ...(flags.description !== undefined && { description: clearedIfEmpty(flags.description) }),
    ...((flags.tag.length > 0 || flags.clearTags) && { tags: parseTags(flags.tag) }),
  };
}

/** On an update, `""` clears a text field: null to the server. */
export function clearedIfEmpty(value: string): string | null {
  return value === '' ? null : value;
}

/** Refuses an update that changes nothing, naming the flags that would (`flags`: "--a, --b or --c"). */
export function requireChange<Patch extends object>(patch: Patch, flags: string): Patch {
  if (Object.keys(patch).length === 0) throw new CliError(`nothing to change: give ${flags}`, EXIT.usage);
  return patch;
}

/** A whole number option in [min, max]. */
export function intOption(name: string, min: number, max: number): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n < min || n > max)
      throw new CliError(
        `${name} ${JSON.stringify(value)}: expected a whole number from ${min} to ${max}`,
        EXIT.usage,
      );
    return n;
  };
}

/** `2025-01-01T10:00:00.000Z (3m ago)`; `-` when absent. */
export function formatTime(iso: string | undefined, now: number = Date.now()): string {
  if (iso === undefined) return '-';
  const at = Date.parse(iso);
  if (Number.isNaN(at)) return iso;
  return `${iso.replace(/\.\d{3}Z$/, 'Z')} (${formatAgo(now - at)})`;
}

export function formatAgo(ms: number): string {
  if (ms < 0) return 'in the future';
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s ago`;
  const m = Math.round(s / 60);
  if (m < 60) return `${m}m ago`;
  const h = Math.round(m / 60);
  if (h < 48) return `${h}h ago`;
  return `${Math.round(h / 24)}d ago`;
}

export function formatTags(tags: Tag[]): string {
  return tags.length === 0
    ? '-'
    : tags.map((t) => (t.value === '' ? t.key : `${t.key}=${t.value}`)).join(',');
}

/** `key  value` lines with the keys aligned. */
export function fields(rows: Array<[string, string | number | undefined]>): string {
  const width = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => `${k.padEnd(width)}  ${v === undefined || v === '' ? '-' : v}`).join('\n');
}
