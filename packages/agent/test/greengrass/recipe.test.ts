import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readFile, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectAgent } from '@edgefleet/core';
import {
  COMPONENT_PARAMETER_NAMES,
  defaultComponentConfiguration,
  renderAgentConfig,
} from '../../src/greengrass/index.js';
import { hourlyPrefix } from '../../src/capture/records.js';
import { buildAgent, type LogLine } from '../daemon/process-helpers.js';
import { captureRequest, diskRecords, modelPackage } from '../capture/helpers.js';
import { operator, removeControlPlane, startControlPlane } from '../fleet/support.js';

const run = promisify(execFile);
const REPO = fileURLToPath(new URL('../../../../', import.meta.url));
const RECIPE = join(REPO, 'deploy', 'greengrass', 'recipe.json');

// The parameters of aws.greengrass.SageMakerEdgeManager (shared/spec/sme-agent-api.md §6), with its defaults.
const ORIGINAL_DEFAULTS: Record<string, string> = {
  DeviceFleetName: '',
  BucketName: '',
  CaptureDataBatchSize: '10',
  CaptureDataBufferSize: '30',
  CaptureDataDestination: 'Cloud',
  CaptureDataPushPeriodSeconds: '4',
  CaptureDataBase64EmbedLimit: '3072',
  CaptureDataPeriodicUpload: 'false',
  CaptureDataPeriodicUploadPeriodSeconds: '8',
  FolderPrefix: 'sme-capture',
  CaptureDataDiskPath: '', // a path in the component's own work folder
  LocalDataRootPath: '',
  DbEnable: 'false',
  DeploymentEnable: 'false',
  DeploymentPollInterval: '1440',
  DLRBackendOptions: '',
  SagemakerEdgeLogVerbose: 'false',
  UnixSocketName: '/tmp/aws.greengrass.SageMakerEdgeManager.sock',
};

type Json = string | number | boolean | null | Json[] | { [key: string]: Json };
interface Recipe {
  RecipeFormatVersion: string;
  ComponentVersion: string;
  ComponentDependencies?: Record<string, { VersionRequirement: string; DependencyType: string }>;
  ComponentConfiguration: { DefaultConfiguration: Record<string, Json> };
  Manifests: {
    Platform: { os: string; architecture: string };
    Lifecycle: { Setenv: Record<string, string>; Install: { Script: string }; Run: { Script: string } };
    Artifacts: { URI: string; Unarchive: string }[];
  }[];
}

/** A deployment's `merge` update, as the nucleus applies it: objects merge key by key, anything else replaces. */
function mergeConfiguration(base: Record<string, Json>, update: Record<string, Json>): Record<string, Json> {
  const out: Record<string, Json> = { ...base };
  for (const [key, value] of Object.entries(update)) {
    const current = out[key];
    const bothObjects = [current, value].every(
      (v) => typeof v === 'object' && v !== null && !Array.isArray(v),
    );
    out[key] = bothObjects
      ? mergeConfiguration(current as Record<string, Json>, value as Record<string, Json>)
      : value;
  }
  return out;
}

/** The nucleus's recipe variables; an unknown one fails the test (a typo in the recipe). */
function interpolate(
  text: string,
  vars: { configuration: Record<string, Json>; thingName: string; work: string; artifacts: string },
): string {
  return text.replace(/\{([a-zA-Z]+):([^}]*)\}/g, (whole, namespace: string, rest: string) => {
    if (namespace === 'configuration') {
      let value: Json = vars.configuration;
      for (const part of rest.split('/').slice(1)) {
        value = (value as Record<string, Json>)[part.replace(/~1/g, '/').replace(/~0/g, '~')] ?? '';
      }
      return typeof value === 'object' ? JSON.stringify(value) : String(value);
    }
    if (whole === '{iot:thingName}') return vars.thingName;
    if (whole === '{work:path}') return vars.work;
    if (whole === '{artifacts:path}' || whole === '{artifacts:decompressedPath}') return vars.artifacts;
    throw new Error(`the recipe uses an unknown variable ${whole}`);
  });
}

const recipe = JSON.parse(await readFile(RECIPE, 'utf8')) as Recipe;
const arch = process.arch === 'arm64' ? 'aarch64' : 'amd64';
const manifest = recipe.Manifests.find((m) => m.Platform.os === 'linux' && m.Platform.architecture === arch)!;

