import { randomUUID } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import type { IncomingMessage } from 'node:http';
import type { FastifyInstance } from 'fastify';
import type { MigrationResult } from 'kysely';
import type { Logger } from 'pino';
import { FleetEventLog } from '../audit/index.js';
import {
  AccessKeyStore,
  accessKeyRoutes,
  ApiTokenStore,
  apiTokenRoutes,
  openAccessKeyEncryptionKey,
  operatorAuthenticators,
  RecentTokenVerifications,
} from '../auth/index.js';
import {
  BlobStoreUnavailableError,
  createBlobStore,
  S3Objects,
  type BlobStore,
  type BlobStoreProblem,
  type S3ConnectionOptions,
} from '../blobs/index.js';
import {
  CompilationJobStore,
  failExpiredImports,
  startCompilationLeaseSweeper,
} from '../compilation/index.js';
import {
  bucketsWithLocalCaptures,
  captureDeviceRoutes,
  FleetOutputs,
  localCapturesLeftWarning,
  UploadSlots,
  type CaptureWriter,
} from '../captures/index.js';
import { accessKeyEncryptionKeyFileOf, hasS3, KeyMaterialError, type ServerConfig } from '../config/index.js';
import { fileExists } from '../identity/key-files.js';
import {
  ChangeFeed,
  ConsoleSessionStore,
  consoleEventRoutes,
  consoleSessionAuthenticator,
  consoleSignOutAuthenticator,
  consoleSessionRoutes,
  consoleStaticRoutes,
  defaultConsoleDir,
} from '../console/index.js';
import {
  DeploymentService,
  deploymentDeviceRoutes,
  deploymentRoutes,
  startDeploymentSweeper,
  startPlanRetentionSweeper,
  stopDeregisteredDeviceTargets,
} from '../deployments/index.js';
import { DeviceStore, deviceRoutes } from '../devices/index.js';
import { FleetStore, fleetRoutes } from '../fleets/index.js';
import {
  heartbeatDeviceRoutes,
  heartbeatOperatorRoutes,
  HeartbeatService,
  startRetentionSweeper,
} from '../heartbeats/index.js';
import { buildApp } from '../http/app.js';
import { Readiness } from '../http/readiness.js';
import { OutageLog } from '../http/outage-log.js';
import { checkFreeSpace } from '../http/free-space.js';
import { RecentDiskFaults } from '../http/recent-disk-faults.js';
import { loadInstanceId } from './instance-id.js';
import { listenerRequestTimeoutMs } from '../http/request-deadline.js';
import {
  bindDeviceCa,
  DeviceCa,
  DeviceIdentityService,
  deviceAuthenticator,
  enrollmentRoutes,
  enrollmentTokenAuthenticator,
  identityDeviceRoutes,
  identityOperatorRoutes,
} from '../identity/index.js';
import {
  FleetStateReader,
  metricsRoutes,
  readFailureLog,
  registerFleetStateGauges,
  ServerMetrics,
} from '../metrics/index.js';
import { ModelStore, modelRoutes } from '../models/index.js';
import {
  bindSigningRoot,
  openSigningIdentity,
  PackagingJobStore,
  packagingDeviceRoutes,
  packagingRoutes,
  PackagingWorker,
  type PackageSigningIdentity,
} from '../packaging/index.js';
import {
  compilationOperations,
  deploymentPlanOperations,
  deviceOperations,
  exportFacadePackages,
  facadePackageS3Url,
  fleetOperations,
  packagingOperations,
  SageMakerDispatcher,
  sageMakerRoutes,
  tagOperations,
} from '../sagemaker/index.js';
import {
  DatabaseInUseError,
  DatabaseOpenError,
  hasNoSchema,
  lockSqliteDatabase,
  maskUrlCredentials,
  migrateToLatest,
  migrationNames,
  NewerDatabaseError,
  damagedDatabaseError,
  isDamagedDatabaseError,
  openDatabase,
  databaseClock,
  warnOfClockSkew,
  pingDatabase,
  refuseNewerDatabase,
  type ServerDatabase,
} from '../storage/index.js';
import {
  applyListenerLimits,
  ConnectionRefusalLog,
  fitConnectionCaps,
  openFileLimit,
  tlsServerLimitOptions,
  type ListenerLimits,
} from '@edgefleet/core';
import {
  DEVICE_BODY_LIMIT_BYTES,
  DEVICE_LISTENER_LIMITS,
  OPERATOR_LISTENER_LIMITS,
} from './listener-limits.js';
import { EmptyDatabaseError, refuseSilentFreshInstall } from './fresh-install-guard.js';
import {
  BlobStoreMismatchError,
  blobStoreBinder,
  markStoreUncheckedForNewDatabase,
  refuseAnotherDatabasesStore,
  watchBlobStoreBinding,
} from './blob-store-binding.js';
import { deviceEndpointFor, networkWarnings } from './network-warnings.js';
import { readTlsPair } from './tls-files.js';
import { createLogger } from './logger.js';
import { sweepStaleTempFiles } from './temp-sweep.js';
import {
  refuseMigratingUnderRunningServers,
  registerServer,
  captureHolderMayWrite,
  ServersRunningError,
} from './server-registry.js';
import { schemaVersion, serverVersion } from './version.js';

/** The in-process API of a running server: what tests, the CLI and later facades build on. */
export interface ServerServices {
  apiTokens: ApiTokenStore;
  accessKeys: AccessKeyStore;
  compilationJobs: CompilationJobStore;
  fleets: FleetStore;
  devices: DeviceStore;
  identity: DeviceIdentityService;
  deviceCa: DeviceCa;
  heartbeats: HeartbeatService;
  models: ModelStore;
  packagingJobs: PackagingJobStore;
  packagingWorker: PackagingWorker;
  signing: PackageSigningIdentity;
  consoleSessions: ConsoleSessionStore;
  deployments: DeploymentService;
}

export interface ServerHandle {
  /** Base URL of the operator API, e.g. http://127.0.0.1:8080 (the bound port when 0 was asked for). */
  readonly operatorUrl: string;
  /** Base URL of the device API (HTTPS, mutual TLS), as bound. */
  readonly deviceUrl: string;
  /** What devices are told to use (config deviceEndpoint, or derived from the first server name). */
  readonly deviceEndpoint: string;
  /** Network set-up warnings logged at start (see networkWarnings); `serve` also prints them at a terminal. */
  readonly warnings: readonly string[];
  readonly config: ServerConfig;
  readonly database: ServerDatabase;
  readonly blobs: BlobStore;
  readonly logger: Logger;
  readonly services: ServerServices;
  /** Stops accepting work, lets in-flight requests finish, then releases the database and blob store. */
  close(): Promise<void>;
  /**
   * The code a `serve` exits with once closed: 0, or the give-up's (databaseGivenUpExitCode) when the database
   * was given up, whatever stopped the server (a SIGTERM during the give-up's drain does not make it 0).
   */
  exitCode(): number;
}

