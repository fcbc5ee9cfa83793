import { request } from 'node:https';
import { z } from 'zod';
import type { DeviceTlsIdentity } from '../fleet/device-api.js';

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

/** The answer is a few hundred bytes and a PEM; anything much larger is not the server's. */
const MAX_ANSWER_BYTES = 256 * 1024;

/**
 * Asks the device API, with the device's own certificate, for its fleet's capture output now. Undefined when
 * the fleet has none the server can use (not s3://bucket/prefix); throws when the server cannot be asked.
 */
export function readFleetOutput(
  endpoint: string,
  tls: DeviceTlsIdentity,
  timeoutMs: number,
): Promise<FleetOutput | undefined> {
  return new Promise((resolve, reject) => {
    const url = new URL('api/v1/device/agent-settings', endpoint.endsWith('/') ? endpoint : `${endpoint}/`);
    if (url.protocol !== 'https:')
      return reject(new Error(`the device API endpoint ${endpoint} is not https://`));
    const req = request(
      url,
      {
        method: 'GET',
        cert: tls.certPem,
        key: tls.keyPem,
        ...(tls.caPem !== undefined && { ca: tls.caPem }),
        minVersion: 'TLSv1.2',
        // One request, then the process ends: no kept-alive socket holding it open.
        agent: false,
        timeout: timeoutMs,
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          text += chunk;
          if (text.length > MAX_ANSWER_BYTES)
            res.destroy(new Error(`the answer is larger than ${MAX_ANSWER_BYTES} bytes`));
        });
        res.on('error', reject);
        res.on('end', () => {
          if (res.statusCode !== 200)
            return reject(new Error(`HTTP ${res.statusCode}: ${text.slice(0, 300)}`));
          let parsed;
          try {
            parsed = agentSettingsSchema.safeParse(JSON.parse(text));
          } catch {
            return reject(new Error('the answer is not JSON'));
          }
          if (!parsed.success)
            return reject(
              new Error(`the answer is not the agent settings: ${parsed.error.issues[0]?.message}`),
            );
          const { captureOutputLocation, captureBucket, captureFolderPrefix } = parsed.data;
          resolve(
            captureBucket === undefined
              ? undefined
              : {
                  location: captureOutputLocation ?? `s3://${captureBucket}/${captureFolderPrefix ?? ''}`,
                  bucket: captureBucket,
                  prefix: captureFolderPrefix ?? '',
                },
          );
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs / 1000} s`)));
    req.on('error', reject);
    req.end();
  });
}
