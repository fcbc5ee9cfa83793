/**
 * Dynamic batching's decisions on the event loop: which dimension of a model its requests are joined along (the
 * plan, made once at load), whether a request may join a run at all, and whether two requests may share one. The
 * bytes are joined and split by the worker (batch-tensors.ts); the pool (pool.ts) gathers the requests.
 */
import { InferenceError } from './errors.js';
import type { BatchingOptions } from './pool-types.js';
import type { WireInput, WireTensor, WireTensorInfo } from './protocol.js';

/** The largest maxBatchSize accepted: beyond it a joined run is long enough to hold up every request in it. */
export const MAX_BATCH_SIZE = 1024;

/** How a model's requests are joined: the axis of the batch dimension in each input and output that has it. */
export interface BatchPlan {
  dimension: string;
  maxBatchSize: number;
  /** Inputs with the batch dimension, and its axis; the others must be the same in every request of a run. */
  inputAxes: Record<string, number>;
  /** Every output, and the axis of the batch dimension in it. */
  outputAxes: Record<string, number>;
}

/** A request that may join others, and its size along the batch dimension. */
export interface Batchable {
  inputs: WireTensor[];
  count: number;
}

/**
 * The plan for a model, from ONNX Runtime's view of its inputs and outputs (symbolic dimensions by name).
 * Throws InferenceError('unbatchable') saying what does not fit when the model cannot be batched as asked.
 */
export function planBatching(
  key: string,
  inputs: readonly WireTensorInfo[],
  outputs: readonly WireTensorInfo[],
  options: BatchingOptions,
): BatchPlan {
  checkBatchingOptions(options);
  const { maxBatchSize } = options;
  const refuse = (why: string) =>
    new InferenceError('unbatchable', `model ${key} cannot be batched: ${why}`);
  const dimension = options.dimension ?? inferDimension(inputs, outputs, refuse);
  const outputAxes: Record<string, number> = {};
  for (const output of outputs) {
    const axis = axisOf(output, dimension);
    if (axis === 'twice') throw refuse(`its output ${output.name} has the dimension "${dimension}" twice`);
    if (axis === undefined)
      throw refuse(
        `its output ${output.name} (shape ${shapeText(output)}) has no dimension "${dimension}" to split the answers along; expected every output to have it once`,
      );
    outputAxes[output.name] = axis;
  }
  const inputAxes: Record<string, number> = {};
  for (const input of inputs) {
    const axis = axisOf(input, dimension);
    if (axis === 'twice') throw refuse(`its input ${input.name} has the dimension "${dimension}" twice`);
    if (axis !== undefined) inputAxes[input.name] = axis;
  }
  if (Object.keys(inputAxes).length === 0)
    throw refuse(
      `none of its inputs has the dimension "${dimension}"; expected at least one input to have it`,
    );
  return { dimension, maxBatchSize, inputAxes, outputAxes };
}

/** The one symbolic dimension every output has once and some input has once. */
function inferDimension(
  inputs: readonly WireTensorInfo[],
  outputs: readonly WireTensorInfo[],
  refuse: (why: string) => InferenceError,
): string {
  const names = new Set<string>();
  for (const info of [...inputs, ...outputs])
    for (const d of info.shape) if (typeof d === 'string' && d !== '') names.add(d);
  const fitting = [...names].filter(
    (name) =>
      outputs.length > 0 &&
      outputs.every((output) => typeof axisOf(output, name) === 'number') &&
      inputs.some((input) => typeof axisOf(input, name) === 'number') &&
      inputs.every((input) => axisOf(input, name) !== 'twice'),
  );
  if (fitting.length === 1) return fitting[0]!;
  const shapes = [...inputs, ...outputs].map((info) => `${info.name} ${shapeText(info)}`).join(', ');
  throw refuse(
    fitting.length === 0
      ? `no symbolic dimension is in every output and in an input (${shapes}); expected a named batch dimension such as "batch"`
      : `several dimensions could be its batch dimension (${fitting.map((n) => `"${n}"`).join(', ')}); name one with "dimension"`,
  );
}

function axisOf(info: WireTensorInfo, dimension: string): number | 'twice' | undefined {
  const axis = info.shape.indexOf(dimension);
  if (axis < 0) return undefined;
  return info.shape.indexOf(dimension, axis + 1) < 0 ? axis : 'twice';
}

function shapeText(info: WireTensorInfo): string {
  return `[${info.shape.map((d) => (typeof d === 'string' ? d : String(d))).join(', ')}]`;
}

/**
 * The request as one that may join a run: every input in bytes (shared memory is never joined), every batched
 * input of the rank and the one size along the batch dimension, at least 1. Undefined when it runs alone.
 */
export function batchableOf(plan: BatchPlan, inputs: readonly WireInput[]): Batchable | undefined {
  let count: number | undefined;
  for (const input of inputs) {
    if ('segment' in input) return undefined;
    const axis = plan.inputAxes[input.name];
    if (axis === undefined) continue;
    const size = input.dims[axis];
    if (size === undefined || size < 1 || (count !== undefined && size !== count)) return undefined;
    count = size;
  }
  return count === undefined ? undefined : { inputs: inputs as WireTensor[], count };
}

/**
 * Whether two requests may share a run: the same inputs, each of the same type and the same dimensions but along
 * the batch dimension, and inputs without it byte for byte the same.
 */
export function joinable(plan: BatchPlan, a: readonly WireTensor[], b: readonly WireTensor[]): boolean {
  if (a.length !== b.length) return false;
  for (const x of a) {
    const y = b.find((t) => t.name === x.name);
    if (!y || y.type !== x.type || y.dims.length !== x.dims.length) return false;
    const axis = plan.inputAxes[x.name];
    for (let i = 0; i < x.dims.length; i++) if (i !== axis && x.dims[i] !== y.dims[i]) return false;
    if (axis === undefined && !sameBytes(x, y)) return false;
  }
  return true;
}

function sameBytes(x: WireTensor, y: WireTensor): boolean {
  if (x.byteLength !== y.byteLength) return false;
  return Buffer.from(x.buffer, x.byteOffset, x.byteLength).equals(
    Buffer.from(y.buffer, y.byteOffset, y.byteLength),
  );
}

/** Throws a RangeError saying what is wrong with the options, before a model is loaded with them. */
export function checkBatchingOptions(options: BatchingOptions): void {
  const { maxBatchSize, dimension } = options;
  if (!Number.isInteger(maxBatchSize) || maxBatchSize < 2 || maxBatchSize > MAX_BATCH_SIZE)
    throw new RangeError(
      `maxBatchSize must be a whole number from 2 to ${MAX_BATCH_SIZE}, got ${maxBatchSize}`,
    );
  if (dimension !== undefined && dimension === '')
    throw new RangeError('dimension must name a symbolic dimension of the model, got an empty name');
}
