import { access, constants, readFile, realpath, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import type { AgentConfig } from './agent-config.js';
import { parseAgentConfig, type ConfigContext, type ParsedConfig } from './config-file.js';
import { ConfigError } from './errors.js';

/** Largest config file we read; real ones are a few KB. */
const MAX_CONFIG_BYTES = 1024 * 1024;

/**
 * Reads, parses and checks the config file: everything parseAgentConfig does, plus the checks that look at the
 * file system (folders that must be folders, certificate files that must be readable). Throws ConfigError.
 */
export async function loadAgentConfig(configPath: string, context: ConfigContext): Promise<ParsedConfig> {
  const info = await stat(configPath).catch((error: NodeJS.ErrnoException) => {
    throw new ConfigError(null, `cannot read the config file ${configPath}: ${error.code ?? error.message}`);
  });
  if (!info.isFile()) throw new ConfigError(null, `the config file ${configPath} is not a regular file`);
  if (info.size > MAX_CONFIG_BYTES)
    throw new ConfigError(
      null,
      `the config file ${configPath} is ${info.size} bytes; expected at most ${MAX_CONFIG_BYTES}`,
    );
  const text = await readFile(configPath, 'utf8').catch((error: NodeJS.ErrnoException) => {
    throw new ConfigError(null, `cannot read the config file ${configPath}: ${error.code ?? error.message}`);
  });
  let json: unknown;
  try {
    json = JSON.parse(text.replace(/^\uFEFF/, ''));
  } catch (error) {
    throw new ConfigError(
      null,
      `the config file ${configPath} is not valid JSON: ${(error as Error).message}`,
    );
  }
  const parsed = parseAgentConfig(json, context);
  parsed.warnings.push(...(await checkPaths(parsed.config, context.uid ?? process.getuid?.())));
  return parsed;
}

/**
 * File-system checks on a parsed config, for an agent running as `uid`. Throws ConfigError for a path that cannot
 * work; returns warnings.
 */
export async function checkPaths(config: AgentConfig, uid?: number): Promise<string[]> {
  const warnings: string[] = [];
  if (config.trust.rootCertsPath !== undefined) {
    const info = await mustExist(
      'sagemaker_edge_core_root_certs_path',
      config.trust.rootCertsPath,
      'a folder of PEM root certificates',
    );
    if (!info.isDirectory())
      throw new ConfigError(
        'sagemaker_edge_core_root_certs_path',
        `sagemaker_edge_core_root_certs_path: ${config.trust.rootCertsPath} is not a folder; expected a folder of PEM root certificates`,
      );
    if ((info.mode & 0o022) !== 0)
      warnings.push(
        `sagemaker_edge_core_root_certs_path: ${config.trust.rootCertsPath} is writable by group or others; anyone who can write there can make the agent trust their packages (chmod go-w)`,
      );
    const owned = uid === undefined || uid === 0 ? undefined : await ownedBy(config.trust.rootCertsPath, uid);
    if (owned !== undefined)
      warnings.push(
        `sagemaker_edge_core_root_certs_path: ${owned} belongs to the agent's own user (uid ${uid}), so code running as the agent could replace the trust anchors in ${config.trust.rootCertsPath} and make it trust other packages from then on; keep them in a folder root owns (edgefleet device enroll --trust-dir; its default is trust/ beside the config, /etc/edgefleet/trust when installed)`,
      );
  }
  const files: Array<[string, string | undefined]> = [
    ['sagemaker_edge_provider_aws_ca_cert_file', config.provider.caCertFile],
    ['sagemaker_edge_provider_aws_cert_file', config.provider.certFile],
    ['sagemaker_edge_provider_aws_cert_pk_file', config.provider.certKeyFile],
  ];
  for (const [key, file] of files) {
    if (file === undefined) continue;
    const info = await mustExist(key, file, 'a readable PEM file');
    if (!info.isFile())
      throw new ConfigError(key, `${key}: ${file} is not a file; expected a readable PEM file`);
    await access(file, constants.R_OK).catch(() => {
      throw new ConfigError(
        key,
        `${key}: ${file} is not readable by the agent; expected a readable PEM file`,
      );
    });
  }
  const folders: Array<[string, string]> = [
    ['sagemaker_edge_local_data_root_path', config.storage.localDataRootPath],
    ['sagemaker_edge_core_capture_data_disk_path', config.capture.diskPath],
  ];
  for (const [key, folder] of folders) {
    const info = await stat(folder).catch(() => undefined);
    if (info && !info.isDirectory())
      throw new ConfigError(
        key,
        `${key}: ${folder} exists and is not a folder; expected a folder (created if missing)`,
      );
  }
  return warnings;
}

async function mustExist(key: string, path: string, expected: string) {
  return stat(path).catch((error: NodeJS.ErrnoException) => {
    throw new ConfigError(
      key,
      `${key}: ${path} ${error.code === 'ENOENT' ? 'does not exist' : `cannot be read (${error.code})`}; expected ${expected}`,
    );
  });
}

/**
 * The folder itself or the nearest folder above it that `uid` owns (and could so rename or replace), if any: on
 * its real path, so that a symbolic link (root's or not) into a folder `uid` owns does not hide it.
 */
async function ownedBy(folder: string, uid: number): Promise<string | undefined> {
  const real = await realpath(folder).catch(() => resolve(folder));
  for (let path = real; ; path = dirname(path)) {
    const info = await stat(path).catch(() => undefined);
    if (info?.uid === uid) return path;
    if (dirname(path) === path) return undefined;
  }
}
