import type * as ort from 'onnxruntime-node';
import { describe, expect, it } from 'vitest';
import {
  OnnxModelBuilder,
  onnxAttr,
  type OnnxElementType,
  type OnnxTensorValues,
} from '../../src/onnx/index.js';
import { onnxProto, type ModelMessage } from '../../src/onnx/onnx-proto.js';
import { openSession } from './ort-helpers.js';

/** Runs a model with no inputs and returns its outputs as ONNX Runtime gives them. */
async function runConstantModel(model: Uint8Array): Promise<ort.InferenceSession.ReturnType> {
  const session = await openSession(model);
  try {
    return await session.run({});
  } finally {
    await session.release();
  }
}

describe('OnnxModelBuilder', () => {
  // Extremes of each type, so a wrong byte order or width shows.
  const cases: [OnnxElementType, string, OnnxTensorValues][] = [
    ['FLOAT32', 'float32', new Float32Array([1.5, -2.25, 3.4028234663852886e38, 1e-45])],
    ['FLOAT64', 'float64', new Float64Array([Math.PI, -Number.MAX_VALUE, Number.MIN_VALUE, 0])],
    ['INT8', 'int8', new Int8Array([-128, 127, 0, -1])],
    ['UINT8', 'uint8', new Uint8Array([0, 255, 128, 1])],
    ['INT16', 'int16', new Int16Array([-32768, 32767, 256, -2])],
    ['UINT16', 'uint16', new Uint16Array([65535, 256, 1, 0])],
    ['INT32', 'int32', new Int32Array([-(2 ** 31), 2 ** 31 - 1, 65536, -3])],
    ['UINT32', 'uint32', new Uint32Array([2 ** 32 - 1, 2 ** 24, 1, 0])],
    ['INT64', 'int64', new BigInt64Array([-(2n ** 63n), 2n ** 63n - 1n, 2n ** 53n + 1n, -4n])],
    ['UINT64', 'uint64', new BigUint64Array([2n ** 64n - 1n, 2n ** 53n + 1n, 1n, 0n])],
    ['FLOAT16', 'float16', new Uint16Array([0x3c00, 0xc000, 0x7bff, 0x0001])], // 1, -2, 65504, smallest subnormal
    ['BOOL', 'bool', new Uint8Array([1, 0, 0, 1])],
  ];

  it.each(cases)(
    'stores %s initializers as little-endian raw_data that ONNX Runtime reads back',
    async (type, ortType, values) => {
      const model = new OnnxModelBuilder()
        .initializer('w', type, [2, 2], values)
        .node('Identity', ['w'], ['out'])
        .output('out', type, [2, 2])
        .build();
      const { out } = await runConstantModel(model);
      expect(out!.type).toBe(ortType);
      expect(out!.dims).toEqual([2, 2]);
      const got = out!.data as ArrayLike<number | bigint | boolean> & ArrayBufferView;
      // float16 may come back as bit patterns or as a Float16Array view; compare bits. bool as 0/1.
      const bits =
        ortType === 'float16'
          ? Array.from(new Uint16Array(got.buffer, got.byteOffset, 4))
          : Array.from(got, (v) => (typeof v === 'boolean' ? Number(v) : v));
      expect(bits).toEqual(Array.from(values as ArrayLike<number | bigint>));
    },
  );

  it('writes attributes of each kind as ONNX Runtime expects them', async () => {
    const model = new OnnxModelBuilder()
      .node('Constant', [], ['m'], {
        value: onnxAttr.tensor({
          type: 'FLOAT32',
          dims: [2, 3],
          values: new Float32Array([-4, -2, 0, 2, 4, 6]),
        }),
      })
      .node('LeakyRelu', ['m'], ['leaky'], { alpha: onnxAttr.float(0.25) })
      .node('Transpose', ['leaky'], ['transposed'], { perm: onnxAttr.ints([1, 0]) })
      .node('Cast', ['transposed'], ['as_int'], { to: onnxAttr.int(6) }) // INT32
      .node('Constant', [], ['pads'], { value_ints: onnxAttr.ints([1, 0, 0, 0]) })
      .node('Pad', ['as_int', 'pads'], ['padded'], { mode: onnxAttr.string('edge') })
      .output('padded', 'INT32', [4, 2])
      .build();
    const { padded } = await runConstantModel(model);
    // leaky = [[-1, -0.5, 0], [2, 4, 6]]; transposed [3, 2]; cast truncates toward zero; one edge row on top.
    expect(padded!.dims).toEqual([4, 2]);
    expect(Array.from(padded!.data as Int32Array)).toEqual([-1, 2, -1, 2, 0, 4, 0, 6]);
  });

  it('keeps int64 attributes beyond 2^53 exact', () => {
    const big = 2n ** 62n + 3n;
    const model = new OnnxModelBuilder()
      .node('Constant', [], ['c'], { value_int: onnxAttr.int(big) })
      .output('c', 'INT64', [])
      .build();
    const decoded = onnxProto.ModelProto.decode(model) as unknown as ModelMessage & {
      graph: { node: { attribute: { i: { toString(): string } }[] }[] };
    };
    expect(decoded.graph.node[0]!.attribute[0]!.i.toString()).toBe(big.toString());
  });

  it('lays out external data in one file per location, at 4096-byte aligned offsets', () => {
    const { model, externalData } = new OnnxModelBuilder()
      .input('x', 'FLOAT32', [3])
      .initializer('a', 'FLOAT32', [3], new Float32Array([1, 2, 3]), { externalLocation: 'w.bin' })
      .initializer('b', 'FLOAT32', [3], new Float32Array([4, 5, 6]), { externalLocation: 'w.bin' })
      .node('Add', ['x', 'a'], ['xa'])
      .node('Add', ['xa', 'b'], ['y'])
      .output('y', 'FLOAT32', [3])
      .buildWithExternalData();
    const file = externalData.get('w.bin')!;
    expect(file.length).toBe(4096 + 12);
    expect(Array.from(new Float32Array(file.buffer, 0, 3))).toEqual([1, 2, 3]);
    expect(Array.from(new Float32Array(file.buffer, 4096, 3))).toEqual([4, 5, 6]);
    const decoded = onnxProto.ModelProto.decode(model) as unknown as ModelMessage;
    const entries = decoded.graph!.initializer.map((tensor) =>
      Object.fromEntries(tensor.externalData.map(({ key, value }) => [key, value])),
    );
    expect(entries).toEqual([
      { location: 'w.bin', offset: '0', length: '12' },
      { location: 'w.bin', offset: '4096', length: '12' },
    ]);
  });

  it('says what is wrong with a tensor it cannot store', () => {
    const builder = new OnnxModelBuilder();
    expect(() => builder.initializer('w', 'FLOAT32', [2], new Float64Array(2))).toThrow(
      'tensor "w": FLOAT values must come as a Float32Array',
    );
    expect(() => builder.initializer('w', 'INT32', [2, 3], new Int32Array(5))).toThrow(
      'tensor "w": shape [2, 3] holds 6 elements, but 5 values were given',
    );
    expect(() => builder.initializer('w', 'STRING', [1], new Uint8Array(1))).toThrow(
      'the builder cannot store STRING values',
    );
    expect(() => builder.input('x', 'FLOAT32', [-2])).toThrow('dimension -2 is not a size ≥ 0');
  });

  it('refuses build() when tensors live in external files, pointing to buildWithExternalData()', () => {
    const builder = new OnnxModelBuilder()
      .initializer('w', 'FLOAT32', [1], new Float32Array([1]), { externalLocation: 'w.bin' })
      .node('Identity', ['w'], ['y'])
      .output('y', 'FLOAT32', [1]);
    expect(() => builder.build()).toThrow('use buildWithExternalData()');
  });
});
