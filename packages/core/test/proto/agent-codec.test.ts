import fc from 'fast-check';
import protobuf from 'protobufjs';
import { describe, expect, it } from 'vitest';
import { AGENT_PROTO_SOURCE } from '../../src/proto/agent-proto.js';
import { AgentMessageDecodeError, createAgentCodec } from '../../src/proto/agent-codec.js';
import type { AgentMessageName, AgentMessages, MessageInit } from '../../src/proto/agent-messages.js';
import { AgentCaptureDataStatus, AgentDataType, AgentEncoding } from '../../src/proto/agent-messages.js';

const codec = createAgentCodec();

/** protobufjs's own encoder over the same proto: the reference the chunked encoder must match byte for byte. */
const reference = protobuf.parse(AGENT_PROTO_SOURCE).root;
function referenceEncode(name: AgentMessageName, message: object): Buffer {
  return Buffer.from(reference.lookupType(`AWS.SageMaker.Edge.${name}`).encode(message).finish());
}

const bytes = (...values: number[]): Buffer => Buffer.from(values);
const floats = (count: number): Buffer => Buffer.from(new Float32Array(count).map((_, i) => i * 0.5).buffer);

const inputMetadata = {
  name: Buffer.from('input'),
  dataType: AgentDataType.FLOAT32,
  shape: [1, 3, 224, 224],
};
const outputMetadata = {
  name: bytes(0xff, 0xfe, 0x00, 0x80),
  dataType: AgentDataType.UINT8,
  shape: [1, 1000],
};
const model = {
  url: '/models/resnet',
  name: 'resnet',
  inputTensorMetadatas: [inputMetadata],
  outputTensorMetadatas: [outputMetadata],
  handle: 'resnet-handle',
};
const shmTensor = {
  tensorMetadata: inputMetadata,
  sharedMemoryHandle: { size: 0, offset: 4096, segmentId: 2_147_483_647 },
  data: 'sharedMemoryHandle' as const,
};
const bigTensor = { tensorMetadata: outputMetadata, byteData: floats(5000), data: 'byteData' as const };
const smallTensor = { tensorMetadata: outputMetadata, byteData: bytes(1, 2, 3), data: 'byteData' as const };

/** One fully populated message of every type, in decoded form. */
const samples: { [N in AgentMessageName]: AgentMessages[N] } = {
  Timestamp: { seconds: 1_685_563_523, nanos: 430_000_000 },
  TensorMetadata: inputMetadata,
  SharedMemoryHandle: { size: 602_112, offset: 64, segmentId: 98_310 },
  Tensor: bigTensor,
  Model: model,
  PredictRequest: { name: 'resnet', tensors: [shmTensor, bigTensor, smallTensor], handle: 'resnet-handle' },
  PredictResponse: { tensors: [bigTensor, smallTensor] },
  LoadModelRequest: { url: '../other-component/model', name: 'resnet', handle: 'resnet-handle' },
  LoadModelResponse: { model },
  UnLoadModelRequest: { name: 'resnet', handle: 'resnet-handle' },
  UnLoadModelResponse: {},
  ListModelsRequest: {},
  ListModelsResponse: { models: [model, { ...model, name: 'other', handle: 'other' }] },
  DescribeModelRequest: { name: 'resnet', handle: 'resnet-handle' },
  DescribeModelResponse: { model },
  AuxiliaryData: { name: 'jpg', encoding: AgentEncoding.BASE64, byteData: floats(400), data: 'byteData' },
  CaptureDataRequest: {
    modelName: 'resnet',
    captureId: 'abc-1685563523430',
    inferenceTimestamp: { seconds: 1_685_563_523, nanos: 1 },
    inputTensors: [bigTensor],
    outputTensors: [smallTensor, shmTensor],
    inputs: [{ name: 'jpg', encoding: AgentEncoding.NONE, byteData: floats(10), data: 'byteData' }],
    outputs: [
      {
        name: 'json',
        encoding: AgentEncoding.JSON,
        sharedMemoryHandle: { size: 10, offset: 0, segmentId: 7 },
        data: 'sharedMemoryHandle',
      },
    ],
    modelHandle: 'resnet-handle',
  },
  CaptureDataResponse: {},
  GetCaptureDataStatusRequest: { captureId: 'capture1685563523' },
  GetCaptureDataStatusResponse: { status: AgentCaptureDataStatus.IN_PROGRESS },
};

