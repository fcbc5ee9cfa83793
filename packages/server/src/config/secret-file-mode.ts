import { readFile, stat } from 'node:fs/promises';
import { maskUrlCredentials, urlSecretNames } from '../storage/index.js';

/**
 * A warning when the config file holds secrets (the S3 secret key, a database URL with a password, an S3
 * endpoint URL with credentials) and users other than the server's can read it: world-readable, or
 * group-readable by a group the server's process is not in. A file readable by the server's own group (root:edgefleet-server 0640) is how a service reads its config.
 * Undefined when there is nothing to say. Only the file: systemd reads an EnvironmentFile as root, and the
 * process cannot tell which one it came from.
 */
export async function secretConfigFileWarning(
  file: string,
  ownGroups: readonly number[] = processGroups(),
): Promise<string | undefined> {
  const settings = JSON.parse(await readFile(file, 'utf8')) as {
    s3?: { secretAccessKey?: unknown; endpoint?: unknown };
    database?: unknown;
  };
  const secrets = [
    ...(typeof settings.s3?.secretAccessKey === 'string' && settings.s3.secretAccessKey !== ''
      ? ['s3.secretAccessKey']
      : []),
    // Named, so the operator knows which to take out (sslpassword, a password in the user info…).
    ...(typeof settings.database === 'string' && urlSecretNames(settings.database).length > 0
      ? [`the ${urlSecretNames(settings.database).join(', ')} in database`]
      : []),
    // https://user:pass@minio…: the store's credentials, in the URL.
    ...(typeof settings.s3?.endpoint === 'string' &&
    maskUrlCredentials(settings.s3.endpoint) !== settings.s3.endpoint
      ? ['the credentials in s3.endpoint']
      : []),
  ];
  if (secrets.length === 0) return undefined;
  const { mode, gid } = await stat(file);
  const readers = [
    ...((mode & 0o004) !== 0 ? ['every local user'] : []),
    ...((mode & 0o040) !== 0 && !ownGroups.includes(gid) ? [`group ${gid}`] : []),
  ];
  if (readers.length === 0) return undefined;
  return (
    `the config file ${file} holds ${secrets.join(' and ')} and is readable by ${readers.join(' and ')} ` +
    `(mode 0${(mode & 0o777).toString(8)}); expected 0600, or 0640 with the server's own group: chmod 0600 ${file}`
  );
}

function processGroups(): number[] {
  return [...(process.getgid ? [process.getgid()] : []), ...(process.getgroups?.() ?? [])];
}
