import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  accessKeyEncryptionKeyFileOf,
  ConfigError,
  keyMaterialToBackUp,
  loadConfig,
} from '../../src/config/index.js';
import { deviceEndpointFor, networkWarnings } from '../../src/server/network-warnings.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-config-'));
});
afterAll(() => rm(dir, { recursive: true, force: true }));

async function configFile(content: unknown): Promise<string> {
  const file = path.join(dir, `config-${Math.random().toString(16).slice(2)}.json`);
  await writeFile(file, typeof content === 'string' ? content : JSON.stringify(content));
  return file;
}

describe('loadConfig', () => {
  it('needs no set-up: everything defaults under ./.edgefleet/server', async () => {
    const config = await loadConfig({ env: {}, cwd: dir });
    expect(config.dataDir).toBe(path.join(dir, '.edgefleet/server'));
    // The operator API carries tokens and session cookies: loopback unless the operator says otherwise (W4).
    expect(config.listen).toEqual({ host: '127.0.0.1', port: 8080 });
    expect(config.deviceServerNames).toEqual(['localhost', '127.0.0.1']);
    // Both APIs on loopback: one coherent single-host set-up, which start-up has nothing to warn about.
    expect(config.deviceListen).toEqual({ host: '127.0.0.1', port: 8443 });
    expect(
      networkWarnings({
        listen: config.listen,
        operatorTls: config.tls !== undefined,
        deviceListen: config.deviceListen,
        deviceEndpoint: deviceEndpointFor(config.deviceServerNames[0]!, config.deviceListen.port),
        deviceServerNames: config.deviceServerNames,
        generatedDeviceCertificate: !config.provided.deviceTls,
      }),
    ).toEqual([]);
    expect(config.databaseLocation).toEqual({
      engine: 'sqlite',
      file: path.join(config.dataDir, 'state.db'),
    });
    expect(config.blobLocation).toEqual({ kind: 'local', root: path.join(config.dataDir, 'blobs') });
    expect(config.deviceCa.keyFile).toBe(path.join(config.dataDir, 'ca', 'device-ca.key'));
    expect(config.heartbeat).toEqual({
      intervalSeconds: 30,
      offlineAfterMissed: 3,
      metricsRetentionSeconds: 604800,
      retentionSweepSeconds: 60,
      registrationCacheTtlSeconds: 300,
      maxClockSkewSeconds: 3600,
      maxBodyBytes: 262_144,
      // A full heartbeat (2000 metrics of 160 bytes) every 30 s for an hour (review s8 #4).
      metricBytesPerDevicePerHour: 120 * 2000 * 160,
      maxMetricsPerQuery: 2_000_000,
    });
    expect(config.provided).toEqual({ deviceCa: false, deviceTls: false, signing: false });
  });

  it('lists the key material a backup carries, without an operator-provided deviceTls folder', async () => {
    const config = await loadConfig({
      env: {},
      cwd: dir,
      configFile: await configFile({
        deviceTls: {
          certFile: '/etc/letsencrypt/live/fleet/fullchain.pem',
          keyFile: '/etc/letsencrypt/live/fleet/privkey.pem',
        },
      }),
    });
    const places = keyMaterialToBackUp(config);
    expect(places).toContain(path.dirname(config.deviceCa.keyFile));
    expect(places).toContain(accessKeyEncryptionKeyFileOf(config));
    expect(places).not.toContain('/etc/letsencrypt/live/fleet');
  });

  it('scales the default hourly metric quota with heartbeat.intervalSeconds; a set quota is kept', async () => {
    const every10s = await loadConfig({
      env: {},
      cwd: dir,
      configFile: await configFile({ heartbeat: { intervalSeconds: 10 } }),
    });
    expect(every10s.heartbeat.metricBytesPerDevicePerHour).toBe(360 * 2000 * 160);
    const set = await loadConfig({
      env: {},
      cwd: dir,
      configFile: await configFile({
        heartbeat: { intervalSeconds: 10, metricBytesPerDevicePerHour: 1_000_000 },
      }),
    });
    expect(set.heartbeat.metricBytesPerDevicePerHour).toBe(1_000_000);
  });

  it('reads allowEmptyDatabase from the environment as a boolean, refusing anything else', async () => {
    expect((await loadConfig({ env: {}, cwd: dir })).allowEmptyDatabase).toBe(false);
    const allowed = await loadConfig({ env: { EDGEFLEET_ALLOW_EMPTY_DATABASE: 'true' }, cwd: dir });
    expect(allowed.allowEmptyDatabase).toBe(true);
    await expect(
      loadConfig({ env: { EDGEFLEET_ALLOW_EMPTY_DATABASE: 'perhaps' }, cwd: dir }),
    ).rejects.toThrow(/allowEmptyDatabase/);
  });

  it('layers file, then environment, then flags', async () => {
    const file = await configFile({
      listen: '127.0.0.1:9000',
      database: 'postgres://file/db',
      blob: 's3://from-file/p',
      logLevel: 'warn',
      heartbeat: { intervalSeconds: 10 },
    });
    const config = await loadConfig({
      configFile: file,
      cwd: dir,
      env: {
        EDGEFLEET_DATABASE: 'postgres://env/db',
        EDGEFLEET_BLOB: 's3://from-env/q',
        EDGEFLEET_LOG_LEVEL: 'debug',
      },
      flags: { blob: 'blobs-here', 'blob-endpoint': 'http://127.0.0.1:9999' },
    });
    expect(config.listen).toEqual({ host: '127.0.0.1', port: 9000 });
    expect(config.databaseLocation).toEqual({ engine: 'postgres', url: 'postgres://env/db' });
    expect(config.blobLocation).toEqual({ kind: 'local', root: path.join(dir, 'blobs-here') });
    expect(config.s3.endpoint).toBe('http://127.0.0.1:9999');
    expect(config.logLevel).toBe('debug');
    expect(config.heartbeat.intervalSeconds).toBe(10);
    expect(config.heartbeat.offlineAfterMissed).toBe(3);
  });

  it('reads deviceServerNames as a comma-separated list from the environment or a flag (W3)', async () => {
    const fromEnv = await loadConfig({
      env: { EDGEFLEET_DEVICE_SERVER_NAMES: 'fleet.example, 192.0.2.2' },
      cwd: dir,
    });
    expect(fromEnv.deviceServerNames).toEqual(['fleet.example', '192.0.2.2']);
    const fromFlag = await loadConfig({
      env: { EDGEFLEET_DEVICE_SERVER_NAMES: 'ignored.example' },
      flags: { 'device-server-names': 'edge.example' },
      cwd: dir,
    });
    expect(fromFlag.deviceServerNames).toEqual(['edge.example']);
    const fromFile = await loadConfig({
      env: {},
      cwd: dir,
      configFile: await configFile({ deviceServerNames: ['a.example', 'b.example'] }),
    });
    expect(fromFile.deviceServerNames).toEqual(['a.example', 'b.example']);
    await expect(loadConfig({ env: {}, flags: { 'device-server-names': ' , ' }, cwd: dir })).rejects.toThrow(
      /deviceServerNames: expected at least one host name or IP address/,
    );
  });

  it('refuses a deviceServerNames entry that is not a host name or IP address, naming it and what was expected', async () => {
    // People write host:port or a URL here; each used to crash serve with a bare "Invalid IPv6 address".
    for (const given of ['fleet.example:8443', 'https://fleet.example', '1.2.3']) {
      await expect(
        loadConfig({ env: {}, flags: { 'device-server-names': `localhost,${given}` }, cwd: dir }),
      ).rejects.toThrow(
        `deviceServerNames: ${JSON.stringify(given)} is not a host name or IP address (no port or scheme)`,
      );
    }
    // An IPv6 address first is a valid setting (it used to crash serve with "Invalid URL"); so is a wildcard name.
    const v6 = await loadConfig({
      env: { EDGEFLEET_DEVICE_SERVER_NAMES: '::1,localhost,*.fleet.example' },
      cwd: dir,
    });
    expect(v6.deviceServerNames).toEqual(['::1', 'localhost', '*.fleet.example']);
    // An IPv6 zone means nothing to another host; a wildcard is a whole first label only.
    for (const given of ['fe80::1%eth0', 'a.*b.example', 'fleet.*.example']) {
      await expect(
        loadConfig({ env: {}, flags: { 'device-server-names': `localhost,${given}` }, cwd: dir }),
      ).rejects.toThrow(
        `deviceServerNames: ${JSON.stringify(given)} is not a host name or IP address (no port or scheme)`,
      );
    }
    // Container host names hold underscores; a fully qualified name's trailing dot is dropped.
    const named = await loadConfig({
      env: { EDGEFLEET_DEVICE_SERVER_NAMES: 'edge_server,fleet.example.' },
      cwd: dir,
    });
    expect(named.deviceServerNames).toEqual(['edge_server', 'fleet.example']);
    // Only wildcards, and nothing saying which URL devices reach: refused, naming what to set.
    await expect(
      loadConfig({ env: { EDGEFLEET_DEVICE_SERVER_NAMES: '*.fleet.example' }, cwd: dir }),
    ).rejects.toThrow(/deviceServerNames: only wildcard names \(\*\.fleet\.example\).*set deviceEndpoint/);
    const withEndpoint = await loadConfig({
      env: {
        EDGEFLEET_DEVICE_SERVER_NAMES: '*.fleet.example',
        EDGEFLEET_DEVICE_ENDPOINT: 'https://edge.fleet.example:8443',
      },
      cwd: dir,
    });
    expect(withEndpoint.deviceServerNames).toEqual(['*.fleet.example']);
  });

  it('finds the file through EDGEFLEET_CONFIG', async () => {
    const file = await configFile({ deviceListen: ':9443' });
    const config = await loadConfig({ env: { EDGEFLEET_CONFIG: file }, cwd: dir });
    expect(config.deviceListen).toEqual({ host: '0.0.0.0', port: 9443 });
  });

  it('names every invalid key', async () => {
    const file = await configFile({ listen: 'nowhere', heartbeat: { intervalSeconds: 0 }, bogus: true });
    const error = await loadConfig({ configFile: file, env: {}, cwd: dir }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConfigError);
    const message = (error as Error).message;
    expect(message).toMatch(/listen/);
    expect(message).toMatch(/host:port/);
    expect(message).toMatch(/heartbeat\.intervalSeconds/);
    expect(message).toMatch(/bogus/);
  });

  it('cross-checks the capture upload limits, naming the key and what was expected', async () => {
    const refused = async (captures: Record<string, number>) => {
      const file = await configFile({ captures });
      const error = await loadConfig({ configFile: file, env: {}, cwd: dir }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ConfigError);
      return (error as Error).message;
    };
    // 3 MiB files are read as bodies of at most 4 MiB + 64 KiB: a larger "large body" would need no slot.
    const tooLarge = await refused({ maxFileBytes: 3 * 1024 * 1024, largeBodyBytes: 5 * 1024 * 1024 });
    expect(tooLarge).toMatch(/captures\.largeBodyBytes/);
    expect(tooLarge).toMatch(/expected less than 4259840/);
    const perDevice = await refused({ maxConcurrentUploads: 2, maxConcurrentUploadsPerDevice: 3 });
    expect(perDevice).toMatch(/captures\.maxConcurrentUploadsPerDevice/);
    expect(perDevice).toMatch(/expected at most 2/);
    // Where every body read is small anyway (1 KiB files), the default threshold is above the limit and fine.
    const small = await loadConfig({
      configFile: await configFile({ captures: { maxFileBytes: 1024 } }),
      env: {},
      cwd: dir,
    });
    expect(small.captures.largeBodyBytes).toBe(256 * 1024);
    // At the bounds they are taken.
    const file = await configFile({
      captures: {
        maxFileBytes: 3 * 1024 * 1024,
        largeBodyBytes: 4259839,
        maxConcurrentUploads: 2,
        maxConcurrentUploadsPerDevice: 2,
      },
    });
    const config = await loadConfig({ configFile: file, env: {}, cwd: dir });
    expect(config.captures).toMatchObject({ largeBodyBytes: 4259839, maxConcurrentUploadsPerDevice: 2 });
  });

  it('reads how long capture claims and ids are kept (30 days by default, at least a day)', async () => {
    expect((await loadConfig({ env: {}, cwd: dir })).captures.recordRetentionSeconds).toBe(30 * 86_400);
    const set = await loadConfig({
      configFile: await configFile({ captures: { recordRetentionSeconds: 7 * 86_400 } }),
      env: {},
      cwd: dir,
    });
    expect(set.captures.recordRetentionSeconds).toBe(7 * 86_400);
    await expect(
      loadConfig({
        configFile: await configFile({ captures: { recordRetentionSeconds: 3600 } }),
        env: {},
        cwd: dir,
      }),
    ).rejects.toThrow(/recordRetentionSeconds/);
  });

  it('reads how long finished plans are kept (90 days by default, 0 for ever), refusing a negative number', async () => {
    const defaults = await loadConfig({ env: {}, cwd: dir });
    expect(defaults.deployments).toMatchObject({ planRetentionDays: 90, planRetentionSweepSeconds: 3600 });
    const set = await loadConfig({
      configFile: await configFile({ deployments: { planRetentionDays: 0, planRetentionSweepSeconds: 60 } }),
      env: {},
      cwd: dir,
    });
    expect(set.deployments).toMatchObject({ planRetentionDays: 0, planRetentionSweepSeconds: 60 });
    await expect(
      loadConfig({
        configFile: await configFile({ deployments: { planRetentionDays: -1 } }),
        env: {},
        cwd: dir,
      }),
    ).rejects.toThrow(/deployments\.planRetentionDays/);
  });

  it('reads the fleet-output S3 timeouts, refusing values out of range or not whole milliseconds', async () => {
    const defaults = await loadConfig({ env: {}, cwd: dir });
    expect(defaults.captures).toMatchObject({
      outputS3SocketTimeoutMs: 60_000,
      outputS3ConnectionTimeoutMs: 10_000,
    });
    const set = await loadConfig({
      configFile: await configFile({
        captures: { outputS3SocketTimeoutMs: 120_000, outputS3ConnectionTimeoutMs: 2500 },
      }),
      env: {},
      cwd: dir,
    });
    expect(set.captures).toMatchObject({
      outputS3SocketTimeoutMs: 120_000,
      outputS3ConnectionTimeoutMs: 2500,
    });
    const refused = async (captures: Record<string, unknown>) => {
      const error = await loadConfig({ configFile: await configFile({ captures }), env: {}, cwd: dir }).catch(
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(ConfigError);
      return (error as Error).message;
    };
    // 0 would mean no timeout at all in the S3 SDK: a stalled endpoint would hold its socket for good.
    expect(await refused({ outputS3SocketTimeoutMs: 0 })).toMatch(
      /captures\.outputS3SocketTimeoutMs: .*>=1000/,
    );
    expect(await refused({ outputS3ConnectionTimeoutMs: 1.5 })).toMatch(
      /captures\.outputS3ConnectionTimeoutMs: .*expected int/i,
    );
    expect(await refused({ outputS3ConnectionTimeoutMs: '10s' })).toMatch(
      /captures\.outputS3ConnectionTimeoutMs: .*expected number/i,
    );
  });

  it('reads the compilation import S3 timeouts, refusing 0 (no timeout at all)', async () => {
    const defaults = await loadConfig({ env: {}, cwd: dir });
    expect(defaults.compilation).toMatchObject({ s3SocketTimeoutMs: 60_000, s3ConnectionTimeoutMs: 10_000 });
    const set = await loadConfig({
      configFile: await configFile({ compilation: { s3SocketTimeoutMs: 5000, s3ConnectionTimeoutMs: 2000 } }),
      env: {},
      cwd: dir,
    });
    expect(set.compilation).toMatchObject({ s3SocketTimeoutMs: 5000, s3ConnectionTimeoutMs: 2000 });
    const error = await loadConfig({
      configFile: await configFile({ compilation: { s3SocketTimeoutMs: 0 } }),
      env: {},
      cwd: dir,
    }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toMatch(/compilation\.s3SocketTimeoutMs: .*>=1000/);
  });

  it('listens on 127.0.0.1 for localhost (one address, which the listener limits reach)', async () => {
    const config = await loadConfig({ env: {}, cwd: dir, flags: { listen: 'localhost:9000' } });
    expect(config.listen).toEqual({ host: '127.0.0.1', port: 9000 });
  });

  it('refuses out-of-range ports, unknown schemes, unreadable and non-JSON files', async () => {
    await expect(loadConfig({ env: {}, cwd: dir, flags: { listen: '1.2.3.4:70000' } })).rejects.toThrow(
      /out of range/,
    );
    await expect(loadConfig({ env: {}, cwd: dir, flags: { database: 'mysql://x/y' } })).rejects.toThrow(
      /invalid database: unsupported database location/,
    );
    await expect(
      loadConfig({ env: {}, cwd: dir, configFile: path.join(dir, 'absent.json') }),
    ).rejects.toThrow(/cannot read config file/);
    await expect(loadConfig({ env: {}, cwd: dir, configFile: await configFile('{nope') })).rejects.toThrow(
      /not valid JSON/,
    );
    await expect(loadConfig({ env: {}, cwd: dir, configFile: await configFile([1]) })).rejects.toThrow(
      /must hold a JSON object/,
    );
  });

  it('uses operator-provided key material paths as given', async () => {
    const file = await configFile({ deviceCa: { certFile: 'ca.crt', keyFile: '/keys/ca.key' } });
    const config = await loadConfig({ configFile: file, env: {}, cwd: dir });
    expect(config.deviceCa).toEqual({ certFile: path.join(dir, 'ca.crt'), keyFile: '/keys/ca.key' });
    expect(config.provided.deviceCa).toBe(true);
  });
});
