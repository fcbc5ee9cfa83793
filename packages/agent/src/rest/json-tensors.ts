import { randomBytes } from 'node:crypto';
import { MAX_TENSOR_ELEMENTS, elementCount, elementSize, type DataTypeName } from '@edgefleet/core';
import { fromFloat16Bits, toFloat16Bits } from './float16.js';
import { kserveDatatype } from './kserve-datatypes.js';
import { RestError } from './rest-errors.js';

/**
 * Tensor data in JSON, both ways. Requests carry `data` flat (row-major) or nested exactly as the shape; values
 * are JSON numbers, and for floating-point types also the strings "NaN", "Infinity" and "-Infinity" (JSON has
 * no literals for them; responses write them so). INT64 values beyond ±2^53 are kept exact: JSON.parse rounds
 * them, so a request holding one is parsed again with its long integer literals read as BigInt.
 */

/** Thrown when an INT64 value lost precision in JSON.parse: the caller parses again with parseJsonExactIntegers. */
export class NeedsExactIntegers extends Error {
  constructor() {
    super('an INT64 value is beyond ±2^53; parse again keeping integers exact');
  }
}

const NON_FINITE: Readonly<Record<string, number>> = { NaN: NaN, Infinity: Infinity, '-Infinity': -Infinity };

const INTEGER_RANGES = {
  UINT8: [0, 255],
  INT16: [-32768, 32767],
  INT32: [-(2 ** 31), 2 ** 31 - 1],
} as const;
const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

/** A short description of a JSON value, for messages. */
function describeValue(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value === 'string') {
    const shown = value.length > 40 ? `${value.slice(0, 40)}…` : value;
    return `the string ${JSON.stringify(shown)}`;
  }
  if (typeof value === 'bigint') return `${value}`;
  if (Array.isArray(value)) return `an array of ${value.length}`;
  if (typeof value === 'object') return 'an object';
  return String(value);
}

/** Writes values into a typed array; `put` returns what is wrong with a value, or undefined when it fits. */
interface Writer {
  bytes: Uint8Array;
  put(index: number, value: unknown): string | undefined;
}

function floatValue(value: unknown, datatype: string): number | string {
  if (typeof value === 'number') return value;
  if (typeof value === 'bigint') return Number(value);
  if (typeof value === 'string' && Object.hasOwn(NON_FINITE, value)) return NON_FINITE[value]!;
  return `is ${describeValue(value)}; expected a number (${datatype}; or "NaN", "Infinity", "-Infinity")`;
}

function writerFor(dataType: DataTypeName, count: number, exact: boolean): Writer {
  const datatype = kserveDatatype(dataType);
  switch (dataType) {
    case 'FLOAT32':
    case 'FLOAT64': {
      const array = dataType === 'FLOAT32' ? new Float32Array(count) : new Float64Array(count);
      return {
        bytes: new Uint8Array(array.buffer),
        put(index, value) {
          if (typeof value === 'number') {
            array[index] = value;
            return undefined;
          }
          const number = floatValue(value, datatype);
          if (typeof number === 'string') return number;
          array[index] = number;
          return undefined;
        },
      };
    }
    case 'FLOAT16': {
      const array = new Uint16Array(count);
      return {
        bytes: new Uint8Array(array.buffer),
        put(index, value) {
          const number = floatValue(value, datatype);
          if (typeof number === 'string') return number;
          array[index] = toFloat16Bits(number);
          return undefined;
        },
      };
    }
    case 'INT64': {
      const array = new BigInt64Array(count);
      return {
        bytes: new Uint8Array(array.buffer),
        put(index, value) {
          if (typeof value === 'number' && Number.isSafeInteger(value)) {
            array[index] = BigInt(value);
            return undefined;
          }
          if (typeof value === 'bigint') {
            if (value < INT64_MIN || value > INT64_MAX)
              return `is ${value}; expected an INT64 in [-2^63, 2^63 - 1]`;
            array[index] = value;
            return undefined;
          }
          if (typeof value === 'number' && Number.isInteger(value)) {
            if (!exact) throw new NeedsExactIntegers();
            return `is ${value}, beyond ±2^53 but not written as a plain integer literal; write INT64 values beyond ±2^53 as integer literals (no fraction or exponent) so they stay exact`;
          }
          return `is ${describeValue(value)}; expected a whole number (INT64)`;
        },
      };
    }
    case 'UINT8':
    case 'INT16':
    case 'INT32': {
      const array =
        dataType === 'UINT8'
          ? new Uint8Array(count)
          : dataType === 'INT16'
            ? new Int16Array(count)
            : new Int32Array(count);
      const [min, max] = INTEGER_RANGES[dataType];
      return {
        bytes: new Uint8Array(array.buffer),
        put(index, value) {
          const number = typeof value === 'bigint' ? Number(value) : value;
          if (typeof number === 'number' && Number.isInteger(number) && number >= min && number <= max) {
            array[index] = number;
            return undefined;
          }
          if (typeof number === 'number' && Number.isInteger(number)) {
            return `is ${describeValue(value)}, out of range for ${datatype}; expected a whole number in [${min}, ${max}]`;
          }
          return `is ${describeValue(value)}; expected a whole number (${datatype}, in [${min}, ${max}])`;
        },
      };
    }
  }
}

