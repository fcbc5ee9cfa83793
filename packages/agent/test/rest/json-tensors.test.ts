import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { fromFloat16Bits, toFloat16Bits } from '../../src/rest/float16.js';
import {
  NeedsExactIntegers,
  jsonTensorBytes,
  parseJsonExactIntegers,
  tensorJsonText,
} from '../../src/rest/json-tensors.js';
import { RestError } from '../../src/rest/rest-errors.js';
import { bytesOf } from './helpers.js';

function restError(run: () => unknown): RestError {
  try {
    run();
  } catch (error) {
    if (error instanceof RestError) return error;
    throw error;
  }
  throw new Error('expected a RestError, nothing was thrown');
}

describe('float16', () => {
  it('every half bit pattern round-trips through a number (exhaustive)', () => {
    for (let bits = 0; bits <= 0xffff; bits++) {
      const value = fromFloat16Bits(bits);
      const isNaNPattern = (bits & 0x7c00) === 0x7c00 && (bits & 0x3ff) !== 0;
      if (isNaNPattern) expect(Number.isNaN(value)).toBe(true);
      else expect(toFloat16Bits(value)).toBe(bits);
    }
  });

  it('known values: limits, subnormals, ties to even', () => {
    expect(toFloat16Bits(1)).toBe(0x3c00);
    expect(toFloat16Bits(-2)).toBe(0xc000);
    expect(toFloat16Bits(65504)).toBe(0x7bff);
    expect(toFloat16Bits(65519.99)).toBe(0x7bff);
    expect(toFloat16Bits(65520)).toBe(0x7c00);
    expect(toFloat16Bits(-1e9)).toBe(0xfc00);
    expect(toFloat16Bits(1 / 3)).toBe(0x3555);
    expect(toFloat16Bits(2 ** -24)).toBe(0x0001);
    expect(toFloat16Bits(2 ** -25)).toBe(0x0000); // tie between 0 and the smallest subnormal: even wins
    expect(toFloat16Bits(2 ** -25 * 1.0001)).toBe(0x0001);
    expect(toFloat16Bits(1 + 2 ** -11)).toBe(0x3c00); // tie: mantissa 0 is even
    expect(toFloat16Bits(1 + 3 * 2 ** -11)).toBe(0x3c02); // tie: mantissa 2 is even
    expect(toFloat16Bits(-0)).toBe(0x8000);
    expect(toFloat16Bits(NaN)).toBe(0x7e00);
  });

  it('gives the nearest half to any number in range', () => {
    fc.assert(
      fc.property(fc.double({ min: -65504, max: 65504, noNaN: true }), (x) => {
        const bits = toFloat16Bits(x);
        const got = fromFloat16Bits(bits);
        for (const neighbour of [bits - 1, bits + 1]) {
          if ((neighbour & 0x7fff) >= 0x7c00 || neighbour < 0 || neighbour > 0xffff) continue;
          if ((neighbour & 0x8000) !== (bits & 0x8000)) continue;
          expect(Math.abs(x - got)).toBeLessThanOrEqual(Math.abs(x - fromFloat16Bits(neighbour)));
        }
      }),
      { numRuns: 5000 },
    );
  });
});

