/**
 * Dynamic batching's decisions on the event loop: which dimension of a model its requests are joined along (the
 * plan, made once at load), and whether a request may join a run at all and with which others (its join key). The
 * bytes are joined and split by the worker (batch-tensors.ts); the pool (pool.ts) gathers the requests.
 */
import { InferenceError } from './errors.js';
import type { BatchingOptions } from './pool-types.js';
import type { WireInput, WireTensor, WireTensorInfo } from './protocol.js';
import { TYPED_ARRAY_FOR } from './tensor-bytes.js';

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

/** A request that may join others, its size along the batch dimension, and what must match to join it. */
export interface Batchable {
  inputs: WireTensor[];
  count: number;
  /**
   * Requests join only when their keys are equal: the same inputs, each of the same type and dimensions but along
   * the batch dimension, and the same bytes of each input without it. Made once per request, so that finding a
   * run's companions costs a string comparison per waiting request.
   */
  key: string;
}

/**
 * An input without the batch dimension may be at most this large for its request to be joined (its bytes are
 * part of the join key): such inputs are parameters like Silero VAD's sample rate; a request with a larger one
 * runs alone.
 */
export const MAX_UNBATCHED_INPUT_BYTES = 1024;

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
  const refuse = (why: string) => new InferenceError('unbatchable', `model ${key} cannot be batched: ${why}`);
  // Joining and splitting work on elements of a known size: the types SageMaker Edge can express.
  for (const info of [...inputs, ...outputs])
    if (!Object.hasOwn(TYPED_ARRAY_FOR, info.type))
      throw refuse(
        `its ${inputs.includes(info) ? 'input' : 'output'} ${info.name} is of type ${info.type}, which is not joined`,
      );
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

/**
 * Names a dimension must have to be taken as the batch dimension without being named: joining along a sequence
 * or time dimension would run one client's data with another's (a model's rows along its batch dimension are
 * computed each on its own; along a sequence they are not), so only a name that says batch is taken on trust.
 */
const BATCH_NAME = /batch|^[nb]$/i;

/**
 * The one symbolic dimension that every output has once and some input has once, and whose name says batch
 * (BATCH_NAME).
 */
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
  const batchLike = fitting.filter((name) => BATCH_NAME.test(name));
  if (batchLike.length === 1) return batchLike[0]!;
  const quoted = (names: string[]) => names.map((n) => `"${n}"`).join(', ');
  if (batchLike.length > 1)
    throw refuse(
      `several dimensions could be its batch dimension (${quoted(batchLike)}); name one with "dimension"`,
    );
  if (fitting.length > 0)
    throw refuse(
      `its requests could be joined along ${quoted(fitting)}, but no such name says batch; name the dimension with "dimension" only if the model computes each row along it on its own (a sequence or time dimension is not one: joining along it would mix one request's data into another's answer)`,
    );
  const shapes = [...inputs, ...outputs].map((info) => `${info.name} ${shapeText(info)}`).join(', ');
  throw refuse(
    `no symbolic dimension is in every output and in an input (${shapes}); expected a named batch dimension such as "batch"`,
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
 * The request as one that may join a run, or undefined when it runs alone: an input in shared memory (never
 * joined), bytes that do not fill its dimensions, batched inputs that disagree on the size along the batch
 * dimension (or a size of 0), an input without it over MAX_UNBATCHED_INPUT_BYTES.
 */
export function batchableOf(plan: BatchPlan, inputs: readonly WireInput[]): Batchable | undefined {
  let count: number | undefined;
  const parts: string[] = [];
  for (const input of inputs) {
    if ('segment' in input) return undefined;
    const { name, type, dims, byteLength } = input;
    if (byteLength !== elementsOf(dims) * TYPED_ARRAY_FOR[type].BYTES_PER_ELEMENT) return undefined;
    const axis = plan.inputAxes[name];
    if (axis === undefined) {
      if (byteLength > MAX_UNBATCHED_INPUT_BYTES) return undefined;
      const bytes = Buffer.from(input.buffer, input.byteOffset, byteLength).toString('base64');
      parts.push(`${name}\0${type}\0${dims.join(',')}\0${bytes}`);
      continue;
    }
    const size = dims[axis];
    if (size === undefined || size < 1 || (count !== undefined && size !== count)) return undefined;
    count = size;
    parts.push(`${name}\0${type}\0${dims.map((d, i) => (i === axis ? '*' : d)).join(',')}`);
  }
  if (count === undefined) return undefined;
  return { inputs: inputs as WireTensor[], count, key: parts.sort().join('\0\0') };
}

function elementsOf(dims: readonly number[]): number {
  let elements = 1;
  for (const d of dims) elements *= d;
  return elements;
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
