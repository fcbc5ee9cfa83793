import os from 'node:os';
import { z } from 'zod';
import { ConfigError, parseAgentConfig, type AgentConfig } from '../config/index.js';
import type { FleetOutput } from './fleet-output.js';

/**
 * The parameters of the Greengrass v2 component, with the names, defaults and meanings of Edge Manager's
 * `aws.greengrass.SageMakerEdgeManager` (string-valued there: numbers and booleans may come as strings), then
 * EdgeFleet's own. Each maps onto one agent config key, so the agent's own checks apply to it; an error names
 * the parameter. `key: null` marks parameters that are not config keys (the socket is the `-a` flag).
 */
export const COMPONENT_PARAMETERS = {
  DeviceFleetName: { key: 'sagemaker_edge_core_device_fleet_name', default: '' },
  BucketName: { key: 'sagemaker_edge_provider_s3_bucket_name', default: '' },
  CaptureDataBatchSize: { key: 'sagemaker_edge_core_capture_data_batch_size', default: '10' },
  CaptureDataBufferSize: { key: 'sagemaker_edge_core_capture_data_buffer_size', default: '30' },
  CaptureDataDestination: { key: 'sagemaker_edge_core_capture_data_destination', default: 'Cloud' },
  CaptureDataPushPeriodSeconds: { key: 'sagemaker_edge_core_capture_data_push_period_seconds', default: '4' },
  CaptureDataBase64EmbedLimit: {
    key: 'sagemaker_edge_core_capture_data_base64_embed_limit',
    default: '3072',
  },
  CaptureDataPeriodicUpload: { key: 'sagemaker_edge_core_capture_data_periodic_upload', default: 'false' },
  CaptureDataPeriodicUploadPeriodSeconds: {
    key: 'sagemaker_edge_core_capture_data_periodic_upload_period_seconds',
    default: '8',
  },
  FolderPrefix: { key: 'sagemaker_edge_core_folder_prefix', default: 'sme-capture' },
  CaptureDataDiskPath: {
    key: 'sagemaker_edge_core_capture_data_disk_path',
    default: '/greengrass/v2/work/io.edgefleet.EdgeFleetAgent/capture',
  },
  LocalDataRootPath: {
    key: 'sagemaker_edge_local_data_root_path',
    default: '/greengrass/v2/work/io.edgefleet.EdgeFleetAgent',
  },
  DbEnable: { key: 'sagemaker_edge_db_module_path', default: 'false' },
  DeploymentEnable: { key: 'sagemaker_edge_deployment_lib_path', default: 'false' },
  DeploymentPollInterval: { key: 'sagemaker_edge_model_deployment_poll_interval', default: '1440' },
  DLRBackendOptions: { key: 'sagemaker_edge_dlr_backend_options', default: '' },
  SagemakerEdgeLogVerbose: { key: 'sagemaker_edge_log_verbose', default: 'false' },
  UnixSocketName: { key: null, default: '/tmp/aws.greengrass.SageMakerEdgeManager.sock' },
  // EdgeFleet's own.
  EdgeFleetEndpoint: { key: 'sagemaker_edge_core_endpoint_override', default: '' },
  EnrollmentServerUrl: { key: null, default: '' },
  EnrollmentToken: { key: null, default: '' },
  RootCertsPath: { key: 'sagemaker_edge_core_root_certs_path', default: '' },
  HeartbeatIntervalSeconds: { key: 'edgefleet_heartbeat_interval_seconds', default: '30' },
} as const satisfies Record<string, { key: string | null; default: string }>;

export type ComponentParameter = keyof typeof COMPONENT_PARAMETERS;
export const COMPONENT_PARAMETER_NAMES = Object.keys(COMPONENT_PARAMETERS) as ComponentParameter[];

/** Greengrass configuration values are JSON scalars; interpolated into the environment they are strings. */
const scalar = z.union([z.string(), z.number(), z.boolean()]).transform((v) => String(v).trim());
export const ComponentConfigurationSchema = z
  .object(Object.fromEntries(COMPONENT_PARAMETER_NAMES.map((name) => [name, scalar.optional()])))
  .partial() as unknown as z.ZodType<Partial<Record<ComponentParameter, string>>>;
export type ComponentConfiguration = z.infer<typeof ComponentConfigurationSchema>;

/** The component's DefaultConfiguration, as the recipe carries it. */
export function defaultComponentConfiguration(): Record<ComponentParameter, string> {
  return Object.fromEntries(
    COMPONENT_PARAMETER_NAMES.map((n) => [n, COMPONENT_PARAMETERS[n].default]),
  ) as Record<ComponentParameter, string>;
}

