import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  CONFIG_DEFAULTS,
  CONFIG_KEYS,
  ConfigError,
  defaultRestSocketPath,
  parseAgentConfig,
  type ConfigContext,
} from '../../src/config/index.js';

const context: ConfigContext = { cwd: '/srv/agent', cpuCount: 4, grpcSocketPath: '/tmp/edge.sock' };

function errorOf(json: unknown, ctx: ConfigContext = context): ConfigError {
  try {
    parseAgentConfig(json, ctx);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return error as ConfigError;
  }
  throw new Error(`expected ${JSON.stringify(json)} to be refused`);
}

/** A config as the Greengrass component wrote it: every SageMaker key, every value a string. */
const greengrassStyle = {
  sagemaker_edge_core_device_name: 'device-1',
  sagemaker_edge_core_device_fleet_name: 'fleet-a',
  sagemaker_edge_core_region: 'eu-west-1',
  sagemaker_edge_core_root_certs_path: 'certs',
  sagemaker_edge_core_endpoint_override: 'https://edgefleet.example.com:8443',
  sagemaker_edge_core_iot_thing_name: 'thing-1',
  sagemaker_edge_provider_provider: 'Aws',
  sagemaker_edge_provider_provider_path: '/opt/sme/lib/libprovider_aws.so',
  sagemaker_edge_provider_s3_bucket_name: 'my-capture-bucket',
  sagemaker_edge_provider_aws_ca_cert_file: '/greengrass/v2/AmazonRootCA1.pem',
  sagemaker_edge_provider_aws_cert_file: '/greengrass/v2/thingCert.crt',
  sagemaker_edge_provider_aws_cert_pk_file: '/greengrass/v2/privKey.key',
  sagemaker_edge_provider_aws_iot_cred_endpoint: 'abc123.credentials.iot.eu-west-1.amazonaws.com',
  sagemaker_edge_log_verbose: 'true',
  sagemaker_edge_telemetry_libsystemd_path: '/lib/x86_64-linux-gnu/libsystemd.so.0',
  sagemaker_edge_core_capture_data_destination: 'Disk',
  sagemaker_edge_core_capture_data_disk_path: '/greengrass/v2/work/sme/capture',
  sagemaker_edge_core_folder_prefix: 'sme-capture',
  sagemaker_edge_core_capture_data_buffer_size: '30',
  sagemaker_edge_core_capture_data_batch_size: '10',
  sagemaker_edge_core_capture_data_push_period_seconds: '4',
  sagemaker_edge_core_capture_data_base64_embed_limit: '3072',
  sagemaker_edge_core_capture_data_periodic_upload: 'true',
  sagemaker_edge_core_capture_data_periodic_upload_period_seconds: '8',
  sagemaker_edge_db_module_path: '/opt/sme/lib/libdb.so',
  sagemaker_edge_local_data_root_path: '/greengrass/v2/work/sme',
  sagemaker_edge_deployment_lib_path: '/opt/sme/lib/libdeployment.so',
  sagemaker_edge_model_deployment_poll_interval: '60',
  sagemaker_edge_dlr_backend_options: 'TVM_NUM_THREADS=2; ORT_INTER_OP_NUM_THREADS=1',
};