describe('agent codec', () => {
  it.each(Object.keys(samples) as AgentMessageName[])('round-trips a full %s', (name) => {
    const sample = samples[name] as MessageInit<AgentMessages[typeof name]>;
    const wire = codec.encode(name, sample as never);
    expect(Buffer.isBuffer(wire)).toBe(true);
    expect(wire).toEqual(referenceEncode(name, sample));
    expect(codec.decode(name, wire)).toEqual(sample);
  });

  it('decodes absent fields as proto3 defaults, an absent message as null and an unset oneof as absent', () => {
    expect(codec.decode('CaptureDataRequest', Buffer.alloc(0))).toEqual({
      modelName: '',
      captureId: '',
      inferenceTimestamp: null,
      inputTensors: [],
      outputTensors: [],
      inputs: [],
      outputs: [],
      modelHandle: '',
    });
    const tensor = codec.decode('Tensor', Buffer.alloc(0));
    expect(tensor).toEqual({ tensorMetadata: null });
    expect(codec.decode('TensorMetadata', Buffer.alloc(0))).toEqual({
      name: Buffer.alloc(0),
      dataType: 0,
      shape: [],
    });
  });

  it('keeps an empty byte_data, which is a set oneof member, not an absent one', () => {
    const wire = codec.encode('Tensor', { byteData: Buffer.alloc(0) });
    expect(wire).toEqual(bytes(0x22, 0x00));
    expect(codec.decode('Tensor', wire)).toEqual({
      tensorMetadata: null,
      byteData: Buffer.alloc(0),
      data: 'byteData',
    });
  });

  it('decodes byte_data and tensor names as views into the received bytes, not copies', () => {
    const wire = codec.encode('PredictRequest', samples.PredictRequest);
    const decoded = codec.decode('PredictRequest', wire);
    for (const tensor of decoded.tensors) {
      expect(tensor.tensorMetadata?.name.buffer).toBe(wire.buffer);
      if (tensor.byteData) expect(tensor.byteData.buffer).toBe(wire.buffer);
    }
    // A plain Uint8Array is wrapped, not copied, too.
    const plain = new Uint8Array(wire.buffer, wire.byteOffset, wire.byteLength);
    expect(codec.decode('PredictRequest', plain).tensors[1]?.byteData?.buffer).toBe(wire.buffer);
  });

  it('accepts a tensor name sent as a string by an older client and echoes it byte for byte', () => {
    // The older revisions: TensorMetadata.name is a string, AuxiliaryData is spelled AuxilaryData.
    const olderSource = AGENT_PROTO_SOURCE.replace('bytes name = 1;', 'string name = 1;').replaceAll(
      'AuxiliaryData',
      'AuxilaryData',
    );
    expect(olderSource).not.toBe(AGENT_PROTO_SOURCE);
    const older = protobuf.parse(olderSource).root;
    const olderRequest = older.lookupType('AWS.SageMaker.Edge.PredictRequest');
    const message = {
      name: 'resnet',
      tensors: [{ tensorMetadata: { name: 'entrée', dataType: 5, shape: [1, 2] }, byteData: floats(2) }],
    };
    const olderWire = Buffer.from(olderRequest.encode(message).finish());

    const decoded = codec.decode('PredictRequest', olderWire);
    expect(decoded.tensors[0]?.tensorMetadata?.name).toEqual(Buffer.from('entrée', 'utf8'));
    expect(codec.encode('PredictRequest', decoded)).toEqual(olderWire);

    const bytesWire = codec.encode('PredictRequest', {
      name: 'resnet',
      tensors: [
        { tensorMetadata: { name: Buffer.from('entrée'), dataType: 5, shape: [1, 2] }, byteData: floats(2) },
      ],
    });
    expect(bytesWire).toEqual(olderWire);
    const olderDecoded = olderRequest.toObject(olderRequest.decode(bytesWire)) as {
      tensors: { tensorMetadata: { name: string } }[];
    };
    expect(olderDecoded.tensors[0]?.tensorMetadata.name).toBe('entrée');

    // (UTF-8 names only: the older revision's decoder rightly refuses a string field that is not UTF-8.)
    const captureWire = codec.encode('CaptureDataRequest', {
      ...samples.CaptureDataRequest,
      inputTensors: [{ ...bigTensor, tensorMetadata: inputMetadata }],
      outputTensors: [shmTensor],
    });
    const olderCapture = older.lookupType('AWS.SageMaker.Edge.CaptureDataRequest');
    expect(Buffer.from(olderCapture.encode(olderCapture.decode(captureWire)).finish())).toEqual(captureWire);
  });

  it('carries any tensor name byte for byte, UTF-8 or not', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 1500 }), (name) => {
        const wire = codec.encode('Model', { inputTensorMetadatas: [{ name, dataType: 5, shape: [1] }] });
        const decoded = codec.decode('Model', wire);
        expect(decoded.inputTensorMetadatas[0]?.name).toEqual(Buffer.from(name));
        expect(codec.encode('Model', decoded)).toEqual(wire);
      }),
    );
  });

  it('encodes byte-identically to protobufjs and round-trips generated messages', () => {
    const uint64 = fc.maxSafeNat();
    const metadata = fc.record({
      name: fc.uint8Array({ maxLength: 40 }).map((a) => Buffer.from(a)),
      dataType: fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }),
      shape: fc.array(fc.integer({ min: -1, max: 2 ** 31 - 1 }), { maxLength: 5 }),
    });
    const handle = fc.record({ size: uint64, offset: uint64, segmentId: uint64 });
    const data = fc.oneof(
      fc.constant({}),
      // Sizes either side of the 1 KiB threshold above which the encoder frames the caller's Buffer itself.
      fc
        .uint8Array({ maxLength: 3000 })
        .map((a) => ({ byteData: Buffer.from(a), data: 'byteData' as const })),
      handle.map((h) => ({ sharedMemoryHandle: h, data: 'sharedMemoryHandle' as const })),
    );
    const tensor = fc
      .tuple(fc.option(metadata, { nil: null }), data)
      .map(([tensorMetadata, d]) => ({ tensorMetadata, ...d }));
    const auxiliary = fc
      .tuple(fc.string(), fc.integer({ min: 0, max: 3 }), data)
      .map(([name, encoding, d]) => ({ name, encoding, ...d }));
    const request = fc.record({
      modelName: fc.string(),
      captureId: fc.string(),
      inferenceTimestamp: fc.option(
        fc.record({
          seconds: fc.integer({ min: Number.MIN_SAFE_INTEGER, max: Number.MAX_SAFE_INTEGER }),
          nanos: fc.integer({ min: 0, max: 999_999_999 }),
        }),
        { nil: null },
      ),
      inputTensors: fc.array(tensor, { maxLength: 3 }),
      outputTensors: fc.array(tensor, { maxLength: 3 }),
      inputs: fc.array(auxiliary, { maxLength: 2 }),
      outputs: fc.array(auxiliary, { maxLength: 2 }),
      modelHandle: fc.string(),
    });
    fc.assert(
      fc.property(request, (message) => {
        const wire = codec.encode('CaptureDataRequest', message);
        expect(wire).toEqual(referenceEncode('CaptureDataRequest', message));
        expect(codec.decode('CaptureDataRequest', wire)).toEqual(message);
      }),
      { numRuns: 200 },
    );
  });

  it('decodes 64-bit integers to numbers, exactly up to 2^53 − 1 and as the nearest double above', () => {
    const wire = referenceEncode('SharedMemoryHandle', {
      size: { low: -1, high: -1, unsigned: true }, // 2^64 − 1, as a Long-like
      offset: Number.MAX_SAFE_INTEGER,
      segmentId: 0,
    });
    expect(codec.decode('SharedMemoryHandle', wire)).toEqual({
      size: 2 ** 64, // 2^64 − 1 as the nearest double
      offset: Number.MAX_SAFE_INTEGER,
      segmentId: 0,
    });
    const negative = codec.encode('Timestamp', { seconds: -62_135_596_800, nanos: 0 });
    expect(codec.decode('Timestamp', negative)).toEqual({ seconds: -62_135_596_800, nanos: 0 });
  });

  it('rejects malformed bytes with AgentMessageDecodeError naming the message', () => {
    const truncated = codec.encode('PredictRequest', samples.PredictRequest).subarray(0, 100);
    expect(() => codec.decode('PredictRequest', truncated)).toThrow(AgentMessageDecodeError);
    expect(() => codec.decode('PredictRequest', truncated)).toThrow(
      /malformed AWS\.SageMaker\.Edge\.PredictRequest/,
    );
    expect(() => codec.decode('ListModelsRequest', bytes(0x0f))).toThrow(AgentMessageDecodeError); // wire type 7
  });

  it('on arbitrary bytes either decodes or throws AgentMessageDecodeError, nothing else', () => {
    const names = Object.keys(samples) as AgentMessageName[];
    fc.assert(
      fc.property(fc.constantFrom(...names), fc.uint8Array({ maxLength: 200 }), (name, input) => {
        try {
          codec.decode(name, input);
        } catch (error) {
          expect(error).toBeInstanceOf(AgentMessageDecodeError);
        }
      }),
      { numRuns: 2000 },
    );
  });
});
