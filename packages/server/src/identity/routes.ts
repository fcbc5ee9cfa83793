import type { FastifyPluginAsync } from 'fastify';
import { operatorActorOf } from '../audit/index.js';
import { z } from 'zod';
import { bearerTokenOf } from '../auth/index.js';
import { deviceCertificateSchema } from '../devices/index.js';
import { deviceNameSchema, iotThingNameSchema } from '../fields/index.js';
import { defineRoute } from '../http/routes.js';
import { requireDevice } from './device-auth.js';
import type { DeviceIdentityService, IssuedDeviceCertificate } from './identity-service.js';

const iso = (ms: number) => new Date(ms).toISOString();
const csrBodySchema = z.strictObject({
  csr: z.string().min(1).max(16_384).describe('PKCS#10 certificate signing request, PEM'),
  deviceName: deviceNameSchema
    .optional()
    .describe(
      'The device the enrolling host is; a live token issued for another device is refused (403) and left unused',
    ),
  thingName: iotThingNameSchema
    .optional()
    .describe(
      "The enrolling host's IoT thing name (a Greengrass core device): a live token for a device whose registered IoT thing name (or, with none registered, whose name) differs is refused (403) and left unused",
    ),
});

export const issuedCertificateSchema = z.object({
  deviceName: z.string(),
  fleetName: z.string(),
  certificatePem: z.string().describe('The device certificate (client auth), PEM'),
  caCertificatePem: z.string().describe('The device CA: trust it for the device API; PEM'),
  serial: z.string(),
  fingerprintSha256: z.string(),
  notBefore: z.iso.datetime(),
  notAfter: z.iso.datetime(),
  deviceEndpoint: z.string().describe('Base URL of the device API (mutual TLS)'),
  agentConfig: z
    .record(z.string(), z.string())
    .describe('Agent config keys the server knows; the client adds the file paths it wrote'),
});

function issuedView(
  issued: IssuedDeviceCertificate,
  endpoint: string,
): z.input<typeof issuedCertificateSchema> {
  return {
    deviceName: issued.deviceName,
    fleetName: issued.fleetName,
    certificatePem: issued.certificatePem,
    caCertificatePem: issued.caCertificatePem,
    serial: issued.serial,
    fingerprintSha256: issued.fingerprintSha256,
    notBefore: iso(issued.notBefore),
    notAfter: iso(issued.notAfter),
    deviceEndpoint: endpoint,
    agentConfig: {
      sagemaker_edge_core_device_name: issued.deviceName,
      sagemaker_edge_core_device_fleet_name: issued.fleetName,
      sagemaker_edge_core_endpoint_override: endpoint,
      sagemaker_edge_provider_provider: 'Aws',
    },
  };
}

/** What the identity routes need: the service, and the device endpoint to tell enrolled devices. */
export interface IdentityRoutesOptions {
  identity: DeviceIdentityService;
  deviceEndpoint: () => string;
}

/** POST /api/v1/enroll: served on both APIs (a device may enroll before it has a certificate). */
export const enrollmentRoutes: FastifyPluginAsync<IdentityRoutesOptions> = async (
  app,
  { identity, deviceEndpoint },
) => {
  defineRoute(app, {
    method: 'POST',
    url: '/api/v1/enroll',
    auth: 'enrollment-token',
    tag: 'identity',
    summary: 'Enroll a device: exchange a single-use enrollment token and a CSR for its certificate',
    description:
      'Send the token as "Authorization: Bearer efe_…". The certificate names the device (CN) and its fleet (OU).',
    body: csrBodySchema,
    response: issuedCertificateSchema,
    status: 201,
    handler: async ({ body, request }) =>
      issuedView(
        await identity.enroll(bearerTokenOf(request.headers.authorization) ?? '', body.csr, {
          ...(body.deviceName !== undefined && { deviceName: body.deviceName }),
          ...(body.thingName !== undefined && { thingName: body.thingName }),
        }),
        deviceEndpoint(),
      ),
  });
};