describe('parseAgentConfig: every SageMaker Edge key', () => {
  it('reads a full Greengrass-style config (all values strings) into typed settings', () => {
    const { config, warnings } = parseAgentConfig(greengrassStyle, context);
    expect(config).toEqual({
      device: { name: 'device-1', fleetName: 'fleet-a', region: 'eu-west-1', iotThingName: 'thing-1' },
      trust: { rootCertsPath: '/srv/agent/certs', requireSignatures: true },
      provider: {
        kind: 'Aws',
        endpoint: 'https://edgefleet.example.com:8443',
        pluginPath: '/opt/sme/lib/libprovider_aws.so',
        s3BucketName: 'my-capture-bucket',
        caCertFile: '/greengrass/v2/AmazonRootCA1.pem',
        certFile: '/greengrass/v2/thingCert.crt',
        certKeyFile: '/greengrass/v2/privKey.key',
        iotCredentialEndpoint: 'abc123.credentials.iot.eu-west-1.amazonaws.com',
      },
      logging: { verbose: true, libsystemdPath: '/lib/x86_64-linux-gnu/libsystemd.so.0' },
      capture: {
        destination: 'Disk',
        diskPath: '/greengrass/v2/work/sme/capture',
        folderPrefix: 'sme-capture',
        bufferSize: 30,
        batchSize: 10,
        pushPeriodSeconds: 4,
        base64EmbedLimit: 3072,
        periodicUpload: true,
        periodicUploadPeriodSeconds: 8,
        modelMonitorFormat: false,
        keepUploadedFiles: false,
        spoolQuotaBytes: 1024 ** 3,
        diskQuotaBytes: 1024 ** 3,
        diskMinFreeBytes: 64 * 1024 ** 2,
        autoCapture: [],
      },
      storage: { localDataRootPath: '/greengrass/v2/work/sme', dbEnabled: true, dbSynchronous: 'NORMAL' },
      deployments: {
        enabled: true,
        pollIntervalMinutes: 60,
        pollIntervalSeconds: 3600,
        healthWindowSeconds: 30,
        updateLockPath: '/greengrass/v2/work/sme/updates.lock',
        maxLockHoldSeconds: 3600,
        maxPackageBytes: 4 * 1024 ** 3,
        minFreeBytes: 64 * 1024 ** 2,
      },
      limits: { grpcReceiveTimeoutMs: 30_000 },
      inference: {
        workers: 4,
        instancesPerModel: 1,
        unloadTimeoutMs: 30_000,
        startupLoadTimeoutMs: 60_000,
        maxQueuedRequestsPerModel: 256,
        inline: { maxRunMicros: 200, eventLoopShare: 0.25, idleMaxRunMicros: 1000 },
        hotWaitMicros: 0,
        keepFreedMemoryBytes: 32 * 1024 ** 2,
        dynamicBatching: [],
        ort: {
          intraOpNumThreads: 2,
          interOpNumThreads: 1,
          graphOptimizationLevel: 'all',
          executionProviders: [{ name: 'cpu' }],
        },
        backendOptions: [
          { key: 'TVM_NUM_THREADS', value: '2' },
          { key: 'ORT_INTER_OP_NUM_THREADS', value: '1' },
        ],
      },
      rest: { socketPath: '/tmp/edge.rest.sock', tcp: null, tcpManagement: false },
      socketMode: 0o660,
      metrics: { maxUnloadedModels: 64 },
    });
    // The original's plug-in paths are accepted, and said to be ignored.
    expect(warnings).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/sagemaker_edge_provider_provider_path .* ignored/),
        expect.stringMatching(/sagemaker_edge_telemetry_libsystemd_path .* ignored/),
      ]),
    );
  });

  it('deployments: edgefleet_deployment_poll_interval_seconds wins over the minutes; no "not implemented" warning', () => {
    const { config, warnings } = parseAgentConfig(
      {
        sagemaker_edge_core_device_name: 'd',
        sagemaker_edge_core_device_fleet_name: 'f',
        sagemaker_edge_provider_provider: 'Aws',
        sagemaker_edge_core_endpoint_override: 'https://plane.example:8443',
        sagemaker_edge_deployment_lib_path: '/usr/lib/deploy.so',
        sagemaker_edge_model_deployment_poll_interval: 5,
        edgefleet_deployment_poll_interval_seconds: 10,
        edgefleet_deployment_health_window_seconds: 0,
        edgefleet_deployment_update_lock_path: 'run/updates.lock',
      },
      context,
    );
    expect(config.deployments).toMatchObject({
      enabled: true,
      pollIntervalMinutes: 5,
      pollIntervalSeconds: 10,
      healthWindowSeconds: 0,
      updateLockPath: '/srv/agent/run/updates.lock',
    });
    expect(warnings.join('\n')).not.toMatch(/not implement/);
    expect(() => parseAgentConfig({ edgefleet_deployment_poll_interval_seconds: 0 }, context)).toThrow(
      /edgefleet_deployment_poll_interval_seconds/,
    );
  });

  it('gives the spec defaults for an empty config', () => {
    const { config, warnings } = parseAgentConfig({}, context);
    expect(warnings).toEqual([]);
    expect(config.provider).toEqual({ kind: 'None' });
    expect(config.device).toEqual({});
    expect(config.trust).toEqual({ requireSignatures: false });
    expect(config.logging).toEqual({ verbose: false });
    expect(config.capture).toEqual({
      destination: 'Disk',
      diskPath: '/srv/agent/.edgefleet/capture',
      folderPrefix: CONFIG_DEFAULTS.folderPrefix,
      bufferSize: 30,
      batchSize: 10,
      pushPeriodSeconds: 4,
      base64EmbedLimit: 3072,
      periodicUpload: false,
      periodicUploadPeriodSeconds: 8,
      modelMonitorFormat: false,
      keepUploadedFiles: false,
      spoolQuotaBytes: 1024 ** 3,
      diskQuotaBytes: 1024 ** 3,
      diskMinFreeBytes: 64 * 1024 ** 2,
      autoCapture: [],
    });
    expect(config.storage).toEqual({
      localDataRootPath: '/srv/agent/.edgefleet',
      dbEnabled: false,
      dbSynchronous: 'NORMAL',
    });
    expect(config.deployments).toEqual({
      enabled: false,
      pollIntervalMinutes: 1440,
      pollIntervalSeconds: 86_400,
      healthWindowSeconds: 30,
      updateLockPath: '/srv/agent/.edgefleet/updates.lock',
      maxLockHoldSeconds: 3600,
      maxPackageBytes: 4 * 1024 ** 3,
      minFreeBytes: 64 * 1024 ** 2,
    });
    expect(config.inference.workers).toBe(4);
    expect(config.inference.instancesPerModel).toBe(1);
    expect(config.inference.ort.intraOpNumThreads).toBe(1);
    expect(config.rest).toEqual({ socketPath: '/tmp/edge.rest.sock', tcp: null, tcpManagement: false });
    expect(config.socketMode).toBe(0o660);
  });

  it('reads numbers and booleans given as JSON values or as strings alike', () => {
    const asValues = parseAgentConfig(
      { sagemaker_edge_core_capture_data_buffer_size: 50, sagemaker_edge_log_verbose: true },
      context,
    ).config;
    const asStrings = parseAgentConfig(
      { sagemaker_edge_core_capture_data_buffer_size: ' 50 ', sagemaker_edge_log_verbose: 'TRUE' },
      context,
    ).config;
    expect(asStrings).toEqual(asValues);
    expect(asValues.capture.bufferSize).toBe(50);
    expect(asValues.logging.verbose).toBe(true);
    for (const [given, expected] of [
      ['false', false],
      ['0', false],
      ['no', false],
      [0, false],
      ['1', true],
      ['yes', true],
      [1, true],
    ] as const) {
      expect(parseAgentConfig({ sagemaker_edge_log_verbose: given }, context).config.logging.verbose).toBe(
        expected,
      );
    }
  });

  it('treats an empty string (or null) as unset, so the default applies', () => {
    const { config } = parseAgentConfig(
      {
        sagemaker_edge_core_capture_data_buffer_size: '',
        sagemaker_edge_core_capture_data_destination: '',
        sagemaker_edge_core_root_certs_path: '  ',
        sagemaker_edge_model_deployment_poll_interval: null,
        sagemaker_edge_core_device_name: '',
      },
      context,
    );
    expect(config.capture.bufferSize).toBe(30);
    expect(config.capture.destination).toBe('Disk');
    expect(config.trust).toEqual({ requireSignatures: false });
    expect(config.deployments.pollIntervalMinutes).toBe(1440);
    expect(config.device.name).toBeUndefined();
  });

  it('matches provider and destination words case-insensitively', () => {
    const { config } = parseAgentConfig(
      {
        sagemaker_edge_provider_provider: 'custom',
        sagemaker_edge_core_device_name: 'd',
        sagemaker_edge_core_device_fleet_name: 'f',
        sagemaker_edge_core_endpoint_override: 'http://localhost:8080',
        sagemaker_edge_provider_s3_bucket_name: 'b',
        sagemaker_edge_core_capture_data_destination: 'CLOUD',
      },
      context,
    );
    expect(config.provider.kind).toBe('Custom');
    expect(config.capture.destination).toBe('Cloud');
  });

  it('takes sagemaker_edge_core_device_uuid as the older name of sagemaker_edge_core_device_name', () => {
    expect(parseAgentConfig({ sagemaker_edge_core_device_uuid: 'dev-7' }, context).config.device.name).toBe(
      'dev-7',
    );
    const both = parseAgentConfig(
      { sagemaker_edge_core_device_uuid: 'old', sagemaker_edge_core_device_name: 'new' },
      context,
    );
    expect(both.config.device.name).toBe('new');
    expect(both.warnings).toEqual([
      expect.stringMatching(/device_uuid.*older name.*using sagemaker_edge_core_device_name/),
    ]);
    expect(errorOf({ sagemaker_edge_core_device_uuid: 'x'.repeat(64) }).key).toBe(
      'sagemaker_edge_core_device_uuid',
    );
  });

  it('warns about unknown keys (suggesting the key meant) without failing', () => {
    const { config, warnings } = parseAgentConfig(
      { sagemaker_edge_log_verbos: true, my_comment: 'hello', __proto__x: 1 },
      context,
    );
    expect(config.logging.verbose).toBe(false);
    expect(warnings).toEqual([
      'unknown config key "sagemaker_edge_log_verbos" is ignored; did you mean sagemaker_edge_log_verbose?',
      'unknown config key "my_comment" is ignored',
      'unknown config key "__proto__x" is ignored',
    ]);
    const proto = parseAgentConfig(
      JSON.parse('{"__proto__": {"sagemaker_edge_log_verbose": true}}'),
      context,
    );
    expect(proto.config.logging.verbose).toBe(false);
    expect(proto.warnings).toEqual(['unknown config key "__proto__" is ignored']);
  });
});

