import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { parseBlobLocation } from '../blobs/index.js';
import { parseDatabaseLocation } from '../storage/index.js';
import { serverConfigSchema, type ServerConfig } from './config-schema.js';

/** Settings that can be given one by one as flags (kebab-case) or environment variables (EDGEFLEET_…). */
export const overridableSettings = {
  'data-dir': { env: 'EDGEFLEET_DATA_DIR', path: ['dataDir'] },
  listen: { env: 'EDGEFLEET_LISTEN', path: ['listen'] },
  'device-listen': { env: 'EDGEFLEET_DEVICE_LISTEN', path: ['deviceListen'] },
  'device-endpoint': { env: 'EDGEFLEET_DEVICE_ENDPOINT', path: ['deviceEndpoint'] },
  'device-server-names': { env: 'EDGEFLEET_DEVICE_SERVER_NAMES', path: ['deviceServerNames'] },
  database: { env: 'EDGEFLEET_DATABASE', path: ['database'] },
  'allow-empty-database': { env: 'EDGEFLEET_ALLOW_EMPTY_DATABASE', path: ['allowEmptyDatabase'] },
  blob: { env: 'EDGEFLEET_BLOB', path: ['blob'] },
  'blob-endpoint': { env: 'EDGEFLEET_BLOB_ENDPOINT', path: ['s3', 'endpoint'] },
  'blob-region': { env: 'EDGEFLEET_BLOB_REGION', path: ['s3', 'region'] },
  'log-level': { env: 'EDGEFLEET_LOG_LEVEL', path: ['logLevel'] },
} as const satisfies Record<string, { env: string; path: readonly string[] }>;

export type OverridableSetting = keyof typeof overridableSettings;

export interface ConfigSources {
  /** JSON file with any keys of the config; EDGEFLEET_CONFIG names one when this is absent. */
  configFile?: string | undefined;
  env?: Record<string, string | undefined>;
  flags?: Partial<Record<OverridableSetting, string | undefined>>;
  /** Relative paths resolve against this; default process.cwd(). */
  cwd?: string;
}

export class ConfigError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ConfigError';
  }
}

function setPath(target: Record<string, unknown>, keys: readonly string[], value: string): void {
  let node = target;
  for (const key of keys.slice(0, -1)) {
    const next = node[key];
    if (typeof next !== 'object' || next === null) node[key] = {};
    node = node[key] as Record<string, unknown>;
  }
  node[keys[keys.length - 1] as string] = value;
}

async function readConfigFile(file: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    throw new ConfigError(`cannot read config file ${file}: ${(error as Error).message}`, { cause: error });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new ConfigError(`config file ${file} is not valid JSON: ${(error as Error).message}`, {
      cause: error,
    });
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new ConfigError(`config file ${file} must hold a JSON object of settings`);
  }
  return parsed as Record<string, unknown>;
}

/**
 * Builds the configuration: defaults, then the JSON file, then environment variables, then flags (each
 * later source overrides single keys of the earlier). Fails with every invalid key named.
 */
export async function loadConfig(sources: ConfigSources = {}): Promise<ServerConfig> {
  const env = sources.env ?? process.env;
  const cwd = sources.cwd ?? process.cwd();
  const configFile = sources.configFile ?? env.EDGEFLEET_CONFIG;
  const raw = configFile ? await readConfigFile(path.resolve(cwd, configFile)) : {};

  for (const [flag, setting] of Object.entries(overridableSettings)) {
    const fromEnv = env[setting.env];
    if (fromEnv !== undefined && fromEnv !== '') setPath(raw, setting.path, fromEnv);
    const fromFlag = sources.flags?.[flag as OverridableSetting];
    if (fromFlag !== undefined) setPath(raw, setting.path, fromFlag);
  }

  const result = serverConfigSchema.safeParse(raw);
  if (!result.success) {
    const where = configFile ? ` (file ${configFile}, environment and flags)` : '';
    const issues = result.error.issues.map(
      (issue) => `  - ${issue.path.length > 0 ? issue.path.join('.') : '(root)'}: ${issue.message}`,
    );
    throw new ConfigError(`invalid server configuration${where}:\n${issues.join('\n')}`);
  }
  const parsed = result.data;
  if (
    parsed.deviceEndpoint === undefined &&
    parsed.deviceServerNames.every((name) => name.startsWith('*.'))
  ) {
    throw new ConfigError(
      `invalid server configuration${configFile ? ` (file ${configFile}, environment and flags)` : ''}:\n  - deviceServerNames: only wildcard names (${parsed.deviceServerNames.join(', ')}), and no deviceEndpoint says which URL devices reach; set deviceEndpoint (--device-endpoint, EDGEFLEET_DEVICE_ENDPOINT) or add the device API's own host name`,
    );
  }
  const dataDir = path.resolve(cwd, parsed.dataDir);
  const abs = (file: string) => path.resolve(cwd, file);
  const caDir = path.join(dataDir, 'ca');
  const signingDir = path.join(dataDir, 'signing');

  const database = parsed.database ?? path.join(dataDir, 'state.db');
  const blob = parsed.blob ?? path.join(dataDir, 'blobs');
  const locate = <T>(what: string, parse: () => T): T => {
    try {
      return parse();
    } catch (error) {
      throw new ConfigError(`invalid ${what}: ${(error as Error).message}`, { cause: error });
    }
  };

  return {
    ...parsed,
    dataDir,
    database,
    databaseLocation: locate('database', () => parseDatabaseLocation(database, cwd)),
    blob,
    blobLocation: locate('blob', () => parseBlobLocation(blob, cwd)),
    deviceCa: parsed.deviceCa
      ? { certFile: abs(parsed.deviceCa.certFile), keyFile: abs(parsed.deviceCa.keyFile) }
      : { certFile: path.join(caDir, 'device-ca.crt'), keyFile: path.join(caDir, 'device-ca.key') },
    deviceTls: parsed.deviceTls
      ? { certFile: abs(parsed.deviceTls.certFile), keyFile: abs(parsed.deviceTls.keyFile) }
      : { certFile: path.join(caDir, 'device-api.crt'), keyFile: path.join(caDir, 'device-api.key') },
    signing: parsed.signing
      ? {
          rootCertFile: abs(parsed.signing.rootCertFile),
          certFile: abs(parsed.signing.certFile),
          keyFile: abs(parsed.signing.keyFile),
        }
      : {
          rootCertFile: path.join(signingDir, 'root.crt'),
          rootKeyFile: path.join(signingDir, 'root.key'),
          certFile: path.join(signingDir, 'signing.crt'),
          keyFile: path.join(signingDir, 'signing.key'),
        },
    tls: parsed.tls ? { certFile: abs(parsed.tls.certFile), keyFile: abs(parsed.tls.keyFile) } : undefined,
    provided: {
      deviceCa: parsed.deviceCa !== undefined,
      deviceTls: parsed.deviceTls !== undefined,
      signing: parsed.signing !== undefined,
    },
  };
}