export interface StartServerOptions {
  logger?: Logger;
  /** Overrides of the listeners' timeouts and connection caps (tests use small ones). */
  listenerLimits?: { operator?: Partial<ListenerLimits>; device?: Partial<ListenerLimits> };
  /** The process's open file limit, which the caps must fit in; default: read from the system. */
  openFileLimit?: number;
  /** Warnings found before the start (serve: the config file's mode), logged and returned with the others. */
  warnings?: readonly string[];
  /**
   * Called once the server has stopped itself because its blob store, unchecked at start (it did not answer),
   * turned out to be another database's (serve: exits 2, as a person must fix the setting).
   */
  onStoppedForWrongBlobStore?: (error: BlobStoreMismatchError) => void;
  /** The first wait before the blob store is checked again when it did not answer at start (tests: short). */
  blobStoreRecheckMs?: number;
  /** serve --force-migrate: migrate although servers ran on the database lately (logged at warn). */
  forceMigrate?: boolean;
  /**
   * Called once the server has stopped itself (in-flight requests given GIVEN_UP_DRAIN_MS) because it gave its
   * database up while serving (DatabaseGivenUp; logged): serve exits databaseGivenUpExitCode(givenUp). Not
   * called for a give-up during the start (startServer rejects instead) or during a close already under way
   * (that close ends the server; exitCode() says the give-up's code).
   */
  onStoppedForDatabaseGivenUp?: (givenUp: DatabaseGivenUp) => void;
  /** How long GET /metrics reuses the fleet's counts; default DEFAULT_FLEET_STATE_TTL_MS (tests: 0, read every scrape). */
  fleetStateTtlMs?: number;
}

function urlOf(app: FastifyInstance, scheme: 'http' | 'https'): string {
  const address = app.server.address() as AddressInfo;
  const host = address.address === '0.0.0.0' || address.address === '::' ? '127.0.0.1' : address.address;
  return `${scheme}://${host.includes(':') ? `[${host}]` : host}:${address.port}`;
}

/**
 * Opens the state and blob stores the configuration names, migrating the schema to this build's. A new (empty)
 * database is refused when the data dir shows an earlier run (refuseSilentFreshInstall) or the blob store is
 * another database's (refuseAnotherDatabasesStore), unless allowEmptyDatabase says that is intended.
 */
export async function openStores(
  config: ServerConfig,
  logger?: Logger,
  options: {
    besideServer?: boolean;
    /** Migrate although servers ran on the database lately (refuseMigratingUnderRunningServers), with a warning. */
    forceMigrate?: boolean;
    /** Where that warning goes without a logger (init, token: stderr). */
    warn?: (message: string) => void;
    /**
     * Hears the database given up while in use (a transaction left open, a damaged SQLite file): it refuses
     * every use from then on. Without it, the logger hears it.
     */
    onGivenUp?: (givenUp: DatabaseGivenUp) => void;
    /** Hears each write that reached the SQLite file (readiness clears a recent I/O error by it). */
    onWriteCommitted?: () => void;
    /** Hears each blob stored in a local blob folder (likewise). */
    onBlobWritten?: () => void;
  } = {},
): Promise<{ database: ServerDatabase; blobs: BlobStore }> {
  await mkdir(config.dataDir, { recursive: true, mode: 0o700 });
  const database = await openDatabase(config.databaseLocation, {
    maxConnections: config.databaseMaxConnections,
    onConnectionError: (error) =>
      logger?.warn({ err: error }, 'database connection lost; it will be replaced'),
    onRollbackFailure: (error, outcome) => {
      if (outcome === 'ended')
        logger?.warn(
          { err: error },
          'a failed transaction could not be rolled back at first; it has ended, and the error that failed it is the one reported',
        );
      else if (options.onGivenUp !== undefined) options.onGivenUp({ reason: 'rollbackFailed', error });
      else
        logger?.error(
          { err: error },
          'a failed transaction could not be rolled back and is still open: the database refuses every use until the process is restarted',
        );
    },
    onDamaged: (error) => {
      if (options.onGivenUp !== undefined) options.onGivenUp({ reason: 'damaged', error });
      else logger?.error({ err: error }, error.message);
    },
    ...(options.onWriteCommitted !== undefined && { onWriteCommitted: options.onWriteCommitted }),
  });
  const blobs = createBlobStore(
    config.blobLocation,
    s3ConnectionOf(config),
    options.onBlobWritten === undefined ? {} : { onLocalWrite: options.onBlobWritten },
  );
  try {
    await refuseSilentFreshInstall(config, database);
    let storeUnchecked = false;
    if (!config.allowEmptyDatabase && (await hasNoSchema(database.db))) {
      let answers = true;
      try {
        await checkBlobStore(blobs);
      } catch {
        // An outage must not keep a server from starting: the store is checked once it answers (bindBlobStore).
        answers = false;
        storeUnchecked = true;
      }
      if (answers) {
        try {
          await refuseAnotherDatabasesStore(
            blobs,
            blobStoreLocationOf(config, blobs),
            database.description,
            () => hasNoSchema(database.db),
          );
        } catch (error) {
          throw new BlobStoreCheckError(error);
        }
      }
    }
    // Before anything else writes: kysely would call a newer build's schema "corrupted" (exit 1, restarted).
    const recorded = await refuseNewerDatabase(database.db, database.description, serverVersion());
    // Worked out once, for both checks below (refuseNewerDatabase has refused names this build does not know).
    const pending = migrationNames.filter((name) => !recorded.includes(name));
    // Without a schema (nothing recorded) no server runs on the database: a `serve` migrates it at start.
    if (options.besideServer === true && recorded.length > 0)
      await refuseMigratingUnderServer(config, pending);
    await refuseMigratingUnderRunningServers(database, {
      database: database.description,
      pending,
      schemaVersion: schemaVersion(),
      force: options.forceMigrate === true,
      warn: (message) => (logger ? logger.warn(message) : options.warn?.(message)),
    });
    const results = await migrateToLatest(database.db);
    if (logger !== undefined) logSchema(logger, database, results);
    if (storeUnchecked) await markStoreUncheckedForNewDatabase(database.db);
  } catch (error) {
    await blobs.close();
    await database.close();
    if (error instanceof BlobStoreCheckError) throw error.cause;
    if (
      error instanceof EmptyDatabaseError ||
      error instanceof NewerDatabaseError ||
      error instanceof ServersRunningError
    )
      throw error;
    // Damage quick_check missed at open (it skips index-to-table checks): still a person's to fix, exit 2.
    const found = damageFoundByDriver(error);
    if (found !== undefined) throw found;
    if (config.databaseLocation.engine === 'sqlite' && isDamagedDatabaseError(error))
      throw damagedDatabaseError(
        config.databaseLocation.file,
        error instanceof Error ? error.message : String(error),
        error,
      );
    // Name the database in every error about it: the operator may run several.
    throw new Error(
      `database ${database.description}: ${error instanceof Error ? error.message : String(error)}`,
      { cause: error },
    );
  }
  return { database, blobs };
}

/** Why a database in use was given up (openStores' onGivenUp). */
export interface DatabaseGivenUp {
  /** 'rollbackFailed': a transaction stays open on the one SQLite connection; 'damaged': SQLITE_CORRUPT/NOTADB. */
  reason: 'rollbackFailed' | 'damaged';
  error: unknown;
}