describe('parseAgentConfig: fatal errors name their key', () => {
  const badValues: Array<[string, unknown, RegExp]> = [
    ['sagemaker_edge_core_capture_data_buffer_size', 'thirty', /expected a whole number from 2 to/],
    ['sagemaker_edge_core_capture_data_buffer_size', 1, /expected a whole number from 2 to/],
    ['sagemaker_edge_core_capture_data_batch_size', 2.5, /expected a whole number/],
    ['sagemaker_edge_core_capture_data_push_period_seconds', -4, /expected a whole number from 1/],
    ['sagemaker_edge_core_capture_data_base64_embed_limit', true, /expected a whole number/],
    ['sagemaker_edge_core_capture_data_periodic_upload_period_seconds', '8s', /expected a whole number/],
    ['sagemaker_edge_model_deployment_poll_interval', [], /expected a whole number/],
    ['sagemaker_edge_log_verbose', 'maybe', /expected true or false/],
    ['sagemaker_edge_core_capture_data_periodic_upload', 2, /expected true or false/],
    ['sagemaker_edge_provider_provider', 'Azure', /expected one of Aws, Custom, None/],
    ['sagemaker_edge_core_capture_data_destination', 'S3', /expected one of Disk, Cloud/],
    [
      'sagemaker_edge_core_endpoint_override',
      'edgefleet.example.com',
      /expected an http:\/\/ or https:\/\/ URL/,
    ],
    ['sagemaker_edge_core_endpoint_override', 'ftp://x', /expected an http/],
    ['sagemaker_edge_core_device_name', 'd'.repeat(64), /at most 63 characters/],
    ['sagemaker_edge_core_device_fleet_name', { name: 'x' }, /expected a string/],
    ['sagemaker_edge_core_root_certs_path', 42, /expected a file-system path/],
    ['sagemaker_edge_local_data_root_path', false, /expected a file-system path/],
    ['sagemaker_edge_dlr_backend_options', ['a'], /expected a string/],
    ['edgefleet_inference_workers', 0, /from 1 to 256/],
    ['edgefleet_instances_per_model', '2.0', /whole number/],
    ['edgefleet_ort_intra_op_threads', -1, /from 0 to 1024/],
    ['edgefleet_ort_graph_optimization_level', 'max', /one of disabled, basic, extended, layout, all/],
    ['edgefleet_ort_execution_providers', 'gpu', /execution providers from cpu, cuda, tensorrt/],
    ['edgefleet_ort_execution_providers', [], /execution providers/],
    ['edgefleet_rest_tcp', 'localhost', /host:port/],
    ['edgefleet_rest_tcp', 70000, /host:port/],
    ['edgefleet_rest_tcp_management', 'everyone', /true or false/],
    ['edgefleet_socket_mode', '0999', /octal/],
    ['edgefleet_socket_mode', 432.5, /octal/],
    ['edgefleet_require_signatures', 'sure', /true or false/],
    ['edgefleet_unload_timeout_seconds', 4000, /from 0 to 3600/],
    ['edgefleet_max_queued_requests', 0, /from 1 to/],
    ['edgefleet_inline_event_loop_percent', 95, /from 0 to 90/],
    ['edgefleet_hot_wait_micros', 20000, /from 0 to 10000/],
    ['edgefleet_inline_idle_max_run_micros', 10001, /from 0 to 10000/],
    ['edgefleet_inline_idle_max_run_micros', '0.5', /whole number/],
    ['edgefleet_capture_model_monitor_format', 'sometimes', /expected true or false/],
    ['edgefleet_capture_keep_uploaded_files', 2, /expected true or false/],
    ['edgefleet_capture_spool_quota_bytes', '1 GiBs', /expected a size in bytes from 1 MiB to 1 PiB/],
    ['edgefleet_capture_spool_quota_bytes', 1000, /from 1 MiB/],
    ['edgefleet_capture_spool_quota_bytes', '2 PiB', /to 1 PiB/],
    ['edgefleet_capture_spool_quota_bytes', '1.0000001 KiB', /a size in bytes/],
    ['edgefleet_capture_spool_quota_bytes', true, /a size in bytes/],
    ['edgefleet_capture_disk_quota_bytes', 1000, /expected a size in bytes from 1 MiB to 1 PiB/],
    ['edgefleet_capture_disk_quota_bytes', '2 PiB', /to 1 PiB/],
    ['edgefleet_capture_disk_quota_bytes', 'lots', /a size in bytes/],
    ['edgefleet_capture_min_free_bytes', -1, /expected a size in bytes from 0 bytes to 1 PiB/],
    ['edgefleet_capture_min_free_bytes', '1.5 B', /a size in bytes/],
    [
      'edgefleet_keep_freed_memory_bytes',
      '1MiB',
      /expected 0 \(off\), or a size in bytes from 4 MiB to 256 MiB/,
    ],
    ['edgefleet_keep_freed_memory_bytes', 1, /0 \(off\), or a size in bytes from 4 MiB/],
    ['edgefleet_keep_freed_memory_bytes', '512MiB', /to 256 MiB/],
    ['edgefleet_keep_freed_memory_bytes', -1, /0 \(off\)/],
    ['edgefleet_capture_s3_endpoint', 'minio.local:9000', /expected an http:\/\/ or https:\/\/ URL/],
    ['edgefleet_capture_s3_force_path_style', 'virtual', /expected true or false/],
    ['edgefleet_capture_iot_role_alias', 'has space', /expected an AWS IoT role alias/],
    ['edgefleet_capture_iot_role_alias', 'a'.repeat(129), /1 to 128/],
    ['edgefleet_capture_auto', 'sample everything', /expected a list of automatic capture rules/],
    ['edgefleet_capture_auto', [{ model: 'resnet' }], /needs sampleRate, topScoreBelow, or both/],
    ['edgefleet_capture_auto', [{ sampleRate: 1.5 }], /item 1, sampleRate: Too big/],
    ['edgefleet_capture_auto', [{ sampleRate: 0.1 }, { samplerate: 0.1 }], /item 2: .*"samplerate"/],
    [
      'edgefleet_capture_auto',
      [{ model: 'has_underscore', sampleRate: 1 }],
      /item 1, model: expected "\*" or a model name/,
    ],
    ['edgefleet_capture_auto', [{ topScoreBelow: 'low' }], /item 1, topScoreBelow/],
    ['edgefleet_capture_auto', '[{"sampleRate": 0.1', /expected a list of automatic capture rules/],
    ['edgefleet_db_synchronous', 'OFF', /expected one of NORMAL, FULL/],
  ];
  it.each(badValues)('%s = %j', (key, value, message) => {
    const error = errorOf({ [key]: value });
    expect(error.key).toBe(key);
    expect(error.message.startsWith(`${key}: `)).toBe(true);
    expect(error.message).toMatch(message);
    expect(error.message).toMatch(/got /);
  });

  it('requires the device identity when a provider connects to a control plane', () => {
    const aws = { sagemaker_edge_provider_provider: 'Aws' };
    expect(errorOf(aws).key).toBe('sagemaker_edge_core_device_name');
    expect(errorOf({ ...aws, sagemaker_edge_core_device_uuid: 'd' }).key).toBe(
      'sagemaker_edge_core_device_fleet_name',
    );
    const ok = parseAgentConfig(
      { ...aws, sagemaker_edge_core_device_name: 'd', sagemaker_edge_core_device_fleet_name: 'f' },
      context,
    );
    expect(ok.warnings).toEqual([expect.stringMatching(/sagemaker_edge_core_endpoint_override is not set/)]);
  });

  it('takes EdgeFleet capture (to the control plane) only with the endpoint and the device certificate', () => {
    const enrolled = {
      sagemaker_edge_core_device_name: 'd',
      sagemaker_edge_core_device_fleet_name: 'f',
      sagemaker_edge_provider_provider: 'Aws',
      sagemaker_edge_core_endpoint_override: 'https://fleet.example:8443',
      sagemaker_edge_provider_aws_cert_file: '/certs/device.pem',
      sagemaker_edge_provider_aws_cert_pk_file: '/certs/device.key',
      sagemaker_edge_core_capture_data_destination: 'EdgeFleet',
    };
    expect(parseAgentConfig(enrolled, context).config.capture.destination).toBe('EdgeFleet');
    const offline = errorOf({ ...enrolled, sagemaker_edge_provider_provider: 'None' });
    expect(offline.message).toMatch(/is EdgeFleet but sagemaker_edge_provider_provider is None/);
    const noEndpoint = errorOf({ ...enrolled, sagemaker_edge_core_endpoint_override: undefined });
    expect(noEndpoint.message).toMatch(
      /needs sagemaker_edge_core_endpoint_override .*edgefleet device enroll/,
    );
    const noCert = errorOf({ ...enrolled, sagemaker_edge_provider_aws_cert_pk_file: undefined });
    expect(noCert.message).toMatch(/needs sagemaker_edge_provider_aws_cert_file and/);
  });

  it('refuses Cloud capture without a provider or a bucket, and a batch not smaller than the buffer', () => {
    const cloud = errorOf({ sagemaker_edge_core_capture_data_destination: 'Cloud' });
    expect(cloud.key).toBe('sagemaker_edge_core_capture_data_destination');
    expect(cloud.message).toMatch(/expected Disk, or a provider of Aws or Custom/);
    expect(
      errorOf({
        sagemaker_edge_core_capture_data_destination: 'Cloud',
        sagemaker_edge_provider_provider: 'Custom',
        sagemaker_edge_core_device_name: 'd',
        sagemaker_edge_core_device_fleet_name: 'f',
      }).key,
    ).toBe('sagemaker_edge_provider_s3_bucket_name');
    expect(errorOf({ sagemaker_edge_core_capture_data_periodic_upload: 'true' }).key).toBe(
      'sagemaker_edge_core_capture_data_periodic_upload',
    );
    const batch = errorOf({
      sagemaker_edge_core_capture_data_buffer_size: '10',
      sagemaker_edge_core_capture_data_batch_size: '10',
    });
    expect(batch.key).toBe('sagemaker_edge_core_capture_data_batch_size');
    expect(batch.message).toMatch(/must be smaller than the buffer size \(10\)/);
    // An unset batch size fits itself under a small buffer.
    expect(
      parseAgentConfig({ sagemaker_edge_core_capture_data_buffer_size: 4 }, context).config.capture.batchSize,
    ).toBe(3);
  });

  it('requires root certificates when signatures are required', () => {
    const error = errorOf({ edgefleet_require_signatures: true });
    expect(error.key).toBe('edgefleet_require_signatures');
    expect(error.message).toMatch(/sagemaker_edge_core_root_certs_path is not set/);
    const relaxed = parseAgentConfig(
      { sagemaker_edge_core_root_certs_path: '/etc/certs', edgefleet_require_signatures: 'false' },
      context,
    );
    expect(relaxed.config.trust).toEqual({ rootCertsPath: '/etc/certs', requireSignatures: false });
    expect(relaxed.warnings).toEqual([expect.stringMatching(/do not verify are loaded anyway/)]);
  });

  it('refuses a file that is not a JSON object, naming no key', () => {
    for (const json of [[], 'x', 3, null, true]) {
      const error = errorOf(json);
      expect(error.key).toBeNull();
      expect(error.message).toMatch(/must hold a JSON object/);
    }
  });
});

