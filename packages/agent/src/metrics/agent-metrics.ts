import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { PoolStats } from '../inference/index.js';
import { DEFAULT_MAX_UNLOADED_MODELS, ModelLabels } from './model-labels.js';

/**
 * Seconds, 10 µs to 10 s: inference on an edge device spans tens of microseconds (a small model on the inline
 * path runs in 10–200 µs, its whole request in little more) to seconds; the first bucket used to be 0.5 ms, which
 * put every such request in it.
 */
export const DURATION_BUCKETS = [
  0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
  0.5, 1, 2.5, 5, 10,
];
const LOAD_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];

export interface RequestObservation {
  model: string;
  /** Whole request, from the API call to its answer (validation, queue, compute, transfers). */
  requestMs: number;
  /** Present when the request reached a worker. */
  queueMs?: number;
  computeMs?: number;
  /** Absent on success; the AgentError code on failure. */
  errorCode?: string;
}

/** One model's request series (prom-client's labelled children). */
interface ModelSeries {
  requestDuration: ReturnType<Histogram<'model'>['labels']>;
  queueDuration: ReturnType<Histogram<'model'>['labels']>;
  computeDuration: ReturnType<Histogram<'model'>['labels']>;
  inferenceCount: ReturnType<Counter<'model'>['labels']>;
  requestSuccess: ReturnType<Counter<'model'>['labels']>;
}

/**
 * The agent's Prometheus metrics, in a registry of its own (never prom-client's global one), so several agents
 * or tests in one process do not collide. Names follow Triton's split of request / queue / compute time.
 */
export class AgentMetrics {
  readonly registry: Registry;
  readonly #requestSuccess: Counter<'model'>;
  readonly #requestFailure: Counter<'model' | 'code'>;
  readonly #inferenceCount: Counter<'model'>;
  readonly #requestDuration: Histogram<'model'>;
  readonly #queueDuration: Histogram<'model'>;
  readonly #computeDuration: Histogram<'model'>;
  readonly #loadDuration: Histogram<'model'>;
  readonly #loadFailures: Counter<'model' | 'code'>;
  readonly #modelsLoaded: Gauge;
  readonly #workerExits: Counter;
  readonly #connectionsRefused: Counter<'listener' | 'cap'>;
  readonly #connectionsClosedUnserved: Counter<'listener' | 'reason'>;
  readonly #slowReadersClosed: Counter<'door'>;
  readonly #connectionsEvicted: Counter<'listener' | 'cap'>;
  readonly #series = new Map<string, ModelSeries>();
  /** Which models may have series (bounded), and the error codes each has series of (to remove them). */
  readonly #labels: ModelLabels;
  readonly #codes = new Map<string, Set<string>>();