/**
 * The exit code of a `serve` that gave its database up because a failed transaction stayed open on the one
 * SQLite connection: not 2 or 4, so the systemd unit (and any supervisor restarting on failure) restarts it on
 * purpose: the restart discards that transaction.
 */
export const DATABASE_GIVEN_UP_EXIT_CODE = 3;

/**
 * The exit code of a `serve` that found its SQLite file damaged while serving: 2, as the start check's, which
 * the unit does not restart. A restart could not help, and the start check may not see the damage (a file over
 * 1 GiB, an index that no longer matches its table): restarting would serve and write on into the damaged file
 * until the next request met it, for ever.
 */
export const DATABASE_DAMAGED_EXIT_CODE = 2;

/** The code a `serve` that gave its database up exits with (DATABASE_DAMAGED_EXIT_CODE, DATABASE_GIVEN_UP_EXIT_CODE). */
export function databaseGivenUpExitCode(givenUp: DatabaseGivenUp): number {
  return givenUp.reason === 'damaged' ? DATABASE_DAMAGED_EXIT_CODE : DATABASE_GIVEN_UP_EXIT_CODE;
}

/**
 * How long a server that gave its database up waits for the requests in flight (they fail fast: the database
 * refuses every use) before it exits anyway: a slow upload must not keep a broken server from its restart.
 */
const GIVEN_UP_DRAIN_MS = 5_000;

/** The damage the SQLite driver found (the DatabaseOpenError it wraps in DatabaseUnavailableError), if any. */
function damageFoundByDriver(error: unknown): DatabaseOpenError | undefined {
  for (let cause = error, depth = 0; cause !== undefined && cause !== null && depth < 5; depth++) {
    if (cause instanceof DatabaseOpenError) return cause;
    cause = (cause as { cause?: unknown }).cause;
  }
  return undefined;
}

/**
 * After an upgrade, the log says which version runs on which schema, and what changed it: one line per migration
 * this start applied (none on a start that applied none). The database is named as `description` masks it.
 */
function logSchema(logger: Logger, database: ServerDatabase, results: readonly MigrationResult[]): void {
  const applied = results.filter((result) => result.status === 'Success').map((r) => r.migrationName);
  // Migrated to the latest (a newer build's database was refused before): this build's schema.
  const schema = schemaVersion();
  const version = serverVersion();
  logger.info(
    {
      event: 'database_opened',
      version,
      database: database.description,
      schema,
      migrationsApplied: applied.length,
    },
    `edgefleet-server ${version}: database ${database.description} at schema ${schema}`,
  );
  for (const migration of applied)
    logger.info(
      { event: 'migration_applied', migration, database: database.description },
      `applied database migration ${migration}`,
    );
}

/**
 * For a command run beside `serve` (init, token): refuses to migrate a SQLite database a running server holds,
 * when this build has migrations it lacks (a package upgraded, the server not restarted yet): the old server
 * would run on a schema it does not know. PostgreSQL does not say whether a server runs: the same version only.
 */
async function refuseMigratingUnderServer(config: ServerConfig, pending: readonly string[]): Promise<void> {
  if (config.databaseLocation.engine !== 'sqlite' || pending.length === 0) return;
  try {
    // Released at once: only whether a server holds it matters (a server started now migrates itself).
    lockSqliteDatabase(config.databaseLocation.file).release();
  } catch (error) {
    if (!(error instanceof DatabaseInUseError)) throw error;
    throw new Error(
      `a running edgefleet-server${error.holderPid === undefined ? '' : ` (pid ${error.holderPid})`} holds ` +
        `this database, and its schema is older than this version's (${pending.length} migration(s) to apply, ` +
        `${pending.join(', ')}): migrating it would change the schema under that server. Restart the server ` +
        'with this version first (it migrates at start; systemctl restart edgefleet-server), then run this again',
      { cause: error },
    );
  }
}

/** Carries an error about the blob store past openStores' wording for database errors. */
class BlobStoreCheckError extends Error {
  constructor(override readonly cause: unknown) {
    super('blob store check failed', { cause });
  }
}

/** The blob store for messages: where it is, and for S3 where it is reached (credentials masked). */
export function blobStoreLocationOf(config: ServerConfig, blobs: BlobStore): string {
  if (config.blobLocation.kind !== 's3') return blobs.description;
  const endpoint = config.s3.endpoint;
  return `${blobs.description} at ${endpoint !== undefined ? maskUrlCredentials(endpoint) : `AWS S3 (region ${config.s3.region ?? 'us-east-1'})`}`;
}

/** The settings that fix each reason the server's blob store cannot be used. */
const BLOB_SETTING_BY_PROBLEM: Record<BlobStoreProblem, string> = {
  'missing-bucket': 'the bucket is named by blob (--blob, EDGEFLEET_BLOB: s3://bucket/prefix)',
  forbidden:
    'the credentials are s3.accessKeyId and s3.secretAccessKey (config file), or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY',
  credentials:
    'the credentials are s3.accessKeyId and s3.secretAccessKey (config file), or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY',
  unreachable:
    'the endpoint is --blob-endpoint (EDGEFLEET_BLOB_ENDPOINT, s3.endpoint; unset: AWS S3 in --blob-region)',
};

/**
 * Checks that the server's blob store answers (HeadBucket for S3), with an error that names the store, its
 * bucket, the reason and the setting to fix, instead of the S3 SDK's own words (`UnknownError`).
 */
export async function checkBlobStore(blobs: BlobStore): Promise<void> {
  try {
    await blobs.check();
  } catch (error) {
    if (error instanceof BlobStoreUnavailableError)
      throw new Error(`${error.message} (${BLOB_SETTING_BY_PROBLEM[error.problem]})`, { cause: error });
    const answer = s3AnswerOf(error);
    if (answer === undefined) throw error;
    // Any other answer (a 301 from AWS for a bucket in another region, a 400) would otherwise reach the operator
    // as the SDK's own name for it ("UnknownError"), which says nothing of what to change.
    const fix =
      answer.bucketRegion !== undefined
        ? `the bucket is in region ${answer.bucketRegion}: set --blob-region (EDGEFLEET_BLOB_REGION, s3.region) to it`
        : 'check blob (--blob, EDGEFLEET_BLOB), --blob-endpoint (EDGEFLEET_BLOB_ENDPOINT, s3.endpoint) and --blob-region (EDGEFLEET_BLOB_REGION, s3.region)';
    throw new Error(
      `cannot use the blob store ${blobs.description}: checking its bucket was answered with HTTP ${answer.status}; ${fix}`,
      { cause: error },
    );
  }
}

/** The HTTP status of an S3 SDK error, and the region S3 names for the bucket (a 301 carries it as a header). */
function s3AnswerOf(error: unknown): { status: number; bucketRegion: string | undefined } | undefined {
  const { $metadata, $response } = (error ?? {}) as {
    $metadata?: { httpStatusCode?: number };
    $response?: { headers?: Record<string, string | undefined> };
  };
  const status = $metadata?.httpStatusCode;
  if (status === undefined) return undefined;
  const region = $response?.headers?.['x-amz-bucket-region'];
  return {
    status,
    bucketRegion: region !== undefined && /^[a-z0-9-]{1,64}$/.test(region) ? region : undefined,
  };
}