describe('parseAgentConfig: EdgeFleet settings', () => {
  it('reads worker, instance, ONNX Runtime and listener settings', () => {
    const { config } = parseAgentConfig(
      {
        edgefleet_inference_workers: '2',
        edgefleet_instances_per_model: 2,
        edgefleet_ort_intra_op_threads: '3',
        edgefleet_ort_inter_op_threads: 2,
        edgefleet_ort_graph_optimization_level: 'Extended',
        edgefleet_ort_execution_providers: 'cuda:1, CPU',
        edgefleet_rest_socket_path: 'run/rest.sock',
        edgefleet_rest_tcp: '0.0.0.0:8080',
        edgefleet_rest_tcp_management: 'true',
        edgefleet_socket_mode: '0600',
        edgefleet_unload_timeout_seconds: '5',
        edgefleet_startup_load_timeout_seconds: '7',
        edgefleet_metrics_unloaded_models: 3,
        edgefleet_max_queued_requests: 16,
        edgefleet_inline_max_run_micros: 500,
        edgefleet_inline_event_loop_percent: '10',
        edgefleet_hot_wait_micros: 300,
        edgefleet_keep_freed_memory_bytes: '64MiB',
        edgefleet_inline_idle_max_run_micros: '0',
      },
      context,
    );
    expect(config.inference).toEqual({
      workers: 2,
      instancesPerModel: 2,
      unloadTimeoutMs: 5000,
      startupLoadTimeoutMs: 7000,
      maxQueuedRequestsPerModel: 16,
      inline: { maxRunMicros: 500, eventLoopShare: 0.1, idleMaxRunMicros: 0 },
      hotWaitMicros: 300,
      keepFreedMemoryBytes: 64 * 1024 ** 2,
      dynamicBatching: [],
      ort: {
        intraOpNumThreads: 3,
        interOpNumThreads: 2,
        graphOptimizationLevel: 'extended',
        executionProviders: [{ name: 'cuda', deviceId: 1 }, { name: 'cpu' }],
      },
      backendOptions: [],
    });
    expect(config.rest).toEqual({
      socketPath: '/srv/agent/run/rest.sock',
      tcp: { host: '0.0.0.0', port: 8080 },
      tcpManagement: true,
    });
    expect(config.socketMode).toBe(0o600);
    expect(config.metrics).toEqual({ maxUnloadedModels: 3 });
  });

  it('defaults intra-op threads so that workers × threads fits the cores', () => {
    const one = parseAgentConfig({ edgefleet_inference_workers: 1 }, { ...context, cpuCount: 8 }).config;
    expect(one.inference.ort.intraOpNumThreads).toBe(8);
    const many = parseAgentConfig({}, { ...context, cpuCount: 8 }).config;
    expect(many.inference.workers).toBe(8);
    expect(many.inference.ort.intraOpNumThreads).toBe(1);
  });

  it('reads listener addresses and file modes in every accepted spelling', () => {
    const tcp = (value: unknown) => parseAgentConfig({ edgefleet_rest_tcp: value }, context).config.rest.tcp;
    expect(tcp(8080)).toEqual({ host: '127.0.0.1', port: 8080 });
    expect(tcp('8080')).toEqual({ host: '127.0.0.1', port: 8080 });
    expect(tcp('[::1]:9000')).toEqual({ host: '::1', port: 9000 });
    const mode = (value: unknown) =>
      parseAgentConfig({ edgefleet_socket_mode: value }, context).config.socketMode;
    expect([mode('660'), mode('0o660'), mode(660), mode('0660')]).toEqual([0o660, 0o660, 0o660, 0o660]);
  });

  it('puts the REST socket next to the gRPC socket unless told otherwise', () => {
    expect(defaultRestSocketPath('/tmp/aws.greengrass.SageMakerEdgeManager.sock')).toBe(
      '/tmp/aws.greengrass.SageMakerEdgeManager.rest.sock',
    );
    expect(defaultRestSocketPath('/run/agent')).toBe('/run/agent.rest.sock');
    for (const off of [false, 'none', 'OFF']) {
      expect(
        parseAgentConfig({ edgefleet_rest_socket_path: off }, context).config.rest.socketPath,
      ).toBeNull();
    }
    const same = errorOf({ edgefleet_rest_socket_path: '/tmp/edge.sock' });
    expect(same.key).toBe('edgefleet_rest_socket_path');
    const long = errorOf({}, { ...context, grpcSocketPath: `/tmp/${'x'.repeat(98)}.sock` });
    expect(long.key).toBe('edgefleet_rest_socket_path');
    expect(long.message).toMatch(/derived from -a/);
  });
});

