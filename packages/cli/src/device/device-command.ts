import { dirname, join, resolve } from 'node:path';
import { Option, type Command } from 'commander';
import { CliError, EXIT, refuseArguments, table, type Output } from '../cli-io.js';
import {
  ServerClient,
  addServerOptions,
  addTagUpdateOptions,
  clearedIfEmpty,
  cliErrorFrom,
  collect,
  descriptionAndTagPatch,
  fields,
  formatTags,
  formatTime,
  intOption,
  parseTags,
  requireChange,
  resolveConnection,
  withServer,
  type ConnectionFlags,
  type DescriptionAndTagFlags,
  type Device,
  type UpdateDeviceInput,
} from '../server-client/index.js';
import { DEVICE_KEY_TYPES, MAX_DEVICES_PER_REGISTRATION, type DeviceKeyType } from '@edgefleet/core';
import {
  CAPTURE_CHOICES,
  CAPTURE_DESTINATION_KEY,
  DATA_ROOT_KEY,
  DEPLOYMENT_LIB_KEY,
  DEPLOYMENT_POLL_KEY,
  REST_TCP_KEY,
  enrollDevice,
  type CaptureChoice,
} from './enroll.js';
import { describeMetrics } from './metrics-table.js';

/**
 * `--token`'s value. A value that looks like an option is refused: `--token $(edgefleet device enrollment-token …)`
 * whose inner command failed leaves `--token` followed by the next option, which would become the token and
 * turn the real mistake into a confusing "required option" error.
 */
export function enrollmentTokenOption(value: string, invocation: string): string {
  const fix = `run the command that prints the token on its own, or stop on its failure: TOKEN=$(${invocation} device enrollment-token <device>) && EDGEFLEET_ENROLLMENT_TOKEN="$TOKEN" ${invocation} device enroll …`;
  if (value.trim() === '')
    throw new CliError(`--token is empty: expected the efe_… token; ${fix}`, EXIT.usage);
  if (value.startsWith('-'))
    throw new CliError(
      `--token is missing: it is followed by ${JSON.stringify(value)}, an option, not the efe_… token — probably because the command that prints the token failed (see its message above); ${fix}`,
      EXIT.usage,
    );
  return value;
}

type NotLoadedModel = NonNullable<Device['deployedModelsNotLoaded']>[number];

/** "detector 1.0 (deployment rollout-9) is not loaded: unloaded by an application at …", as the console says it. */
export function notLoadedLine(model: NotLoadedModel): string {
  const named =
    model.modelName !== undefined && model.modelName !== model.modelHandle
      ? `${model.modelHandle} (model ${model.modelName})`
      : model.modelHandle;
  const why = model.unloadedByApplication
    ? `unloaded by an application${model.since !== undefined ? ` at ${formatTime(model.since)}` : ''}; it stays unloaded until it is loaded or deployed again`
    : model.reason;
  return `  ${named}${model.modelVersion !== undefined ? ` ${model.modelVersion}` : ''} (deployment ${model.deploymentName}) is not loaded: ${why}`;
}

function describeDevice(device: Device): string[] {
  const cert = device.identity.certificate;
  const lines = [
    fields([
      ['name', device.name],
      ['fleet', device.fleetName],
      ['description', device.description],
      ['iot thing', device.iotThingName],
      ['tags', formatTags(device.tags)],
      ['status', device.status],
      ['last heartbeat', formatTime(device.latestHeartbeat)],
      ['agent version', device.agentVersion],
      ['registered', formatTime(device.registeredAt)],
      ['identity', device.identity.status],
      ...(cert
        ? ([
            ['certificate', `serial ${cert.serial}, valid until ${cert.notAfter}`],
            ['subject', cert.subject],
          ] as Array<[string, string]>)
        : []),
    ]),
    '',
    device.models.length === 0
      ? 'models: none reported'
      : table(
          ['model', 'version', 'latest inference', 'latest sample'],
          device.models.map((m) => [
            m.name,
            m.version,
            formatTime(m.latestInference),
            formatTime(m.latestSampleTime),
          ]),
        ),
  ];
  const notLoaded = device.deployedModelsNotLoaded ?? [];
  if (notLoaded.length > 0)
    lines.push('', `deployed but NOT LOADED (${notLoaded.length}):`, ...notLoaded.map(notLoadedLine));
  if (device.deploymentResult !== undefined) {
    const result = device.deploymentResult as { DeploymentName?: string; DeploymentStatus?: string };
    lines.push(
      '',
      `last deployment: ${result.DeploymentName ?? '?'} ${result.DeploymentStatus ?? ''}`.trimEnd(),
    );
  }
  return lines;
}