describe('the Greengrass recipe', () => {
  it('is a 2020-01-25 recipe whose DefaultConfiguration has every Edge Manager parameter with its default', async () => {
    expect(recipe.RecipeFormatVersion).toBe('2020-01-25');
    const agentPackage = JSON.parse(await readFile(join(REPO, 'packages/agent/package.json'), 'utf8')) as {
      version: string;
    };
    expect(recipe.ComponentVersion).toBe(agentPackage.version);
    const defaults = recipe.ComponentConfiguration.DefaultConfiguration;
    for (const [name, value] of Object.entries(ORIGINAL_DEFAULTS)) {
      expect(defaults, name).toHaveProperty(name);
      if (value !== '' || name === 'DeviceFleetName') expect(defaults[name], name).toBe(value);
    }
    expect(defaults).toEqual(defaultComponentConfiguration());
  });

  it('depends, softly, on the Token Exchange Service, as the original did: Cloud captures get AWS credentials from it', () => {
    // The nucleus gives AWS_CONTAINER_CREDENTIALS_FULL_URI only to components that declare this dependency.
    expect(recipe.ComponentDependencies).toEqual({
      'aws.greengrass.TokenExchangeService': { VersionRequirement: '>=2.0.0 <3.0.0', DependencyType: 'SOFT' },
    });
  });

  it('has a linux manifest for amd64 and aarch64, each passing every parameter to its steps', () => {
    expect(recipe.Manifests.map((m) => m.Platform.architecture).sort()).toEqual(['aarch64', 'amd64']);
    for (const m of recipe.Manifests) {
      for (const name of COMPONENT_PARAMETER_NAMES) {
        expect(m.Lifecycle.Setenv[`EDGEFLEET_GG_${name}`]).toBe(`{configuration:/${name}}`);
      }
      const bundleArch = m.Platform.architecture === 'amd64' ? 'x64' : 'arm64';
      expect(m.Artifacts[0]!.URI).toMatch(
        new RegExp(`/edgefleet-agent-${recipe.ComponentVersion}-linux-${bundleArch}\\.tar\\.gz$`),
      );
    }
  });
});