/** How the server reaches its S3-compatible store (blobs, and the SageMaker facade's model inputs and outputs). */
export function s3ConnectionOf(config: ServerConfig): S3ConnectionOptions {
  return {
    ...(config.s3.endpoint !== undefined ? { endpoint: config.s3.endpoint } : {}),
    ...(config.s3.region !== undefined ? { region: config.s3.region } : {}),
    ...(config.s3.forcePathStyle !== undefined ? { forcePathStyle: config.s3.forcePathStyle } : {}),
    ...(config.s3.accessKeyId !== undefined && config.s3.secretAccessKey !== undefined
      ? { credentials: { accessKeyId: config.s3.accessKeyId, secretAccessKey: config.s3.secretAccessKey } }
      : {}),
    // The blob store's; clients with timeouts of their own (fleet outputs, compilation imports) set theirs over these.
    socketTimeoutMs: config.s3.socketTimeoutMs,
    connectionTimeoutMs: config.s3.connectionTimeoutMs,
  };
}

/** Loads (or, unless the operator provided it, creates) the device CA and ties the database to it. */
export async function openDeviceCa(
  config: ServerConfig,
  database: ServerDatabase,
  logger?: Logger,
): Promise<DeviceCa> {
  const ca = await DeviceCa.open(config.deviceCa, {
    generate: !config.provided.deviceCa,
    ...(logger ? { warn: (message: string) => logger.warn(message) } : {}),
  });
  await bindDeviceCa(database.db, ca.fingerprintSha256);
  return ca;
}

/** Loads (or, unless the operator provided it, creates) the package-signing identity and ties the database to it. */
export async function openPackageSigning(
  config: ServerConfig,
  database: ServerDatabase,
  logger?: Logger,
): Promise<PackageSigningIdentity> {
  if (config.provided.signing) await refuseMissingSigningFiles(config.signing);
  const signing = await openSigningIdentity(config.signing, {
    generate: !config.provided.signing,
    ...(logger ? { warn: (message: string) => logger.warn(message) } : {}),
  });
  await bindSigningRoot(database.db, signing.rootFingerprintSha256);
  return signing;
}

/** Configured signing files are never generated: when some are missing, say what to copy (exit 2). */
async function refuseMissingSigningFiles(files: ServerConfig['signing']): Promise<void> {
  const configured = [
    ['signing.rootCertFile', files.rootCertFile],
    ['signing.certFile', files.certFile],
    ['signing.keyFile', files.keyFile],
  ] as const;
  const missing = [];
  for (const [key, file] of configured) if (!(await fileExists(file))) missing.push(`${key} ${file}`);
  if (missing.length === 0) return;
  throw new KeyMaterialError(
    `${missing.length === configured.length ? 'signing is set but none of its files exists' : 'signing is set but some of its files are missing'}: ` +
      `${missing.join(', ')}; configured key files are never generated: copy them from the first server ` +
      '(signing/root.crt, signing/signing.crt and signing/signing.key in its data dir), or unset signing to use ' +
      "(or generate) the files in the data dir's signing/ folder",
  );
}

/**
 * The access-key encryption key's file: a configured one is never generated (as deviceCa's and signing's are not),
 * since a new key would rebind a database that holds no access key yet, and the servers with the right file would
 * then be refused at their next start.
 */
async function configuredAccessKeyFile(config: ServerConfig): Promise<string> {
  const file = accessKeyEncryptionKeyFileOf(config);
  if (config.sagemaker.accessKeyEncryptionKeyFile !== undefined && !(await fileExists(file)))
    throw new KeyMaterialError(
      `sagemaker.accessKeyEncryptionKeyFile is set but ${file} does not exist; configured key files are never ` +
        "generated: copy the first server's (access-keys/encryption.key in its data dir, 0600), or unset " +
        "sagemaker.accessKeyEncryptionKeyFile to use (or generate) the data dir's access-keys/encryption.key",
    );
  return file;
}

async function deviceTlsOptions(config: ServerConfig, ca: DeviceCa, limits: ListenerLimits) {
  const generated = config.provided.deviceTls
    ? undefined
    : // Generated at every start: devices trust the CA, not this certificate.
      ca.issueServerCertificate(config.deviceServerNames);
  const pair = generated
    ? { cert: generated.certificatePem, key: generated.privateKeyPem }
    : await readTlsPair('deviceTls', config.deviceTls);
  return {
    cert: pair.cert,
    key: pair.key,
    ca: [ca.certificatePem],
    // Ask every client for a certificate but let the request through, so that device routes can answer
    // with a precise error (expired, unknown, revoked) and enrollment can work without one.
    requestCert: true,
    rejectUnauthorized: false,
    minVersion: 'TLSv1.2' as const,
    ...tlsServerLimitOptions(limits),
  };
}

