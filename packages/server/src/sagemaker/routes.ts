import {
  getDeploymentsRequestSchema,
  getDeviceRegistrationRequestSchema,
  parsePackageUrl,
  sendHeartbeatRequestSchema,
} from '@edgefleet/core';
import type { FastifyError, FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import type { z } from 'zod';
import { keyEndedReason, type AccessKeyStore } from '../auth/index.js';
import type { DeploymentService } from '../deployments/index.js';
import type { DeviceStore } from '../devices/index.js';
import { dependencyUnavailableOf, DomainError } from '../errors/index.js';
import { assertActsAsItself, type HeartbeatService } from '../heartbeats/index.js';
import type { OutageLog } from '../http/outage-log.js';
import type { AuthenticatedDevice } from '../identity/index.js';
import type { Refusal } from '../http/refusal.js';
import { AwsError, REFUSAL_BY_AWS_TYPE, toAwsError } from './aws-errors.js';
import type { SageMakerDispatcher } from './dispatcher.js';
import { parseInput } from './operation.js';
import { verifySigV4, type VerifiedSignature, type VerifyOptions } from './sigv4.js';

/** Largest facade request body; SageMaker's own requests are far smaller. */
export const MAX_FACADE_BODY_BYTES = 1024 * 1024;

export interface SageMakerRoutesOptions {
  dispatcher: SageMakerDispatcher;
  accessKeys: AccessKeyStore;
  devices: DeviceStore;
  heartbeats: HeartbeatService;
  /** Largest SendHeartbeat body (heartbeat.maxBodyBytes); default MAX_FACADE_BODY_BYTES. */
  heartbeatBodyLimit?: number;
  deployments: Pick<DeploymentService, 'deploymentsFor'>;
  /** The S3 object of a facade-created packaging job's package (Edge Manager's S3Url), if it has one. */
  packageS3Url: (packagingJobName: string) => Promise<string | undefined>;
  /** Where requests failed by an outage are logged, once a minute per component (the operator app's). */
  outageLog: OutageLog;
}

type Protocol = 'json' | 'rest-json';

/** Sends `error` AWS-style, and tells metrics/ what it refused (`refusal`; by default, what its type means). */
function sendAwsError(
  reply: FastifyReply,
  protocol: Protocol,
  error: AwsError,
  refusal: Refusal = REFUSAL_BY_AWS_TYPE[error.type],
): FastifyReply {
  reply.request.refusal = refusal;
  reply.status(error.statusCode).header('x-amzn-ErrorType', error.type);
  // json 1.1 carries the type in the body's __type; rest-json in the header (botocore reads either).
  return protocol === 'json'
    ? reply
        .type('application/x-amz-json-1.1')
        .send(JSON.stringify({ __type: error.type, message: error.message }))
    : reply.type('application/json').send(JSON.stringify({ message: error.message }));
}

function parseJsonBody(raw: Buffer): unknown {
  if (raw.length === 0) return {};
  try {
    return JSON.parse(raw.toString('utf8'));
  } catch (error) {
    throw new AwsError(
      'SerializationException',
      `the request body is not valid JSON: ${error instanceof Error ? error.message : String(error)}`,
    );
  }
}

async function verify(
  request: FastifyRequest,
  accessKeys: AccessKeyStore,
  options: VerifyOptions = {},
): Promise<VerifiedSignature> {
  const queryAt = request.url.indexOf('?');
  return verifySigV4(
    {
      method: request.method,
      rawPath: queryAt < 0 ? request.url : request.url.slice(0, queryAt),
      rawQuery: queryAt < 0 ? '' : request.url.slice(queryAt + 1),
      headers: request.headers,
      body: Buffer.isBuffer(request.body) ? request.body : Buffer.alloc(0),
    },
    (id) => accessKeys.findActive(id),
    Date.now(),
    options,
  );
}

/**
 * The SageMaker compatibility facade on the operator port: the `sagemaker` control plane (json 1.1,
 * `POST /` + `X-Amz-Target`) and the `sagemaker-edge` data plane (rest-json, `POST /<Operation>`), both
 * signed with SigV4 by EdgeFleet access keys. The operations are mapped onto the native services by the
 * dispatcher's modules; this plugin only does the wire: raw bodies (the signature covers them), signature
 * checks and AWS-shaped errors.
 */
export const sageMakerRoutes: FastifyPluginAsync<SageMakerRoutesOptions> = async (app, options) => {
  // Within this plugin only: every body arrives raw, since SigV4 signs its exact bytes.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer', bodyLimit: MAX_FACADE_BODY_BYTES }, (_req, body, done) =>
    done(null, body),
  );
  // The control plane's operation, for metrics/: one of the dispatcher's names, never the header's raw value.
  const knownOperations = new Set(options.dispatcher.operationNames);
  app.addHook('onRequest', async (request) => {
    if (request.routeOptions.url !== '/') return;
    const target = request.headers['x-amz-target'];
    const name = typeof target === 'string' ? /^SageMaker\.(.+)$/.exec(target)?.[1] : undefined;
    request.operation = name !== undefined && knownOperations.has(name) ? name : 'unknown';
  });
  app.setErrorHandler((error: unknown, request, reply) => {
    const protocol: Protocol = request.url.split('?')[0] === '/' ? 'json' : 'rest-json';
    const aws = toAwsError(error);
    // An outage (database, blob store): the answer names only the component; the cause goes to the log.
    if (aws?.type === 'ServiceUnavailable') {
      const details = (dependencyUnavailableOf(error) ?? (error instanceof DomainError ? error : undefined))
        ?.details;
      options.outageLog.log(
        request.log,
        String(details?.component ?? details?.outputLocation ?? 'unknown'),
        error,
        aws.message,
      );
    }
    if (aws !== undefined) {
      // AWS has no timeout type (ValidationException); counted as the deadline it is.
      const timedOut = error instanceof DomainError && error.code === 'RequestTimeout';
      return sendAwsError(reply, protocol, aws, timedOut ? 'request_timeout' : undefined);
    }
    const status = (error as FastifyError).statusCode;
    if (status === 413) {
      return sendAwsError(
        reply,
        protocol,
        new AwsError(
          'ValidationException',
          `the request body is larger than ${request.routeOptions.bodyLimit ?? MAX_FACADE_BODY_BYTES} bytes`,
        ),
        'too_large',
      );
    }
    if (status !== undefined && status >= 400 && status < 500) {
      return sendAwsError(reply, protocol, new AwsError('SerializationException', (error as Error).message));
    }
    request.log.error({ err: error }, 'SageMaker facade request failed');
    return sendAwsError(
      reply,
      protocol,
      new AwsError(
        protocol === 'json' ? 'InternalFailure' : 'InternalServiceException',
        'the server failed to handle the request; see its log',
      ),
    );
  });

  app.route({
    method: 'POST',
    url: '/',
    // Authenticated by SigV4 in the handler: the signature covers the body, which onRequest cannot see yet.
    config: { auth: 'public' },
    schema: { hide: true },
    handler: async (request, reply) => {
      // The operation is named by X-Amz-Target, so the signature must cover it: else a signed Describe
      // could be sent again as a Delete of the same body.
      const signature = await verify(request, options.accessKeys, { mustSign: ['x-amz-target'] });
      const target = request.headers['x-amz-target'];
      const result = await options.dispatcher.dispatch(
        Array.isArray(target) ? target.join(',') : target,
        parseJsonBody(Buffer.isBuffer(request.body) ? request.body : Buffer.alloc(0)),
        signature,
      );
      return reply.type('application/x-amz-json-1.1').send(JSON.stringify(result));
    },
  });

  // The data plane: a key bound to a device speaks for that device only, through the same services the
  // mutual-TLS device API uses.
  const dataPlane = <S extends z.ZodType>(
    operation: string,
    input: S,
    run: (device: AuthenticatedDevice, body: z.output<S>) => Promise<Record<string, unknown>>,
    bodyLimit?: number,
  ) =>
    app.route({
      method: 'POST',
      url: `/${operation}`,
      ...(bodyLimit !== undefined && { bodyLimit }),
      config: { auth: 'public' },
      schema: { hide: true },
      handler: async (request, reply) => {
        const { key } = await verify(request, options.accessKeys);
        if (key.deviceName === null) {
          throw new AwsError(
            'AccessDeniedException',
            `access key ${key.accessKeyId} is not bound to a device; ${operation} needs a device key (edgefleet token create --aws --device <name>)`,
          );
        }
        const body = parseJsonBody(Buffer.isBuffer(request.body) ? request.body : Buffer.alloc(0));
        const parsed = parseInput(input, body);
        const record = await options.devices.find(key.deviceName);
        const ended = keyEndedReason({ deviceName: key.deviceName, createdAt: key.createdAt }, record);
        if (record === undefined || ended !== undefined) {
          throw new AwsError(
            'AccessDeniedException',
            `access key ${key.accessKeyId} was issued for a device ${key.deviceName} that is no longer registered (${ended}); create a new key`,
          );
        }
        const device: AuthenticatedDevice = {
          deviceName: record.name,
          fleetName: record.fleetName,
          serial: `access-key:${key.accessKeyId}`,
          credential: `access key ${key.accessKeyId}`,
          notAfter: Number.MAX_SAFE_INTEGER,
        };
        return reply.type('application/json').send(JSON.stringify(await run(device, parsed)));
      },
    });

  dataPlane(
    'SendHeartbeat',
    sendHeartbeatRequestSchema,
    // Over the device's metric quota the heartbeat still succeeds, its metrics dropped (MetricsDropped, which
    // AWS SDKs ignore as an unknown member), as on the device API.
    (device, body) => options.heartbeats.record(device, body),
    options.heartbeatBodyLimit,
  );
  dataPlane('GetDeviceRegistration', getDeviceRegistrationRequestSchema, async (device, body) =>
    options.heartbeats.registration(device, body),
  );
  // The same desired state the mutual-TLS device API serves, plus S3Url where Edge Manager's agents would
  // have found the package (facade-created packaging jobs write it to S3).
  dataPlane('GetDeployments', getDeploymentsRequestSchema, async (device, body) => {
    assertActsAsItself(device, body);
    const result = await options.deployments.deploymentsFor(device);
    for (const deployment of result.Deployments ?? []) {
      for (const definition of deployment.Definitions ?? []) {
        const parsed =
          definition.PackageUrl !== undefined ? parsePackageUrl(definition.PackageUrl) : undefined;
        if (parsed === undefined || !('ref' in parsed) || parsed.ref.kind !== 'job') continue;
        const s3Url = await options.packageS3Url(parsed.ref.job);
        if (s3Url !== undefined) definition.S3Url = s3Url;
      }
    }
    return result;
  });
};
