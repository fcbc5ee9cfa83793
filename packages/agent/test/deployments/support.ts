/**
 * A real device API for the update engine's tests: an HTTPS server with mutual TLS (its own CA, a server and a
 * device certificate) that answers GetDeployments and serves real signed packages with HTTP Range, and lets a
 * test inject the faults a deployment meets (404, a package replaced, a connection cut mid-download).
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import {
  createRootCa,
  generateKeyPair,
  issueCertificate,
  packModelPackage,
  signPackage,
  type EdgeDeployment,
  type TrustPolicy,
} from '@edgefleet/core';
import type { DeviceTlsIdentity } from '../../src/fleet/index.js';
import { devPki, trustFolder } from '../support/dev-pki.js';

export interface ServedPackage {
  path: string;
  bytes: Buffer;
  sha256: string;
}

export interface Fault {
  /** Answer this status instead of the package. */
  status?: number;
  /** Send this many bytes of the package, then cut the connection. */
  cutAfter?: number;
}

export interface FakeDeviceApi {
  endpoint: string;
  tls: DeviceTlsIdentity;
  deployments: EdgeDeployment[];
  /** Faults for the next requests of a package path (each used once). */
  faults: Map<string, Fault[]>;
  /** Range headers received, per package path. */
  ranges: Array<{ path: string; range: string | undefined }>;
  /** Requests refused for lack of a client certificate the CA issued. */
  refused: number;
  /** Send packages in chunks of chunkBytes, one every delayMs. */
  throttle: { chunkBytes: number; delayMs: number } | undefined;
  /** Heartbeats received (SendHeartbeat bodies). */
  heartbeats: Array<{ DeploymentResult?: Record<string, unknown> }>;
  /**
   * Whether the device API's result route (POST /api/v1/device/deployments/result) answers; off by default, as
   * a server without it (404): results then reach it in heartbeats only.
   */
  acceptResults: boolean;
  /** DeploymentResults the result route accepted. */
  results: Array<Record<string, unknown>>;
  /**
   * Whether a final FAIL with a model FailedAfterSwitch withdraws its deployment before it is answered, as the
   * real server does (the device FAILED, never offered it again); off by default: the deployment stays offered,
   * which the agent takes for the server's retry.
   */
  withdrawFailedAfterSwitch: boolean;
  serve(path: string, bytes: Buffer): ServedPackage;
  close(): Promise<void>;
}

type FakeHeartbeat = {
  DeploymentResult?: {
    DeploymentName?: string;
    DeploymentStatus?: string;
    DeploymentModels?: Array<{ FailedAfterSwitch?: boolean }>;
  } & Record<string, unknown>;
};