/**
 * The little-endian, row-major bytes of a request input's JSON `data`, in memory of its own. `what` names the
 * input in messages. Throws RestError 400 saying which value is wrong and what was expected, or
 * NeedsExactIntegers (unless `exact`) when an INT64 value must be read again from the text.
 */
export function jsonTensorBytes(
  data: unknown,
  dataType: DataTypeName,
  shape: readonly number[],
  what: string,
  exact = false,
): Uint8Array {
  const datatype = kserveDatatype(dataType);
  const expected = `expected ${datatype} values, flat (row-major) or nested as the shape [${shape.join(', ')}]`;
  if (!Array.isArray(data)) {
    throw new RestError(400, `${what}: data is ${describeValue(data)}; ${expected}`);
  }
  const count = elementCount(shape);
  if (count > MAX_TENSOR_ELEMENTS) {
    throw new RestError(
      400,
      `${what} has shape [${shape.join(', ')}], ${count} elements; at most ${MAX_TENSOR_ELEMENTS} are accepted`,
    );
  }
  const isFlat = data.length === 0 || !Array.isArray(data[0]);
  if (isFlat && data.length !== count) {
    throw new RestError(
      400,
      `${what} has ${data.length} value${data.length === 1 ? '' : 's'} in data; shape [${shape.join(', ')}] needs ${count}`,
    );
  }
  if (isFlat) {
    const writer = writerFor(dataType, count, exact);
    for (let i = 0; i < count; i++) {
      const problem = writer.put(i, data[i]);
      if (problem !== undefined) {
        const nested = Array.isArray(data[i]) ? ' (data mixes numbers and arrays)' : '';
        throw new RestError(400, `${what}: data[${i}] ${problem}${nested}`);
      }
    }
    return writer.bytes;
  }
  // Nested: every level must have exactly the shape's length there, values at the innermost level only.
  const at: number[] = [];
  const checkLevel = (node: unknown, depth: number): unknown[] => {
    const want = shape[depth]!;
    if (!Array.isArray(node) || node.length !== want) {
      throw new RestError(
        400,
        `${what}: data${path(at)} is ${describeValue(node)} where the shape [${shape.join(', ')}] puts an array of ${want} at depth ${depth}; nested data must follow the shape exactly (or send it flat, row-major)`,
      );
    }
    return node;
  };
  // The arrays are checked against the shape before the tensor is allocated: the declared shape alone (a few
  // bytes of JSON) must not size an allocation; once the arrays match it, its element count is what was sent.
  const checkArrays = (node: unknown, depth: number): void => {
    const level = checkLevel(node, depth);
    if (depth + 1 === shape.length) return;
    for (let i = 0; i < level.length; i++) {
      at.push(i);
      checkArrays(level[i], depth + 1);
      at.pop();
    }
  };
  if (shape.length > 0) checkArrays(data, 0);
  const writer = writerFor(dataType, count, exact);
  let index = 0;
  const walk = (node: unknown, depth: number): void => {
    if (depth === shape.length) {
      const problem = writer.put(index++, node);
      if (problem !== undefined) throw new RestError(400, `${what}: data${path(at)} ${problem}`);
      return;
    }
    const level = node as unknown[];
    for (let i = 0; i < level.length; i++) {
      at.push(i);
      walk(level[i], depth + 1);
      at.pop();
    }
  };
  walk(data, 0);
  return writer.bytes;
}