/** Operator routes: enrollment tokens, certificate listing and revocation. */
export const identityOperatorRoutes: FastifyPluginAsync<IdentityRoutesOptions> = async (
  app,
  { identity, deviceEndpoint },
) => {
  const deviceParams = z.object({ device: deviceNameSchema });

  defineRoute(app, {
    method: 'POST',
    url: '/api/v1/devices/:device/enrollment-tokens',
    auth: 'admin',
    tag: 'identity',
    summary: 'Create a single-use, expiring enrollment token for a registered device (shown once)',
    params: deviceParams,
    body: z.strictObject({
      ttlSeconds: z.int().min(60).optional().describe('Lifetime; default from config'),
    }),
    response: z.object({
      token: z.string(),
      deviceName: z.string(),
      fleetName: z.string(),
      expiresAt: z.iso.datetime(),
      deviceEndpoint: z.string(),
    }),
    status: 201,
    handler: async ({ params, body, request }) => {
      const created = await identity.createEnrollmentToken(
        params.device,
        body.ttlSeconds,
        operatorActorOf(request),
      );
      return { ...created, expiresAt: iso(created.expiresAt), deviceEndpoint: deviceEndpoint() };
    },
  });

  defineRoute(app, {
    method: 'GET',
    url: '/api/v1/devices/:device/certificates',
    auth: 'read',
    tag: 'identity',
    summary: "Every certificate issued to the device's name, newest first",
    description:
      "A deregistered device's certificates stay listed (revoked); a name that is not registered and was never issued one is 404.",
    params: deviceParams,
    response: z.object({ certificates: z.array(deviceCertificateSchema) }),
    handler: async ({ params }) => ({
      certificates: (await identity.certificates(params.device)).map((c) => ({
        serial: c.serial,
        fingerprintSha256: c.fingerprintSha256,
        subject: c.subject,
        notBefore: iso(c.notBefore),
        notAfter: iso(c.notAfter),
        issuedAt: iso(c.issuedAt),
        ...(c.revokedAt !== null ? { revokedAt: iso(c.revokedAt) } : {}),
      })),
    }),
  });

  defineRoute(app, {
    method: 'POST',
    url: '/api/v1/devices/:device/certificates/revoke',
    auth: 'admin',
    tag: 'identity',
    summary: "Revoke one certificate (serial) or all of the device's active certificates",
    params: deviceParams,
    body: z.strictObject({
      serial: z
        .string()
        .regex(/^[0-9a-fA-F]{1,64}$/)
        .optional(),
      reason: z.string().max(200).optional(),
    }),
    response: z.object({ revoked: z.int() }),
    handler: async ({ params, body, request }) => ({
      revoked: await identity.revoke(params.device, body, operatorActorOf(request)),
    }),
  });

  defineRoute(app, {
    method: 'GET',
    url: '/api/v1/device-ca',
    auth: 'read',
    tag: 'identity',
    summary: 'The device CA certificate (what devices trust for the device API)',
    response: z.object({ certificatePem: z.string(), deviceEndpoint: z.string() }),
    handler: async () => ({ certificatePem: identity.caCertificatePem, deviceEndpoint: deviceEndpoint() }),
  });
};

/** Device routes (mutual TLS): who am I, and certificate renewal. */
export const identityDeviceRoutes: FastifyPluginAsync<IdentityRoutesOptions> = async (app, options) => {
  const { identity, deviceEndpoint } = options;
  await app.register(enrollmentRoutes, options);

  defineRoute(app, {
    method: 'GET',
    url: '/api/v1/device/identity',
    auth: 'device',
    tag: 'device',
    summary: 'The device this certificate belongs to',
    response: z.object({
      deviceName: z.string(),
      fleetName: z.string(),
      serial: z.string(),
      notAfter: z.iso.datetime(),
    }),
    handler: async ({ request }) => {
      const device = requireDevice(request);
      return { ...device, notAfter: iso(device.notAfter) };
    },
  });

  defineRoute(app, {
    method: 'POST',
    url: '/api/v1/device/certificate',
    auth: 'device',
    tag: 'device',
    summary: 'Renew: a new certificate for a new CSR, while the current certificate is still valid',
    body: csrBodySchema,
    response: issuedCertificateSchema,
    status: 201,
    handler: async ({ body, request }) => {
      return issuedView(await identity.renew(requireDevice(request), body.csr), deviceEndpoint());
    },
  });
};