describe('parseAgentConfig: edgefleet_capture_* and edgefleet_db_synchronous', () => {
  /** Disk captures with periodic upload to a bucket, credentials from the AWS IoT credentials provider. */
  const uploading = {
    sagemaker_edge_provider_provider: 'Custom',
    sagemaker_edge_core_device_name: 'device-1',
    sagemaker_edge_core_device_fleet_name: 'fleet-a',
    sagemaker_edge_core_endpoint_override: 'https://edgefleet.example.com',
    sagemaker_edge_provider_s3_bucket_name: 'bucket',
    sagemaker_edge_core_capture_data_periodic_upload: true,
    sagemaker_edge_provider_aws_iot_cred_endpoint: 'creds.example.com',
    sagemaker_edge_provider_aws_cert_file: '/etc/edge/cert.pem',
    sagemaker_edge_provider_aws_cert_pk_file: '/etc/edge/key.pem',
    sagemaker_edge_db_module_path: 'builtin',
  };
  const rules = [
    { model: 'resnet', sampleRate: 0.01 },
    { model: '*', topScoreBelow: 0.6, output: 'probabilities' },
  ];

  it('reads every key into the capture and storage settings', () => {
    const { config, warnings } = parseAgentConfig(
      {
        ...uploading,
        edgefleet_capture_model_monitor_format: true,
        edgefleet_capture_keep_uploaded_files: true,
        edgefleet_capture_s3_endpoint: 'http://minio.local:9000',
        edgefleet_capture_s3_force_path_style: false,
        edgefleet_capture_iot_role_alias: 'EdgeFleet-line-1',
        edgefleet_capture_auto: rules,
        edgefleet_db_synchronous: 'FULL',
      },
      context,
    );
    expect(warnings).toEqual([]);
    expect(config.capture).toMatchObject({
      modelMonitorFormat: true,
      keepUploadedFiles: true,
      spoolQuotaBytes: 1024 ** 3,
      s3Endpoint: 'http://minio.local:9000',
      s3ForcePathStyle: false,
      iotRoleAlias: 'EdgeFleet-line-1',
      autoCapture: rules,
    });
    expect(config.storage.dbSynchronous).toBe('FULL');
    // The spool quota applies to Cloud captures.
    const cloud = parseAgentConfig(
      {
        ...uploading,
        sagemaker_edge_core_capture_data_periodic_upload: false,
        sagemaker_edge_core_capture_data_destination: 'Cloud',
        edgefleet_capture_spool_quota_bytes: 268_435_456,
      },
      context,
    );
    expect(cloud.warnings).toEqual([]);
    expect(cloud.config.capture.spoolQuotaBytes).toBe(256 * 1024 ** 2);
  });

  it('reads the memory and disk bounds: body and response budgets, gRPC receive timeout, capture sizes, package size and free space', () => {
    const { config, warnings } = parseAgentConfig(
      {
        edgefleet_max_bodies_in_flight_bytes: '512MiB',
        edgefleet_max_responses_queued_bytes: '128MiB',
        edgefleet_grpc_receive_timeout_seconds: '10',
        edgefleet_capture_max_bytes: '1MiB',
        edgefleet_capture_buffer_bytes: 64 * 1024 ** 2,
        edgefleet_deployment_max_package_bytes: '1GiB',
        edgefleet_deployment_min_free_bytes: 0,
      },
      context,
    );
    expect(warnings).toEqual([]);
    expect(config.limits).toEqual({
      bodiesInFlightBytes: 512 * 1024 ** 2,
      responsesQueuedBytes: 128 * 1024 ** 2,
      grpcReceiveTimeoutMs: 10_000,
    });
    expect(config.capture).toMatchObject({ maxCaptureBytes: 1024 ** 2, bufferBytes: 64 * 1024 ** 2 });
    expect(config.deployments).toMatchObject({ maxPackageBytes: 1024 ** 3, minFreeBytes: 0 });
    expect(() => parseAgentConfig({ edgefleet_max_bodies_in_flight_bytes: '100kB' }, context)).toThrow(
      /edgefleet_max_bodies_in_flight_bytes: expected a size in bytes from 1 MiB/,
    );
    expect(() => parseAgentConfig({ edgefleet_max_responses_queued_bytes: '100kB' }, context)).toThrow(
      /edgefleet_max_responses_queued_bytes: expected a size in bytes from 1 MiB/,
    );
  });

  it('reads the Disk capture quota and free-space floor, with defaults of 1 GiB and 64 MiB', () => {
    const defaults = parseAgentConfig({}, context).config.capture;
    expect(defaults).toMatchObject({ diskQuotaBytes: 1024 ** 3, diskMinFreeBytes: 64 * 1024 ** 2 });
    const { config, warnings } = parseAgentConfig(
      { edgefleet_capture_disk_quota_bytes: '2 GiB', edgefleet_capture_min_free_bytes: 0 },
      context,
    );
    expect(warnings).toEqual([]);
    expect(config.capture).toMatchObject({ diskQuotaBytes: 2 * 1024 ** 3, diskMinFreeBytes: 0 });
    // The quota limits Disk files only: with a bucket destination it is warned about; the floor also keeps the
    // offline spool's file system free, so it applies there too.
    const cloud = parseAgentConfig(
      {
        ...uploading,
        sagemaker_edge_core_capture_data_periodic_upload: false,
        sagemaker_edge_core_capture_data_destination: 'Cloud',
        edgefleet_capture_disk_quota_bytes: '10MiB',
        edgefleet_capture_min_free_bytes: '1MiB',
      },
      context,
    );
    expect(cloud.warnings).toEqual([
      expect.stringMatching(/^edgefleet_capture_disk_quota_bytes limits the files of Disk captures; ignored/),
    ]);
    expect(cloud.config.capture.diskMinFreeBytes).toBe(1024 ** 2);
  });

  it('reads them leniently: strings for booleans, numbers and words, rules as a JSON string or one object', () => {
    const asValues = parseAgentConfig(
      {
        edgefleet_capture_model_monitor_format: true,
        edgefleet_capture_keep_uploaded_files: false,
        edgefleet_capture_spool_quota_bytes: 536_870_912,
        edgefleet_capture_s3_force_path_style: true,
        edgefleet_capture_auto: rules,
        edgefleet_db_synchronous: 'NORMAL',
      },
      context,
    ).config;
    const asStrings = parseAgentConfig(
      {
        edgefleet_capture_model_monitor_format: 'yes',
        edgefleet_capture_keep_uploaded_files: '0',
        edgefleet_capture_spool_quota_bytes: ' 512MiB ',
        edgefleet_capture_s3_force_path_style: 'TRUE',
        edgefleet_capture_auto:
          '[{"model": " resnet ", "sampleRate": "0.01"}, {"model": "*", "topScoreBelow": "6e-1", "output": "probabilities"}]',
        edgefleet_db_synchronous: 'normal',
      },
      context,
    ).config;
    expect(asStrings).toEqual(asValues);
    expect(asValues.capture.autoCapture).toEqual(rules);
    const one = { model: 'resnet', sampleRate: 1 };
    for (const given of [one, JSON.stringify(one)])
      expect(parseAgentConfig({ edgefleet_capture_auto: given }, context).config.capture.autoCapture).toEqual(
        [one],
      );
    // A rule without a model applies to every model.
    expect(
      parseAgentConfig({ edgefleet_capture_auto: [{ sampleRate: 0.5 }] }, context).config.capture.autoCapture,
    ).toEqual([{ model: '*', sampleRate: 0.5 }]);
    expect(parseAgentConfig({ edgefleet_db_synchronous: 'full' }, context).config.storage.dbSynchronous).toBe(
      'FULL',
    );
  });

  it('reads spool quotas in bytes or with SI and binary units', () => {
    const quota = (value: unknown) =>
      parseAgentConfig(
        {
          ...uploading,
          sagemaker_edge_core_capture_data_periodic_upload: false,
          sagemaker_edge_core_capture_data_destination: 'Cloud',
          edgefleet_capture_spool_quota_bytes: value,
        },
        context,
      ).config.capture.spoolQuotaBytes;
    expect(quota(2_000_000)).toBe(2_000_000);
    expect(quota('2000000')).toBe(2_000_000);
    expect(quota('2MB')).toBe(2_000_000);
    expect(quota('2 mib')).toBe(2 * 1024 ** 2);
    expect(quota('2M')).toBe(2 * 1024 ** 2);
    expect(quota('1.5GiB')).toBe(1.5 * 1024 ** 3);
    expect(quota('0.3 GB')).toBe(300_000_000);
    expect(quota('1 PiB')).toBe(1024 ** 5);
    expect(quota('1T')).toBe(1024 ** 4);
  });

  it('takes sagemaker_edge_provider_aws_iot_cred_endpoint as a host or as the full credentials URL, whose alias wins', () => {
    const fullUrl = 'https://creds.example.com/role-aliases/my-edge-alias/credentials';
    const full = parseAgentConfig(
      { ...uploading, sagemaker_edge_provider_aws_iot_cred_endpoint: fullUrl },
      context,
    );
    expect(full.warnings).toEqual([]);
    expect(full.config.capture.iotRoleAlias).toBe('my-edge-alias');
    expect(full.config.provider.iotCredentialEndpoint).toBe(fullUrl);
    // edgefleet_capture_iot_role_alias naming another alias: the URL's is used, with a warning at start.
    const differing = parseAgentConfig(
      {
        ...uploading,
        sagemaker_edge_provider_aws_iot_cred_endpoint: fullUrl,
        edgefleet_capture_iot_role_alias: 'EdgeFleet-line-1',
      },
      context,
    );
    expect(differing.config.capture.iotRoleAlias).toBe('my-edge-alias');
    expect(differing.warnings).toEqual([
      'edgefleet_capture_iot_role_alias is "EdgeFleet-line-1" but sagemaker_edge_provider_aws_iot_cred_endpoint is a credentials URL for role alias "my-edge-alias"; "my-edge-alias" is used (give the endpoint as a host name for edgefleet_capture_iot_role_alias to apply)',
    ]);
    for (const host of ['creds.example.com', 'https://creds.example.com', 'https://creds.example.com:8443/'])
      expect(
        parseAgentConfig({ ...uploading, sagemaker_edge_provider_aws_iot_cred_endpoint: host }, context)
          .warnings,
      ).toEqual([]);
  });

  it('refuses any other sagemaker_edge_provider_aws_iot_cred_endpoint, naming the key and the two accepted forms', () => {
    for (const bad of [
      'https://creds.example.com/role-aliases/a',
      'https://creds.example.com/credentials',
      'creds.example.com/role-aliases/a/credentials/x',
      'https://creds.example.com/role-aliases/a/credentials?x=1',
      'http://creds.example.com',
      // Role aliases AWS IoT would never take, once decoded: a NUL, a slash, a space, a question mark (N3).
      'https://creds.example.com/role-aliases/a%00b/credentials',
      'https://creds.example.com/role-aliases/a%2Fb/credentials',
      'https://creds.example.com/role-aliases/a%20b/credentials',
      'https://creds.example.com/role-aliases/a%3Fb/credentials',
      `https://creds.example.com/role-aliases/${'a'.repeat(129)}/credentials`,
    ]) {
      const error = errorOf({ ...uploading, sagemaker_edge_provider_aws_iot_cred_endpoint: bad });
      expect(error.key).toBe('sagemaker_edge_provider_aws_iot_cred_endpoint');
      expect(error.message).toBe(
        `sagemaker_edge_provider_aws_iot_cred_endpoint: expected a host name (abc123.credentials.iot.eu-west-1.amazonaws.com, or https://<host>) or the full credentials URL https://<host>/role-aliases/<alias>/credentials (its alias 1 to 128 letters, digits and = , @ - _), got ${JSON.stringify(bad)}`,
      );
    }
  });

  it('treats an empty string (or null) as unset, so the default applies', () => {
    const { config, warnings } = parseAgentConfig(
      {
        edgefleet_capture_model_monitor_format: '',
        edgefleet_capture_keep_uploaded_files: null,
        edgefleet_capture_spool_quota_bytes: ' ',
        edgefleet_capture_s3_endpoint: '',
        edgefleet_capture_s3_force_path_style: '',
        edgefleet_capture_iot_role_alias: '',
        edgefleet_capture_auto: '',
        edgefleet_db_synchronous: '',
      },
      context,
    );
    expect(warnings).toEqual([]);
    expect(config).toEqual(parseAgentConfig({}, context).config);
  });

  it('warns about each setting that cannot take effect, and keeps it', () => {
    const { config, warnings } = parseAgentConfig(
      {
        edgefleet_capture_keep_uploaded_files: true,
        edgefleet_capture_spool_quota_bytes: '64MiB',
        edgefleet_capture_s3_endpoint: 'http://minio.local:9000',
        edgefleet_capture_s3_force_path_style: true,
        edgefleet_capture_iot_role_alias: 'EdgeFleet-line-1',
        edgefleet_db_synchronous: 'FULL',
      },
      context,
    );
    expect(warnings).toEqual([
      expect.stringMatching(
        /^edgefleet_capture_keep_uploaded_files applies to the periodic upload .*; ignored$/,
      ),
      expect.stringMatching(
        /^edgefleet_capture_spool_quota_bytes limits the offline spool of Cloud and EdgeFleet captures/,
      ),
      expect.stringMatching(/^edgefleet_capture_s3_endpoint applies to the bucket .*; ignored$/),
      expect.stringMatching(/^edgefleet_capture_s3_force_path_style applies to the bucket .*; ignored$/),
      expect.stringMatching(
        /^edgefleet_capture_iot_role_alias .*needs sagemaker_edge_provider_aws_iot_cred_endpoint/,
      ),
      expect.stringMatching(/^edgefleet_db_synchronous applies to the local database, which is off/),
    ]);
    expect(config.capture.spoolQuotaBytes).toBe(64 * 1024 ** 2);
    expect(config.storage.dbSynchronous).toBe('FULL');
  });
});

