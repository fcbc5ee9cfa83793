import { describe, expect, it } from 'vitest';
import {
  DEFAULT_MAX_CAPTURE_BYTES,
  defaultMaxCaptureBytesFor,
  DEFAULT_SPOOL_QUOTA_BYTES,
  captureSettingsFromConfig,
} from '../../src/capture/index.js';
import { parseAgentConfig, type ConfigContext } from '../../src/config/index.js';

// The capture settings the agent starts with are those of its parsed config file: the edgefleet_capture_* keys
// reach the capture service, the environment fills in only what the file leaves unset, and extras (embedding)
// win over both.
const context: ConfigContext = { cwd: '/srv/agent', cpuCount: 2, grpcSocketPath: '/tmp/edge.sock' };

/** Disk captures uploaded to a bucket, with AWS IoT credentials, as Edge Manager devices were set up. */
const uploading = {
  sagemaker_edge_provider_provider: 'Custom',
  sagemaker_edge_core_device_name: 'device-1',
  sagemaker_edge_core_device_fleet_name: 'line-1',
  sagemaker_edge_core_endpoint_override: 'https://edgefleet.example.com',
  sagemaker_edge_provider_s3_bucket_name: 'captures',
  sagemaker_edge_core_capture_data_periodic_upload: 'true',
  sagemaker_edge_provider_aws_iot_cred_endpoint: 'creds.example.com',
  sagemaker_edge_provider_aws_cert_file: '/etc/edge/cert.pem',
  sagemaker_edge_provider_aws_cert_pk_file: '/etc/edge/key.pem',
};

const settingsOf = (
  file: Record<string, unknown>,
  extras: Parameters<typeof captureSettingsFromConfig>[1] = {},
  env: Record<string, string> = {},
) => captureSettingsFromConfig(parseAgentConfig(file, context).config, extras, env);

describe('capture settings from the config file', () => {
  it('sizes a capture by edgefleet_capture_max_bytes, else by the default the daemon passes, else 64 MiB', () => {
    expect(
      settingsOf({ edgefleet_capture_max_bytes: '1MiB' }, { defaultMaxCaptureBytes: 8 }).maxCaptureBytes,
    ).toBe(1024 ** 2);
    expect(settingsOf({}, { defaultMaxCaptureBytes: 64 * 1024 ** 2 }).maxCaptureBytes).toBe(64 * 1024 ** 2);
    expect(settingsOf({}).maxCaptureBytes).toBe(DEFAULT_MAX_CAPTURE_BYTES);
    expect(DEFAULT_MAX_CAPTURE_BYTES).toBe(64 * 1024 ** 2);
    // The daemon's default, max(-m, 64 MiB): shm captures of frames larger than the default -m (4 MiB) still fit.
    expect(defaultMaxCaptureBytesFor(4 * 1024 ** 2)).toBe(64 * 1024 ** 2);
    expect(defaultMaxCaptureBytesFor(24 * 1024 ** 2)).toBe(64 * 1024 ** 2);
    expect(defaultMaxCaptureBytesFor(128 * 1024 ** 2)).toBe(128 * 1024 ** 2);
    expect(settingsOf({ edgefleet_capture_buffer_bytes: '32MiB' }).bufferBytes).toBe(32 * 1024 ** 2);
    expect(settingsOf({}).bufferBytes).toBeUndefined();
  });

  it('takes every edgefleet_capture_* key from the file', () => {
    const settings = settingsOf(
      {
        ...uploading,
        edgefleet_capture_model_monitor_format: 'true',
        edgefleet_capture_keep_uploaded_files: 'yes',
        edgefleet_capture_s3_endpoint: 'http://minio.local:9000',
        edgefleet_capture_s3_force_path_style: 'false',
        edgefleet_capture_iot_role_alias: 'EdgeFleet-line-1',
        edgefleet_capture_auto: '[{"model": "resnet", "sampleRate": "0.25"}]',
      },
      {},
      // The file's endpoint wins over the environment's.
      { AWS_ENDPOINT_URL_S3: 'http://elsewhere:9000' },
    );
    expect(settings.modelMonitorFormat).toBe(true);
    expect(settings.keepUploadedFiles).toBe(true);
    expect(settings.autoCapture).toEqual([{ model: 'resnet', sampleRate: 0.25 }]);
    expect(settings.cloud).toEqual({
      bucket: 'captures',
      region: 'us-east-1',
      endpoint: 'http://minio.local:9000',
      forcePathStyle: false,
      credentials: {
        source: 'iot',
        endpoint: 'creds.example.com',
        roleAlias: 'EdgeFleet-line-1',
        thingName: 'device-1',
        certFile: '/etc/edge/cert.pem',
        keyFile: '/etc/edge/key.pem',
      },
    });
    const cloud = settingsOf({
      ...uploading,
      sagemaker_edge_core_capture_data_periodic_upload: '',
      sagemaker_edge_core_capture_data_destination: 'Cloud',
      edgefleet_capture_spool_quota_bytes: '256 MiB',
    });
    expect(cloud.spool).toMatchObject({
      dir: '/srv/agent/.edgefleet/capture-spool',
      quotaBytes: 256 * 1024 ** 2,
    });
  });

  it('without the keys: the defaults, and the endpoint from the environment', () => {
    const settings = settingsOf(uploading, {}, { AWS_ENDPOINT_URL: 'http://from-env:9000' });
    expect(settings.modelMonitorFormat).toBe(false);
    expect(settings.keepUploadedFiles).toBe(false);
    expect(settings.autoCapture).toEqual([]);
    expect(settings.spool.quotaBytes).toBe(DEFAULT_SPOOL_QUOTA_BYTES);
    expect(settings.cloud?.endpoint).toBe('http://from-env:9000');
    expect(settings.cloud?.forcePathStyle).toBeUndefined();
    expect(settings.cloud?.credentials).toMatchObject({ source: 'iot', roleAlias: 'SageMakerEdge-line-1' });
  });

  it('lets extras given by embedding code win over the file', () => {
    const settings = settingsOf(
      {
        ...uploading,
        edgefleet_capture_model_monitor_format: true,
        edgefleet_capture_s3_endpoint: 'http://minio.local:9000',
        edgefleet_capture_iot_role_alias: 'FromFile',
        edgefleet_capture_auto: [{ model: 'resnet', sampleRate: 1 }],
      },
      {
        modelMonitorFormat: false,
        s3Endpoint: 'http://embedded:9000',
        iotRoleAlias: 'FromExtras',
        autoCapture: [],
      },
    );
    expect(settings.modelMonitorFormat).toBe(false);
    expect(settings.cloud?.endpoint).toBe('http://embedded:9000');
    expect(settings.cloud?.credentials).toMatchObject({ roleAlias: 'FromExtras' });
    expect(settings.autoCapture).toEqual([]);
  });
});
