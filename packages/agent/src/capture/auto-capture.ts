import { randomUUID } from 'node:crypto';
import type { PredictEvent, PredictListener, PredictObserver, PredictOutput } from '../models/index.js';
import type { ModelActivity } from '../state/index.js';
import { keptBytes, viewableMemory, type CaptureItem } from './capture-item.js';
import { tensorNameText } from './capture-request.js';
import { tensorValues } from './records.js';
import type { AutoCaptureRule } from './settings.js';

/**
 * Automatic capture: a PredictObserver that turns predictions its rules select into captures, so Predict traffic
 * is captured without the application calling CaptureData. Sampling is decided as the request starts (only a
 * sampled request keeps its inputs); a topScoreBelow rule needs the outputs, so every request of its model keeps
 * its inputs (copied to the worker instead of transferred) and is checked when done.
 */
export class AutoCapture implements PredictObserver {
  readonly #rules: readonly AutoCaptureRule[];
  readonly #random: () => number;
  readonly #take: (item: CaptureItem) => void;
  readonly #now: () => number;
  readonly #byModel = new Map<string, readonly AutoCaptureRule[]>();

  constructor(options: {
    rules: readonly AutoCaptureRule[];
    /** Queues the capture (never throws; counts what it cannot take). */
    take: (item: CaptureItem) => void;
    random?: () => number;
    now?: () => number;
  }) {
    this.#rules = options.rules;
    this.#take = options.take;
    this.#random = options.random ?? Math.random;
    this.#now = options.now ?? Date.now;
  }

  onPredict(model: string): PredictListener | undefined {
    const rules = this.#rulesFor(model);
    if (rules.length === 0) return undefined;
    const sampled = rules.some(
      (r) => r.sampleRate !== undefined && r.sampleRate > 0 && this.#random() < r.sampleRate,
    );
    const thresholds = rules.filter((r) => r.topScoreBelow !== undefined);
    if (!sampled && thresholds.length === 0) return undefined;
    return {
      readsInputs: true,
      readsOutputs: true,
      predicted: (event) => {
        const selected =
          sampled ||
          thresholds.some((r) => {
            const score = topScore(event.outputs, r.output);
            return score !== undefined && score < r.topScoreBelow!;
          });
        if (selected) this.#take(this.#itemOf(event));
      },
    };
  }

  #rulesFor(model: string): readonly AutoCaptureRule[] {
    let rules = this.#byModel.get(model);
    if (!rules) {
      rules = this.#rules.filter((r) => r.model === '*' || r.model === model);
      this.#byModel.set(model, rules);
    }
    return rules;
  }

  #itemOf(event: PredictEvent): CaptureItem {
    // Views only when the inputs are most of the message (viewableMemory), else copies.
    const owned = viewableMemory(
      event.ownedBuffer,
      event.inputs.map((t) => t.data),
    );
    return {
      captureId: `auto-${randomUUID()}`,
      model: event.model,
      modelVersion: event.version,
      inferenceTime: event.at,
      receivedAt: this.#now(),
      source: 'auto',
      inputTensors: event.inputs.map((t) => ({
        name: t.name,
        dataType: t.dataType,
        shape: [...t.shape],
        // A view of the gRPC message's bytes (when they are most of it); a copy of anything else: shared memory the client may overwrite
        // once answered, a REST body or an embedding caller's buffers, not known to be this request's alone.
        data: keptBytes(t.data, owned),
      })),
      outputTensors: event.outputs.map((t) => ({
        name: tensorNameText(t.name),
        dataType: t.dataType,
        shape: [...t.shape],
        // A view: fresh buffers made for this request alone, each exactly its output (PredictEvent.outputs).
        data: Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength),
      })),
      inputs: [],
      outputs: [],
    };
  }
}

/** The largest value of the named output (default the first); undefined when there is none or it is empty. */
export function topScore(outputs: readonly PredictOutput[], name?: string): number | undefined {
  const output = name === undefined ? outputs[0] : outputs.find((o) => tensorNameText(o.name) === name);
  if (!output || output.data.byteLength === 0) return undefined;
  const values = tensorValues(
    output.dataType,
    Buffer.from(output.data.buffer, output.data.byteOffset, output.data.byteLength),
  );
  let best = -Infinity;
  for (const value of values) {
    const n = typeof value === 'number' ? value : Number(value);
    if (n > best) best = n;
  }
  return Number.isNaN(best) ? undefined : best;
}

/** Counts every prediction (and its time) per model, for the heartbeat. */
export function modelActivityObserver(activity: ModelActivity): PredictObserver {
  return {
    onPredict: () => ({
      readsInputs: false,
      readsOutputs: false,
      predicted: (event) => activity.inference(event.model, event.at),
    }),
  };
}