export async function startFakeDeviceApi(): Promise<FakeDeviceApi> {
  const ca = createRootCa({ commonName: 'Device API test CA', validityDays: 2, keyType: 'ecdsa-p256' });
  const serverKeys = generateKeyPair('ecdsa-p256');
  const serverCert = issueCertificate(ca, {
    subject: { commonName: 'localhost' },
    publicKeyPem: serverKeys.publicKeyPem,
    validityDays: 1,
    extendedKeyUsage: ['serverAuth'],
    subjectAltName: { dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] },
  });
  const deviceKeys = generateKeyPair('ecdsa-p256');
  const deviceCert = issueCertificate(ca, {
    subject: { commonName: 'device-1' },
    publicKeyPem: deviceKeys.publicKeyPem,
    validityDays: 1,
    extendedKeyUsage: ['clientAuth'],
  });
  const packages = new Map<string, Buffer>();
  const api = {
    deployments: [] as EdgeDeployment[],
    faults: new Map<string, Fault[]>(),
    ranges: [] as Array<{ path: string; range: string | undefined }>,
    refused: 0,
    heartbeats: [] as Array<{ DeploymentResult?: Record<string, unknown> }>,
    acceptResults: false,
    results: [] as Array<Record<string, unknown>>,
    withdrawFailedAfterSwitch: false,
    throttle: undefined as { chunkBytes: number; delayMs: number } | undefined,
  };
  const withdrawIfFailedAfterSwitch = (result: FakeHeartbeat['DeploymentResult']) => {
    if (!api.withdrawFailedAfterSwitch || result?.DeploymentStatus !== 'FAIL') return;
    if (!(result.DeploymentModels ?? []).some((model) => model.FailedAfterSwitch === true)) return;
    api.deployments = api.deployments.filter((d) => d.DeploymentName !== result.DeploymentName);
  };
  const server: Server = createServer(
    {
      key: serverKeys.privateKeyPem,
      cert: serverCert,
      ca: ca.certificatePem,
      requestCert: true,
      rejectUnauthorized: true,
    },
    (req, res) => {
      const path = new URL(req.url ?? '/', 'https://localhost').pathname;
      if (req.method === 'POST' && (path === '/GetDeviceRegistration' || path === '/SendHeartbeat')) {
        const chunks: Buffer[] = [];
        req.on('data', (chunk: Buffer) => chunks.push(chunk));
        req.on('end', () => {
          if (path === '/SendHeartbeat') {
            const heartbeat = JSON.parse(Buffer.concat(chunks).toString('utf8')) as FakeHeartbeat;
            api.heartbeats.push(heartbeat);
            withdrawIfFailedAfterSwitch(heartbeat.DeploymentResult);
          }
          res.writeHead(200, { 'content-type': 'application/json' });
          res.end(path === '/SendHeartbeat' ? '{}' : JSON.stringify({ DeviceRegistration: 'REGISTERED' }));
        });
        return;
      }
      if (req.method === 'POST' && path === '/api/v1/device/deployments/result' && api.acceptResults) {
        const chunks: Buffer[] = [];
        req.on('data', (chunk: Buffer) => chunks.push(chunk));
        req.on('end', () => {
          const result = (JSON.parse(Buffer.concat(chunks).toString('utf8')) as FakeHeartbeat)
            .DeploymentResult;
          api.results.push(result!);
          withdrawIfFailedAfterSwitch(result);
          res.writeHead(200, { 'content-type': 'application/json' });
          res.end('{}');
        });
        return;
      }
      if (req.method === 'POST' && path === '/api/v1/device/deployments') {
        req.resume();
        req.on('end', () => {
          res.writeHead(200, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ Deployments: api.deployments }));
        });
        return;
      }
      const fault = api.faults.get(path)?.shift();
      const bytes = packages.get(path);
      if (req.method !== 'GET' || !bytes || fault?.status) {
        res.writeHead(fault?.status ?? 404, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ code: 'NotFound', message: `no package at ${path}` }));
        return;
      }
      const range = req.headers.range;
      api.ranges.push({ path, range });
      const start = range ? Number(/^bytes=(\d+)-$/.exec(range)?.[1] ?? 0) : 0;
      if (start >= bytes.length) {
        res.writeHead(416, { 'content-range': `bytes */${bytes.length}` });
        res.end();
        return;
      }
      const body = bytes.subarray(start);
      res.writeHead(range ? 206 : 200, {
        'content-type': 'application/gzip',
        'content-length': body.length,
        ...(range && { 'content-range': `bytes ${start}-${bytes.length - 1}/${bytes.length}` }),
      });
      if (api.throttle) {
        // A slow link: the package trickles in, so a test can act while it downloads.
        const { chunkBytes, delayMs } = api.throttle;
        let offset = 0;
        const next = () => {
          if (res.destroyed) return;
          if (offset >= body.length) return void res.end();
          res.write(body.subarray(offset, offset + chunkBytes));
          offset += chunkBytes;
          setTimeout(next, delayMs);
        };
        return next();
      }
      if (fault?.cutAfter !== undefined) {
        res.write(body.subarray(0, fault.cutAfter), () => res.destroy());
        return;
      }
      res.end(body);
    },
  );
  server.on('tlsClientError', () => api.refused++);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return Object.assign(api, {
    endpoint: `https://127.0.0.1:${port}`,
    tls: { certPem: deviceCert, keyPem: deviceKeys.privateKeyPem, caPem: ca.certificatePem },
    serve(path: string, bytes: Buffer): ServedPackage {
      packages.set(path, bytes);
      return { path, bytes, sha256: createHash('sha256').update(bytes).digest('hex') };
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  });
}

/** A publisher's code-signing certificate and the trust folder a device checks packages against. */
export async function packageSigner(root: string): Promise<{
  trust: TrustPolicy;
  trustDir: string;
  sign(dir: string): Promise<void>;
  signAsStranger(dir: string): Promise<void>;
}> {
  const publisher = devPki('Model Publisher root', 'Model Publisher');
  const stranger = devPki('Stranger root', 'Stranger');
  const trustDir = join(root, 'trust');
  const trust = await trustFolder(trustDir, publisher.root);
  return {
    trust,
    trustDir,
    sign: (dir) => signPackage(dir, publisher.signer).then(() => undefined),
    signAsStranger: (dir) => signPackage(dir, stranger.signer).then(() => undefined),
  };
}

/** Packs a package folder into the bytes the server sends (.tar.gz). */
export async function packBytes(dir: string, out: string): Promise<Buffer> {
  await packModelPackage(dir, out);
  return readFile(out);
}

/** A deployment of one or more models, as GetDeployments carries it. */
export function deployment(
  name: string,
  models: Array<{
    handle: string;
    pkg?: ServedPackage;
    modelName?: string;
    version?: string;
    sha256?: string;
    state?: 'DEPLOY' | 'UNDEPLOY';
  }>,
  options: { policy?: 'ROLLBACK_ON_FAILURE' | 'DO_NOTHING'; allowDowngrade?: boolean } = {},
): EdgeDeployment {
  return {
    DeploymentName: name,
    Type: 'Model',
    FailureHandlingPolicy: options.policy ?? 'ROLLBACK_ON_FAILURE',
    ...(options.allowDowngrade !== undefined && { AllowDowngrade: options.allowDowngrade }),
    Definitions: models.map((m) => ({
      ModelHandle: m.handle,
      State: m.state ?? 'DEPLOY',
      ...(m.modelName !== undefined && { ModelName: m.modelName }),
      ...(m.version !== undefined && { ModelVersion: m.version }),
      ...(m.pkg && {
        PackageUrl: m.pkg.path,
        Sha256: m.sha256 ?? m.pkg.sha256,
        Size: m.pkg.bytes.length,
      }),
    })),
  };
}