/** `first … last (n)`: a batch's names, short enough for one line. */
function namesOf(names: string[]): string {
  if (names.length <= 3) return names.join(', ');
  return `${names[0]} … ${names[names.length - 1]} (${names.length})`;
}

export function registerDeviceCommands(
  program: Command,
  output: () => Output,
  stderr: NodeJS.WritableStream = process.stderr,
): void {
  const device = program
    .command('device')
    .description('devices on an EdgeFleet server, and enrolling this one');

  addServerOptions(
    device
      .command('register')
      .description(
        `register devices in a fleet (in batches of ${MAX_DEVICES_PER_REGISTRATION}, each all or none)`,
      )
      .argument('<fleet>', 'the fleet')
      .argument('<names...>', 'device names (unique across fleets)')
      .option('--description <text>', 'description for each device')
      .option('--iot-thing-name <name>', 'IoT thing name (one device only)')
      .option('--tag <key=value>', 'a tag for each device (repeatable)', collect, []),
  ).action(
    async (
      fleet: string,
      names: string[],
      opts: ConnectionFlags & { description?: string; iotThingName?: string; tag: string[] },
    ) => {
      const out = output();
      if (opts.iotThingName !== undefined && names.length > 1)
        throw new CliError(
          '--iot-thing-name names one device’s thing; register one device with it',
          EXIT.usage,
        );
      const inputs = names.map((name) => ({
        name,
        ...(opts.description !== undefined && { description: opts.description }),
        ...(opts.iotThingName !== undefined && { iotThingName: opts.iotThingName }),
      }));
      const tags = parseTags(opts.tag);
      const batches: (typeof inputs)[] = [];
      for (let i = 0; i < inputs.length; i += MAX_DEVICES_PER_REGISTRATION)
        batches.push(inputs.slice(i, i + MAX_DEVICES_PER_REGISTRATION));
      const devices = await withServer(opts, async (client) => {
        const registered: Awaited<ReturnType<ServerClient['registerDevices']>> = [];
        for (const [index, batch] of batches.entries()) {
          const batchNames = batch.map((d) => d.name);
          try {
            registered.push(...(await client.registerDevices(fleet, batch, tags)));
          } catch (error) {
            if (batches.length === 1) throw error;
            // Each batch is all or none: say which went through, so a re-run can start from the failed one.
            const failure = cliErrorFrom(error);
            const message = failure instanceof Error ? failure.message : String(failure);
            const done = registered.map((d) => d.name);
            throw new CliError(
              `batch ${index + 1} of ${batches.length} (${namesOf(batchNames)}) was not registered: ${message}; ` +
                (done.length === 0
                  ? 'no device was registered'
                  : `registered before it: ${done.length} device${done.length === 1 ? '' : 's'} (${namesOf(done)})`) +
                `; not registered: ${names.length - done.length} (from ${batchNames[0]} on)`,
              failure instanceof CliError ? failure.exitCode : EXIT.failed,
            );
          }
          if (batches.length > 1) {
            stderr.write(
              `Registered batch ${index + 1} of ${batches.length}: ${batch.length} device${batch.length === 1 ? '' : 's'} (${namesOf(batchNames)})\n`,
            );
          }
        }
        return registered;
      });
      out.result({ devices }, () => [
        `Registered ${devices.length} device${devices.length === 1 ? '' : 's'} in fleet ${fleet}: ${devices.map((d) => d.name).join(', ')}`,
        `Next, for each device: TOKEN=$(${out.invocation} device enrollment-token <name>) && EDGEFLEET_ENROLLMENT_TOKEN="$TOKEN" ${out.invocation} device enroll --server <url> --config <agent config>`,
      ]);
    },
  );

  addServerOptions(
    refuseArguments(
      device.command('list'),
      output,
      (arg) =>
        `to list one fleet's devices add --fleet ${arg}; other filters: --tag, --name-contains, --status, --model`,
    )
      .description('list devices, optionally filtered')
      .option('--fleet <name>', 'only this fleet')
      .option('--tag <key[=value]>', 'only devices with this tag (repeatable: all must match)', collect, [])
      .option('--name-contains <text>', 'name contains (case-insensitive)')
      .addOption(
        new Option(
          '--status <status>',
          'online, offline (never-seen devices included) or never-seen (no heartbeat yet)',
        ).choices(['online', 'offline', 'never-seen']),
      )
      .option('--model <name>', 'only devices that reported this model')
      .option('--heartbeat-after <iso time>', 'only devices heard from after this time')
      .option('--limit <n>', 'at most this many', intOption('--limit', 1, 1_000_000)),
  ).action(
    async (
      opts: ConnectionFlags & {
        fleet?: string;
        tag: string[];
        nameContains?: string;
        status?: 'online' | 'offline' | 'never-seen';
        model?: string;
        heartbeatAfter?: string;
        limit?: number;
      },
    ) => {
      const out = output();
      const devices = await withServer(opts, (client) =>
        client.listDevices(
          {
            ...(opts.fleet && { fleet: opts.fleet }),
            tags: opts.tag,
            ...(opts.nameContains && { nameContains: opts.nameContains }),
            ...(opts.status && { status: opts.status }),
            ...(opts.model && { modelName: opts.model }),
            ...(opts.heartbeatAfter && { latestHeartbeatAfter: opts.heartbeatAfter }),
          },
          opts.limit,
        ),
      );
      out.result({ devices }, () =>
        devices.length === 0
          ? 'no devices'
          : table(
              ['name', 'fleet', 'status', 'last heartbeat', 'agent', 'models'],
              devices.map((d) => [
                d.name,
                d.fleetName,
                // As the console and fleet report say it: a device that never reported is not merely offline.
                d.latestHeartbeat === undefined ? 'never seen' : d.status,
                formatTime(d.latestHeartbeat),
                d.agentVersion ?? '-',
                (d.models.map((m) => `${m.name}@${m.version}`).join(',') || '-') +
                  // Deployed, yet serving nothing under those handles: `device describe` says which and why.
                  (d.deployedModelsNotLoadedCount ? ` (${d.deployedModelsNotLoadedCount} NOT LOADED)` : ''),
              ]),
            ),
      );
    },
  );

  addServerOptions(
    device
      .command('describe')
      .description('a device: registration, identity, agent, models, last heartbeat')
      .argument('<name>'),
  ).action(async (name: string, opts: ConnectionFlags) => {
    const out = output();
    const found = await withServer(opts, (client) => client.getDevice(name));
    out.result(found, () => describeDevice(found));
  });

  addServerOptions(
    addTagUpdateOptions(
      device
        .command('update')
        .description('change a device’s description, IoT thing name or tags')
        .argument('<name>')
        .option('--description <text>', 'new description ("" clears it)')
        .option('--iot-thing-name <name>', 'new IoT thing name ("" clears it)'),
    ),
  ).action(
    async (name: string, opts: ConnectionFlags & DescriptionAndTagFlags & { iotThingName?: string }) => {
      const out = output();
      const patch: UpdateDeviceInput = requireChange(
        {
          ...descriptionAndTagPatch(opts),
          ...(opts.iotThingName !== undefined && { iotThingName: clearedIfEmpty(opts.iotThingName) }),
        },
        '--description, --iot-thing-name, --tag or --clear-tags',
      );
      const updated = await withServer(opts, (client) => client.updateDevice(name, patch));
      out.result(updated, () => [`Updated device ${updated.name}`, ...describeDevice(updated)]);
    },
  );

  addServerOptions(
    device
      .command('deregister')
      .description('remove a device and revoke every certificate it was issued')
      .argument('<name>'),
  ).action(async (name: string, opts: ConnectionFlags) => {
    const out = output();
    await withServer(opts, (client) => client.deregisterDevice(name));
    out.result({ deregistered: name }, () => `Deregistered device ${name}; its certificates are revoked`);
  });

  addServerOptions(
    device
      .command('enrollment-token')
      .description('create a single-use, expiring token with which the device enrolls (printed once)')
      .argument('<name>', 'the registered device')
      .option(
        '--ttl <seconds>',
        'lifetime (default: the server’s)',
        intOption('--ttl', 60, 10 * 365 * 86_400),
      ),
  ).action(async (name: string, opts: ConnectionFlags & { ttl?: number }) => {
    const out = output();
    const created = await withServer(opts, (client) => client.createEnrollmentToken(name, opts.ttl));
    // The token alone, so that `$(edgefleet device enrollment-token …)` works; --json adds device, fleet, expiry.
    out.result(created, () => created.token);
  });

  addServerOptions(
    device
      .command('certificates')
      .description('every certificate issued to a device, newest first')
      .argument('<name>'),
  ).action(async (name: string, opts: ConnectionFlags) => {
    const out = output();
    const certificates = await withServer(opts, (client) => client.certificates(name));
    out.result({ certificates }, () =>
      certificates.length === 0
        ? `no certificates issued to ${name}`
        : table(
            ['serial', 'issued', 'not after', 'state'],
            certificates.map((c) => [
              c.serial,
              c.issuedAt,
              c.notAfter,
              c.revokedAt
                ? `revoked ${c.revokedAt}`
                : Date.parse(c.notAfter) < Date.now()
                  ? 'expired'
                  : 'active',
            ]),
          ),
    );
  });

  addServerOptions(
    device
      .command('revoke')
      .description('revoke one certificate of a device (--serial) or all its active ones')
      .argument('<name>')
      .option('--serial <hex>', 'only this certificate')
      .option('--reason <text>', 'kept with the revocation'),
  ).action(async (name: string, opts: ConnectionFlags & { serial?: string; reason?: string }) => {
    const out = output();
    const revoked = await withServer(opts, (client) =>
      client.revokeCertificates(name, {
        ...(opts.serial !== undefined && { serial: opts.serial }),
        ...(opts.reason !== undefined && { reason: opts.reason }),
      }),
    );
    out.result({ revoked }, () => `Revoked ${revoked} certificate${revoked === 1 ? '' : 's'} of ${name}`);
  });

  addServerOptions(
    device
      .command('metrics')
      .description('a device’s metric series (agent and per model), bucketed')
      .argument('<name>')
      .option('--since <iso time>', 'start (default: an hour before --until)')
      .option('--until <iso time>', 'end (default: now)')
      .option('--step <seconds>', 'bucket width', intOption('--step', 1, 86_400))
      .option('--metric <name>', 'only this metric')
      .option('--model <name>', 'only this model'),
  ).action(
    async (
      name: string,
      opts: ConnectionFlags & {
        since?: string;
        until?: string;
        step?: number;
        metric?: string;
        model?: string;
      },
    ) => {
      const out = output();
      const metrics = await withServer(opts, (client) =>
        client.deviceMetrics(name, {
          ...(opts.since && { since: opts.since }),
          ...(opts.until && { until: opts.until }),
          ...(opts.step !== undefined && { step: opts.step }),
          ...(opts.metric && { metricName: opts.metric }),
          ...(opts.model && { modelName: opts.model }),
        }),
      );
      out.result(metrics, () => describeMetrics(metrics));
    },
  );

  device
    .command('enroll')
    .description(
      'on the device: make a key pair and CSR, get a certificate with an enrollment token, and write the agent config',
    )
    .option('--server <url>', 'the EdgeFleet server’s operator API (env EDGEFLEET_SERVER)')
    .option(
      '--token <efe_…>',
      'the enrollment token; better in env EDGEFLEET_ENROLLMENT_TOKEN (a command line is visible to other local users)',
      (value: string) =>
        // Parsed before the action runs; the hint names the command as the user started it (npx or not).
        enrollmentTokenOption(value, output().invocation),
    )
    .option('--profile <name>', 'take the server URL from this profile')
    .requiredOption('--config <file>', 'the agent’s JSON config to create or merge into')
    .option(
      '--cert-dir <dir>',
      'where the key and certificates go (default: <config folder>/certs); the agent renews them there',
    )
    .option(
      '--trust-dir <dir>',
      'where the package-signing root goes, the folder the agent trusts (default: <config folder>/trust); keep it root’s, outside --cert-dir',
    )
    .option('--data-dir <dir>', 'the agent’s data folder (default: the config’s, else <config folder>/data)')
    .option(
      '--device <name>',
      'the device this host is: a token issued for another device is refused and left unused',
    )
    .option(
      '--thing-name <name>',
      'this host’s IoT thing name (a Greengrass core): a token for a device registered with another IoT thing name (or, with none, named otherwise) is refused and left unused',
    )
    .addOption(
      new Option(
        '--capture <where>',
        'captures go to: edgefleet (the control plane writes them to the fleet output), cloud (the fleet bucket, with the device’s own credentials), disk',
      )
        .choices([...CAPTURE_CHOICES])
        .default('edgefleet'),
    )
    .option(
      '--rest-port <port>',
      'serve KServe REST on 127.0.0.1:<port> (give each agent on a host its own)',
      intOption('--rest-port', 1, 65_535),
    )
    .option(
      '--deployments <poll-seconds>',
      'turn the agent’s deployments on: it asks the server for its models every <poll-seconds> (1–86400)',
      intOption('--deployments', 1, 86_400),
    )
    .addOption(
      new Option('--key-type <type>', 'device key algorithm')
        .choices([...DEVICE_KEY_TYPES])
        .default('ecdsa-p256'),
    )
    .action(
      async (opts: {
        server?: string;
        token?: string;
        profile?: string;
        config: string;
        certDir?: string;
        trustDir?: string;
        dataDir?: string;
        device?: string;
        thingName?: string;
        capture: CaptureChoice;
        restPort?: number;
        deployments?: number;
        keyType: DeviceKeyType;
      }) => {
        const out = output();
        const enrollmentToken = opts.token ?? (process.env.EDGEFLEET_ENROLLMENT_TOKEN || undefined);
        if (enrollmentToken === undefined)
          throw new CliError(
            `no enrollment token: set EDGEFLEET_ENROLLMENT_TOKEN=efe_…, or pass --token efe_… (which other local users can read in the process list); an operator creates one with "${out.invocation} device enrollment-token <device>"`,
            EXIT.usage,
          );
        const configFile = resolve(opts.config);
        const result = await (async () => {
          try {
            // The enrollment token stands in for the API token: EDGEFLEET_TOKEN is never sent here.
            const connection = await resolveConnection(
              {
                ...(opts.server && { server: opts.server }),
                ...(opts.profile && { profile: opts.profile }),
                token: enrollmentToken,
              },
              { env: process.env },
            );
            return await enrollDevice({
              client: new ServerClient(connection),
              enrollmentToken,
              configFile,
              certDir: opts.certDir ?? join(dirname(configFile), 'certs'),
              // Beside the config, not in the cert dir: the agent may own that one (it renews there).
              trustDir: opts.trustDir ?? join(dirname(configFile), 'trust'),
              ...(opts.dataDir !== undefined && { dataDir: opts.dataDir }),
              ...(opts.device !== undefined && { deviceName: opts.device }),
              ...(opts.thingName !== undefined && { thingName: opts.thingName }),
              defaultDataDir: join(dirname(configFile), 'data'),
              capture: opts.capture,
              ...(opts.restPort !== undefined && { restPort: opts.restPort }),
              ...(opts.deployments !== undefined && { deploymentPollSeconds: opts.deployments }),
              keyType: opts.keyType,
              invocation: out.invocation,
            });
          } catch (error) {
            throw cliErrorFrom(error, { credential: 'enrollment-token', invocation: out.invocation });
          }
        })();
        out.result(result, () => [
          `Enrolled as device ${result.deviceName} of fleet ${result.fleetName} (certificate ${result.serial}, valid until ${result.notAfter})`,
          fields([
            ['private key', `${result.files.privateKey} (0600)`],
            ['certificate', result.files.certificate],
            ['CA', result.files.caCertificate],
            ['trust folder', result.files.trustFolder ?? '-'],
            ['data folder', result.config[DATA_ROOT_KEY]],
            ['captures', result.config[CAPTURE_DESTINATION_KEY]],
            ['REST', restExposure(result.config[REST_TCP_KEY])],
            ['deployments', deploymentsState(result.merged, result.config)],
            ['device API', result.deviceEndpoint],
            [
              'agent config',
              `${result.configFile} (${Object.keys(result.config).length} keys set, others kept)`,
            ],
          ]),
          ...result.replaced.map((r) => `replaced ${r.key}: ${shownValue(r.old)} → ${shownValue(r.new)}`),
          ...result.warnings.map((w) => `warning: ${w}`),
          `Start the agent: edgefleet-agent -a <socket> -c ${result.configFile}`,
        ]);
      },
    );
}