describe('parseAgentConfig: sagemaker_edge_dlr_backend_options', () => {
  const withOptions = (options: string, extra: Record<string, unknown> = {}) =>
    parseAgentConfig({ sagemaker_edge_dlr_backend_options: options, ...extra }, context);

  it('maps thread counts, optimisation level and device onto ONNX Runtime', () => {
    const { config, warnings } = withOptions(
      'OMP_NUM_THREADS=3;ORT_INTER_OP_NUM_THREADS=2; ORT_GRAPH_OPTIMIZATION_LEVEL=ORT_ENABLE_BASIC ; DLR_DEVICE_ID=1;',
      { edgefleet_ort_execution_providers: ['cuda', 'cpu'] },
    );
    expect(warnings).toEqual([]);
    expect(config.inference.ort).toEqual({
      intraOpNumThreads: 3,
      interOpNumThreads: 2,
      graphOptimizationLevel: 'basic',
      executionProviders: [{ name: 'cuda', deviceId: 1 }, { name: 'cpu' }],
    });
  });

  it('lets explicit edgefleet_ort_* settings win, with a warning', () => {
    const { config, warnings } = withOptions('TVM_NUM_THREADS=3', { edgefleet_ort_intra_op_threads: 2 });
    expect(config.inference.ort.intraOpNumThreads).toBe(2);
    expect(warnings).toEqual([
      'edgefleet_ort_intra_op_threads (2) overrides sagemaker_edge_dlr_backend_options (3)',
    ]);
  });

  it('attaches TensorRT engine-cache settings to the TensorRT provider when it is enabled', () => {
    const { config, warnings } = withOptions(
      'TVM_TENSORRT_CACHE_DIR=/var/cache/trt; TVM_TENSORRT_MAX_WORKSPACE_SIZE=1073741824; TVM_TENSORRT_USE_FP16=1; TVM_TENSORRT_CACHE_SIZE=10',
      { edgefleet_ort_execution_providers: ['tensorrt', 'cuda', 'cpu'] },
    );
    expect(config.inference.ort.executionProviders[0]).toEqual({
      name: 'tensorrt',
      tensorrt: {
        engineCachePath: '/var/cache/trt',
        engineCacheEnable: true,
        maxWorkspaceSize: 1073741824,
        fp16Enable: true,
      },
    });
    expect(warnings).toEqual([
      expect.stringMatching(/TVM_TENSORRT_CACHE_SIZE is ignored: .*no engine-cache size limit/),
      expect.stringMatching(/onnxruntime-node 1\.30 passes only the device id to TensorRT/),
    ]);
    const off = withOptions('TVM_TENSORRT_CACHE_DIR=/var/cache/trt');
    expect(off.config.inference.ort.executionProviders).toEqual([{ name: 'cpu' }]);
    expect(off.warnings).toEqual([expect.stringMatching(/TensorRT execution provider is not enabled/)]);
  });

  it('warns about keys with no ONNX Runtime meaning and refuses malformed entries or values', () => {
    expect(withOptions('SOME_DLR_FLAG=1').warnings).toEqual([
      'sagemaker_edge_dlr_backend_options: SOME_DLR_FLAG has no ONNX Runtime equivalent and is ignored',
    ]);
    for (const bad of ['TVM_NUM_THREADS', '=3', 'TVM_NUM_THREADS=many', 'TVM_TENSORRT_USE_FP16=perhaps']) {
      const error = errorOf({ sagemaker_edge_dlr_backend_options: bad });
      expect(error.key).toBe('sagemaker_edge_dlr_backend_options');
      expect(error.message).toMatch(/expected/);
    }
  });
});

