import { isIP } from 'node:net';
import { MAX_METRICS_PER_HEARTBEAT } from '@edgefleet/core';
import { z } from 'zod';
import type { BlobLocation } from '../blobs/index.js';
import { DEFAULT_S3_TIMEOUTS } from '../blobs/s3-timeouts.js';
import { captureBodyLimitBytes } from '../captures/body-limit.js';
import { DEFAULT_MAX_METRICS_PER_QUERY } from '../heartbeats/metrics-query.js';
import type { DatabaseLocation } from '../storage/index.js';

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

/** Capture bodies up to this many bytes are read without an upload slot, by default. */
const DEFAULT_LARGE_BODY_BYTES = 256 * 1024;

/**
 * `host:port`, `[v6]:port` or `:port`; port 0 picks a free port (tests). `localhost` is 127.0.0.1: given
 * `localhost`, Fastify listens on each address it resolves to through servers of its own, which the listener
 * limits and request deadlines (applied to its main server) would not reach.
 */
export const listenAddressSchema = z
  .string()
  .regex(/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]*):\d{1,5}$/, 'expected host:port, e.g. 0.0.0.0:8080')
  .transform((value, ctx) => {
    const colon = value.lastIndexOf(':');
    const named = value.slice(0, colon).replace(/^\[|\]$/g, '') || '0.0.0.0';
    const host = named.toLowerCase() === 'localhost' ? '127.0.0.1' : named;
    const port = Number(value.slice(colon + 1));
    if (port > 65535) {
      ctx.addIssue({ code: 'custom', message: `port ${port} is out of range 0-65535` });
      return z.NEVER;
    }
    return { host, port };
  });
export type ListenAddress = z.output<typeof listenAddressSchema>;

const filePair = z.strictObject({ certFile: z.string().min(1), keyFile: z.string().min(1) });

/** An S3 client's idle-socket timeout (ms), the same range and default for each client (s3, captures, compilation). */
const s3SocketTimeoutMs = z
  .int()
  .min(1000)
  .max(60 * 60_000)
  .default(DEFAULT_S3_TIMEOUTS.socketTimeoutMs);
/** An S3 client's connection timeout (ms), likewise. */
const s3ConnectionTimeoutMs = z
  .int()
  .min(1000)
  .max(10 * 60_000)
  .default(DEFAULT_S3_TIMEOUTS.connectionTimeoutMs);

/**
 * Every server setting, with its default. The file is JSON with these keys; environment variables and
 * command-line flags override single keys (see loadConfig). Relative paths resolve against the working
 * directory; `dataDir`-relative defaults are filled in by loadConfig.
 */
/**
 * Generous stored size of one metric: its JSON row entry with a 63-character model name (the longest) and a
 * long metric name, e.g. `["InferenceLatencyP99",null,"<63 chars>","1.0.0",12.345678,1765000000000],`.
 */
export const STORED_METRIC_BYTES = 160;

/**
 * The hourly metric quota that fits the most an agent can send at the configured interval: a full heartbeat
 * (MAX_METRICS_PER_HEARTBEAT metrics) every interval. At the default 30 s, about 36.6 MiB.
 */
export function defaultMetricBytesPerDevicePerHour(intervalSeconds: number): number {
  return Math.ceil(3600 / intervalSeconds) * MAX_METRICS_PER_HEARTBEAT * STORED_METRIC_BYTES;
}

/**
 * DNS labels of at most 63 characters, 253 in all; a first label may be a whole `*` (a wildcard name), and labels
 * may hold `_` (container host names do).
 */
