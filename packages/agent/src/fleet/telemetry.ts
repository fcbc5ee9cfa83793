/**
 * What a heartbeat says: the agent process (CPU, memory, uptime, starts and crashes) and each loaded model
 * (inferences, failures, latency summary, latest inference and sample), in the SendHeartbeat shape. Counts
 * and latencies cover the time since the last heartbeat the server *accepted*, so a heartbeat after an outage
 * summarises the whole outage: nothing is queued, nothing is lost, memory stays bounded by the model count.
 * Metric names are documented in docs/fleet.md.
 */
import type { AgentMetrics } from '../metrics/index.js';
import type { ModelDescription } from '../models/index.js';
import {
  MAX_MODEL_NAME_LENGTH,
  MAX_MODELS_PER_HEARTBEAT,
  MAX_VERSION_LENGTH,
  MODEL_NAME_PATTERN,
  VERSION_PATTERN,
  type EdgeMetricInput,
  type HeartbeatModelInput,
  type SendHeartbeatRequest,
} from '@edgefleet/core';
import {
  histogramDelta,
  histogramQuantile,
  readLatencyHistograms,
  type HistogramReading,
} from './latency.js';

/** A metric as this agent sends it: always timestamped, in epoch seconds. */
export type EdgeMetric = EdgeMetricInput & { Timestamp: number };
export type HeartbeatModel = HeartbeatModelInput & {
  ModelMetrics: EdgeMetric[];
  LatestSampleTime?: number;
  LatestInference?: number;
};
/** A heartbeat as this agent sends it: both lists always present (the contract lets a sender omit them). */
export type AgentHeartbeat = SendHeartbeatRequest & { AgentMetrics: EdgeMetric[]; Models: HeartbeatModel[] };

/** The registry as the heartbeat reads it. */
export interface ModelSource {
  list(): Array<Pick<ModelDescription, 'name' | 'version' | 'loadedAt' | 'requests'>>;
}

/** Per-model latest inference and sample times (epoch ms), e.g. the local database's ModelActivity. */
export interface ActivitySource {
  snapshot(): Array<{ model: string; lastInferenceAt: number | null; lastSampleAt: number | null }>;
}

/**
 * The device's storage as the heartbeat reports it, so that an operator sees a disk filling before the agent
 * refuses captures or deployments: each reading optional (undefined: not known, not sent).
 */
export interface StorageProbe {
  read(): Promise<{ dataRootFreeBytes?: number; captureSpoolBytes?: number; captureSpoolBatches?: number }>;
}

/** The process, as the heartbeat reads it; Node's own by default (tests substitute). */
export interface ProcessProbe {
  cpuUsage(): NodeJS.CpuUsage;
  memoryUsage(): { rss: number; heapUsed: number };
  uptimeSeconds(): number;
}

export const nodeProcessProbe: ProcessProbe = {
  cpuUsage: () => process.cpuUsage(),
  memoryUsage: () => process.memoryUsage(),
  uptimeSeconds: () => process.uptime(),
};

export interface HeartbeatComposerOptions {
  deviceName: string;
  fleetName: string;
  agentVersion: string;
  registry: ModelSource;
  metrics?: AgentMetrics;
  activity?: ActivitySource;
  /** Agent starts and unclean ends so far (AgentRunsLedger). */
  runs: () => { starts: number; crashes: number };
  probe?: ProcessProbe;
  /** The data root's free space and the capture spool's backlog (absent: not sent). */
  storage?: StorageProbe;
  now?: () => number;
}

/** The readings a heartbeat was computed from; committed as the next baseline once the server accepts it. */
export interface TelemetryReading {
  at: number;
  cpu: NodeJS.CpuUsage;
  /** Request counts per model load (name + load time), so a reload starts from zero. */
  requests: Map<string, { succeeded: number; failed: number }>;
  latency: Map<string, HistogramReading>;
}

export interface ComposedHeartbeat {
  heartbeat: AgentHeartbeat;
  reading: TelemetryReading;
  /** Models left out because their name or version does not fit the heartbeat's patterns. */
  skipped: string[];
}

const loadKey = (m: { name: string; loadedAt: Date }) => `${m.name}\u0000${m.loadedAt.getTime()}`;
const seconds = (ms: number) => Math.round(ms) / 1000;

export class HeartbeatComposer {
  readonly #options: HeartbeatComposerOptions;
  readonly #probe: ProcessProbe;
  readonly #now: () => number;
  #baseline: TelemetryReading;
  /** Without an activity source: when each model load's success count was last seen to grow. */
  readonly #seenInference = new Map<string, { succeeded: number; at: number | undefined }>();
  #failedAttempts = 0;

