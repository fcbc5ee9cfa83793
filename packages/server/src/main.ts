#!/usr/bin/env node
/**
 * edgefleet-server: the EdgeFleet control plane.
 *   edgefleet-server [serve]          run the operator API and the device API
 *   edgefleet-server init             prepare the data dir and database; print the first admin token
 *   edgefleet-server token create|list|revoke
 *   edgefleet-server backup --out FILE | restore --from FILE
 */
import { Command, CommanderError, Option } from 'commander';
import { commandPrefix, FolderLockError, shellWord } from '@edgefleet/core';
import { FleetEventLog } from './audit/index.js';
import { ApiTokenStore, tokenScopeSchema } from './auth/index.js';
import { registerBackupCommands } from './backup/index.js';
import {
  ConfigError,
  KeyMaterialError,
  loadConfig,
  overridableSettings,
  secretConfigFileWarning,
  type OverridableSetting,
  type ServerConfig,
} from './config/index.js';
import {
  BlobStoreMismatchError,
  createLogger,
  databaseGivenUpExitCode,
  initServer,
  openStores,
  ServersRunningError,
  serverVersion,
  startServer,
} from './server/index.js';
import { DatabaseInUseError, DatabaseOpenError, NewerDatabaseError } from './storage/index.js';

type CommonOptions = { config?: string } & Partial<Record<string, string>>;

function addCommonOptions(command: Command): Command {
  command.option('-c, --config <file>', 'JSON config file (env EDGEFLEET_CONFIG)');
  const help: Record<OverridableSetting, string> = {
    'data-dir': 'data folder: SQLite file, blobs, keys (default ./.edgefleet/server)',
    listen:
      'operator API address host:port (default 127.0.0.1:8080; 0.0.0.0:8080 serves the network: set tls then)',
    'device-listen':
      'device API (mTLS) address host:port (default 127.0.0.1:8443; 0.0.0.0:8443 serves devices on other hosts)',
    'device-endpoint':
      'device API URL as devices reach it, handed out at enrollment (default https://<first server name>:<port>)',
    'device-server-names':
      'comma-separated host names/IPs for the device API certificate (default localhost,127.0.0.1)',
    database: 'postgres://… or a SQLite file (default <data-dir>/state.db)',
    'allow-empty-database':
      "true: start on an empty database although the data dir has keys or blobs, or the blob store holds another database's marker",
    blob: 's3://bucket/prefix or a folder (default <data-dir>/blobs)',
    'blob-endpoint': 'S3 endpoint URL for S3-compatible stores (MinIO, Ceph)',
    'blob-region': 'S3 region (default us-east-1)',
    'log-level': 'fatal|error|warn|info|debug|trace|silent (default info)',
  };
  for (const [flag, setting] of Object.entries(overridableSettings)) {
    command.addOption(
      new Option(`--${flag} <value>`, `${help[flag as OverridableSetting]} (env ${setting.env})`),
    );
  }
  return command;
}

/** For the commands that migrate the schema (serve, init, token): see refuseMigratingUnderRunningServers. */
function addForceMigrate(command: Command): Command {
  return command.option(
    '--force-migrate',
    'PostgreSQL: apply new migrations although servers (of an older version) ran on the database within the last minute; they break on the new schema: stop them first (SQLite: the database lock decides)',
  );
}

/** Whether --force-migrate was given (commander sets it true; the common options are strings). */
function forceMigrateOf(options: CommonOptions): boolean {
  return (options as { forceMigrate?: unknown }).forceMigrate === true;
}

async function configFrom(options: CommonOptions): Promise<ServerConfig> {
  const flags: Partial<Record<OverridableSetting, string>> = {};
  for (const flag of Object.keys(overridableSettings) as OverridableSetting[]) {
    // commander camel-cases flag names: data-dir → dataDir
    const value = options[flag.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase())];
    if (value !== undefined) flags[flag] = value;
  }
  return loadConfig({ configFile: options.config, flags });
}

/**
 * `token create` for a second admin token, on the same state as the command given `options` used, started the
 * way this server was (`npx edgefleet-server` through npx, else `edgefleet-server`).
 */