  /**
   * `maxUnloadedModels`: how many models not loaded (unloaded, or whose loads failed) keep their series, the
   * most recently seen; older ones are removed (default DEFAULT_MAX_UNLOADED_MODELS).
   */
  constructor(options: { defaultMetrics?: boolean; maxUnloadedModels?: number } = {}) {
    this.#labels = new ModelLabels(options.maxUnloadedModels ?? DEFAULT_MAX_UNLOADED_MODELS);
    const registry = new Registry();
    this.registry = registry;
    if (options.defaultMetrics !== false) collectDefaultMetrics({ register: registry });
    const registers = [registry];
    this.#requestSuccess = new Counter({
      name: 'edgefleet_inference_request_success_total',
      help: 'Predict requests answered successfully, per model',
      labelNames: ['model'],
      registers,
    });
    this.#requestFailure = new Counter({
      name: 'edgefleet_inference_request_failure_total',
      help: 'Predict requests that failed, per model and error code',
      labelNames: ['model', 'code'],
      registers,
    });
    this.#inferenceCount = new Counter({
      name: 'edgefleet_inference_count_total',
      help: 'Inferences ONNX Runtime completed, per model (warm-ups excluded)',
      labelNames: ['model'],
      registers,
    });
    this.#requestDuration = new Histogram({
      name: 'edgefleet_inference_request_duration_seconds',
      help: 'Predict request time, end to end inside the agent',
      labelNames: ['model'],
      buckets: DURATION_BUCKETS,
      registers,
    });
    this.#queueDuration = new Histogram({
      name: 'edgefleet_inference_queue_duration_seconds',
      help: 'Time a request waited for an inference worker',
      labelNames: ['model'],
      buckets: DURATION_BUCKETS,
      registers,
    });
    this.#computeDuration = new Histogram({
      name: 'edgefleet_inference_compute_duration_seconds',
      help: 'Time a request spent inside ONNX Runtime',
      labelNames: ['model'],
      buckets: DURATION_BUCKETS,
      registers,
    });
    this.#loadDuration = new Histogram({
      name: 'edgefleet_model_load_duration_seconds',
      help: 'Time to load a model (open and verify the package, create sessions, warm up)',
      labelNames: ['model'],
      buckets: LOAD_BUCKETS,
      registers,
    });
    this.#loadFailures = new Counter({
      name: 'edgefleet_model_load_failures_total',
      help: 'Model loads that failed, per model name and error code',
      labelNames: ['model', 'code'],
      registers,
    });
    this.#modelsLoaded = new Gauge({
      name: 'edgefleet_models_loaded',
      help: 'Models currently loaded',
      registers,
    });
    this.#workerExits = new Counter({
      name: 'edgefleet_inference_worker_exits_total',
      help: 'Inference worker threads that stopped unexpectedly (and were replaced)',
      registers,
    });
    this.#connectionsRefused = new Counter({
      name: 'edgefleet_connections_refused_total',
      help: 'Connections closed on arrival because a connection cap was reached, per listener (grpc, rest-unix, rest-tcp) and cap (per-address, total)',
      labelNames: ['listener', 'cap'],
      registers,
    });
    // Apart from the refusals: a silent connection timed out is no cap reached, and an alert on refusals should
    // not fire for it.
    this.#connectionsClosedUnserved = new Counter({
      name: 'edgefleet_connections_closed_unserved_total',
      help: 'Connections let in, then closed before being served for a reason other than a cap, per listener and reason (grpc preface-timeout: no HTTP/2 preface in time)',
      labelNames: ['listener', 'reason'],
      registers,
    });
    this.#slowReadersClosed = new Counter({
      name: 'edgefleet_slow_readers_closed_total',
      help: 'Connections closed because answers waiting for clients passed edgefleet_max_responses_queued_bytes and theirs had waited longest, per door (grpc, rest)',
      labelNames: ['door'],
      registers,
    });
    this.#connectionsEvicted = new Counter({
      name: 'edgefleet_connections_evicted_total',
      help: 'Connections closed to let a newcomer in over a connection cap (one that never carried a request, or at the per-address cap an idle one of the same address), per listener and cap',
      labelNames: ['listener', 'cap'],
      registers,
    });
  }

  observeRequest(observation: RequestObservation): void {
    const series = this.#seriesOf(observation.model);
    series.requestDuration.observe(observation.requestMs / 1000);
    if (observation.queueMs !== undefined) series.queueDuration.observe(observation.queueMs / 1000);
    if (observation.computeMs !== undefined) {
      series.computeDuration.observe(observation.computeMs / 1000);
      series.inferenceCount.inc();
    }
    if (observation.errorCode === undefined) series.requestSuccess.inc();
    else {
      this.#requestFailure.inc({ model: observation.model, code: observation.errorCode });
      this.#codeSeen(observation.model, observation.errorCode);
    }
    // A request that ends after its model was unloaded keeps the model among the recent ones.
    this.#remove(this.#labels.seen(observation.model));
  }

  /** A model's labelled series, looked up once per model rather than through prom-client's labels per request. */
  #seriesOf(model: string): ModelSeries {
    let series = this.#series.get(model);
    if (series === undefined) {
      const labels = { model };
      series = {
        requestDuration: this.#requestDuration.labels(labels),
        queueDuration: this.#queueDuration.labels(labels),
        computeDuration: this.#computeDuration.labels(labels),
        inferenceCount: this.#inferenceCount.labels(labels),
        requestSuccess: this.#requestSuccess.labels(labels),
      };
      this.#series.set(model, series);
    }
    return series;
  }

  /** A load that succeeded (the model's series are kept while it is loaded) or failed (errorCode). */
  observeLoad(model: string, durationMs: number, errorCode?: string): void {
    if (errorCode === undefined) {
      this.#labels.loaded(model);
      this.#loadDuration.observe({ model }, durationMs / 1000);
      return;
    }
    this.#loadFailures.inc({ model, code: errorCode });
    this.#codeSeen(model, errorCode);
    this.#remove(this.#labels.seen(model));
  }

  /** A model was unloaded: its series stay while it is among the most recent models not loaded. */
  modelUnloaded(model: string): void {
    this.#remove(this.#labels.unloaded(model));
  }

  #codeSeen(model: string, code: string): void {
    let codes = this.#codes.get(model);
    if (codes === undefined) this.#codes.set(model, (codes = new Set()));
    codes.add(code);
  }

  /** Removes every series of these models. */
  #remove(models: readonly string[]): void {
    for (const model of models) {
      const labels = { model };
      for (const metric of [
        this.#requestDuration,
        this.#queueDuration,
        this.#computeDuration,
        this.#inferenceCount,
        this.#requestSuccess,
        this.#loadDuration,
      ]) {
        metric.remove(labels);
      }
      for (const code of this.#codes.get(model) ?? []) {
        this.#requestFailure.remove({ model, code });
        this.#loadFailures.remove({ model, code });
      }
      this.#codes.delete(model);
      this.#series.delete(model);
    }
  }

  setModelsLoaded(count: number): void {
    this.#modelsLoaded.set(count);
  }

  workerExited(): void {
    this.#workerExits.inc();
  }

  /** A listener's cap closed a connection on arrival (a flood, or caps too small for the clients). */
  connectionRefused(listener: string, cap: 'per-address' | 'total'): void {
    this.#connectionsRefused.inc({ listener, cap });
  }

  /**
   * A listener closed a connection before serving it, for a reason other than a cap: `preface-timeout`, a gRPC
   * connection that sent no HTTP/2 preface in time (edgefleet_connections_closed_unserved_total).
   */
  connectionClosedUnserved(listener: string, reason: 'preface-timeout'): void {
    this.#connectionsClosedUnserved.inc({ listener, reason });
  }

  /** The response budget closed a connection whose client left the most answers unread. */
  slowReaderClosed(door: 'grpc' | 'rest'): void {
    this.#slowReadersClosed.inc({ door });
  }

  /** A connection closed to let a newcomer in over a cap (counted apart from refusals). */
  connectionEvicted(listener: string, cap: 'per-address' | 'total'): void {
    this.#connectionsEvicted.inc({ listener, cap });
  }

  /** A counter whose value is a running total the pool keeps (read when scraped: nothing per request). */
  #poolTotal(name: string, help: string, total: () => number): void {
    new Counter({
      name,
      help,
      registers: [this.registry],
      collect() {
        this.reset();
        this.inc(total());
      },
    });
  }

  watchPool(stats: () => PoolStats): void {
    new Gauge({
      name: 'edgefleet_inference_workers',
      help: 'Inference worker threads, by state',
      labelNames: ['state'],
      registers: [this.registry],
      collect() {
        const workers = stats().workers;
        this.set({ state: 'ready' }, workers.filter((w) => w.ready).length);
        this.set({ state: 'starting' }, workers.filter((w) => !w.ready).length);
      },
    });
    new Counter({
      name: 'edgefleet_inference_input_bytes_total',
      help: 'Input tensor bytes handed to workers, by how: transferred (no copy), shared (no copy), copied, segment (System V shared memory the worker maps itself: no copy on the event loop; one in the worker for a tensor at an offset not a multiple of its element size, or on a big-endian host)',
      labelNames: ['path'],
      registers: [this.registry],
      collect() {
        const bytes = stats().inputBytes;
        this.reset();
        this.inc({ path: 'transferred' }, bytes.transferred);
        this.inc({ path: 'shared' }, bytes.shared);
        this.inc({ path: 'copied' }, bytes.copied);
        this.inc({ path: 'segment' }, bytes.segment);
      },
    });
    new Counter({
      name: 'edgefleet_inference_runs_total',
      help: 'Inferences run (a joined run of dynamic batching counts each request it answered), by where: inline (on the event loop, for fast models, within its share), inline_idle (on the event loop while the agent had nothing else to do, for models over the per-run ceiling but within the idle one; not charged to the share) or worker',
      labelNames: ['path'],
      registers: [this.registry],
      collect() {
        const runs = stats().runs;
        this.reset();
        this.inc({ path: 'inline' }, runs.inline);
        this.inc({ path: 'inline_idle' }, runs.inline_idle);
        this.inc({ path: 'worker' }, runs.worker);
      },
    });
    this.#poolTotal(
      'edgefleet_inference_batched_runs_total',
      'Worker runs that joined two or more requests into one (dynamic batching, edgefleet_dynamic_batching)',
      () => stats().batches.runs,
    );
    this.#poolTotal(
      'edgefleet_inference_batched_requests_total',
      'Requests answered by worker runs that joined two or more requests (dynamic batching)',
      () => stats().batches.requests,
    );
    new Gauge({
      name: 'edgefleet_inference_inline_models',
      help: 'Models whose requests run inline now, by path: inline (measured fast enough for the per-run ceiling) or inline_idle (only for the idle ceiling: inline while the agent has nothing else to do)',
      labelNames: ['path'],
      registers: [this.registry],
      collect() {
        const models = stats().inline.models;
        this.set({ path: 'inline' }, models.filter((m) => m.path === 'inline').length);
        this.set({ path: 'inline_idle' }, models.filter((m) => m.path === 'inline_idle').length);
      },
    });
    new Gauge({
      name: 'edgefleet_inference_inline_event_loop_share',
      help: 'Share of event-loop time inline runs took over the last ~100 ms, and the configured limit',
      labelNames: ['of'],
      registers: [this.registry],
      collect() {
        const inline = stats().inline;
        this.set({ of: 'used' }, inline.shareUsed);
        this.set({ of: 'limit' }, inline.eventLoopShare);
      },
    });
    this.#poolTotal(
      'edgefleet_inference_inline_over_budget_total',
      'Requests of an inline model sent to a worker because inline runs had used their event-loop share',
      () => stats().inline.overBudget,
    );
    this.#poolTotal(
      'edgefleet_inference_inline_demotions_total',
      'Models sent back to the workers by one inline run over 4x its ceiling (the per-run or the idle one)',
      () => stats().inline.demotions,
    );
    this.#poolTotal(
      'edgefleet_inference_inline_near_ceiling_paid_total',
      "Of the demotions, inline runs over 4x the per-run ceiling but within 4x the idle one that their model's near-ceiling credit paid for (no step towards a park)",
      () => stats().inline.nearCeilingPaid,
    );
    this.#poolTotal(
      'edgefleet_inference_inline_idle_busy_total',
      'Requests of a model measured for idle runs sent to a worker because the agent was not idle (another request in the pool, or one of such a model found another there in the last 100 ms, or the event loop had not waited for I/O since the last idle run)',
      () => stats().inline.idleBusy,
    );
  }

  /** The text exposition for a `/metrics` endpoint. */
  async text(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
