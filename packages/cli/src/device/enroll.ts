import { X509Certificate, createPublicKey, randomBytes } from 'node:crypto';
import { request as httpsRequest } from 'node:https';
import { chmod, mkdir, open, readFile, realpath, rename, rm, rmdir, stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname, isAbsolute, join, relative, resolve } from 'node:path';
import { z } from 'zod';
import { CliError, EXIT } from '../cli-io.js';
import type { IssuedCertificate, ServerClient } from '../server-client/index.js';
import {
  createCsr,
  generateDeviceKey,
  isLoopbackHost,
  type DeviceKeyPair,
  type DeviceKeyType,
} from '@edgefleet/core';

export const ENROLLMENT_TOKEN_PREFIX = 'efe_';

/** The agent config keys enrollment writes (besides those the server hands back: device, fleet, provider). */
export const CERT_FILE_KEY = 'sagemaker_edge_provider_aws_cert_file';
export const KEY_FILE_KEY = 'sagemaker_edge_provider_aws_cert_pk_file';
export const CA_FILE_KEY = 'sagemaker_edge_provider_aws_ca_cert_file';
export const ENDPOINT_KEY = 'sagemaker_edge_core_endpoint_override';
export const ROOT_CERTS_KEY = 'sagemaker_edge_core_root_certs_path';
export const DATA_ROOT_KEY = 'sagemaker_edge_local_data_root_path';
export const CAPTURE_DESTINATION_KEY = 'sagemaker_edge_core_capture_data_destination';
export const BUCKET_KEY = 'sagemaker_edge_provider_s3_bucket_name';
export const FOLDER_PREFIX_KEY = 'sagemaker_edge_core_folder_prefix';
export const REST_TCP_KEY = 'edgefleet_rest_tcp';
const IOT_THING_NAME_KEY = 'sagemaker_edge_core_iot_thing_name';
/**
 * The folder prefix that means "none" (a fleet output at the bucket root, `s3://bucket`): the agent reads `""`
 * as unset (its default `sme-capture`), and trims slashes from the prefix, so `/` leaves none.
 */
export const NO_FOLDER_PREFIX = '/';
export const HEARTBEAT_INTERVAL_KEY = 'edgefleet_heartbeat_interval_seconds';
export const DEPLOYMENT_LIB_KEY = 'sagemaker_edge_deployment_lib_path';
export const DB_MODULE_KEY = 'sagemaker_edge_db_module_path';
export const DEPLOYMENT_POLL_KEY = 'edgefleet_deployment_poll_interval_seconds';

/**
 * Where the agent sends captures, as `device enroll --capture` names it: `edgefleet` (to the control plane over
 * the device's certificate, which writes them to the fleet's output), `cloud` (straight to the fleet's bucket
 * with the device's own cloud credentials), or `disk` (the data folder only).
 */
export const CAPTURE_CHOICES = ['edgefleet', 'cloud', 'disk'] as const;
export type CaptureChoice = (typeof CAPTURE_CHOICES)[number];

export interface EnrollOptions {
  client: ServerClient;
  /** The single-use `efe_…` token an operator created for this device. */
  enrollmentToken: string;
  /** The agent's JSON config: created, or merged into (other keys kept). */
  configFile: string;
  /** Where the private key, certificate and CA certificate go (created 0700 when missing). */
  certDir: string;
  /**
   * The package-signing trust folder (`sagemaker_edge_core_root_certs_path`; created 0755 when missing). Keep it
   * where only root writes, never in the cert dir: the agent renews its certificate there, so it may own it.
   */
  trustDir: string;
  keyType?: DeviceKeyType;
  /** The agent's data folder (`sagemaker_edge_local_data_root_path`); absent: the config's, else `defaultDataDir`. */
  dataDir?: string;
  defaultDataDir: string;
  /** Where captures go; default `edgefleet`. */
  capture?: CaptureChoice;
  /** A loopback TCP port for the agent's KServe REST API (`edgefleet_rest_tcp`); absent: none set. */
  restPort?: number;
  /** Turn deployments on, polling every this many seconds (`edgefleet_deployment_poll_interval_seconds`). */
  deploymentPollSeconds?: number;
  /**
   * The device this host is (a Greengrass core: its thing name): a token issued for another device is refused
   * by the server and left unused. Absent: whatever device the token was issued for.
   */
  deviceName?: string;
  /**
   * The IoT thing name of this host (a Greengrass core): a token for a device registered with another thing name
   * (or, with none registered, named otherwise) is refused by the server and left unused.
   */
  thingName?: string;
  /** How the user started the CLI (`Output.invocation`), for the command a refusal suggests. */
  invocation: string;
}