/** Starts the control plane: the operator API and the device API (mutual TLS). */
export async function startServer(
  config: ServerConfig,
  options: StartServerOptions = {},
): Promise<ServerHandle> {
  const logger = options.logger ?? createLogger(config.logLevel);
  const fileLimit = options.openFileLimit ?? openFileLimit();
  const fitted = fitConnectionCaps(
    [
      { ...OPERATOR_LISTENER_LIMITS, ...options.listenerLimits?.operator },
      { ...DEVICE_LISTENER_LIMITS, ...options.listenerLimits?.device },
    ],
    fileLimit,
  );
  const [operatorLimits, deviceLimits] = fitted.caps as [ListenerLimits, ListenerLimits];
  if (fitted.scaled) {
    logger.warn(
      {
        openFileLimit: fileLimit,
        operatorMaxConnections: operatorLimits.maxConnections,
        deviceMaxConnections: deviceLimits.maxConnections,
      },
      `the open file limit (${fileLimit}) is too low for the listeners' connection caps; lowered them to ${operatorLimits.maxConnections} (operator) and ${deviceLimits.maxConnections} (device) so that a flood cannot use up every descriptor; raise the limit (systemd LimitNOFILE=, ulimit -n) to serve more devices`,
    );
  }
  // One `serve` per SQLite file, taken before anything touches the database (migrations, start-up clean-ups,
  // sweepers): a second process would run its own on the same file.
  const databaseLock =
    config.databaseLocation.engine === 'sqlite'
      ? lockSqliteDatabase(config.databaseLocation.file)
      : undefined;
  // SELECT 1 and the blob store's check still pass on a full or failing disk: readiness also asks the file
  // system under the SQLite file and the blob folder for free space, and remembers recent I/O errors (cleared by
  // the next write that reaches the database file, or the blob folder).
  const diskFaults = new RecentDiskFaults();
  // Replaced once the stores are open; a database given up before (while migrating) fails openStores instead.
  let giveUpDatabase: (givenUp: DatabaseGivenUp) => void = () => undefined;
  let stores: Awaited<ReturnType<typeof openStores>>;
  try {
    stores = await openStores(config, logger, {
      forceMigrate: options.forceMigrate === true,
      onGivenUp: (givenUp) => giveUpDatabase(givenUp),
      onWriteCommitted: () => diskFaults.writeSucceeded('database'),
      onBlobWritten: () => diskFaults.writeSucceeded('blobStore'),
    });
  } catch (error) {
    databaseLock?.release();
    throw error;
  }
  const { database, blobs } = stores;
  const apps: FastifyInstance[] = [];
  const background: { stop(): Promise<void> }[] = [];
  const releaseAll = async () => {
    for (const app of apps) await app.close();
    for (const task of background) await task.stop();
    await blobs.close();
    await database.close();
    databaseLock?.release();
  };

  // The give-up path, one state machine: the first give-up decides the exit code and is logged once, whatever
  // else is happening. While starting, it only records it (startServer throws it: one shutdown, by the start's
  // own failure path); while serving, it starts the one close; during a close already under way (SIGTERM, a
  // wrong blob store), that close ends the server, and exitCode() says the give-up's code.
  let phase: 'starting' | 'serving' = 'starting';
  let shuttingDown = false;
  let closing: Promise<void> | undefined;
  let givenUp: DatabaseGivenUp | undefined;
  const close = () => {
    closing ??= (async () => {
      shuttingDown = true;
      await releaseAll();
      logger.info('edgefleet-server stopped');
    })();
    return closing;
  };
  giveUpDatabase = (first) => {
    // A second give-up (damage met by the ROLLBACK that then fails) adds nothing.
    if (givenUp !== undefined) return;
    givenUp = first;
    shuttingDown = true;
    if (phase === 'starting') return;
    logger.error(
      {
        event: 'database_given_up',
        reason: first.reason,
        database: database.description,
        exitCode: databaseGivenUpExitCode(first),
        err: first.error,
      },
      givenUpMessage(first, database.description),
    );
    if (closing !== undefined) return;
    // Not from inside the failing statement: its request is one of those closing waits for.
    setImmediate(() => {
      let drained: NodeJS.Timeout | undefined;
      void Promise.race([
        close().catch((error: unknown) => logger.error({ err: error }, 'shutdown failed')),
        new Promise<void>((resolve) => {
          drained = setTimeout(() => {
            logger.warn(
              { waitedMs: GIVEN_UP_DRAIN_MS },
              'requests still in flight after the drain; exiting without them',
            );
            resolve();
          }, GIVEN_UP_DRAIN_MS);
        }),
      ]).then(() => {
        clearTimeout(drained);
        options.onStoppedForDatabaseGivenUp?.(first);
      });
    });
  };
  /** The error a start that gave its database up fails with (exit 2 for damage, as the start check's). */
  const startFailureOf = (error: unknown): unknown => {
    if (givenUp === undefined) return error;
    if (givenUp.reason === 'damaged') return damageFoundByDriver(givenUp.error) ?? givenUp.error;
    return new Error(
      `the database ${database.description} was given up while starting: a failed transaction could not be rolled back and stays open on the one SQLite connection; a restart discards it`,
      { cause: error ?? givenUp.error },
    );
  };

  try {
    let stoppingForWrongStore = false;
    const stopForWrongStore = (error: BlobStoreMismatchError) => {
      if (stoppingForWrongStore) return;
      stoppingForWrongStore = true;
      logger.error({ err: error, blobs: blobs.description }, `stopping: ${error.message}`);
      // A database given up during this close decides the exit code instead (the give-up's wins); one given up
      // before it has its own stop path, which calls back once it has closed.
      const givenUpBefore = givenUp !== undefined;
      const stopped = () => {
        if (givenUp === undefined) options.onStoppedForWrongBlobStore?.(error);
        else if (!givenUpBefore) options.onStoppedForDatabaseGivenUp?.(givenUp);
      };
      void close().then(stopped, (closeError: unknown) => {
        logger.error({ err: closeError }, 'shutdown failed');
        stopped();
      });
    };
    const deviceCa = await openDeviceCa(config, database, logger);
    const signing = await openPackageSigning(config, database, logger);
    const blobBinder = blobStoreBinder(database.db, blobs, blobStoreLocationOf(config, blobs), {
      allowTakeover: config.allowEmptyDatabase,
      onAbandoned: (waitedMs) =>
        logger.warn(
          { waitedMs },
          'stopping: the blob store check still running did not end when aborted; not waited for any longer (it writes nothing more)',
        ),
    });
    // Stopped before the store and the database close: a check still running (the readiness check's, the
    // background one's) writes nothing more, its store requests are aborted, and it is waited for (bounded).
    background.push(blobBinder);
    const bindBlobs = () => blobBinder.bind();
    let bindingUnchecked = false;
    try {
      await bindBlobs();
    } catch (error) {
      if (error instanceof BlobStoreMismatchError) throw error;
      bindingUnchecked = true;
      logger.warn(
        { err: error, blobs: blobs.description },
        "cannot check that the blob store is the one this database uses (it did not answer); it is checked again in the background, and /readyz reports the blob store not ready until that check passes; a store found to be another database's stops the server",
      );
    }
    const workDir = path.join(config.dataDir, 'tmp');
    const swept = await sweepStaleTempFiles(workDir);
    if (swept.removed.length > 0) {
      logger.info(
        { workDir, removed: swept.removed.length, bytes: swept.bytes },
        'removed temporary files left by an earlier run',
      );
    }
    // The operator's log of fleet events (docs/operations.md, "Fleet events"): services log what they did.
    const fleetEvents = new FleetEventLog(logger.child({ log: 'fleet-events' }));
    const models = new ModelStore(database.db, {
      events: fleetEvents,
      blobs,
      workDir,
      maxUploadBytes: config.uploads.maxModelBytes,
      deviceTrustRootPem: signing.rootCertificatePem,
    });
    const instanceId = await loadInstanceId(config.dataDir);
    // This process as the writer of capture objects: a write another process held is free to the next upload at
    // once only where that process is certainly done (captureHolderMayWrite), else after the write lease.
    const captureWriter: CaptureWriter = {
      id: randomUUID(),
      isRunning: (holder) => captureHolderMayWrite(database, holder),
    };
    // Leases and device deadlines other replicas judge: by the database's clock, so replica clock skew does not count.
    const databaseNow = databaseClock(database);
    await warnOfClockSkew(databaseNow, logger);
    const packagingJobs = new PackagingJobStore(database.db, models, Date.now, {
      databaseNow,
      instanceId,
      leaseMs: config.packaging.leaseSeconds * 1000,
      events: fleetEvents,
    });
    const s3Objects = new S3Objects(s3ConnectionOf(config));
    // Imports read through clients with timeouts: an endpoint that stops answering fails the import.
    const importObjects = new S3Objects({
      ...s3ConnectionOf(config),
      socketTimeoutMs: config.compilation.s3SocketTimeoutMs,
      connectionTimeoutMs: config.compilation.s3ConnectionTimeoutMs,
    });
    const compilationLogger = logger.child({ capability: 'compilation' });
    const compilationJobs = new CompilationJobStore(database.db, {
      models,
      openS3Object: (uri, signal) => importObjects.get(uri, { signal }),
      logger: compilationLogger,
      events: fleetEvents,
      leaseMs: config.compilation.leaseSeconds * 1000,
      instanceId,
      databaseNow,
    });
    // This server's own imports, interrupted when it stopped, at once; then only imports whose server stopped
    // renewing them: other replicas' imports in flight are left alone.
    const interrupted = await compilationJobs.failOwnInterrupted();
    if (interrupted.length > 0)
      compilationLogger.warn(
        { compilationJobs: interrupted },
        'failed compilation imports this server was running when it stopped',
      );
    await failExpiredImports(compilationJobs, compilationLogger);
    // Aborts the imports in flight: a stalled S3 read must not hold shutdown.
    background.push({ stop: () => compilationJobs.close() });
    const offlineAfterMs = config.heartbeat.intervalSeconds * config.heartbeat.offlineAfterMissed * 1000;
    const deployments = new DeploymentService(database.db, {
      engine: database.engine,
      packagingJobs,
      models,
      events: fleetEvents,
      databaseNow,
      maxClockSkewMs: config.heartbeat.maxClockSkewSeconds * 1000,
    });
    // Checks a fleet's output bucket when a fleet takes it, through the connection captures are written with (a
    // client per check, closed after it: nothing is kept per bucket a client names).
    const fleetOutputCheck = new FleetOutputs(blobs, hasS3(config) ? s3ConnectionOf(config) : undefined, {
      uploadSlots: 0,
      timeouts: {
        socketTimeoutMs: config.captures.outputS3SocketTimeoutMs,
        connectionTimeoutMs: config.captures.outputS3ConnectionTimeoutMs,
      },
    });
    background.push({ stop: () => fleetOutputCheck.close() });
    if (hasS3(config) && config.blobLocation.kind === 'local') {
      // A reminder only: a folder it cannot read does not stop the server (the blob store's own check judges it).
      const left = await bucketsWithLocalCaptures(config.blobLocation.root).catch((error: unknown) => {
        logger.warn({ err: error }, 'could not look for captures left in the local fleet-output folder');
        return [];
      });
      if (left.length > 0)
        logger.warn(
          { event: 'fleet_output_local_left', buckets: left },
          localCapturesLeftWarning(config.blobLocation.root, left),
        );
    }
    // Tokens GET /metrics verified lately: a scrape still gets in while the database cannot be used.
    const recentScrapeTokens = new RecentTokenVerifications();
    const services: ServerServices = {
      apiTokens: new ApiTokenStore(database.db, Date.now, fleetEvents, (tokenId) =>
        recentScrapeTokens.forgetTokenId(tokenId),
      ),
      accessKeys: new AccessKeyStore(
        database.db,
        await openAccessKeyEncryptionKey(database.db, await configuredAccessKeyFile(config), {
          warn: (message) => logger.warn(message),
        }),
        Date.now,
        fleetEvents,
      ),
      compilationJobs,
      fleets: new FleetStore(
        database.db,
        Date.now,
        async (location, kmsKeyId) => {
          const answer = await fleetOutputCheck.check(location, kmsKeyId);
          const event = answer.local === true ? 'fleet_output_local' : 'fleet_output_unchecked';
          if (answer.warning !== undefined) logger.warn({ event, outputLocation: location }, answer.warning);
          return answer;
        },
        fleetEvents,
      ),
      devices: new DeviceStore(database.db, {
        offlineAfterMs,
        onDeregister: async (trx, device, now, by) => {
          const recorded = await stopDeregisteredDeviceTargets(trx, device, now, database.engine);
          return () => deployments.logRecorded(recorded, by);
        },
        events: fleetEvents,
      }),
      identity: new DeviceIdentityService(database.db, {
        databaseEngine: database.engine,
        ca: deviceCa,
        certificateValidityDays: config.certificates.validityDays,
        enrollmentTokenTtlSeconds: config.enrollment.tokenTtlSeconds,
        maxEnrollmentTokenTtlSeconds: config.enrollment.maxTokenTtlSeconds,
        events: fleetEvents,
      }),
      deviceCa,
      heartbeats: new HeartbeatService(database.db, {
        databaseEngine: database.engine,
        registrationCacheTtlSeconds: config.heartbeat.registrationCacheTtlSeconds,
        maxClockSkewMs: config.heartbeat.maxClockSkewSeconds * 1000,
        metricsRetentionMs: config.heartbeat.metricsRetentionSeconds * 1000,
        metricBytesPerDevicePerHour: config.heartbeat.metricBytesPerDevicePerHour,
        deploymentResults: deployments,
        // Once per device and clock hour (the service's rate limit), so a device over its quota cannot flood the log.
        onMetricsDropped: (device, dropped) =>
          logger.warn(
            {
              device: device.deviceName,
              fleet: device.fleetName,
              usedBytes: dropped.UsedBytes,
              quotaBytes: dropped.QuotaBytes,
            },
            `device ${device.deviceName} is over heartbeat.metricBytesPerDevicePerHour; its heartbeats are recorded but their metrics dropped for the next ${dropped.RetryAfterSeconds} s (logged once an hour)`,
          ),
        onDeploymentResultsError: (error) =>
          logger.warn(
            { err: error },
            'deployment results of a heartbeat batch failed; the next heartbeats repeat them',
          ),
      }),
      models,
      packagingJobs,
      packagingWorker: new PackagingWorker({
        jobs: packagingJobs,
        models,
        blobs,
        signing,
        workDir,
        pollIntervalMs: config.packaging.pollIntervalMs,
        leaseMs: config.packaging.leaseSeconds * 1000,
        logger: logger.child({ worker: 'packaging' }),
        afterPackaged: exportFacadePackages(database.db, s3Objects),
      }),
      signing,
      consoleSessions: new ConsoleSessionStore(database.db, {
        ttlMs: config.console.sessionTtlSeconds * 1000,
        events: fleetEvents,
      }),
      deployments,
    };
    const minFreeBytes = config.storage.minFreeBytes;
    const databaseFolder =
      config.databaseLocation.engine === 'sqlite' ? path.dirname(config.databaseLocation.file) : undefined;
    const blobFolder = config.blobLocation.kind === 'local' ? config.blobLocation.root : undefined;
    // One for both listeners: their probes share an evaluation (a flood of probes runs each check once at a time).
    const readiness = new Readiness([
      {
        name: 'database',
        check: async () => {
          diskFaults.check('database');
          if (databaseFolder !== undefined) await checkFreeSpace('database', databaseFolder, minFreeBytes);
          await pingDatabase(database);
        },
      },
      {
        name: 'blobStore',
        check: async () => {
          diskFaults.check('blobStore');
          if (blobFolder !== undefined) await checkFreeSpace('blobStore', blobFolder, minFreeBytes);
          await blobs.check();
          try {
            await bindBlobs();
          } catch (error) {
            if (error instanceof BlobStoreMismatchError) stopForWrongStore(error);
            throw error;
          }
        },
      },
    ]);
    let deviceEndpoint = config.deviceEndpoint ?? '';
    const endpoint = () => deviceEndpoint;

    // One registry for both listeners (GET /metrics on the operator port), handed to what records.
    const metrics = new ServerMetrics();
    registerFleetStateGauges(
      metrics.registry,
      new FleetStateReader(database.db, {
        offlineAfterMs,
        onError: readFailureLog(logger),
        ...(options.fleetStateTtlMs !== undefined && { ttlMs: options.fleetStateTtlMs }),
      }),
    );
    // One for both listeners and the facade: an outage is logged once a minute, not per listener.
    const outageLog = new OutageLog({
      diskFaults,
      onOutage: (component, error) => metrics.outage(component, error),
    });
    const operatorApp = await buildApp({
      logger: logger.child({ api: 'operator' }),
      outageLog,
      observeRequest: (request, reply) => metrics.observeRequest('operator', request, reply),
      observeTimeout: (answered) => metrics.requestTimedOut('operator', answered),
      observeClientError: (status) => metrics.clientErrorAnswered('operator', status),
      authenticators: {
        ...operatorAuthenticators(
          services.apiTokens,
          consoleSessionAuthenticator(services.consoleSessions),
          recentScrapeTokens,
        ),
        'console-session': consoleSignOutAuthenticator(services.consoleSessions),
        'enrollment-token': enrollmentTokenAuthenticator,
      },
      readiness,
      isShuttingDown: () => shuttingDown,
      build: { version: serverVersion(), schema: schemaVersion() },
      requestTimeoutMs: operatorLimits.requestTimeoutMs,
      ...(config.tls
        ? {
            https: {
              ...(await readTlsPair('tls', config.tls)),
              ...tlsServerLimitOptions(operatorLimits),
            },
          }
        : {}),
      openapi: {
        title: 'EdgeFleet control plane',
        description:
          'Operator API of edgefleet-server: fleets, devices, identities, models, packaging, deployments, heartbeats. ' +
          'Device routes (/api/v1/device/…) are served on the separate mutual-TLS port.',
        version: serverVersion(),
      },
    });
    apps.push(operatorApp);
    const modelUploadTimeoutMs = config.uploads.modelUploadTimeoutSeconds * 1000;
    // One registration per capability: each is a Fastify plugin, so what it adds (e.g. the model upload
    // content-type parser) stays inside it.
    const identityOptions = { identity: services.identity, deviceEndpoint: endpoint };
    await operatorApp.register(apiTokenRoutes, { tokens: services.apiTokens });
    await operatorApp.register(fleetRoutes, { fleets: services.fleets });
    await operatorApp.register(deviceRoutes, { devices: services.devices, fleets: services.fleets });
    await operatorApp.register(identityOperatorRoutes, identityOptions);
    await operatorApp.register(enrollmentRoutes, identityOptions);
    await operatorApp.register(modelRoutes, {
      models: services.models,
      maxUploadBytes: config.uploads.maxModelBytes,
      uploadTimeoutMs: modelUploadTimeoutMs,
    });
    await operatorApp.register(packagingRoutes, {
      jobs: services.packagingJobs,
      blobs,
      signing,
      onCreated: () => services.packagingWorker.kick(),
    });
    await operatorApp.register(accessKeyRoutes, { accessKeys: services.accessKeys });
    // The SageMaker facade: one operation module per capability.
    await operatorApp.register(sageMakerRoutes, {
      outageLog,
      dispatcher: new SageMakerDispatcher(
        [
          fleetOperations({ db: database.db, fleets: services.fleets, offlineAfterMs }),
          deviceOperations({ fleets: services.fleets, devices: services.devices }),
          tagOperations({
            db: database.db,
            fleets: services.fleets,
            devices: services.devices,
            compilationJobs: services.compilationJobs,
            deployments,
          }),
          compilationOperations({ jobs: services.compilationJobs }),
          packagingOperations({
            db: database.db,
            jobs: services.packagingJobs,
            models: services.models,
            compilationJobs: services.compilationJobs,
            kick: () => services.packagingWorker.kick(),
          }),
          deploymentPlanOperations({ deployments, devices: services.devices }),
        ],
        config.sagemaker.accountId,
      ),
      accessKeys: services.accessKeys,
      devices: services.devices,
      heartbeats: services.heartbeats,
      heartbeatBodyLimit: config.heartbeat.maxBodyBytes,
      deployments,
      packageS3Url: facadePackageS3Url(database.db, services.packagingJobs),
    });
    await operatorApp.register(deploymentRoutes, { deployments });
    await operatorApp.register(heartbeatOperatorRoutes, {
      db: database.db,
      engine: database.engine,
      fleets: services.fleets,
      devices: services.devices,
      offlineAfterMs,
      maxMetricsPerQuery: config.heartbeat.maxMetricsPerQuery,
    });
    await operatorApp.register(metricsRoutes, { metrics });
    await operatorApp.register(consoleSessionRoutes, { sessions: services.consoleSessions });
    await operatorApp.register(consoleEventRoutes, {
      feed: new ChangeFeed(database.db, {
        pollMs: config.console.eventPollMs,
        offlineAfterMs,
        logger: logger.child({ console: 'events' }),
      }),
      maxStreams: config.console.maxEventStreams,
      maxStreamsPerToken: config.console.maxEventStreamsPerToken,
      keepaliveMs: config.console.eventKeepaliveMs,
      maxLifetimeMs: config.console.eventStreamMaxSeconds * 1000,
      tokens: services.apiTokens,
      sessions: services.consoleSessions,
    });
    if (config.console.enabled) {
      await operatorApp.register(consoleStaticRoutes, {
        dir: config.console.staticDir ?? defaultConsoleDir(),
      });
    }

    // Requests a device was authenticated for (a verified certificate that is not revoked): only these protect
    // a device port connection from the total cap (applyListenerLimits below).
    const authenticatedDeviceRequests = new WeakSet<IncomingMessage>();
    const deviceApp = await buildApp({
      logger: logger.child({ api: 'device' }),
      outageLog,
      observeRequest: (request, reply) => metrics.observeRequest('device', request, reply),
      observeTimeout: (answered) => metrics.requestTimedOut('device', answered),
      observeClientError: (status) => metrics.clientErrorAnswered('device', status),
      authenticators: {
        device: deviceAuthenticator(services.identity, (request) =>
          authenticatedDeviceRequests.add(request.raw),
        ),
        'enrollment-token': enrollmentTokenAuthenticator,
      },
      readiness,
      isShuttingDown: () => shuttingDown,
      // No `build`: /healthz on this network-facing port must not fingerprint the server's version for anyone.
      requestTimeoutMs: deviceLimits.requestTimeoutMs,
      // Devices send small JSON bodies; the routes that take larger ones (heartbeats, captures) set their own.
      bodyLimit: DEVICE_BODY_LIMIT_BYTES,
      https: await deviceTlsOptions(config, deviceCa, deviceLimits),
    });
    apps.push(deviceApp);
    await deviceApp.register(identityDeviceRoutes, identityOptions);
    await deviceApp.register(heartbeatDeviceRoutes, {
      heartbeats: services.heartbeats,
      maxBodyBytes: config.heartbeat.maxBodyBytes,
    });
    await deviceApp.register(packagingDeviceRoutes, {
      jobs: services.packagingJobs,
      blobs,
      access: deployments,
    });
    await deviceApp.register(deploymentDeviceRoutes, {
      deployments,
      models,
      blobs,
      resultBodyLimit: config.heartbeat.maxBodyBytes,
    });
    const uploadSlots = new UploadSlots({
      total: config.captures.maxConcurrentUploads,
      perDevice: config.captures.maxConcurrentUploadsPerDevice,
    });
    metrics.watchUploadSlots(uploadSlots, config.captures.maxConcurrentUploads);
    await deviceApp.register(captureDeviceRoutes, {
      db: database.db,
      writer: captureWriter,
      blobs,
      config,
      s3: s3ConnectionOf(config),
      signing,
      onStored: (bytes) => metrics.captureStored(bytes),
      uploadSlots,
    });

    // Timeouts and caps on both ports, so that neither can be held open by idle or slow clients, and a flood on
    // the device port cannot use up the descriptors the operator port (health checks included) needs.
    // Node's timeout is the outer bound (the longest route deadline); the per-route deadlines do the rest.
    // Connections the caps refuse are logged (one line a minute per listener), so that a flood shows as one.
    const operatorRefusals = new ConnectionRefusalLog({
      listener: 'operator',
      caps: operatorLimits,
      logger,
      count: (refusal) => metrics.connectionOverCap('operator', refusal),
    });
    const deviceRefusals = new ConnectionRefusalLog({
      listener: 'device',
      caps: deviceLimits,
      logger,
      count: (refusal) => metrics.connectionOverCap('device', refusal),
    });
    background.push({
      stop: () => {
        operatorRefusals.close();
        deviceRefusals.close();
        return Promise.resolve();
      },
    });
    applyListenerLimits(
      operatorApp.server,
      {
        ...operatorLimits,
        requestTimeoutMs: listenerRequestTimeoutMs(operatorLimits.requestTimeoutMs, [modelUploadTimeoutMs]),
      },
      operatorRefusals.refused,
    );
    // Only a request the device authenticator accepted protects its connection from the total cap: a peer without
    // a certificate gets through TLS (requestCert without rejectUnauthorized), and a revoked certificate still
    // verifies there (revocation is in the database); the operator port protects none (anyone may send a request
    // there before its token is read).
    applyListenerLimits(deviceApp.server, deviceLimits, deviceRefusals.refused, (req) =>
      authenticatedDeviceRequests.has(req),
    );
    // Seen by a newer build before it migrates the schema under this one (server-registry.ts), and by other
    // replicas as the holder of the capture writes this process takes: registered before any device can upload.
    background.push(
      await registerServer(database, {
        version: serverVersion(),
        schemaVersion: schemaVersion(),
        logger,
        id: captureWriter.id,
      }),
    );
    await operatorApp.listen({ host: config.listen.host, port: config.listen.port });
    await deviceApp.listen({ host: config.deviceListen.host, port: config.deviceListen.port });
    services.packagingWorker.start();
    background.push(services.packagingWorker);
    background.push(
      startDeploymentSweeper(deployments, {
        intervalMs: config.deployments.sweepIntervalMs,
        logger: logger.child({ worker: 'deployments' }),
      }),
    );
    if (config.deployments.planRetentionDays > 0) {
      background.push(
        startPlanRetentionSweeper(deployments, {
          retentionMs: config.deployments.planRetentionDays * 86_400_000,
          intervalMs: config.deployments.planRetentionSweepSeconds * 1000,
          logger: logger.child({ worker: 'plan retention' }),
        }),
      );
    }
    background.push(
      startCompilationLeaseSweeper(compilationJobs, {
        leaseMs: config.compilation.leaseSeconds * 1000,
        logger: logger.child({ capability: 'compilation' }),
      }),
    );
    background.push(
      startRetentionSweeper(database.db, {
        metricsRetentionMs: config.heartbeat.metricsRetentionSeconds * 1000,
        captureRecordsRetentionMs: config.captures.recordRetentionSeconds * 1000,
        intervalMs: config.heartbeat.retentionSweepSeconds * 1000,
        logger,
      }),
    );
    if (bindingUnchecked && !stoppingForWrongStore) {
      background.push(
        watchBlobStoreBinding(bindBlobs, {
          onMismatch: stopForWrongStore,
          ...(options.blobStoreRecheckMs !== undefined ? { initialDelayMs: options.blobStoreRecheckMs } : {}),
        }),
      );
    }
    const operatorUrl = urlOf(operatorApp, config.tls ? 'https' : 'http');
    const deviceUrl = urlOf(deviceApp, 'https');
    deviceEndpoint ||= deviceEndpointFor(
      endpointServerName(config.deviceServerNames),
      (deviceApp.server.address() as AddressInfo).port,
    );
    const warnings = [
      ...(options.warnings ?? []),
      ...networkWarnings({
        listen: config.listen,
        operatorTls: config.tls !== undefined,
        deviceListen: config.deviceListen,
        deviceEndpoint,
        deviceServerNames: config.deviceServerNames,
        generatedDeviceCertificate: !config.provided.deviceTls,
      }),
    ];
    for (const warning of warnings) logger.warn(warning);
    // A give-up whose statement's error something on the way caught (a start-up clean-up that only warns).
    if (givenUp !== undefined) throw startFailureOf(undefined);
    phase = 'serving';
    logger.info(
      {
        version: serverVersion(),
        schema: schemaVersion(),
        operatorUrl,
        deviceUrl,
        deviceEndpoint,
        database: database.description,
        blobs: blobs.description,
      },
      'edgefleet-server started',
    );

    return {
      operatorUrl,
      deviceUrl,
      deviceEndpoint,
      warnings,
      config,
      database,
      blobs,
      logger,
      services,
      close,
      exitCode: () => (givenUp === undefined ? 0 : databaseGivenUpExitCode(givenUp)),
    };
  } catch (error) {
    shuttingDown = true;
    await releaseAll();
    // Damage the driver found on the way (as openStores maps it): exit 2, not 1 and a restart.
    throw startFailureOf(damageFoundByDriver(error) ?? error);
  }
}

/** The one line a server that gave its database up logs: what happened, what follows, what to check. */
function givenUpMessage({ reason, error }: DatabaseGivenUp, database: string): string {
  if (reason === 'damaged')
    return (
      `stopping: the database ${database} was given up; exiting with code ${DATABASE_DAMAGED_EXIT_CODE}, which the ` +
      `supervisor (systemd) does not restart: ${error instanceof Error ? error.message : String(error)}`
    );
  const exiting = `stopping: the database ${database} was given up; exiting with code ${DATABASE_GIVEN_UP_EXIT_CODE} for the supervisor (systemd Restart=on-failure) to restart the server`;
  return (
    `${exiting}, which discards the transaction left open: a failed transaction could not be rolled back and ` +
    'was still open on the one SQLite connection, so every later write would have been lost. If it recurs, ' +
    'check the disk under the database (dmesg, free space) and the lines logged before this one'
  );
}

/** The name devices are handed when no deviceEndpoint is set: the first that is not a wildcard (loadConfig
 * refuses a list of wildcards only without a deviceEndpoint). */
function endpointServerName(names: readonly string[]): string {
  return names.find((n) => !n.startsWith('*.')) ?? names[0]!;
}