  constructor(options: HeartbeatComposerOptions) {
    this.#options = options;
    this.#probe = options.probe ?? nodeProcessProbe;
    this.#now = options.now ?? Date.now;
    // The first heartbeat's CPU share covers the time since the composer was made.
    this.#baseline = {
      at: this.#now(),
      cpu: this.#probe.cpuUsage(),
      requests: new Map(),
      latency: new Map(),
    };
  }

  /** A heartbeat attempt failed; the next one reports how many did. */
  attemptFailed(): void {
    this.#failedAttempts++;
  }

  /** The server accepted the heartbeat built from `reading`: later deltas start from it. */
  commit(reading: TelemetryReading): void {
    this.#baseline = reading;
    this.#failedAttempts = 0;
  }

  async compose(): Promise<ComposedHeartbeat> {
    const at = this.#now();
    const timestamp = seconds(at);
    const metric = (name: string, value: number): EdgeMetric[] =>
      Number.isFinite(value) ? [{ MetricName: name, Value: value, Timestamp: timestamp }] : [];

    const cpu = this.#probe.cpuUsage();
    const memory = this.#probe.memoryUsage();
    const elapsedMicros = Math.max(1, (at - this.#baseline.at) * 1000);
    const cpuMicros = cpu.user - this.#baseline.cpu.user + (cpu.system - this.#baseline.cpu.system);
    const runs = this.#options.runs();
    const models = this.#options.registry.list();
    // A reading that fails (the folder gone, statfs refused) is left out, never a failed heartbeat.
    const storage = (await this.#options.storage?.read().catch(() => undefined)) ?? {};

    const agentMetrics: EdgeMetric[] = [
      ...metric('CpuUtilization', round2(Math.max(0, (cpuMicros / elapsedMicros) * 100))),
      ...metric('MemoryRssBytes', memory.rss),
      ...metric('HeapUsedBytes', memory.heapUsed),
      ...metric('UptimeSeconds', Math.round(this.#probe.uptimeSeconds())),
      ...metric('AgentStarts', runs.starts),
      ...metric('AgentCrashes', runs.crashes),
      ...metric('ModelsLoaded', models.length),
      ...metric('HeartbeatsMissed', this.#failedAttempts),
      ...(storage.dataRootFreeBytes !== undefined
        ? metric('DataRootFreeBytes', storage.dataRootFreeBytes)
        : []),
      ...(storage.captureSpoolBytes !== undefined
        ? metric('CaptureSpoolBytes', storage.captureSpoolBytes)
        : []),
      ...(storage.captureSpoolBatches !== undefined
        ? metric('CaptureSpoolBatches', storage.captureSpoolBatches)
        : []),
    ];

    const latency = await readLatencyHistograms(this.#options.metrics);
    const activity = new Map((this.#options.activity?.snapshot() ?? []).map((a) => [a.model, a]));
    const requests = new Map<string, { succeeded: number; failed: number }>();
    const heartbeatModels: HeartbeatModel[] = [];
    const skipped: string[] = [];
    const liveKeys = new Set<string>();

    for (const model of models) {
      const key = loadKey(model);
      liveKeys.add(key);
      const counts = { succeeded: model.requests.succeeded, failed: model.requests.failed };
      requests.set(key, counts);
      const latestInference = this.#latestInference(
        key,
        counts.succeeded,
        at,
        activity.get(model.name)?.lastInferenceAt,
      );
      if (
        !MODEL_NAME_PATTERN.test(model.name) ||
        model.name.length > MAX_MODEL_NAME_LENGTH ||
        !fitsVersion(model.version)
      ) {
        skipped.push(`${model.name} ${model.version}`);
        continue;
      }
      if (heartbeatModels.length >= MAX_MODELS_PER_HEARTBEAT) {
        skipped.push(`${model.name} ${model.version}`);
        continue;
      }
      const before = this.#baseline.requests.get(key) ?? { succeeded: 0, failed: 0 };
      const modelMetrics: EdgeMetric[] = [
        ...metric('InferenceCount', Math.max(0, counts.succeeded - before.succeeded)),
        ...metric('InferenceFailures', Math.max(0, counts.failed - before.failed)),
      ];
      const reading = latency.get(model.name);
      if (reading) {
        const period = histogramDelta(reading, this.#baseline.latency.get(model.name));
        if (period.count > 0) {
          modelMetrics.push(...metric('LatencyAvgMs', round3((period.sum / period.count) * 1000)));
          for (const [name, q] of [
            ['LatencyP50Ms', 0.5],
            ['LatencyP90Ms', 0.9],
            ['LatencyP99Ms', 0.99],
          ] as const) {
            const value = histogramQuantile(q, period.buckets);
            if (value !== undefined) modelMetrics.push(...metric(name, round3(value * 1000)));
          }
        }
      }
      const lastSample = activity.get(model.name)?.lastSampleAt ?? undefined;
      heartbeatModels.push({
        ModelName: model.name,
        ModelVersion: model.version,
        ...(latestInference !== undefined && { LatestInference: seconds(latestInference) }),
        ...(lastSample !== undefined && { LatestSampleTime: seconds(lastSample) }),
        ModelMetrics: modelMetrics,
      });
    }
    for (const key of this.#seenInference.keys()) if (!liveKeys.has(key)) this.#seenInference.delete(key);

    return {
      heartbeat: {
        AgentMetrics: agentMetrics,
        Models: heartbeatModels,
        AgentVersion: this.#options.agentVersion,
        DeviceName: this.#options.deviceName,
        DeviceFleetName: this.#options.fleetName,
      },
      reading: { at, cpu, requests, latency },
      skipped,
    };
  }

  /** The activity source's time when there is one; else when the success count was last seen to grow. */
  #latestInference(key: string, succeeded: number, at: number, fromActivity: number | null | undefined) {
    if (fromActivity !== undefined && fromActivity !== null) return fromActivity;
    const seen = this.#seenInference.get(key);
    const grew = succeeded > (seen?.succeeded ?? 0);
    const latest = grew ? at : seen?.at;
    this.#seenInference.set(key, { succeeded, at: latest });
    return latest;
  }
}

function fitsVersion(version: string): boolean {
  return version.length > 0 && version.length <= MAX_VERSION_LENGTH && VERSION_PATTERN.test(version);
}

const round2 = (n: number) => Math.round(n * 100) / 100;
const round3 = (n: number) => Math.round(n * 1000) / 1000;