export class ComponentParameterError extends Error {
  override readonly name = 'ComponentParameterError';
  constructor(
    readonly parameter: ComponentParameter | null,
    message: string,
  ) {
    super(message);
  }
}

export interface RenderContext {
  /**
   * The core device's IoT thing name (`{iot:thingName}`): the device name unless the device was registered (and
   * enrolled, `--thing-name`) with another IoT thing name.
   */
  thingName: string;
  /**
   * The config file `edgefleet device enroll` wrote. Only its identity keys ({@link ENROLLED_IDENTITY_KEYS}) are
   * taken: the rest of that file is enroll's defaults (capture, data folder, heartbeat), which would otherwise
   * override the component's parameters.
   */
  identity?: Record<string, unknown>;
  /**
   * The device's fleet output as the server reports it now (render-main asks it at each Install): with
   * CaptureDataDestination EdgeFleet it wins over the identity's, a snapshot taken at enrollment.
   */
  fleetOutput?: FleetOutput;
}

/**
 * The folder prefix written for "none" (an output at the bucket root): the agent reads `""` as unset (its
 * default `sme-capture`) and trims slashes, so `/` leaves none.
 */
export const NO_FOLDER_PREFIX = '/';

/**
 * What an enrollment decides and no component parameter does: who the device is (its certificate, bound to its
 * device and fleet names), where its server is and how it authenticates, and the package-signing trust folder
 * (unless RootCertsPath names one). EdgeFleetEndpoint, when set, wins over the enrolled endpoint.
 */
export const ENROLLED_IDENTITY_KEYS = [
  'sagemaker_edge_core_device_name',
  'sagemaker_edge_core_device_fleet_name',
  'sagemaker_edge_core_endpoint_override',
  'sagemaker_edge_provider_provider',
  'sagemaker_edge_provider_aws_cert_file',
  'sagemaker_edge_provider_aws_cert_pk_file',
  'sagemaker_edge_provider_aws_ca_cert_file',
  'sagemaker_edge_core_root_certs_path',
] as const;

/** The capture target enrollment chose, kept while CaptureDataDestination is left on its unusable default. */
const ENROLLED_CAPTURE_KEYS = [
  'sagemaker_edge_core_capture_data_destination',
  'sagemaker_edge_provider_s3_bucket_name',
  'sagemaker_edge_core_folder_prefix',
] as const;

export interface RenderedConfig {
  /** The agent's JSON config. */
  config: Record<string, unknown>;
  /** The `-a` socket path. */
  socketPath: string;
  /** What the agent will make of it (its own parser), for checks and tests. */
  effective: AgentConfig;
  warnings: string[];
}

const BOOLEAN_WORDS: Record<string, boolean> = {
  true: true,
  false: false,
  '1': true,
  '0': false,
  yes: true,
  no: false,
};

function flag(parameter: ComponentParameter, value: string): boolean {
  const known = BOOLEAN_WORDS[value.toLowerCase()];
  if (known === undefined) {
    throw new ComponentParameterError(
      parameter,
      `${parameter}: expected true or false, got ${JSON.stringify(value)}`,
    );
  }
  return known;
}

/**
 * The original's default destination, Cloud, needs a server (else the agent runs offline) and a bucket: said here
 * in parameter terms, since the agent's own check names config keys (sagemaker_edge_provider_provider) no
 * component parameter sets. Cloud goes straight to the bucket with AWS credentials, not through the server.
 */
function checkCloudCapture(
  values: Record<ComponentParameter, string>,
  config: Record<string, unknown>,
): void {
  if (values.CaptureDataDestination.toLowerCase() !== 'cloud') return;
  if (config.sagemaker_edge_provider_provider === undefined)
    throw new ComponentParameterError(
      'CaptureDataDestination',
      `CaptureDataDestination is Cloud${values.CaptureDataDestination === COMPONENT_PARAMETERS.CaptureDataDestination.default ? ' (the default)' : ''}, which uploads captures straight to BucketName with AWS credentials (the Token Exchange Service's, the AWS IoT credentials provider's or the AWS SDK's other sources), but no EdgeFleet server is set, so the agent would run offline: set EdgeFleetEndpoint (or EnrollmentServerUrl and EnrollmentToken) and BucketName, or CaptureDataDestination to EdgeFleet (captures go through the EdgeFleet server to the fleet's output; needs an enrollment) or Disk`,
    );
  if (values.BucketName === '')
    throw new ComponentParameterError(
      'BucketName',
      "BucketName: required when CaptureDataDestination is Cloud (captures go to that bucket); set it, or CaptureDataDestination to EdgeFleet (an enrolled device: the fleet's output location) or Disk",
    );
}