function path(at: readonly number[]): string {
  return at.map((i) => `[${i}]`).join('');
}

/** An output's bytes as a typed array of its type (copied only when misaligned for it). */
function typedView(dataType: DataTypeName, bytes: Uint8Array) {
  const size = elementSize(dataType);
  const aligned = bytes.byteOffset % size === 0 ? bytes : bytes.slice();
  const { buffer, byteOffset } = aligned;
  const length = bytes.byteLength / size;
  switch (dataType) {
    case 'UINT8':
      return aligned;
    case 'INT16':
      return new Int16Array(buffer, byteOffset, length);
    case 'INT32':
      return new Int32Array(buffer, byteOffset, length);
    case 'INT64':
      return new BigInt64Array(buffer, byteOffset, length);
    case 'FLOAT16':
      return new Uint16Array(buffer, byteOffset, length);
    case 'FLOAT32':
      return new Float32Array(buffer, byteOffset, length);
    case 'FLOAT64':
      return new Float64Array(buffer, byteOffset, length);
  }
}

/** A float as JSON: -0 keeps its sign; non-finite values become their names as strings. */
function floatJson(value: number): string {
  if (Number.isFinite(value)) return value === 0 && 1 / value < 0 ? '-0' : String(value);
  return JSON.stringify(String(value));
}

/** Whether join(',') would write every value right (no -0, NaN or infinities to handle). */
function plainFloats(values: Float32Array | Float64Array): boolean {
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    if (v === 0 ? 1 / v < 0 : !(v - v === 0)) return false;
  }
  return true;
}

/**
 * An output tensor's data as the text of a flat JSON array. Integers are written exactly (INT64 too); floats in
 * the shortest form that reads back to the same value (-0 included); non-finite floats as "NaN", "Infinity", "-Infinity".
 */
export function tensorJsonText(dataType: DataTypeName, bytes: Uint8Array): string {
  const values = typedView(dataType, bytes);
  if (dataType === 'FLOAT16') {
    return `[${Array.from(values as Uint16Array, (bits) => floatJson(fromFloat16Bits(bits))).join(',')}]`;
  }
  if (
    (dataType === 'FLOAT32' || dataType === 'FLOAT64') &&
    !plainFloats(values as Float32Array | Float64Array)
  ) {
    return `[${Array.from(values as Float32Array | Float64Array, floatJson).join(',')}]`;
  }
  return `[${values.join(',')}]`;
}

/**
 * JSON.parse, except that integer literals of 16 digits or more become BigInt (exactly as written). Only for
 * text JSON.parse has already accepted. Long integers are swapped for marked strings first (strings in the
 * text are matched whole and left alone, so digits inside them are never touched); the mark is random per
 * call, so no string a client sends can pose as one.
 */
export function parseJsonExactIntegers(text: string): unknown {
  const nonce = randomBytes(8).toString('hex');
  // In the text the mark starts with the escape \u0000 (JSON strings may not hold raw control characters).
  const mark = `\u0000${nonce}:`;
  const marked = text.replace(/"(?:[^"\\]|\\.)*"|(?<=^|[\s,[:])-?\d{16,}(?![.eE\d])/g, (token) =>
    token.startsWith('"') ? token : `"\\u0000${nonce}:${token}"`,
  );
  return JSON.parse(marked, (_key, value: unknown) =>
    typeof value === 'string' && value.startsWith(mark) ? BigInt(value.slice(mark.length)) : value,
  );
}