export interface ReplacedKey {
  key: string;
  old: unknown;
  new: string;
}

export interface EnrollResult {
  deviceName: string;
  fleetName: string;
  deviceEndpoint: string;
  serial: string;
  notAfter: string;
  files: { privateKey: string; certificate: string; caCertificate: string; trustFolder?: string };
  configFile: string;
  /** The config keys set, with their values. */
  config: Record<string, string>;
  /** The config as written: what was there, with `config` merged over it (what the agent will read). */
  merged: Record<string, unknown>;
  /** Keys the config already had that enrollment gave another value, with both values. */
  replaced: ReplacedKey[];
  /** What could not be set up, for the user to do by hand (the certificate and config were written). */
  warnings: string[];
}

async function readConfigObject(file: string): Promise<Record<string, unknown> | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new CliError(`cannot read the agent config ${file}: ${(error as Error).message}`);
  }
  let json: unknown;
  try {
    json = text.trim() === '' ? {} : JSON.parse(text);
  } catch (error) {
    throw new CliError(
      `the agent config ${file} is not valid JSON (${(error as Error).message}); fix it or name another file with --config`,
    );
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json))
    throw new CliError(`the agent config ${file} must hold a JSON object of "key": value pairs`);
  return json as Record<string, unknown>;
}

/** Writes a file whole or not at all: a temporary sibling with the final mode, fsynced, renamed over it. */
export async function writeFileAtomic(path: string, content: string, mode: number): Promise<void> {
  const temporary = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  // Root replacing a file keeps its owner and group: the installed agent reads a root:edgefleet-agent 0640
  // config, which a rename of root's own new file would otherwise make unreadable to it.
  const owner = process.getuid?.() === 0 ? await stat(path).catch(() => undefined) : undefined;
  const handle = await open(temporary, 'wx', mode);
  try {
    await handle.writeFile(content);
    if (owner) await handle.chown(owner.uid, owner.gid);
    await handle.chmod(mode); // the umask may have narrowed it; never widened
    await handle.sync();
  } catch (error) {
    await handle.close();
    await rm(temporary, { force: true });
    throw error;
  }
  await handle.close();
  try {
    await rename(temporary, path);
  } catch (error) {
    await rm(temporary, { force: true });
    throw error;
  }
}

/** Whether `folder` is `parent` or below it. */
const isInside = (folder: string, parent: string): boolean => {
  const path = relative(parent, folder);
  return path === '' || (path !== '..' && !path.startsWith('../') && !isAbsolute(path));
};

/**
 * Creates the trust folder and any missing folder above it 0755 whatever the umask (a root umask of 077 would
 * lock the agent out); folders that were there are left as they are.
 */
async function makeTrustFolder(folder: string): Promise<void> {
  const firstCreated = await mkdir(folder, { recursive: true, mode: 0o755 });
  if (firstCreated === undefined) return;
  for (let created = folder; isInside(created, firstCreated); created = dirname(created))
    await chmod(created, 0o755);
}

/**
 * Why the trust folder might not be out of the agent's reach. Whoever can rename it or a folder above it can put
 * their own signing root in its place, and the agent then loads every package they sign.
 */
async function trustFolderWarnings(givenTrustFolder: string, givenCertDir: string): Promise<string[]> {
  // On real paths: a symbolic link must not hide that the folder lies below one another user can change.
  const trustFolder = await realpath(givenTrustFolder);
  const certDir = await realpath(givenCertDir).catch(() => givenCertDir);
  const warnings: string[] = [];
  if (isInside(trustFolder, certDir))
    warnings.push(
      `the trust folder ${trustFolder} is inside the cert dir ${certDir}: the agent renews its certificate there, so when it owns that folder, code running as the agent can swap the trust folder for one with its own signing root and every package signed with it loads; pass a --trust-dir only root can write (the default is trust/ beside the config)`,
    );
  // Run as root (an installed agent runs as its own user): each folder from the trust folder up must be root's
  // and not writable by others (a sticky folder such as /tmp protects root's entries in it).
  if (process.getuid?.() === 0) {
    for (let folder = trustFolder; ; folder = dirname(folder)) {
      const info = await stat(folder);
      const othersWrite = (info.mode & 0o022) !== 0 && (folder === trustFolder || (info.mode & 0o1000) === 0);
      if (info.uid !== 0 || othersWrite) {
        warnings.push(
          `${folder} (owner uid ${info.uid}, mode ${(info.mode & 0o7777).toString(8).padStart(4, '0')}) can be changed by a user other than root, who can then replace the trust folder ${trustFolder} with their own signing root; keep the trust folder where only root writes`,
        );
        break;
      }
      if (dirname(folder) === folder) break;
    }
  }
  return warnings;
}

