import { dataTypeFromWire, elementCount, type DataTypeName } from '@edgefleet/core';
import { CliError, EXIT } from '../cli-io.js';

type TypedArray = Uint8Array | Int16Array | Int32Array | BigInt64Array | Float32Array | Float64Array;

function arrayFor(dataType: DataTypeName, length: number): TypedArray {
  switch (dataType) {
    case 'UINT8':
      return new Uint8Array(length);
    case 'INT16':
      return new Int16Array(length);
    case 'INT32':
      return new Int32Array(length);
    case 'INT64':
      return new BigInt64Array(length);
    case 'FLOAT32':
      return new Float32Array(length);
    case 'FLOAT64':
      return new Float64Array(length);
    case 'FLOAT16':
      throw new CliError(
        'FLOAT16 tensors are not supported by `edgefleet agent predict`; use the REST API',
        EXIT.usage,
      );
  }
}

/**
 * Output values as text: NaN, Infinity and -Infinity as such (JSON.stringify would print null, which reads as
 * "no value").
 */
export function numbersText(values: readonly number[]): string {
  return `[${values.map(String).join(',')}]`;
}

/** Output values for --json: NaN and ±Infinity as the strings "NaN", "Infinity", "-Infinity" (proto3's JSON mapping). */
export function jsonNumbers(values: readonly number[]): Array<number | string> {
  return values.map((n) => (Number.isFinite(n) ? n : String(n)));
}

/** Numbers (flat, row-major) → the little-endian bytes the agent expects for this type and shape. */
export function encodeTensor(name: string, dataType: DataTypeName, shape: number[], flat: unknown[]): Buffer {
  const count = elementCount(shape);
  if (flat.length !== count) {
    throw new CliError(
      `input ${name}: ${flat.length} values for shape [${shape.join(', ')}], which holds ${count}`,
      EXIT.usage,
    );
  }
  const out = arrayFor(dataType, count);
  flat.forEach((value, i) => {
    if (typeof value !== 'number')
      throw new CliError(`input ${name}[${i}] is ${JSON.stringify(value)}; expected a number`, EXIT.usage);
    // Float32Array would take it as Infinity without a word, and the model would answer NaN.
    // Exactly what FLOAT32 rounds to ±Infinity (3.4028235e38, as numpy prints its maximum, rounds to it).
    if (out instanceof Float32Array && Number.isFinite(value) && !Number.isFinite(Math.fround(value)))
      throw new CliError(
        `input ${name}[${i}] is ${value}, outside FLOAT32's range (±3.4028235e38); expected a value FLOAT32 holds`,
        EXIT.usage,
      );
    if (out instanceof BigInt64Array) out[i] = BigInt(Math.trunc(value));
    else out[i] = value;
  });
  return Buffer.from(out.buffer, out.byteOffset, out.byteLength);
}

/** Bytes from the agent → plain numbers (INT64 as numbers; exact below 2^53). */
export function decodeTensor(wireType: number, bytes: Uint8Array): number[] {
  const dataType = dataTypeFromWire(wireType);
  if (!dataType || dataType === 'FLOAT16') return Array.from(bytes);
  const copy = new Uint8Array(bytes); // aligned for the typed view
  const view = arrayFor(dataType, 0).constructor as new (b: ArrayBuffer) => TypedArray;
  return Array.from(new view(copy.buffer) as ArrayLike<number | bigint>, Number);
}