function tokenCreateCommand(options: CommonOptions, env: NodeJS.ProcessEnv): string {
  const same = [
    ['--config', options.config],
    ['--data-dir', options.dataDir],
  ].flatMap(([flag, value]) => (value === undefined ? [] : [`${flag} ${shellWord(value)}`]));
  // A database URL may hold a password: named, not printed.
  if (options.database !== undefined) same.push('--database <the same database>');
  return [
    `${commandPrefix('edgefleet-server', env)} token create --name admin-2 --scope admin`,
    ...same,
  ].join(' ');
}

async function serve(options: CommonOptions): Promise<void> {
  const config = await configFrom(options);
  const configFile = options.config ?? process.env.EDGEFLEET_CONFIG;
  const fileWarning =
    configFile === undefined || configFile === '' ? undefined : await secretConfigFileWarning(configFile);
  const server = await startServer(config, {
    warnings: fileWarning === undefined ? [] : [fileWarning],
    // Logged by the server; 2, which the unit does not restart: the blob setting must be fixed by a person.
    onStoppedForWrongBlobStore: () => process.exit(2),
    // Logged by the server. 3 (a transaction left open), which the unit restarts on: the restart discards it;
    // 2 (damage), which it does not: a person must restore a backup.
    onStoppedForDatabaseGivenUp: (givenUp) => process.exit(databaseGivenUpExitCode(givenUp)),
    forceMigrate: forceMigrateOf(options),
  });
  // Logged as JSON (stdout); printed plainly too for whoever started the server at a terminal. Not elsewhere:
  // under systemd both streams go to the journal, which would hold every warning twice.
  if (process.stderr.isTTY) {
    for (const warning of server.warnings) process.stderr.write(`edgefleet-server: warning: ${warning}\n`);
  }
  let signals = 0;
  const stop = (signal: NodeJS.Signals) => {
    signals += 1;
    if (signals > 1) {
      server.logger.warn({ signal }, 'second signal: exiting without waiting');
      // A database given up keeps its code (2: damaged, not restarted; 3), so a second signal brings no restart loop.
      process.exit(server.exitCode() || 1);
    }
    server.logger.info({ signal }, 'shutting down: finishing in-flight requests');
    server.close().then(
      // Not 0 when the database was given up (a signal during its drain): the give-up's code wins.
      () => process.exit(server.exitCode()),
      (error: unknown) => {
        server.logger.error({ err: error }, 'shutdown failed');
        process.exit(server.exitCode() || 1);
      },
    );
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

const warnOnStderr = (message: string) =>
  void process.stderr.write(`edgefleet-server: warning: ${message}\n`);

/**
 * A command's fleet events (a token created or revoked beside the server): the lines a server would write, as
 * JSON on stderr at the configured level, the actor `local`. Names, ids and scopes only, never a token.
 */
function commandEvents(config: ServerConfig): FleetEventLog {
  return new FleetEventLog(createLogger(config.logLevel, 'stderr').child({ log: 'fleet-events' }));
}

async function withTokens<T>(options: CommonOptions, use: (tokens: ApiTokenStore) => Promise<T>): Promise<T> {
  const config = await configFrom(options);
  const { database, blobs } = await openStores(config, undefined, {
    besideServer: true,
    forceMigrate: forceMigrateOf(options),
    warn: warnOnStderr,
  });
  try {
    return await use(new ApiTokenStore(database.db, Date.now, commandEvents(config)));
  } finally {
    await blobs.close();
    await database.close();
  }
}

const program = new Command('edgefleet-server')
  .description('EdgeFleet control plane: fleets, devices and identities, model packaging, heartbeats')
  .version(serverVersion(), '-v, --version', 'print the version and exit')
  .showHelpAfterError()
  // Thrown, not exited with commander's 1: a wrong command line is exit 2 (exitCodeOf). Inherited by the
  // subcommands added below.
  .exitOverride();

addForceMigrate(
  addCommonOptions(program.command('serve', { isDefault: true }).description('run the server')),
).action(serve);

addForceMigrate(
  addCommonOptions(
    program
      .command('init')
      .description('prepare the data dir and database; print the first admin API token (once) on stdout'),
  ),
).action(async (options: CommonOptions) => {
  const config = await configFrom(options);
  const result = await initServer(config, {
    forceMigrate: forceMigrateOf(options),
    warn: warnOnStderr,
    events: commandEvents(config),
  });
  process.stderr.write(`initialised ${result.dataDir} (state: ${result.database}, blobs: ${result.blobs})\n`);
  process.stderr.write(`device CA ${result.deviceCaFile} (SHA-256 ${result.deviceCaSha256})\n`);
  process.stderr.write(
    `package-signing root ${result.signingRootFile} (SHA-256 ${result.signingRootSha256}): copy it into each device's root-certs folder\n`,
  );
  if (result.adminToken) {
    process.stderr.write('first admin API token (shown once; store it now):\n');
    process.stdout.write(`${result.adminToken}\n`);
  } else {
    // Shown when the data dir was initialised before (by an earlier init, or by `npm start`'s demo, which shares
    // ./.edgefleet/server): the command must run as printed, as it is the way out for whoever lost that token.
    process.stderr.write(
      'no token printed: an active admin token already exists (printed by the first init, or by `npm start`); ' +
        `create another with \`${tokenCreateCommand(options, process.env)}\`\n`,
    );
  }
});

const token = program.command('token').description('operator API tokens (works on the database directly)');
addForceMigrate(
  addCommonOptions(
    token
      .command('create')
      .description('create a token and print it (once) on stdout')
      .requiredOption('--name <name>', 'what the token is for')
      .addOption(
        new Option('--scope <scope>', 'admin or read-only')
          .choices(tokenScopeSchema.options)
          .default('read-only'),
      ),
  ),
).action(async (options: CommonOptions & { name: string; scope: string }) => {
  const created = await withTokens(options, (tokens) =>
    tokens.create({ name: options.name, scope: tokenScopeSchema.parse(options.scope) }),
  );
  process.stderr.write(
    `created ${created.record.scope} token ${created.record.id} "${created.record.name}"\n`,
  );
  process.stdout.write(`${created.token}\n`);
});
addForceMigrate(
  addCommonOptions(token.command('list').description('list tokens (id, scope, name, state)')),
).action(async (options: CommonOptions) => {
  const records = await withTokens(options, (tokens) => tokens.list({ limit: 10_000 }));
  for (const r of records) {
    process.stdout.write(`${r.id}\t${r.scope}\t${r.revokedAt === null ? 'active' : 'revoked'}\t${r.name}\n`);
  }
});
addForceMigrate(
  addCommonOptions(token.command('revoke').description('revoke a token by id').argument('<id>')),
).action(async (id: string, options: CommonOptions) => {
  if (!(await withTokens(options, (tokens) => tokens.revoke(id)))) {
    process.stderr.write(`no active token with id ${id}\n`);
    process.exitCode = 1;
  }
});

registerBackupCommands(program, { addCommonOptions, configFrom });

program.parseAsync(process.argv).catch((error: unknown) => {
  // Commander printed its own message (and the help, for a usage error).
  if (!(error instanceof CommanderError))
    process.stderr.write(`edgefleet-server: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(exitCodeOf(error));
});

/**
 * The exit codes (packages/server/README.md, "Exit codes"). As the agent's, 2 and 4 are the codes the unit does
 * not restart on (RestartPreventExitStatus): a person must act, and restarting would fail alike every 2 s. 4:
 * another server holds the SQLite database, or servers ran lately on a database this build would migrate (stop them). 2: the command line or the config cannot be used; the
 * SQLite database's lock file cannot be used (a link, not a regular file, another user's, damaged) or it or the
 * database may not be written (permissions, a read-only filesystem); the blob store is another database's; the key
 * material (device CA, signing files, access-key encryption key) is missing where configured or is not the one the
 * database is tied to (KeyMaterialError: a replica set up with its own keys); a newer
 * build migrated the database (a downgrade: run that build, or restore the pre-upgrade backup); the SQLite
 * database is damaged (found at start, or while serving: databaseGivenUpExitCode). 1: anything else, a lock that
 * failed for a reason that may pass (an I/O error, a full disk) included: the unit restarts it. 3 (not from here:
 * onStoppedForDatabaseGivenUp, ServerHandle.exitCode): a transaction left open, restarted on purpose.
 */
function exitCodeOf(error: unknown): number {
  if (error instanceof CommanderError) return error.exitCode === 0 ? 0 : 2;
  if (error instanceof DatabaseInUseError || error instanceof ServersRunningError) return error.exitCode;
  if (error instanceof FolderLockError || error instanceof DatabaseOpenError)
    return error.problem === 'failed' ? 1 : 2;
  if (
    error instanceof ConfigError ||
    error instanceof KeyMaterialError ||
    error instanceof BlobStoreMismatchError ||
    error instanceof NewerDatabaseError
  )
    return 2;
  return 1;
}