describe('jsonTensorBytes', () => {
  it('reads flat and nested data row-major into exact bytes', () => {
    const flat = jsonTensorBytes([1.5, -2, 3.25, 4, 5, 6], 'FLOAT32', [2, 3], 'input "x"');
    const nested = jsonTensorBytes(
      [
        [1.5, -2, 3.25],
        [4, 5, 6],
      ],
      'FLOAT32',
      [2, 3],
      'input "x"',
    );
    expect(Array.from(new Float32Array(flat.buffer))).toEqual([1.5, -2, 3.25, 4, 5, 6]);
    expect(nested).toEqual(flat);
    expect(flat.byteOffset).toBe(0);
    expect(flat.buffer.byteLength).toBe(24); // memory of its own: transferable
  });

  it('reads every supported type', () => {
    expect(jsonTensorBytes([0, 255, 7], 'UINT8', [3], 'x')).toEqual(new Uint8Array([0, 255, 7]));
    expect(new Int16Array(jsonTensorBytes([-32768, 32767], 'INT16', [2], 'x').buffer)).toEqual(
      new Int16Array([-32768, 32767]),
    );
    expect(new Int32Array(jsonTensorBytes([-(2 ** 31), 2 ** 31 - 1], 'INT32', [2], 'x').buffer)).toEqual(
      new Int32Array([-(2 ** 31), 2 ** 31 - 1]),
    );
    expect(new BigInt64Array(jsonTensorBytes([-5, 2 ** 53 - 1], 'INT64', [2], 'x').buffer)).toEqual(
      new BigInt64Array([-5n, 2n ** 53n - 1n]),
    );
    expect(new Float64Array(jsonTensorBytes([0.1, 'NaN', '-Infinity'], 'FLOAT64', [3], 'x').buffer)).toEqual(
      new Float64Array([0.1, NaN, -Infinity]),
    );
    expect(new Uint16Array(jsonTensorBytes([1, -2, 65504], 'FLOAT16', [3], 'x').buffer)).toEqual(
      new Uint16Array([0x3c00, 0xc000, 0x7bff]),
    );
    expect(jsonTensorBytes([], 'FLOAT32', [0, 4], 'x').byteLength).toBe(0);
    expect(new Float32Array(jsonTensorBytes([7], 'FLOAT32', [], 'x').buffer)).toEqual(new Float32Array([7]));
  });

  it('says which value is wrong and what was expected', () => {
    expect(restError(() => jsonTensorBytes([1, 2, 3], 'FLOAT32', [1, 4], 'input "x" (#1)')).message).toBe(
      'input "x" (#1) has 3 values in data; shape [1, 4] needs 4',
    );
    expect(restError(() => jsonTensorBytes([1, 'two'], 'FLOAT32', [2], 'input "x"')).message).toMatch(
      /^input "x": data\[1\] is the string "two"; expected a number \(FP32/,
    );
    expect(restError(() => jsonTensorBytes([1, 256], 'UINT8', [2], 'input "b"')).message).toMatch(
      /data\[1\] is 256, out of range for UINT8; expected a whole number in \[0, 255\]/,
    );
    expect(restError(() => jsonTensorBytes([1.5], 'INT32', [1], 'x')).message).toMatch(
      /data\[0\] is 1.5; expected a whole number \(INT32/,
    );
    expect(restError(() => jsonTensorBytes([null], 'INT64', [1], 'x')).message).toMatch(/data\[0\] is null/);
    expect(restError(() => jsonTensorBytes({ a: 1 }, 'FLOAT32', [1], 'x')).message).toMatch(
      /data is an object; expected FP32 values, flat \(row-major\) or nested as the shape \[1\]/,
    );
    expect(restError(() => jsonTensorBytes('1,2', 'FLOAT32', [2], 'x')).message).toMatch(
      /data is the string/,
    );
    expect(
      restError(() =>
        jsonTensorBytes(
          [
            [1, 2],
            [3, 4, 5],
          ],
          'FLOAT32',
          [2, 2],
          'x',
        ),
      ).message,
    ).toMatch(/data\[1\] is an array of 3 where the shape \[2, 2\] puts an array of 2 at depth 1/);
    expect(restError(() => jsonTensorBytes([[1, 2, 3, 4]], 'FLOAT32', [4], 'x')).message).toMatch(
      /data is an array of 1 where the shape \[4\] puts an array of 4 at depth 0/,
    );
    expect(restError(() => jsonTensorBytes([[[1], [2]]], 'FLOAT32', [1, 2], 'x')).message).toMatch(
      /data\[0\]\[0\] is an array of 1; expected a number/,
    );
    expect(restError(() => jsonTensorBytes([1, [2]], 'FLOAT32', [2], 'x')).message).toMatch(
      /data\[1\] is an array of 1; .*mixes numbers and arrays/,
    );
  });

  it('asks for an exact parse when an INT64 lost precision, and checks the INT64 range then', () => {
    expect(() => jsonTensorBytes([2 ** 53 + 2], 'INT64', [1], 'x')).toThrow(NeedsExactIntegers);
    const exact = jsonTensorBytes([2n ** 53n + 1n, -(2n ** 63n)], 'INT64', [2], 'x', true);
    expect(new BigInt64Array(exact.buffer)).toEqual(new BigInt64Array([2n ** 53n + 1n, -(2n ** 63n)]));
    expect(restError(() => jsonTensorBytes([2n ** 63n], 'INT64', [1], 'x', true)).message).toMatch(
      /is 9223372036854775808; expected an INT64 in \[-2\^63, 2\^63 - 1\]/,
    );
    expect(restError(() => jsonTensorBytes([1e300], 'INT64', [1], 'x', true)).message).toMatch(
      /not written as a plain integer literal/,
    );
  });
});

describe('tensorJsonText', () => {
  it('writes floats that read back to the same float32 values, and non-finite ones as names', () => {
    fc.assert(
      fc.property(
        fc.array(fc.float({ noNaN: true, noDefaultInfinity: true }), { maxLength: 50 }),
        (values) => {
          const f32 = new Float32Array(values);
          const parsed = JSON.parse(tensorJsonText('FLOAT32', bytesOf(f32))) as number[];
          expect(new Float32Array(parsed)).toEqual(f32);
        },
      ),
    );
    const special = new Float32Array([NaN, Infinity, -Infinity, -0, 1]);
    expect(tensorJsonText('FLOAT32', bytesOf(special))).toBe('["NaN","Infinity","-Infinity",-0,1]');
  });

  it('writes INT64 exactly and every other type', () => {
    const ints = new BigInt64Array([2n ** 63n - 1n, -(2n ** 63n), 0n]);
    expect(tensorJsonText('INT64', bytesOf(ints))).toBe('[9223372036854775807,-9223372036854775808,0]');
    expect(tensorJsonText('UINT8', new Uint8Array([0, 255]))).toBe('[0,255]');
    expect(tensorJsonText('INT16', bytesOf(new Int16Array([-3, 4])))).toBe('[-3,4]');
    expect(tensorJsonText('INT32', bytesOf(new Int32Array([-(2 ** 31)])))).toBe('[-2147483648]');
    expect(tensorJsonText('FLOAT64', bytesOf(new Float64Array([0.1])))).toBe('[0.1]');
    expect(tensorJsonText('FLOAT16', bytesOf(new Uint16Array([0x3c00, 0x7c00, 0x3555])))).toBe(
      '[1,"Infinity",0.333251953125]',
    );
    expect(tensorJsonText('FLOAT32', new Uint8Array(0))).toBe('[]');
  });

  it('reads misaligned output bytes correctly', () => {
    const backing = new Uint8Array(9);
    backing.set(bytesOf(new Float32Array([1.5, -2])), 1);
    expect(tensorJsonText('FLOAT32', backing.subarray(1))).toBe('[1.5,-2]');
  });
});

describe('parseJsonExactIntegers', () => {
  it('agrees with JSON.parse on any JSON, long integers becoming the BigInt of their digits', () => {
    const toNumbers = (value: unknown): unknown =>
      typeof value === 'bigint'
        ? Number(value)
        : Array.isArray(value)
          ? value.map(toNumbers)
          : value && typeof value === 'object'
            ? Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toNumbers(v)]))
            : value;
    fc.assert(
      fc.property(fc.jsonValue(), (value) => {
        const text = JSON.stringify(value);
        expect(toNumbers(parseJsonExactIntegers(text))).toEqual(JSON.parse(text));
      }),
      { numRuns: 500 },
    );
  });

  it('keeps every INT64 exact, and never touches digits inside strings or keys', () => {
    fc.assert(
      fc.property(
        fc.array(fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }), { maxLength: 30 }),
        (values) => {
          const text = `{"data": [${values.join(', ')}],"s":"${values.join(',')}"}`;
          const parsed = parseJsonExactIntegers(text) as { data: unknown[]; s: string };
          parsed.data.forEach((v, i) => expect(BigInt(v as bigint | number)).toBe(values[i]));
          expect(parsed.s).toBe(values.join(','));
        },
      ),
    );
    const text =
      '{"12345678901234567890": "x\\"12345678901234567890", "n": [1.12345678901234567890, 1e12345678901234567]}';
    expect(parseJsonExactIntegers(text)).toEqual(JSON.parse(text));
  });
});