const DNS_NAME =
  /^(?=.{1,253}$)(\*\.)?([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$/i;

/**
 * Whether `name` can go in a certificate's subjectAltName: an IP address, or a DNS name whose last label is not all
 * digits (`1.2.3` is a mistyped address, not a name). People write `host:port` or a URL here; those are refused.
 */
function isServerName(name: string): boolean {
  // An IPv6 zone (fe80::1%eth0) means nothing to another host, and a certificate cannot carry it.
  if (isIP(name) !== 0) return !name.includes('%');
  return DNS_NAME.test(name) && !/^\d+$/.test(name.slice(name.lastIndexOf('.') + 1));
}

export const serverConfigSchema = z.strictObject({
  /** Holds the SQLite file, the blob folder and generated keys unless configured elsewhere. */
  dataDir: z.string().min(1).default('./.edgefleet/server'),
  /**
   * Operator API (REST, OpenAPI, health, console). Loopback by default: it carries bearer tokens and console
   * session cookies, in clear unless `tls` is set, so serving it to the network is the operator's explicit choice.
   */
  listen: listenAddressSchema.prefault('127.0.0.1:8080'),
  /**
   * Device API: HTTPS with mutual TLS. Loopback by default, like `listen`, so that a default server is one
   * coherent single-host set-up; devices on other hosts need this, `listen` with `tls`, `deviceEndpoint` and
   * `deviceServerNames` set together.
   */
  deviceListen: listenAddressSchema.prefault('127.0.0.1:8443'),
  /** The device API's URL as devices reach it; handed to devices when they enroll. */
  deviceEndpoint: z.url().optional(),
  /**
   * Host names and IP addresses put in the device API's generated TLS certificate; from a flag or environment
   * variable, a comma-separated list.
   */
  deviceServerNames: z
    .preprocess(
      (value) =>
        typeof value === 'string'
          ? value
              .split(',')
              // A fully qualified name's trailing dot (fleet.example.) is the same name.
              .map((name) => name.trim().replace(/(?<=[^.])\.$/, ''))
              .filter((name) => name !== '')
          : value,
      z
        .array(z.string().min(1))
        .min(1, 'expected at least one host name or IP address')
        .superRefine((names, ctx) => {
          for (const name of names.filter((n) => !isServerName(n))) {
            ctx.addIssue({
              code: 'custom',
              message: `${JSON.stringify(name)} is not a host name or IP address (no port or scheme)`,
            });
          }
        }),
    )
    .default(['localhost', '127.0.0.1']),
  /** `postgres://…` or a SQLite file path; default `<dataDir>/state.db`. */
  database: z.string().min(1).optional(),
  /**
   * Start even though the database is empty while the data dir holds generated keys or blobs (a deliberate
   * fresh start). Off: such a start is refused, since it would forget every fleet, device and token.
   */
  allowEmptyDatabase: z.union([z.boolean(), z.stringbool()]).default(false),
  /** PostgreSQL pool size per server. */
  databaseMaxConnections: z.int().min(1).max(1000).default(10),
  /** `s3://bucket/prefix` or a folder; default `<dataDir>/blobs`. */
  blob: z.string().min(1).optional(),
  storage: z
    .strictObject({
      /**
       * /readyz fails `database` (a SQLite file) or `blobStore` (a blob folder) while the file system under it
       * has less free space than this: a full disk refuses writes although SELECT 1 and the store's check pass.
       */
      minFreeBytes: z
        .int()
        .min(0)
        .default(64 * 1024 * 1024),
    })
    .prefault({}),
  s3: z
    .strictObject({
      endpoint: z.url().optional(),
      region: z.string().min(1).optional(),
      forcePathStyle: z.boolean().optional(),
      accessKeyId: z.string().min(1).optional(),
      secretAccessKey: z.string().min(1).optional(),
      /**
       * A blob store request attempt whose socket sends and receives nothing this long fails (the SDK tries 3
       * times), so that an endpoint that stops answering cannot hold a request, and its socket, for good.
       */
      socketTimeoutMs: s3SocketTimeoutMs,
      /** Connecting to the blob store's endpoint fails after this long. */
      connectionTimeoutMs: s3ConnectionTimeoutMs,
    })
    .prefault({}),
  logLevel: z.enum(LOG_LEVELS).default('info'),
  /** Serve the operator API over HTTPS with this certificate (default: plain HTTP). */
  tls: filePair.optional(),
  /** The device CA; generated under `<dataDir>/ca/` when absent. Replicas must share it. */
  deviceCa: filePair.optional(),
  /** The device API's TLS certificate; generated from the device CA when absent. */
  deviceTls: filePair.optional(),
  /** The package-signing root and signing certificate; generated under `<dataDir>/signing/` when absent. */
  signing: z
    .strictObject({
      rootCertFile: z.string().min(1),
      certFile: z.string().min(1),
      keyFile: z.string().min(1),
    })
    .optional(),
  heartbeat: z
    .strictObject({
      /** How often agents are expected to send a heartbeat. */
      intervalSeconds: z.int().min(1).max(86_400).default(30),
      /** A device is offline once this many heartbeats are missed. */
      offlineAfterMissed: z.int().min(1).max(1000).default(3),
      /** Metrics older than this are pruned. */
      metricsRetentionSeconds: z
        .int()
        .min(1)
        .default(7 * 86_400),
      /** How often the retention sweep runs. */
      retentionSweepSeconds: z.int().min(1).default(60),
      /** CacheTTL returned by GetDeviceRegistration. */
      registrationCacheTtlSeconds: z.int().min(0).default(300),
      /**
       * How far a device's clock may run ahead of the server's: a heartbeat with a later timestamp is refused
       * (400), and metrics must also be newer than the retention window.
       */
      maxClockSkewSeconds: z.int().min(1).max(86_400).default(3600),
      /** Largest SendHeartbeat body (device API and the facade's data plane); the agent's are far smaller. */
      maxBodyBytes: z
        .int()
        .min(16 * 1024)
        .max(16 * 1024 * 1024)
        .default(256 * 1024),
      /**
       * Metric bytes (as stored) one device may store per clock hour; past it heartbeats still succeed and are
       * recorded, but their metrics are dropped. Default: a full heartbeat (MAX_METRICS_PER_HEARTBEAT metrics of
       * STORED_METRIC_BYTES) at every interval of the hour, see defaultMetricBytesPerDevicePerHour.
       */
      metricBytesPerDevicePerHour: z.int().min(1024).optional(),
      /** Most metrics one metrics query may read; a wider window is refused (400): narrow it. */
      maxMetricsPerQuery: z.int().min(100).default(DEFAULT_MAX_METRICS_PER_QUERY),
    })
    .transform((heartbeat) => ({
      ...heartbeat,
      metricBytesPerDevicePerHour:
        heartbeat.metricBytesPerDevicePerHour ??
        defaultMetricBytesPerDevicePerHour(heartbeat.intervalSeconds),
    }))
    .prefault({}),
  enrollment: z
    .strictObject({
      /** Default and maximum lifetime of an enrollment token. */
      tokenTtlSeconds: z.int().min(1).default(86_400),
      maxTokenTtlSeconds: z
        .int()
        .min(1)
        .default(30 * 86_400),
    })
    .prefault({}),
  certificates: z
    .strictObject({
      /** Lifetime of device certificates. */
      validityDays: z.int().min(1).max(3650).default(365),
    })
    .prefault({}),
  uploads: z
    .strictObject({
      /** Largest accepted model or package upload. */
      maxModelBytes: z
        .int()
        .min(1)
        .default(512 * 1024 * 1024),
      /**
       * How long one model or package upload may take, body included; other operator requests get the
       * listener's 60 s. Counted from the request's start, so allow for the slowest link uploads come over.
       */
      modelUploadTimeoutSeconds: z
        .int()
        .min(1)
        .max(24 * 3600)
        .default(30 * 60),
    })
    .prefault({}),
  captures: z
    .strictObject({
      /** Largest capture file (a manifest or a side file) a device may upload through the control plane. */
      maxFileBytes: z
        .int()
        .min(1024)
        .default(16 * 1024 * 1024),
      /**
       * Capture bytes one device may upload per UTC day; past it uploads answer 429 until the next day. A file sent
       * again to a key where the device stored it (a retry) is not charged.
       */
      dailyQuotaBytesPerDevice: z
        .int()
        .min(1024)
        .default(1024 * 1024 * 1024),
      /**
       * A capture upload whose body is larger than this (or of unknown length) needs an upload slot before its
       * body is read; with none free it is answered 429 with Retry-After. Bounds the memory devices' bodies take.
       */
      largeBodyBytes: z.int().min(1024).default(DEFAULT_LARGE_BODY_BYTES),
      /**
       * How long the server remembers a stored capture: its claim (capture_objects: which device wrote the object,
       * and what) and its capture ids (device_captures: records stored once). Older ones are pruned by the
       * retention sweep (heartbeat.retentionSweepSeconds); after that a retry of the file is written again, and a
       * fleet-mate may write at its key. Longer than any agent keeps a batch in its spool.
       */
      recordRetentionSeconds: z
        .int()
        .min(86_400)
        .default(30 * 86_400),
      /** Large capture uploads read at once, server-wide. */
      maxConcurrentUploads: z.int().min(1).max(1024).default(8),
      /** Large capture uploads read at once from any one device. */
      maxConcurrentUploadsPerDevice: z.int().min(1).max(64).default(2),
      /**
       * A fleet-output S3 request whose socket sends and receives nothing this long fails (the upload is refunded;
       * the agent retries), so that a stalled bucket endpoint cannot hold a socket its bucket's client shares.
       */
      outputS3SocketTimeoutMs: s3SocketTimeoutMs,
      /** Connecting to a fleet-output bucket's endpoint fails after this long. */
      outputS3ConnectionTimeoutMs: s3ConnectionTimeoutMs,
    })
    // Values that are each in range but together would quietly switch the upload slots off or never bind.
    .superRefine((captures, context) => {
      const bodyLimit = captureBodyLimitBytes(captures.maxFileBytes);
      // Where every body the route reads is small anyway (a low maxFileBytes), no slot is needed.
      if (captures.largeBodyBytes >= bodyLimit && bodyLimit > DEFAULT_LARGE_BODY_BYTES) {
        context.addIssue({
          code: 'custom',
          path: ['largeBodyBytes'],
          message: `is ${captures.largeBodyBytes}, but the largest capture body read is ${bodyLimit} bytes (from captures.maxFileBytes = ${captures.maxFileBytes}): no upload would need a slot; expected less than ${bodyLimit}`,
        });
      }
      if (captures.maxConcurrentUploadsPerDevice > captures.maxConcurrentUploads) {
        context.addIssue({
          code: 'custom',
          path: ['maxConcurrentUploadsPerDevice'],
          message: `is ${captures.maxConcurrentUploadsPerDevice}, more than captures.maxConcurrentUploads (${captures.maxConcurrentUploads}), the slots of the whole server; expected at most ${captures.maxConcurrentUploads}`,
        });
      }
    })
    .prefault({}),
  /** The SageMaker compatibility facade (docs/sagemaker-compatibility.md). */
  sagemaker: z
    .strictObject({
      /** The account id ARNs are answered with. */
      accountId: z
        .string()
        .regex(/^\d{12}$/, 'expected a 12-digit account id')
        .default('000000000000'),
      /**
       * The server key that encrypts access-key secrets at rest (32 bytes, base64); default
       * `<dataDir>/access-keys/encryption.key`, created when absent. Replicas must share it.
       */
      accessKeyEncryptionKeyFile: z.string().min(1).optional(),
    })
    .prefault({}),
  console: z
    .strictObject({
      /** Serve the fleet console (packages/web) at / on the operator port. */
      enabled: z.boolean().default(true),
      /** The built console (index.html and assets/); default: the web workspace's dist/ next to this server. */
      staticDir: z.string().min(1).optional(),
      /** A console sign-in lasts this long; then the operator signs in again. */
      sessionTtlSeconds: z
        .int()
        .min(60)
        .max(7 * 86_400)
        .default(8 * 3600),
      /** How often each server checks the database for changes to push to open consoles (Server-Sent Events). */
      eventPollMs: z.int().min(100).max(60_000).default(2000),
      /** Open live-update streams one server holds at most; more are refused with 429. */
      maxEventStreams: z.int().min(1).max(10_000).default(64),
      /** Open live-update streams one API token (with its console sessions) may hold; more are refused with 429. */
      maxEventStreamsPerToken: z.int().min(1).max(1000).default(4),
      /**
       * How often a quiet stream gets a keepalive comment; each tick also checks the stream's token or session
       * again and ends the stream once it is revoked, signed out or expired.
       */
      eventKeepaliveMs: z.int().min(50).max(60_000).default(15_000),
      /**
       * A stream ends after 80-100 % of this long (jittered, so tabs do not reconnect together); the browser's
       * EventSource reconnects, and signs in again, by itself.
       */
      eventStreamMaxSeconds: z
        .int()
        .min(1)
        .max(24 * 3600)
        .default(600),
    })
    .prefault({}),
  packaging: z
    .strictObject({
      /** How often a server looks for queued packaging jobs. */
      pollIntervalMs: z.int().min(10).default(1000),
      /**
       * A running job's lease: its server renews it while packaging; a job whose lease ran out (its server
       * crashed) is claimed again and resumed by any replica.
       */
      leaseSeconds: z.int().min(1).max(3600).default(120),
    })
    .prefault({}),
  compilation: z
    .strictObject({
      /**
       * A SageMaker compilation job's import lease: the server importing it renews it; any replica fails an
       * import whose lease ran out (its server crashed or was killed). Not resumed: S3 may have changed since.
       */
      leaseSeconds: z.int().min(1).max(3600).default(120),
      /**
       * An import's S3 read whose socket sends and receives nothing this long fails the job (per try; the SDK
       * tries 3 times), so that an endpoint that stops answering cannot hold an import INPROGRESS for good.
       */
      s3SocketTimeoutMs,
      /** Connecting to the S3 endpoint an import reads from fails after this long. */
      s3ConnectionTimeoutMs,
    })
    .prefault({}),
  deployments: z
    .strictObject({
      /** How often a server ends timed-out device deployments and settles unfinished stages (deployments/). */
      sweepIntervalMs: z.int().min(10).max(3_600_000).default(5000),
      /**
       * Finished plans (every stage ended, no device pending) are deleted, with their events, this long after
       * they ended, unless a device's desired state still comes from them (deployments/plan-retention.ts).
       * 0 keeps every plan.
       */
      planRetentionDays: z.int().min(0).max(36_500).default(90),
      /** How often the plan retention sweep runs. */
      planRetentionSweepSeconds: z.int().min(1).max(86_400).default(3600),
    })
    .prefault({}),
});

export type ServerConfigInput = z.input<typeof serverConfigSchema>;

/** The configuration after defaults and path resolution: every location is absolute and present. */
export interface ServerConfig extends Omit<
  z.output<typeof serverConfigSchema>,
  'database' | 'blob' | 'deviceCa' | 'deviceTls' | 'signing'
> {
  database: string;
  databaseLocation: DatabaseLocation;
  blob: string;
  blobLocation: BlobLocation;
  deviceCa: { certFile: string; keyFile: string };
  /** Absent: generate (and keep) one under the data dir. */
  deviceTls: { certFile: string; keyFile: string };
  signing: { rootCertFile: string; rootKeyFile?: string; certFile: string; keyFile: string };
  /** Whether each key-material location was given by the operator (then it is never generated). */
  provided: { deviceCa: boolean; deviceTls: boolean; signing: boolean };
}