describe('parseAgentConfig: arbitrary input', () => {
  const knownKey = fc.constantFrom(...CONFIG_KEYS);
  const anyKey = fc.oneof(knownKey, fc.string({ maxLength: 40 }));
  const leafValue = fc.oneof(
    fc.constant(''),
    fc.constant(null),
    fc.boolean(),
    fc.integer({ min: -5, max: 100_000 }),
    fc.double(),
    fc.constantFrom(
      'true',
      'false',
      '30',
      '10',
      'Disk',
      'Cloud',
      'Aws',
      'None',
      'cpu',
      '0660',
      '127.0.0.1:80',
    ),
    fc.string({ maxLength: 30 }),
  );
  const value = fc.oneof(
    leafValue,
    fc.array(leafValue, { maxLength: 3 }),
    fc.dictionary(fc.string(), leafValue),
  );

  it('never crashes: any JSON object gives a config or a ConfigError naming a key', () => {
    fc.assert(
      fc.property(fc.dictionary(anyKey, value, { maxKeys: 12 }), (json) => {
        try {
          const { config, warnings } = parseAgentConfig(json, context);
          expect(config.capture.batchSize).toBeLessThan(config.capture.bufferSize);
          expect(Array.isArray(warnings)).toBe(true);
        } catch (error) {
          expect(error).toBeInstanceOf(ConfigError);
          const { key, message } = error as ConfigError;
          expect(CONFIG_KEYS).toContain(key);
          expect(message).toContain(key!);
        }
      }),
      { numRuns: 1000 },
    );
  });
});

describe('the idle-run ceiling', () => {
  it('warns when it is not above the inline ceiling, since no model could then run as an idle run', () => {
    const at = (idle: number, inline?: number) =>
      parseAgentConfig(
        {
          edgefleet_inline_idle_max_run_micros: idle,
          ...(inline !== undefined && { edgefleet_inline_max_run_micros: inline }),
        },
        context,
      ).warnings;
    expect(at(200)).toEqual([
      'edgefleet_inline_idle_max_run_micros (200) is not above edgefleet_inline_max_run_micros (200): no model runs ' +
        'as an idle run; expected a higher ceiling, or 0 to say idle runs are off',
    ]);
    expect(at(500, 800)).toHaveLength(1);
    expect(at(0)).toEqual([]);
    expect(at(201)).toEqual([]);
  });
});
