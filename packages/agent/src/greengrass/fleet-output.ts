import { z } from 'zod';
import { DeviceApiClient, type DeviceTlsIdentity } from '../fleet/device-api.js';

/** A fleet's capture output location as the server reports it now: `s3://<bucket>/<prefix>`. */
export interface FleetOutput {
  location: string;
  bucket: string;
  /** `''`: the bucket's root. */
  prefix: string;
}

/** What render needs of `GET /api/v1/device/agent-settings` (the server's agentSettingsSchema). */
const agentSettingsSchema = z.looseObject({
  captureOutputLocation: z.string().max(2048).optional(),
  captureBucket: z.string().max(1024).optional(),
  captureFolderPrefix: z.string().max(1024).optional(),
});

/**
 * Asks the device API, with the device's own certificate, for its fleet's capture output now, within `timeoutMs`
 * in all (a server that answers a byte at a time does not hold Install). Undefined when the fleet has none the
 * server can use (not s3://bucket/prefix); throws (a DeviceApiError, saying whether the server could not be reached
 * or refused the device) when the server cannot be asked.
 */
export async function readFleetOutput(
  endpoint: string,
  tls: DeviceTlsIdentity,
  timeoutMs: number,
): Promise<FleetOutput | undefined> {
  const client = new DeviceApiClient(endpoint, tls, { timeoutMs });
  try {
    const { captureOutputLocation, captureBucket, captureFolderPrefix } = await client.get(
      'api/v1/device/agent-settings',
      agentSettingsSchema,
      AbortSignal.timeout(timeoutMs),
    );
    if (captureBucket === undefined) return undefined;
    return {
      location: captureOutputLocation ?? `s3://${captureBucket}/${captureFolderPrefix ?? ''}`,
      bucket: captureBucket,
      prefix: captureFolderPrefix ?? '',
    };
  } finally {
    client.close();
  }
}