/** The parameters that name where captures go in the bucket, with the config keys enrollment sets for them. */
const FLEET_OUTPUT_PARAMETERS = ['BucketName', 'FolderPrefix'] as const;

/**
 * With CaptureDataDestination EdgeFleet on an enrolled device, sets the bucket and prefix of the fleet's output
 * location: the server's answer now when there is one, else what enrollment took (no prefix written as
 * {@link NO_FOLDER_PREFIX}); a BucketName or FolderPrefix set to something else (its default aside) gets a
 * warning. Not enrolled for it (no enrolled bucket: enrolled with Disk, or by hand), the parameters stay.
 */
function useFleetOutput(
  values: Record<ComponentParameter, string>,
  config: Record<string, unknown>,
  identity: Record<string, unknown>,
  now: FleetOutput | undefined,
): string[] {
  const enrolledBucket = identity.sagemaker_edge_provider_s3_bucket_name;
  if (typeof enrolledBucket !== 'string') return [];
  const enrolledPrefix = identity.sagemaker_edge_core_folder_prefix;
  const target = {
    BucketName: now?.bucket ?? enrolledBucket,
    // An enrollment by an older CLI wrote no prefix for an output at the bucket root.
    FolderPrefix:
      (now ? now.prefix : typeof enrolledPrefix === 'string' ? enrolledPrefix : '') || NO_FOLDER_PREFIX,
  };
  const warnings: string[] = [];
  for (const name of FLEET_OUTPUT_PARAMETERS) {
    const { key, default: byDefault } = COMPONENT_PARAMETERS[name];
    const value = target[name];
    const what = name === 'BucketName' ? 'bucket' : 'prefix';
    if (values[name] !== '' && values[name] !== byDefault && values[name] !== value)
      warnings.push(
        `${name} is ${JSON.stringify(values[name])} but CaptureDataDestination is EdgeFleet, whose server accepts captures only under this device's fleet output; ${now ? `the fleet output's ${what} ${JSON.stringify(value)} (${now.location}, as the server reports it now)` : `the enrolled ${what} ${JSON.stringify(value)}`} is used (for another bucket or prefix, set CaptureDataDestination to Cloud)`,
      );
    config[key] = value;
    values[name] = value;
  }
  return warnings;
}

/**
 * Turns the component's configuration into the agent's config file and `-a` socket, then runs the agent's
 * own config parser over the result so that every error surfaces here, naming the component parameter.
 */
