import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { z } from 'zod';

/** What `--server`, `--token` and `--profile` resolve to. The token is never printed. */
export interface ServerConnection {
  /** Base URL of the operator API, without a trailing slash. */
  server: string;
  token?: string;
}

export interface ConnectionFlags {
  server?: string;
  token?: string;
  profile?: string;
}

const profileSchema = z.strictObject({
  server: z.url({ protocol: /^https?$/, error: 'expected the server URL, e.g. http://fleet.example:8080' }),
  token: z.string().min(1).optional(),
});

/**
 * `~/.config/edgefleet/profiles.json`: named servers, each with its URL and (optionally) an API token.
 * `default` names the profile used when neither `--profile` nor EDGEFLEET_PROFILE chooses one.
 */
export const profilesFileSchema = z.strictObject({
  default: z.string().min(1).optional(),
  profiles: z.record(z.string().min(1), profileSchema),
});
export type ProfilesFile = z.infer<typeof profilesFileSchema>;

/** A connection problem the user can fix (no server named, unreadable profile file, unknown profile). */
export class ConnectionConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConnectionConfigError';
  }
}

export interface ResolveContext {
  env: Record<string, string | undefined>;
  /** Default: $XDG_CONFIG_HOME/edgefleet/profiles.json, else ~/.config/edgefleet/profiles.json. */
  profilesFile?: string;
}

export function defaultProfilesFile(env: Record<string, string | undefined>): string {
  if (env.EDGEFLEET_PROFILES) return env.EDGEFLEET_PROFILES;
  const base = env.XDG_CONFIG_HOME || join(homedir(), '.config');
  return join(base, 'edgefleet', 'profiles.json');
}

async function readProfiles(file: string): Promise<ProfilesFile | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new ConnectionConfigError(`cannot read the profile file ${file}: ${(error as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new ConnectionConfigError(`the profile file ${file} is not JSON: ${(error as Error).message}`);
  }
  const parsed = profilesFileSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new ConnectionConfigError(
      `the profile file ${file} is not valid at ${issue?.path.join('.') || '(root)'}: ${issue?.message}; expected ` +
        '{"default": "<name>", "profiles": {"<name>": {"server": "http://…", "token": "efo_…"}}}',
    );
  }
  return parsed.data;
}

/**
 * Server URL and API token, each taken from the first place that has it: flags (`--server`, `--token`), the
 * environment (EDGEFLEET_SERVER, EDGEFLEET_TOKEN), then the profile (`--profile`, EDGEFLEET_PROFILE, the
 * file's `default`, or the profile named "default").
 */
export async function resolveConnection(
  flags: ConnectionFlags,
  context: ResolveContext,
): Promise<ServerConnection> {
  const { env } = context;
  let server = flags.server ?? (env.EDGEFLEET_SERVER || undefined);
  let token = flags.token ?? (env.EDGEFLEET_TOKEN || undefined);
  const chosenProfile = flags.profile ?? (env.EDGEFLEET_PROFILE || undefined);

  if (server === undefined || token === undefined || chosenProfile !== undefined) {
    const file = context.profilesFile ?? defaultProfilesFile(env);
    const profiles = await readProfiles(file);
    if (chosenProfile !== undefined && profiles?.profiles[chosenProfile] === undefined) {
      const known = Object.keys(profiles?.profiles ?? {});
      throw new ConnectionConfigError(
        profiles === undefined
          ? `profile "${chosenProfile}" was asked for but ${file} does not exist`
          : `no profile "${chosenProfile}" in ${file} (profiles: ${known.length > 0 ? known.join(', ') : 'none'})`,
      );
    }
    const name = chosenProfile ?? profiles?.default ?? 'default';
    const profile = profiles?.profiles[name];
    if (profiles?.default !== undefined && profile === undefined && chosenProfile === undefined) {
      throw new ConnectionConfigError(`${file} names default profile "${name}", which it does not define`);
    }
    server ??= profile?.server;
    token ??= profile?.token;
  }

  if (server === undefined) {
    throw new ConnectionConfigError(
      'no server given: pass --server <url>, set EDGEFLEET_SERVER, or add a profile to ' +
        (context.profilesFile ?? defaultProfilesFile(env)),
    );
  }
  const url = z.url({ protocol: /^https?$/ }).safeParse(server);
  if (!url.success) {
    throw new ConnectionConfigError(
      `server ${JSON.stringify(server)} is not an http(s) URL; expected e.g. http://fleet.example:8080`,
    );
  }
  return { server: server.replace(/\/+$/, ''), ...(token !== undefined ? { token } : {}) };
}