describe(
  'the component on a simulated nucleus: interpolation, a merge update, Install and Run',
  { timeout: 120_000 },
  () => {
    let root: string;
    let work: string;
    let artifacts: string;
    beforeAll(async () => {
      buildAgent();
      root = await mkdtemp(join(tmpdir(), 'edgefleet-gg-'));
      work = join(root, 'work');
      artifacts = join(root, 'artifacts');
      // The artifact as bundle:agent lays it out, its packages linked to this checkout's builds.
      const stage = join(root, 'stage', 'edgefleet-agent', 'node_modules', '@edgefleet');
      await mkdir(stage, { recursive: true });
      for (const name of ['agent', 'cli', 'core'])
        await symlink(join(REPO, 'packages', name), join(stage, name));
      await mkdir(artifacts);
      await symlink(join(REPO, 'node_modules', 'better-sqlite3'), join(stage, '..', 'better-sqlite3'));
      await copyFile(
        join(REPO, 'deploy', 'bundle', 'setup-native.sh'),
        join(stage, '..', '..', 'setup-native.sh'),
      );
      await mkdir(work);
      const bundleArch = arch === 'amd64' ? 'x64' : 'arm64';
      await run('tar', [
        '-czf',
        join(artifacts, `edgefleet-agent-${recipe.ComponentVersion}-linux-${bundleArch}.tar.gz`),
        '-C',
        join(root, 'stage'),
        'edgefleet-agent',
      ]);
    });
    afterAll(() => rm(root, { recursive: true, force: true }));

    const vars = (configuration: Record<string, Json>, thingName = 'gg-core-1') => ({
      configuration,
      thingName,
      work,
      artifacts,
    });
    const environment = (configuration: Record<string, Json>, thingName?: string) => ({
      ...process.env,
      ...Object.fromEntries(
        Object.entries(manifest.Lifecycle.Setenv).map(([k, v]) => [
          k,
          interpolate(v, vars(configuration, thingName)),
        ]),
      ),
    });
    const install = (configuration: Record<string, Json>, thingName?: string) =>
      run('sh', ['-c', interpolate(manifest.Lifecycle.Install.Script, vars(configuration, thingName))], {
        env: environment(configuration, thingName),
        cwd: work,
      }).then(
        (r) => ({ code: 0, stderr: r.stderr }),
        (e: { code: number; stderr: string }) => ({ code: e.code, stderr: e.stderr }),
      );

    it('renders the agent config from the merged configuration and every parameter takes effect', async () => {
      const socket = join(root, 'gg.sock');
      const update: Record<string, Json> = {
        DeviceFleetName: 'plant-a',
        UnixSocketName: socket,
        CaptureDataDestination: 'Disk',
        CaptureDataDiskPath: join(root, 'capture'),
        LocalDataRootPath: join(root, 'data'),
        FolderPrefix: 'line-7',
        CaptureDataBatchSize: 2,
        CaptureDataBufferSize: '5',
        CaptureDataPushPeriodSeconds: '1',
        CaptureDataBase64EmbedLimit: '1024',
        DbEnable: 'true',
        DeploymentEnable: true,
        DeploymentPollInterval: '15',
        SagemakerEdgeLogVerbose: 'true',
        DLRBackendOptions: 'TVM_NUM_THREADS=1',
        EdgeFleetEndpoint: 'https://127.0.0.1:9',
      };
      const configuration = mergeConfiguration(recipe.ComponentConfiguration.DefaultConfiguration, update);
      const installed = await install(configuration);
      expect(installed.stderr).not.toMatch(/edgefleet greengrass config:/);
      expect(installed.code).toBe(0);

      const rendered = JSON.parse(await readFile(join(work, 'agent-config.json'), 'utf8')) as Record<
        string,
        unknown
      >;
      expect(rendered).toMatchObject({
        sagemaker_edge_core_device_name: 'gg-core-1',
        sagemaker_edge_core_device_fleet_name: 'plant-a',
        sagemaker_edge_provider_provider: 'Custom',
      });
      // The agent's own parser on what was written: each parameter landed where it means something.
      const { effective } = renderAgentConfig(
        Object.fromEntries(COMPONENT_PARAMETER_NAMES.map((n) => [n, configuration[n] as string])),
        { thingName: 'gg-core-1' },
      );
      expect(effective.capture).toMatchObject({
        destination: 'Disk',
        diskPath: join(root, 'capture'),
        folderPrefix: 'line-7',
        batchSize: 2,
        bufferSize: 5,
        pushPeriodSeconds: 1,
        base64EmbedLimit: 1024,
        periodicUpload: false,
      });
      expect(effective.deployments).toMatchObject({
        enabled: true,
        pollIntervalMinutes: 15,
        pollIntervalSeconds: 900,
      });
      expect(effective.storage).toMatchObject({ localDataRootPath: join(root, 'data'), dbEnabled: true });
      expect(effective.logging.verbose).toBe(true);
      expect(effective.inference.ort.intraOpNumThreads).toBe(1);

      // Run, as the nucleus would: the agent on UnixSocketName with the rendered config.
      const runScript = interpolate(manifest.Lifecycle.Run.Script, vars(configuration));
      const agent = spawn('sh', ['-c', runScript], {
        env: environment(configuration),
        cwd: work,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      const lines: LogLine[] = [];
      let stderr = '';
      agent.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      const exited = new Promise<number | null>((done) => agent.once('exit', (code) => done(code)));
      const listening = new Promise<void>((resolve, reject) => {
        let buffered = '';
        agent.stdout.setEncoding('utf8').on('data', (chunk: string) => {
          buffered += chunk;
          const parts = buffered.split('\n');
          buffered = parts.pop()!;
          for (const text of parts) {
            const line = JSON.parse(text) as LogLine;
            lines.push(line);
            if (line.event === 'listening') resolve();
          }
        });
        void exited.then((code) => reject(new Error(`the agent exited ${code} before listening: ${stderr}`)));
      });
      const client = connectAgent(`unix://${socket}`);
      try {
        await listening;
        expect(existsSync(join(root, 'data', 'agent.db'))).toBe(true); // DbEnable: the local database
        const url = await modelPackage(root, 'tiny');
        await client.call('LoadModel', { url, name: 'tiny' });
        // Verbose: one debug line per gRPC call.
        expect(lines.some((l) => l.level === 20)).toBe(true);
        // Batch size 2: two captures make one batch, pushed to Disk under FolderPrefix/fleet/model.
        await client.call('CaptureData', captureRequest('gg-1') as never);
        await client.call('CaptureData', captureRequest('gg-2') as never);
        const until = Date.now() + 20_000;
        let records = await diskRecords(join(root, 'capture'));
        while (records.length < 2 && Date.now() < until) {
          await new Promise((resolve) => setTimeout(resolve, 100));
          records = await diskRecords(join(root, 'capture'));
        }
        expect(records.map((r) => r.record.eventMetadata.eventId).sort()).toEqual(['gg-1', 'gg-2']);
        expect(records[0]!.file).toMatch(/^line-7\/plant-a\/tiny\//);
        expect(new Set(records.map((r) => r.file)).size).toBe(1);
      } finally {
        client.close();
        agent.kill('SIGTERM');
      }
      expect(await exited).toBe(0);
    });

    it('refuses invalid values with an error naming the parameter, at Install', async () => {
      const base = recipe.ComponentConfiguration.DefaultConfiguration;
      const cases: [Record<string, Json>, RegExp][] = [
        [
          { DeviceFleetName: 'f', CaptureDataDestination: 'Disk', CaptureDataBufferSize: 'thirty' },
          /CaptureDataBufferSize \(sagemaker_edge_core_capture_data_buffer_size\): expected a whole number/,
        ],
        [
          { DeviceFleetName: 'f', CaptureDataDestination: 'Disk', DbEnable: 'maybe' },
          /DbEnable: expected true or false, got "maybe"/,
        ],
        [
          { DeviceFleetName: 'f', CaptureDataDestination: 'Tape' },
          /CaptureDataDestination \(sagemaker_edge_core_capture_data_destination\): expected/,
        ],
        [
          { DeviceFleetName: 'f', CaptureDataDestination: 'Disk', CaptureDataBatchSize: '40' },
          /CaptureDataBatchSize/,
        ],
        [{ CaptureDataDestination: 'Disk' }, /DeviceFleetName: required/],
        // The original's default destination needs a server and a bucket: said in parameter terms.
        [
          { DeviceFleetName: 'f' },
          /^edgefleet greengrass config: CaptureDataDestination is Cloud \(the default\), which uploads captures straight to BucketName with AWS credentials \(the Token Exchange Service's, the AWS IoT credentials provider's or the AWS SDK's other sources\), but no EdgeFleet server is set, so the agent would run offline: set EdgeFleetEndpoint \(or EnrollmentServerUrl and EnrollmentToken\) and BucketName, or CaptureDataDestination to EdgeFleet \(captures go through the EdgeFleet server to the fleet's output; needs an enrollment\) or Disk$/m,
        ],
        [
          { DeviceFleetName: 'f', EdgeFleetEndpoint: 'https://127.0.0.1:9' },
          /BucketName: required when CaptureDataDestination is Cloud .*or Disk$/m,
        ],
      ];
      for (const [update, message] of cases) {
        const result = await install(
          mergeConfiguration(base, { LocalDataRootPath: join(root, 'data2'), ...update }),
        );
        expect(result.code, JSON.stringify(update)).toBe(2);
        expect(result.stderr).toMatch(message);
        expect(result.stderr).not.toMatch(/sagemaker_edge_provider_provider/);
      }
    });

    // Last in this block: it leaves an enrolled identity in the work folder, as a real first install does.
    it('on an enrolled device, takes only the identity from enrollment: every component parameter wins', async () => {
      const plane = await startControlPlane({ heartbeatIntervalSeconds: 7 });
      try {
        await operator(plane, 'POST', '/api/v1/fleets', {
          name: 'plant-a',
          outputConfig: { s3OutputLocation: 's3://fleet-bucket/fleet-prefix' },
        });
        await operator(plane, 'POST', '/api/v1/fleets/plant-a/devices', {
          devices: [{ name: 'gg-core-1' }, { name: 'gg-core-2' }],
        });
        const base = recipe.ComponentConfiguration.DefaultConfiguration;
        // A token issued for another core device (one configuration sent to a thing group): Install fails, the
        // token stays unused, and this core does not take that device's identity.
        const { token: othersToken } = await operator(
          plane,
          'POST',
          '/api/v1/devices/gg-core-2/enrollment-tokens',
          {},
        );
        const wrong = await install(
          mergeConfiguration(base, {
            DeviceFleetName: 'plant-a',
            EnrollmentServerUrl: plane.operatorUrl,
            EnrollmentToken: othersToken as string,
            CaptureDataDestination: 'Disk',
            LocalDataRootPath: join(root, 'enrolled-data'),
          }),
        );
        expect(wrong.code).not.toBe(0);
        expect(wrong.stderr).toMatch(
          /the enrollment token was issued for device gg-core-2, whose IoT thing name is gg-core-2 \(none is registered: its device name stands for it\), not gg-core-1; .* \(the token is left unused\)/,
        );
        expect(existsSync(join(work, 'identity', 'agent-identity.json'))).toBe(false);
        const { token } = await operator(plane, 'POST', '/api/v1/devices/gg-core-1/enrollment-tokens', {});
        const first = mergeConfiguration(base, {
          DeviceFleetName: 'plant-a',
          EnrollmentServerUrl: plane.operatorUrl,
          EnrollmentToken: token as string,
          CaptureDataDestination: 'Disk',
          LocalDataRootPath: join(root, 'enrolled-data'),
          HeartbeatIntervalSeconds: '10',
          FolderPrefix: 'myprefix',
          BucketName: 'mybucket',
        });
        const installed = await install(first);
        expect(installed.stderr).not.toMatch(/edgefleet greengrass config:/);
        expect(installed.code).toBe(0);
        const identity = JSON.parse(
          await readFile(join(work, 'identity', 'agent-identity.json'), 'utf8'),
        ) as Record<string, unknown>;
        // What enroll wrote for capture, data folder and heartbeat is not what was asked for...
        expect(identity).toMatchObject({
          sagemaker_edge_core_capture_data_destination: 'EdgeFleet',
          edgefleet_heartbeat_interval_seconds: '7',
        });
        const rendered = async () =>
          JSON.parse(await readFile(join(work, 'agent-config.json'), 'utf8')) as Record<string, unknown>;
        // ...and the parameters win; the identity (certificate, server, trust folder) is the enrolled one.
        expect(await rendered()).toMatchObject({
          sagemaker_edge_core_capture_data_destination: 'Disk',
          sagemaker_edge_local_data_root_path: join(root, 'enrolled-data'),
          edgefleet_heartbeat_interval_seconds: '10',
          sagemaker_edge_core_folder_prefix: 'myprefix',
          sagemaker_edge_provider_s3_bucket_name: 'mybucket',
          sagemaker_edge_core_device_name: 'gg-core-1',
          sagemaker_edge_core_device_fleet_name: 'plant-a',
          sagemaker_edge_core_endpoint_override: plane.deviceEndpoint,
          sagemaker_edge_provider_provider: 'Aws',
          sagemaker_edge_provider_aws_cert_file: identity.sagemaker_edge_provider_aws_cert_file,
          sagemaker_edge_provider_aws_cert_pk_file: identity.sagemaker_edge_provider_aws_cert_pk_file,
          sagemaker_edge_provider_aws_ca_cert_file: identity.sagemaker_edge_provider_aws_ca_cert_file,
          sagemaker_edge_core_root_certs_path: join(work, 'identity', 'trust'),
        });

        // A merge update re-runs Install (no new enrollment: the token is spent); its parameters win again,
        // but for the bucket and prefix of EdgeFleet captures: the server accepts only the fleet's, so Install
        // asks the server for them and says so.
        const second = mergeConfiguration(first, {
          CaptureDataDestination: 'EdgeFleet',
          HeartbeatIntervalSeconds: '12',
        });
        const reinstalled = await install(second);
        expect(reinstalled.stderr).not.toMatch(/edgefleet greengrass config:/);
        expect(reinstalled.code).toBe(0);
        expect(await rendered()).toMatchObject({
          sagemaker_edge_core_capture_data_destination: 'EdgeFleet',
          edgefleet_heartbeat_interval_seconds: '12',
          sagemaker_edge_core_folder_prefix: 'fleet-prefix',
          sagemaker_edge_provider_s3_bucket_name: 'fleet-bucket',
          sagemaker_edge_provider_aws_cert_file: identity.sagemaker_edge_provider_aws_cert_file,
        });
        expect(reinstalled.stderr).toMatch(
          /warning: FolderPrefix is "myprefix" but CaptureDataDestination is EdgeFleet, whose server accepts captures only under this device's fleet output; the fleet output's prefix "fleet-prefix" \(s3:\/\/fleet-bucket\/fleet-prefix, as the server reports it now\) is used/,
        );
        expect(reinstalled.stderr).toMatch(
          /warning: BucketName is "mybucket" .* the fleet output's bucket "fleet-bucket" .* is used/,
        );
        // Another fleet than the certificate's: the enrolled one is used, and Install says so.
        const third = await install(mergeConfiguration(second, { DeviceFleetName: 'plant-b' }));
        expect(third.code).toBe(0);
        expect(third.stderr).toMatch(
          /warning: DeviceFleetName is "plant-b" but this device was enrolled in fleet "plant-a", which its certificate names; the enrolled fleet is used/,
        );
        expect(await rendered()).toMatchObject({ sagemaker_edge_core_device_fleet_name: 'plant-a' });

        // The fleet's output moves: the identity file keeps the old one, but Install asks the server (R2).
        await operator(plane, 'PATCH', '/api/v1/fleets/plant-a', {
          outputConfig: { s3OutputLocation: 's3://fleet-bucket-2/moved' },
        });
        const moved = await install(second);
        expect(moved.stderr).not.toMatch(/edgefleet greengrass config:|could not ask/);
        expect(moved.code).toBe(0);
        expect(await rendered()).toMatchObject({
          sagemaker_edge_core_folder_prefix: 'moved',
          sagemaker_edge_provider_s3_bucket_name: 'fleet-bucket-2',
        });
        expect(moved.stderr).toMatch(
          /warning: FolderPrefix is "myprefix" .*; the fleet output's prefix "moved" \(s3:\/\/fleet-bucket-2\/moved, as the server reports it now\) is used/,
        );
        // Server gone: the enrolled output, with a warning that says what to do.
        await removeControlPlane(plane);
        const offline = await install(second);
        expect(offline.code).toBe(0);
        expect(offline.stderr).toMatch(
          /warning: could not ask the server at \S+ for fleet plant-a's output location now \(.+\); the one enrolled at the first Install is used: bucket "fleet-bucket", prefix "fleet-prefix"\. If the fleet's output has changed since \(edgefleet fleet update --output\), the server refuses every capture until Install reaches it: redeploy the component once the server is reachable/,
        );
        expect(await rendered()).toMatchObject({
          sagemaker_edge_core_folder_prefix: 'fleet-prefix',
          sagemaker_edge_provider_s3_bucket_name: 'fleet-bucket',
        });
      } finally {
        await removeControlPlane(plane);
      }
    });

    it('a migrated core: its thing name differs from its device name, and its fleet output is at the bucket root (R1, R3)', async () => {
      // A fresh core device: the previous test's enrollment is gone.
      await rm(join(work, 'identity'), { recursive: true, force: true });
      const plane = await startControlPlane({});
      try {
        await operator(plane, 'POST', '/api/v1/fleets', {
          name: 'quay',
          outputConfig: { s3OutputLocation: 's3://quay-captures' },
        });
        // Edge Manager's RegisterDevices allowed an IotThingName other than the DeviceName (and no device name).
        await operator(plane, 'POST', '/api/v1/fleets/quay/devices', {
          devices: [{ name: 'rover-1', iotThingName: 'Rover_1' }],
        });
        const { token } = await operator(plane, 'POST', '/api/v1/devices/rover-1/enrollment-tokens', {});
        const configuration = mergeConfiguration(recipe.ComponentConfiguration.DefaultConfiguration, {
          DeviceFleetName: 'quay',
          EnrollmentServerUrl: plane.operatorUrl,
          EnrollmentToken: token as string,
          CaptureDataDestination: 'EdgeFleet',
          LocalDataRootPath: join(root, 'rover-data'),
        });
        const installed = await install(configuration, 'Rover_1');
        expect(installed.stderr).not.toMatch(
          /edgefleet greengrass config:|warning: the Greengrass thing name/,
        );
        expect(installed.code).toBe(0);
        const config = JSON.parse(await readFile(join(work, 'agent-config.json'), 'utf8')) as Record<
          string,
          unknown
        >;
        expect(config).toMatchObject({
          sagemaker_edge_core_device_name: 'rover-1',
          sagemaker_edge_core_iot_thing_name: 'Rover_1',
          sagemaker_edge_provider_s3_bucket_name: 'quay-captures',
          // Not FolderPrefix's default sme-capture, which the server would refuse: "/" is none.
          sagemaker_edge_core_folder_prefix: '/',
        });
        const { effective } = renderAgentConfig(
          { DeviceFleetName: 'quay', CaptureDataDestination: 'EdgeFleet' },
          {
            thingName: 'Rover_1',
            identity: JSON.parse(await readFile(join(work, 'identity', 'agent-identity.json'), 'utf8')),
          },
        );
        expect(effective.capture.folderPrefix).toBe('/');
        // Keys under <fleet>/ at the bucket's root: what the server takes for this fleet.
        expect(
          hourlyPrefix(
            { folderPrefix: effective.capture.folderPrefix, fleetName: 'quay' },
            'm',
            Date.UTC(2026, 0, 2, 3),
          ),
        ).toBe('quay/m/2026/01/02/03');
      } finally {
        await removeControlPlane(plane);
      }
    });
  },
);

describe('renderAgentConfig: an enrolled identity that disagrees with the parameters', () => {
  const configuration = {
    ...defaultComponentConfiguration(),
    DeviceFleetName: 'plant-a',
    CaptureDataDestination: 'Disk',
  };
  const identity = {
    sagemaker_edge_core_device_name: 'gg-old',
    sagemaker_edge_core_device_fleet_name: 'plant-a',
  };

  it('a thing name other than the enrolled device name: the enrolled name is used, with a warning', () => {
    const renamed = renderAgentConfig(configuration, { thingName: 'gg-new', identity });
    expect(renamed.config).toMatchObject({ sagemaker_edge_core_device_name: 'gg-old' });
    expect(renamed.warnings).toContain(
      'the Greengrass thing name is "gg-new" but this device was enrolled as "gg-old", which its certificate names; the enrolled name is used',
    );
    // The same name: nothing to say.
    const same = renderAgentConfig(configuration, { thingName: 'gg-old', identity });
    expect(same.warnings.join('\n')).not.toMatch(/thing name/);
  });
});

describe('renderAgentConfig: the trust folder', () => {
  const configuration = {
    ...defaultComponentConfiguration(),
    DeviceFleetName: 'plant-a',
    CaptureDataDestination: 'Disk',
  };
  const identity = { sagemaker_edge_core_root_certs_path: '/work/identity/trust' };

  it("uses the trust folder enrollment wrote, unless RootCertsPath names another (the operator's wins)", () => {
    expect(renderAgentConfig(configuration, { thingName: 'gg-1', identity }).config).toMatchObject(identity);
    expect(
      renderAgentConfig(
        { ...configuration, RootCertsPath: '/etc/edgefleet/trust' },
        { thingName: 'gg-1', identity },
      ).config,
    ).toMatchObject({ sagemaker_edge_core_root_certs_path: '/etc/edgefleet/trust' });
  });
});

describe('renderAgentConfig: an enrolled device left on the default CaptureDataDestination', () => {
  const enrolled = {
    sagemaker_edge_core_device_fleet_name: 'plant-a',
    sagemaker_edge_core_capture_data_destination: 'Cloud',
    sagemaker_edge_provider_s3_bucket_name: 'captures',
    sagemaker_edge_core_folder_prefix: 'plant-a',
    sagemaker_edge_core_endpoint_override: 'https://fleet.example:8443',
    sagemaker_edge_provider_provider: 'Custom',
  };

  it('keeps the capture target enrollment chose (the default Cloud with no bucket cannot capture), and says so', () => {
    const rendered = renderAgentConfig(
      { ...defaultComponentConfiguration(), DeviceFleetName: 'plant-a' },
      { thingName: 'gg-1', identity: enrolled },
    );
    expect(rendered.config).toMatchObject({
      sagemaker_edge_core_capture_data_destination: 'Cloud',
      sagemaker_edge_provider_s3_bucket_name: 'captures',
      sagemaker_edge_core_folder_prefix: 'plant-a',
    });
    expect(rendered.warnings).toContainEqual(
      expect.stringMatching(
        /^CaptureDataDestination is the default Cloud with no BucketName, which cannot capture; the destination enrollment chose \(Cloud\) is used/,
      ),
    );
    // Set by the operator, the parameters win.
    const disk = renderAgentConfig(
      { ...defaultComponentConfiguration(), DeviceFleetName: 'plant-a', CaptureDataDestination: 'Disk' },
      { thingName: 'gg-1', identity: enrolled },
    );
    expect(disk.config).toMatchObject({ sagemaker_edge_core_capture_data_destination: 'Disk' });
    expect(disk.warnings.join('\n')).not.toMatch(/enrollment chose/);
  });
});

describe('renderAgentConfig: CaptureDataDestination EdgeFleet on an enrolled device', () => {
  // What `device enroll` writes for a fleet whose output is s3://captures/cameras.
  const identity = {
    sagemaker_edge_core_device_name: 'gg-1',
    sagemaker_edge_core_device_fleet_name: 'plant-a',
    sagemaker_edge_core_endpoint_override: 'https://fleet.example:8443',
    sagemaker_edge_provider_provider: 'Aws',
    sagemaker_edge_provider_aws_cert_file: '/gg/work/identity/device.pem',
    sagemaker_edge_provider_aws_cert_pk_file: '/gg/work/identity/device.key',
    sagemaker_edge_provider_aws_ca_cert_file: '/gg/work/identity/ca.pem',
    sagemaker_edge_core_capture_data_destination: 'EdgeFleet',
    sagemaker_edge_provider_s3_bucket_name: 'captures',
    sagemaker_edge_core_folder_prefix: 'cameras',
  };
  const edgeFleet = {
    ...defaultComponentConfiguration(),
    DeviceFleetName: 'plant-a',
    CaptureDataDestination: 'EdgeFleet',
  };

  it("uses the fleet's enrolled bucket and prefix, not the FolderPrefix default sme-capture the server would refuse", () => {
    const rendered = renderAgentConfig(edgeFleet, { thingName: 'gg-1', identity });
    expect(rendered.config).toMatchObject({
      sagemaker_edge_core_capture_data_destination: 'EdgeFleet',
      sagemaker_edge_provider_s3_bucket_name: 'captures',
      sagemaker_edge_core_folder_prefix: 'cameras',
    });
    expect(rendered.effective.capture).toMatchObject({ destination: 'EdgeFleet', folderPrefix: 'cameras' });
    expect(rendered.effective.provider.s3BucketName).toBe('captures');
    // Left on their defaults, the parameters said nothing to contradict.
    expect(rendered.warnings.join('\n')).not.toMatch(/FolderPrefix|BucketName/);
  });

  it('says so when FolderPrefix or BucketName were set to something else', () => {
    const rendered = renderAgentConfig(
      { ...edgeFleet, FolderPrefix: 'line-7', BucketName: 'my-bucket' },
      { thingName: 'gg-1', identity },
    );
    expect(rendered.config).toMatchObject({
      sagemaker_edge_provider_s3_bucket_name: 'captures',
      sagemaker_edge_core_folder_prefix: 'cameras',
    });
    expect(rendered.warnings).toContain(
      'FolderPrefix is "line-7" but CaptureDataDestination is EdgeFleet, whose server accepts captures only under this device\'s fleet output; the enrolled prefix "cameras" is used (for another bucket or prefix, set CaptureDataDestination to Cloud)',
    );
    expect(rendered.warnings).toContainEqual(
      expect.stringMatching(/^BucketName is "my-bucket" .* the enrolled bucket "captures" is used/),
    );
    // Set to the enrolled values: nothing to say.
    const same = renderAgentConfig(
      { ...edgeFleet, FolderPrefix: 'cameras', BucketName: 'captures' },
      { thingName: 'gg-1', identity },
    );
    expect(same.warnings.join('\n')).not.toMatch(/FolderPrefix|BucketName/);
  });

  it('an output at the bucket root: no prefix ("/"), not FolderPrefix\'s default sme-capture (R1)', () => {
    const atRoot = { ...identity, sagemaker_edge_core_folder_prefix: '/' };
    // An older CLI wrote no prefix key at all for such an output.
    const { sagemaker_edge_core_folder_prefix: _, ...noPrefixKey } = identity;
    for (const enrolled of [atRoot, noPrefixKey]) {
      const rendered = renderAgentConfig(edgeFleet, { thingName: 'gg-1', identity: enrolled });
      expect(rendered.config.sagemaker_edge_core_folder_prefix).toBe('/');
      expect(
        hourlyPrefix({ folderPrefix: rendered.effective.capture.folderPrefix, fleetName: 'plant-a' }, 'm', 0),
      ).toBe('plant-a/m/1970/01/01/00');
    }
  });

  it('prefers the fleet output the server reports now over the enrolled one (R2)', () => {
    const rendered = renderAgentConfig(edgeFleet, {
      thingName: 'gg-1',
      identity,
      fleetOutput: { location: 's3://archive', bucket: 'archive', prefix: '' },
    });
    expect(rendered.config).toMatchObject({
      sagemaker_edge_provider_s3_bucket_name: 'archive',
      sagemaker_edge_core_folder_prefix: '/',
    });
  });

  it('other destinations keep the parameters', () => {
    const disk = renderAgentConfig(
      { ...edgeFleet, CaptureDataDestination: 'Disk', FolderPrefix: 'line-7' },
      { thingName: 'gg-1', identity },
    );
    expect(disk.config).toMatchObject({ sagemaker_edge_core_folder_prefix: 'line-7' });
  });
});