/**
 * mkdir -p `folder`: the folders it created, the top one first (mkdir answers the first one it made; the others
 * are the path from there down to `folder`).
 */
async function mkdirTracked(folder: string, mode?: number): Promise<string[]> {
  const first = await mkdir(folder, { recursive: true, ...(mode !== undefined && { mode }) });
  if (first === undefined) return [];
  const created: string[] = [];
  for (let f = folder; ; f = dirname(f)) {
    created.unshift(f);
    if (f === first || dirname(f) === f) return created;
  }
}

/**
 * Removes `made` (in the order they were created), leaf up, each only if empty (rmdir): another process (a second
 * enroll into the same new folder) may have written there meanwhile, and what it wrote, with the folders above
 * it, stays. Best effort: a folder that cannot be removed is left, and the enrollment's own error is what counts.
 */
async function removeEmptyFolders(made: readonly string[]): Promise<void> {
  for (const folder of [...made].reverse()) await rmdir(folder).catch(() => undefined);
}

/** The issued certificate must be for our key, signed by the CA handed with it, and name the device and fleet. */
function checkIssued(issued: IssuedCertificate, publicKeyPem: string): void {
  let cert: X509Certificate;
  let ca: X509Certificate;
  try {
    cert = new X509Certificate(issued.certificatePem);
    ca = new X509Certificate(issued.caCertificatePem);
  } catch (error) {
    throw new CliError(`the server returned a certificate that cannot be read: ${(error as Error).message}`);
  }
  const ours = createPublicKey(publicKeyPem).export({ type: 'spki', format: 'der' });
  const theirs = cert.publicKey.export({ type: 'spki', format: 'der' });
  if (!ours.equals(theirs))
    throw new CliError('the server returned a certificate for another key than the one this enrollment sent');
  if (!cert.checkIssued(ca) || !cert.verify(ca.publicKey))
    throw new CliError(
      'the returned device certificate is not signed by the CA certificate returned with it',
    );
  const subject = cert.subject.split('\n');
  if (!subject.includes(`CN=${issued.deviceName}`) || !subject.includes(`OU=${issued.fleetName}`))
    throw new CliError(
      `the returned certificate's subject (${cert.subject.replace(/\n/g, ', ')}) does not name device ${issued.deviceName} of fleet ${issued.fleetName}`,
    );
  if (!/^https:\/\//.test(issued.deviceEndpoint))
    throw new CliError(`the server's device endpoint ${issued.deviceEndpoint} is not an https:// URL`);
}

/**
 * Enrolls this device: a new key pair and CSR → the server's `/api/v1/enroll` with the enrollment token → the
 * private key (0600), certificate and CA certificate written into `certDir`, the package-signing root into
 * `trustDir`, and the agent config keys for them, the endpoint, device, fleet and provider merged into
 * `configFile`. Everything that can be checked locally is checked before the (single-use) token is spent;
 * nothing is written unless the server's answer checks out.
 */
export async function enrollDevice(options: EnrollOptions): Promise<EnrollResult> {
  const token = options.enrollmentToken.trim();
  if (!token.startsWith(ENROLLMENT_TOKEN_PREFIX))
    throw new CliError(
      `the enrollment token should start with ${ENROLLMENT_TOKEN_PREFIX} (an operator creates one with "${options.invocation} device enrollment-token <device>")`,
      EXIT.usage,
    );
  const configFile = resolve(options.configFile);
  const certDir = resolve(options.certDir);
  const before = await readConfigObject(configFile);
  const configured = before?.[DATA_ROOT_KEY];
  const dataDir = resolve(
    options.dataDir ??
      (typeof configured === 'string' && configured !== '' ? configured : options.defaultDataDir),
  );
  const trustDir = resolve(options.trustDir);
  // The folders this makes, removed (those left empty) if enrollment fails before anything is written.
  const made: string[] = [];
  let key: DeviceKeyPair;
  let issued: IssuedCertificate;
  try {
    made.push(...(await mkdirTracked(dirname(configFile))));
    made.push(...(await mkdirTracked(certDir, 0o700)));
    const dirStat = await stat(certDir);
    if (!dirStat.isDirectory())
      throw new CliError(`${certDir} is not a folder; expected where to put the device key`);
    const trustStat = await stat(trustDir).catch(() => undefined);
    if (trustStat !== undefined && !trustStat.isDirectory())
      throw new CliError(
        `${trustDir} is not a folder; expected where to put the package-signing root (--trust-dir)`,
      );
    key = generateDeviceKey(options.keyType);
    const csr = createCsr(key.privateKey, hostname().slice(0, 64) || 'edgefleet-device');
    issued = await options.client.enroll(token, csr, {
      ...(options.deviceName !== undefined && { deviceName: options.deviceName }),
      ...(options.thingName !== undefined && { thingName: options.thingName }),
    });
    checkIssued(issued, key.publicKeyPem);
    if (options.deviceName !== undefined && issued.deviceName !== options.deviceName)
      throw new CliError(
        `the server issued a certificate for device ${issued.deviceName}, not ${options.deviceName} (--device); nothing was written`,
      );
  } catch (error) {
    // Nothing is written yet: a spent token or an unreachable server leaves no empty certs/ behind.
    await removeEmptyFolders(made);
    throw error;
  }

  const files: EnrollResult['files'] = {
    privateKey: join(certDir, 'device.key'),
    certificate: join(certDir, 'device.pem'),
    caCertificate: join(certDir, 'ca.pem'),
  };
  await writeFileAtomic(files.privateKey, key.privateKeyPem, 0o600);
  await writeFileAtomic(files.certificate, issued.certificatePem, 0o644);
  await writeFileAtomic(files.caCertificate, issued.caCertificatePem, 0o644);

  const config: Record<string, string> = {
    ...issued.agentConfig,
    [ENDPOINT_KEY]: issued.deviceEndpoint,
    [CERT_FILE_KEY]: files.certificate,
    [KEY_FILE_KEY]: files.privateKey,
    [CA_FILE_KEY]: files.caCertificate,
    [DATA_ROOT_KEY]: dataDir,
    ...(options.thingName !== undefined && { [IOT_THING_NAME_KEY]: options.thingName }),
    ...(options.restPort !== undefined && { [REST_TCP_KEY]: `127.0.0.1:${options.restPort}` }),
    // Edge Manager's key turns deployments on by its presence; the agent does not use the path itself.
    // Deployments need the local database, whose key likewise works by its presence: set here, so that the
    // agent does not warn at every start that it turned the database on by itself.
    ...(options.deploymentPollSeconds !== undefined && {
      [DEPLOYMENT_LIB_KEY]: join(dataDir, 'deployments'),
      [DB_MODULE_KEY]: join(dataDir, 'db'),
      [DEPLOYMENT_POLL_KEY]: String(options.deploymentPollSeconds),
    }),
  };
  await mkdir(dataDir, { recursive: true, mode: 0o750 });

  // The rest comes from the device API, asked with the new certificate (which shows that it works): the
  // package-signing root for the trust folder, and the fleet's output location for captures.
  const warnings: string[] = [];
  const serverHost = new URL(options.client.server).hostname;
  const endpointHost = new URL(issued.deviceEndpoint).hostname;
  // Reached over the network, the server is elsewhere: its loopback endpoint would be this device's own.
  if (!isLoopbackHost(serverHost) && isLoopbackHost(endpointHost))
    warnings.push(
      `the server at ${options.client.server} handed out ${issued.deviceEndpoint} as its device API, a loopback address: an agent on another host than the server would call itself; the server's operator sets deviceEndpoint (--device-endpoint) and deviceServerNames (--device-server-names) to the address devices reach, then set ${ENDPOINT_KEY} in ${configFile} to it (or enroll again)`,
    );
  const capture = options.capture ?? 'edgefleet';
  let settings: AgentSettings | undefined;
  try {
    settings = await fetchAgentSettings(issued.deviceEndpoint, {
      certPem: issued.certificatePem,
      keyPem: key.privateKeyPem,
      caPem: issued.caCertificatePem,
    });
  } catch (error) {
    warnings.push(
      `could not read the agent settings from ${issued.deviceEndpoint} (${(error as Error).message}): set ${ROOT_CERTS_KEY} and the capture keys by hand`,
    );
  }
  if (settings !== undefined) {
    await makeTrustFolder(trustDir);
    warnings.push(...(await trustFolderWarnings(trustDir, certDir)));
    await writeFileAtomic(
      join(trustDir, 'package-signing-root.pem'),
      settings.packageSigningRoot.certificatePem,
      0o644,
    );
    files.trustFolder = trustDir;
    config[ROOT_CERTS_KEY] = trustDir;
    // The server judges a device offline after a few missed heartbeats of its own interval.
    if (settings.heartbeatIntervalSeconds !== undefined)
      config[HEARTBEAT_INTERVAL_KEY] = String(settings.heartbeatIntervalSeconds);
    if (capture !== 'disk' && settings.captureBucket === undefined)
      warnings.push(
        `fleet ${issued.fleetName}'s output location ${settings.captureOutputLocation ?? '(none)'} is not s3://bucket/prefix; captures stay on disk`,
      );
    else if (capture !== 'disk') {
      config[CAPTURE_DESTINATION_KEY] = capture === 'edgefleet' ? 'EdgeFleet' : 'Cloud';
      config[BUCKET_KEY] = settings.captureBucket!;
      // Always set, so that a prefix already in the config (an Edge Manager device's) does not stay. Older
      // servers left it out for an output at the bucket root.
      config[FOLDER_PREFIX_KEY] = settings.captureFolderPrefix || NO_FOLDER_PREFIX;
    }
  }
  if (capture === 'disk' || config[CAPTURE_DESTINATION_KEY] === undefined)
    config[CAPTURE_DESTINATION_KEY] = 'Disk';
  // Read again just before writing, so edits made while the server answered are kept.
  const existing = (await readConfigObject(configFile)) ?? {};
  const mode = await stat(configFile).then(
    (s) => s.mode & 0o777,
    () => 0o644,
  );
  const merged = { ...existing, ...config };
  await writeFileAtomic(configFile, `${JSON.stringify(merged, null, 2)}\n`, mode);
  // An existing config (an Edge Manager device's, say) loses values the user may rely on: each one is said.
  const replaced: ReplacedKey[] = Object.entries(config)
    .filter(([key, value]) => {
      const old = existing[key];
      return old !== undefined && old !== null && old !== '' && String(old) !== value;
    })
    .map(([key, value]) => ({ key, old: existing[key], new: value }));

  return {
    deviceName: issued.deviceName,
    fleetName: issued.fleetName,
    deviceEndpoint: issued.deviceEndpoint,
    serial: issued.serial,
    notAfter: issued.notAfter,
    files,
    configFile,
    config,
    merged,
    replaced,
    warnings,
  };
}

const agentSettingsSchema = z.looseObject({
  packageSigningRoot: z.looseObject({ certificatePem: z.string().min(1), fingerprintSha256: z.string() }),
  captureOutputLocation: z.string().optional(),
  captureBucket: z.string().optional(),
  captureFolderPrefix: z.string().optional(),
  heartbeatIntervalSeconds: z.int().positive().optional(),
});
type AgentSettings = z.infer<typeof agentSettingsSchema>;

/** `GET <device API>/api/v1/device/agent-settings` over mutual TLS with the device's new identity. */
function fetchAgentSettings(
  endpoint: string,
  tls: { certPem: string; keyPem: string; caPem: string },
): Promise<AgentSettings> {
  return new Promise((resolvePromise, reject) => {
    const req = httpsRequest(
      new URL('api/v1/device/agent-settings', endpoint.endsWith('/') ? endpoint : `${endpoint}/`),
      { method: 'GET', cert: tls.certPem, key: tls.keyPem, ca: tls.caPem, agent: false, timeout: 15_000 },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          text += chunk;
          if (text.length > 1024 * 1024) res.destroy(new Error('the answer is larger than 1 MiB'));
        });
        res.on('error', reject);
        res.on('end', () => {
          if (res.statusCode !== 200)
            return reject(new Error(`HTTP ${res.statusCode}: ${text.slice(0, 300)}`));
          let json: unknown;
          try {
            json = JSON.parse(text);
          } catch {
            return reject(new Error('the answer is not JSON'));
          }
          const parsed = agentSettingsSchema.safeParse(json);
          if (parsed.success) resolvePromise(parsed.data);
          else reject(new Error(`unexpected answer: ${parsed.error.issues[0]?.message}`));
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error('no answer in 15 s')));
    req.on('error', reject);
    req.end();
  });
}