export function renderAgentConfig(configuration: unknown, context: RenderContext): RenderedConfig {
  const checked = ComponentConfigurationSchema.safeParse(configuration);
  if (!checked.success) {
    const issue = checked.error.issues[0];
    const name = String(issue?.path[0] ?? '');
    throw new ComponentParameterError(
      (COMPONENT_PARAMETER_NAMES as string[]).includes(name) ? (name as ComponentParameter) : null,
      `${name || 'configuration'}: expected a string, number or boolean, got ${issue?.message ?? 'something else'}`,
    );
  }
  const values = { ...defaultComponentConfiguration(), ...checked.data } as Record<
    ComponentParameter,
    string
  >;
  if (values.DeviceFleetName === '') {
    throw new ComponentParameterError(
      'DeviceFleetName',
      'DeviceFleetName: required; expected the fleet this device belongs to',
    );
  }
  if (values.UnixSocketName === '') {
    throw new ComponentParameterError(
      'UnixSocketName',
      'UnixSocketName: expected the path of the agent socket',
    );
  }

  const config: Record<string, unknown> = {
    sagemaker_edge_core_device_name: context.thingName,
    sagemaker_edge_core_iot_thing_name: context.thingName,
  };
  for (const name of COMPONENT_PARAMETER_NAMES) {
    const { key } = COMPONENT_PARAMETERS[name];
    if (key === null || values[name] === '') continue;
    // The original's DB and deployment plug-ins were enabled by their paths; ours are built in.
    if (name === 'DbEnable' || name === 'DeploymentEnable') {
      if (flag(name, values[name])) config[key] = 'builtin';
      continue;
    }
    config[key] = values[name];
  }
  if (values.EdgeFleetEndpoint !== '') config.sagemaker_edge_provider_provider = 'Custom';
  const warnings: string[] = [];
  const identity = context.identity ?? {};
  for (const key of ENROLLED_IDENTITY_KEYS) if (identity[key] !== undefined) config[key] = identity[key];
  const enrolledFleet = identity.sagemaker_edge_core_device_fleet_name;
  if (enrolledFleet !== undefined && enrolledFleet !== values.DeviceFleetName)
    warnings.push(
      `DeviceFleetName is ${JSON.stringify(values.DeviceFleetName)} but this device was enrolled in fleet ${JSON.stringify(enrolledFleet)}, which its certificate names; the enrolled fleet is used`,
    );
  // A core device provisioned again under a new thing name, its work folder (and identity file) kept.
  // Enrolled with --thing-name (a device registered under another IoT thing name), the names differ by design.
  const enrolledName = identity.sagemaker_edge_core_device_name;
  const enrolledThing = identity.sagemaker_edge_core_iot_thing_name;
  if (enrolledName !== undefined && enrolledName !== context.thingName && enrolledThing !== context.thingName)
    warnings.push(
      `the Greengrass thing name is ${JSON.stringify(context.thingName)} but this device was enrolled as ${JSON.stringify(enrolledName)}, which its certificate names; the enrolled name is used`,
    );
  if (values.EdgeFleetEndpoint !== '')
    config.sagemaker_edge_core_endpoint_override = values.EdgeFleetEndpoint;
  // An operator's RootCertsPath (a folder root owns, say) wins over the trust folder enrollment wrote: that one is
  // in the work folder, which the component's user owns and could so swap (deploy/README.md).
  if (values.RootCertsPath !== '') config.sagemaker_edge_core_root_certs_path = values.RootCertsPath;
  // Left on the original's default (Cloud, no bucket), which cannot capture, an enrolled device keeps the
  // capture target enrollment chose (the fleet's output location, or Disk), as before parameters won: a
  // component update must not fail Install on devices that never set these.
  const enrolledDestination = identity.sagemaker_edge_core_capture_data_destination;
  if (
    values.CaptureDataDestination === COMPONENT_PARAMETERS.CaptureDataDestination.default &&
    values.BucketName === '' &&
    typeof enrolledDestination === 'string'
  ) {
    for (const key of ENROLLED_CAPTURE_KEYS) if (identity[key] !== undefined) config[key] = identity[key];
    values.CaptureDataDestination = enrolledDestination;
    values.BucketName = String(identity.sagemaker_edge_provider_s3_bucket_name ?? '');
    warnings.push(
      `CaptureDataDestination is the default Cloud with no BucketName, which cannot capture; the destination enrollment chose (${enrolledDestination}) is used: set CaptureDataDestination (EdgeFleet, Disk, or Cloud with BucketName) to choose`,
    );
  }
  // EdgeFleet sends captures through the server, which takes only keys under the enrolled fleet's own bucket and
  // prefix and refuses the rest for good (the captures are lost): those are the enrolled ones, whatever
  // BucketName and FolderPrefix say.
  if (values.CaptureDataDestination.toLowerCase() === 'edgefleet')
    warnings.push(...useFleetOutput(values, config, identity, context.fleetOutput));
  checkCloudCapture(values, config);

  const keyToParameter = new Map<string, ComponentParameter>(
    COMPONENT_PARAMETER_NAMES.flatMap((n) => {
      const { key } = COMPONENT_PARAMETERS[n];
      return key === null ? [] : [[key, n] as [string, ComponentParameter]];
    }),
  );
  const named = (message: string) =>
    message.replace(/\b(sagemaker_edge_\w+|edgefleet_\w+)\b/g, (key) => {
      const parameter = keyToParameter.get(key);
      return parameter ? `${parameter} (${key})` : key;
    });
  try {
    const parsed = parseAgentConfig(config, {
      cwd: values.LocalDataRootPath || process.cwd(),
      cpuCount: os.availableParallelism(),
      grpcSocketPath: values.UnixSocketName,
    });
    return {
      config,
      socketPath: values.UnixSocketName,
      effective: parsed.config,
      warnings: [...warnings, ...parsed.warnings.map(named)],
    };
  } catch (error) {
    if (error instanceof ConfigError) {
      throw new ComponentParameterError(
        error.key ? (keyToParameter.get(error.key) ?? null) : null,
        named(error.message),
      );
    }
    throw error;
  }
}
