import { mkdir } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { ApiTokenStore, operatorAuthenticators, registerApiTokenRoutes } from '../auth/index.js';
import { createBlobStore, type BlobStore } from '../blobs/index.js';
import { DeviceStore, registerDeviceRoutes } from '../devices/index.js';
import { FleetStore, registerFleetRoutes } from '../fleets/index.js';
import type { ServerConfig } from '../config/index.js';
import { buildApp } from '../http/app.js';
import { migrateToLatest, openDatabase, pingDatabase, type ServerDatabase } from '../storage/index.js';
import { createLogger } from './logger.js';

export interface ServerHandle {
  /** Base URL of the operator API, e.g. http://127.0.0.1:8080 (the bound port when 0 was asked for). */
  readonly operatorUrl: string;
  readonly config: ServerConfig;
  readonly database: ServerDatabase;
  readonly blobs: BlobStore;
  readonly logger: Logger;
  /** Stops accepting work, lets in-flight requests finish, then releases the database and blob store. */
  close(): Promise<void>;
}

export interface StartServerOptions {
  logger?: Logger;
}

function urlOf(app: FastifyInstance, scheme: 'http' | 'https'): string {
  const address = app.server.address() as AddressInfo;
  const host = address.address === '0.0.0.0' || address.address === '::' ? '127.0.0.1' : address.address;
  return `${scheme}://${host.includes(':') ? `[${host}]` : host}:${address.port}`;
}

/** Opens the state and blob stores the configuration names, migrating the schema to this build's. */
export async function openStores(
  config: ServerConfig,
): Promise<{ database: ServerDatabase; blobs: BlobStore }> {
  await mkdir(config.dataDir, { recursive: true, mode: 0o700 });
  const database = await openDatabase(config.databaseLocation, {
    maxConnections: config.databaseMaxConnections,
  });
  try {
    await migrateToLatest(database.db);
  } catch (error) {
    await database.close();
    throw error;
  }
  const blobs = createBlobStore(config.blobLocation, {
    ...(config.s3.endpoint !== undefined ? { endpoint: config.s3.endpoint } : {}),
    ...(config.s3.region !== undefined ? { region: config.s3.region } : {}),
    ...(config.s3.forcePathStyle !== undefined ? { forcePathStyle: config.s3.forcePathStyle } : {}),
    ...(config.s3.accessKeyId !== undefined && config.s3.secretAccessKey !== undefined
      ? { credentials: { accessKeyId: config.s3.accessKeyId, secretAccessKey: config.s3.secretAccessKey } }
      : {}),
  });
  return { database, blobs };
}

/** Starts the control plane: the operator API (and, from the identity step on, the device API). */
export async function startServer(
  config: ServerConfig,
  options: StartServerOptions = {},
): Promise<ServerHandle> {
  const logger = options.logger ?? createLogger(config.logLevel);
  const { database, blobs } = await openStores(config);
  let shuttingDown = false;
  const apiTokens = new ApiTokenStore(database.db);
  const fleets = new FleetStore(database.db);
  const devices = new DeviceStore(database.db, {
    offlineAfterMs: config.heartbeat.intervalSeconds * config.heartbeat.offlineAfterMissed * 1000,
  });

  const operatorApp = await buildApp({
    logger: logger.child({ api: 'operator' }),
    authenticators: operatorAuthenticators(apiTokens),
    readiness: [
      { name: 'database', check: () => pingDatabase(database) },
      { name: 'blobStore', check: () => blobs.check() },
    ],
    isShuttingDown: () => shuttingDown,
    ...(config.tls ? { https: await readTlsPair(config.tls) } : {}),
    openapi: {
      title: 'EdgeFleet control plane',
      description:
        'Operator API of edgefleet-server: fleets, devices, identities, models, packaging, heartbeats.',
      version: '1',
    },
  });
  registerApiTokenRoutes(operatorApp, apiTokens);
  registerFleetRoutes(operatorApp, fleets);
  registerDeviceRoutes(operatorApp, devices);

  try {
    await operatorApp.listen({ host: config.listen.host, port: config.listen.port });
  } catch (error) {
    await operatorApp.close();
    await blobs.close();
    await database.close();
    throw error;
  }
  const operatorUrl = urlOf(operatorApp, config.tls ? 'https' : 'http');
  logger.info(
    { operatorUrl, database: database.description, blobs: blobs.description },
    'edgefleet-server started',
  );

  let closing: Promise<void> | undefined;
  return {
    operatorUrl,
    config,
    database,
    blobs,
    logger,
    close: () => {
      closing ??= (async () => {
        shuttingDown = true;
        await operatorApp.close();
        await blobs.close();
        await database.close();
        logger.info('edgefleet-server stopped');
      })();
      return closing;
    },
  };
}

async function readTlsPair(pair: {
  certFile: string;
  keyFile: string;
}): Promise<{ cert: Buffer; key: Buffer }> {
  const { readFile } = await import('node:fs/promises');
  return { cert: await readFile(pair.certFile), key: await readFile(pair.keyFile) };
}
