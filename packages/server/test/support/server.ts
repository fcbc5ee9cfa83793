/** Starts a real server in this process (real sockets, real database and blob store) for route tests. */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Logger } from 'pino';
import { ApiTokenStore } from '../../src/auth/index.js';
import { loadConfig, type ServerConfigInput } from '../../src/config/index.js';
import type { DatabaseLocation } from '../../src/storage/index.js';
import { startServer, type ServerHandle, type StartServerOptions } from '../../src/server/index.js';

export interface TestServer {
  server: ServerHandle;
  url: string;
  dataDir: string;
  adminToken: string;
  readToken: string;
  /** fetch against the operator API with an optional bearer token and JSON body. */
  call(
    method: string,
    urlPath: string,
    options?: { token?: string | undefined; body?: unknown; headers?: Record<string, string> },
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- tests assert on response bodies field by field
  ): Promise<{ status: number; body: any; headers: Headers }>;
  stop(): Promise<void>;
}

export interface TestServerOptions {
  database?: DatabaseLocation;
  blob?: string;
  /** Extra config keys (file form). */
  config?: Partial<ServerConfigInput>;
  /** Reuse a data dir (restart tests); otherwise a fresh temp dir. */
  dataDir?: string;
  /** Where the server logs (tests that read its log); default: the configured level on stdout. */
  logger?: Logger;
  /** Passed to startServer (listener limits). */
  start?: StartServerOptions;
}

export async function startTestServer(options: TestServerOptions = {}): Promise<TestServer> {
  const dataDir = options.dataDir ?? (await mkdtemp(path.join(os.tmpdir(), 'edgefleet-server-')));
  const configFile = path.join(dataDir, 'test-config.json');
  const { writeFile } = await import('node:fs/promises');
  await writeFile(
    configFile,
    JSON.stringify({
      dataDir,
      listen: '127.0.0.1:0',
      deviceListen: '127.0.0.1:0',
      logLevel: 'silent',
      ...(options.database
        ? { database: options.database.engine === 'sqlite' ? options.database.file : options.database.url }
        : {}),
      ...(options.blob ? { blob: options.blob } : {}),
      ...options.config,
    }),
  );
  const config = await loadConfig({ configFile, env: {}, cwd: dataDir });
  const server = await startServer(config, {
    ...options.start,
    ...(options.logger && { logger: options.logger }),
  });
  const tokens = new ApiTokenStore(server.database.db);
  const adminToken = (await tokens.create({ name: 'test-admin', scope: 'admin' })).token;
  const readToken = (await tokens.create({ name: 'test-reader', scope: 'read-only' })).token;
  const url = server.operatorUrl;
  return {
    server,
    url,
    dataDir,
    adminToken,
    readToken,
    call: async (method, urlPath, callOptions = {}) => {
      const headers: Record<string, string> = { ...callOptions.headers };
      if (callOptions.token !== undefined) headers.authorization = `Bearer ${callOptions.token}`;
      let body: string | undefined;
      if (callOptions.body !== undefined) {
        headers['content-type'] ??= 'application/json';
        body = typeof callOptions.body === 'string' ? callOptions.body : JSON.stringify(callOptions.body);
      }
      const response = await fetch(`${url}${urlPath}`, {
        method,
        headers,
        ...(body !== undefined ? { body } : {}),
      });
      const text = await response.text();
      let parsed: unknown = text;
      try {
        parsed = text === '' ? undefined : JSON.parse(text);
      } catch {
        // not JSON: keep the text
      }
      return { status: response.status, body: parsed, headers: response.headers };
    },
    stop: async () => {
      await server.close();
      if (options.dataDir === undefined) await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/** Registers nothing; creates an enrollment token for an existing device and enrolls a fresh key with it. */
export async function enrollDevice(t: TestServer, deviceName: string): Promise<EnrolledDevice> {
  const { createCsr, deviceKey } = await import('./device.js');
  const token = await t.call('POST', `/api/v1/devices/${deviceName}/enrollment-tokens`, {
    token: t.adminToken,
    body: {},
  });
  if (token.status !== 201)
    throw new Error(`enrollment token for ${deviceName}: ${JSON.stringify(token.body)}`);
  const key = deviceKey();
  const enrolled = await t.call('POST', '/api/v1/enroll', {
    token: token.body.token,
    body: { csr: createCsr(key, deviceName) },
  });
  if (enrolled.status !== 201) throw new Error(`enroll ${deviceName}: ${JSON.stringify(enrolled.body)}`);
  return {
    deviceName,
    tls: { ca: enrolled.body.caCertificatePem, cert: enrolled.body.certificatePem, key: key.privateKeyPem },
    serial: enrolled.body.serial,
  };
}

export interface EnrolledDevice {
  deviceName: string;
  tls: { ca: string; cert: string; key: string };
  serial: string;
}