/** A config value as the user wrote it: strings bare, anything else as JSON. */
function shownValue(value: unknown): string {
  return typeof value === 'string' ? value : JSON.stringify(value);
}

/** Edge Manager's poll interval key, in minutes (default 1440: once a day), which the agent reads too. */
const SME_DEPLOYMENT_POLL_MINUTES_KEY = 'sagemaker_edge_model_deployment_poll_interval';
const SME_DEFAULT_POLL_MINUTES = 1440;

/**
 * Whether the agent will run deployments with the config as written, and how often it polls: as the agent reads
 * it (the deployment lib key turns them on by its presence; the seconds key wins over Edge Manager's minutes), so
 * that an existing config that had them on is not reported off.
 */
function deploymentsState(merged: Record<string, unknown>, set: Record<string, string>): string {
  const lib = merged[DEPLOYMENT_LIB_KEY];
  if (lib === undefined || lib === null || lib === '')
    return 'off (--deployments <poll-seconds> turns them on)';
  const seconds = merged[DEPLOYMENT_POLL_KEY];
  const minutes = merged[SME_DEPLOYMENT_POLL_MINUTES_KEY];
  const every =
    seconds !== undefined && seconds !== null && seconds !== ''
      ? `${shownValue(seconds)} s`
      : minutes !== undefined && minutes !== null && minutes !== '' && Number.isFinite(Number(minutes))
        ? `${Number(minutes) * 60} s (${SME_DEPLOYMENT_POLL_MINUTES_KEY}: ${shownValue(minutes)} min)`
        : `${SME_DEFAULT_POLL_MINUTES * 60} s (the default of ${SME_DEPLOYMENT_POLL_MINUTES_KEY}, ${SME_DEFAULT_POLL_MINUTES} min)`;
  if (set[DEPLOYMENT_LIB_KEY] !== undefined) return `on, polling every ${every}`;
  return `on (kept from ${DEPLOYMENT_LIB_KEY} in the config), polling every ${every}; --deployments <poll-seconds> polls more often`;
}

/**
 * What `edgefleet_rest_tcp` (set by --rest-port) exposes: loopback TCP tells nothing of who is calling, so every
 * local user reaches it; the agent keeps model management on its Unix socket (docs/security.md).
 */
export function restExposure(tcp: string | undefined): string {
  if (tcp === undefined) return 'Unix socket only (--rest-port <port> adds loopback TCP)';
  return `TCP ${tcp} serves inference, model metadata, health and metrics to every local user; loading and unloading models and the agent status stay on the agent's Unix socket`;
}
