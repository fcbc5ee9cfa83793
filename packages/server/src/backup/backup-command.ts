import { shellWord } from '@edgefleet/core';
import type { Command } from 'commander';
import { keyMaterialToBackUp, type ServerConfig } from '../config/index.js';
import { isSecretName, maskUrlCredentials } from '../storage/index.js';
import { BackupError, backupSqlite, restoreSqlite } from './sqlite-backup.js';

/**
 * The configured PostgreSQL URL without its secrets, for a command line the operator runs (argv and shell history
 * are readable by others): the user info's password and every parameter whose name says it is a secret (`password`,
 * `sslpassword`, `PASSWORD`, `pass%77ord`…: the masking rule, isSecretName; path-valued ones such as `sslkey` stay,
 * pg_dump needs them). pg_dump and pg_restore then take the password from PGPASSWORD or ~/.pgpass, or ask for it.
 * The query is left as written, but for those parameters removed as text: re-serialising it (searchParams) would
 * turn `%20` into `+`, which libpq reads as a plus sign. A value the URL parser refuses, or one still holding
 * something the masking would hide (`;client_secret=` inside another value), is shown masked instead: the
 * operator has to write it out.
 */
export function urlWithoutPassword(url: string): string {
  let withoutSecrets: string;
  try {
    const parsed = new URL(url);
    parsed.password = '';
    const parameters = parsed.search.slice(1).split('&');
    const kept = parameters.filter((parameter) => !isSecretName(parameter.split('=')[0]!));
    if (kept.length !== parameters.length) parsed.search = kept.length > 0 ? `?${kept.join('&')}` : '';
    withoutSecrets = parsed.toString();
  } catch {
    withoutSecrets = url;
  }
  return maskUrlCredentials(withoutSecrets);
}

/** What `backup` says for a PostgreSQL state database: its own tools make the consistent copy. */
export function postgresBackupGuidance(config: ServerConfig): string {
  const location = config.databaseLocation;
  const url = location.engine === 'postgres' ? urlWithoutPassword(location.url) : '';
  const database = shellWord(url);
  return [
    "the state database is PostgreSQL; back it up with PostgreSQL's tools, online and consistent (the dump",
    'holds token hashes and encrypted secrets: umask 077 keeps it to its owner; the password comes from',
    'PGPASSWORD or ~/.pgpass, or pg_dump asks for it):',
    `  (umask 077 && pg_dump --format=custom --file edgefleet.dump ${database})`,
    'and restore into an empty database with the server stopped:',
    `  pg_restore --no-owner --dbname ${database} edgefleet.dump`,
    ...(url.includes('?')
      ? [
          'libpq, which these tools use, refuses parameters only node-pg knows (sslmode=no-verify, ssl=true):',
          'take those out of the URL for them.',
        ]
      : []),
    `Copy these key files with every dump (the database is tied to them; a server refuses to start without them):`,
    ...keyMaterialToBackUp(config).map((place) => `  ${place}`),
    `and back up the blobs (${config.blob}) separately.`,
  ].join('\n');
}

export interface BackupCommandDeps<Options> {
  /** Adds the server's shared options (--config, --data-dir, --database, …) to a command. */
  addCommonOptions(command: Command): Command;
  configFrom(options: Options): Promise<ServerConfig>;
}

/** `edgefleet-server backup --out FILE` and `edgefleet-server restore --from FILE`. */
export function registerBackupCommands<Options extends object>(
  program: Command,
  deps: BackupCommandDeps<Options>,
): void {
  const say = (line: string) => process.stderr.write(`${line}\n`);
  deps
    .addCommonOptions(
      program
        .command('backup')
        .description('copy the SQLite state database, online and consistent, while the server runs')
        .requiredOption('--out <file>', 'the backup file to write (must not exist)'),
    )
    .action(async (options: Options & { out: string }) => {
      const config = await deps.configFrom(options);
      const location = config.databaseLocation;
      if (location.engine !== 'sqlite') throw new BackupError(postgresBackupGuidance(config));
      const result = await backupSqlite(location.file, options.out);
      say(
        `backed up ${location.file} to ${result.file} (${result.bytes} bytes, schema ${result.migrations.at(-1)})`,
      );
      say(
        'copy these key files with it (the database is tied to them; a server refuses to start without them):',
      );
      for (const place of keyMaterialToBackUp(config)) say(`  ${place}`);
      say(`and back up the blobs (${config.blob}) separately`);
    });
  deps
    .addCommonOptions(
      program
        .command('restore')
        .description('replace the SQLite state database with a backup (stop the server first)')
        .requiredOption('--from <file>', 'a file written by `edgefleet-server backup`'),
    )
    .action(async (options: Options & { from: string }) => {
      const config = await deps.configFrom(options);
      const location = config.databaseLocation;
      if (location.engine !== 'sqlite') throw new BackupError(postgresBackupGuidance(config));
      const result = await restoreSqlite(options.from, location.file);
      say(`restored ${options.from} to ${result.file} (schema ${result.migrations.at(-1)})`);
      if (result.previous) say(`the database it replaced is kept as ${result.previous}`);
      say('the key files backed up with it must be in place before the server starts:');
      for (const place of keyMaterialToBackUp(config)) say(`  ${place}`);
    });
}
