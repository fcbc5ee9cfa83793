import * as grpc from '@grpc/grpc-js';
import { AGENT_SERVICE_NAME, AgentDataType, OnnxModelBuilder, TEST_MODELS } from '@edgefleet/core';
import protobuf from 'protobufjs';
import { describe, expect, it } from 'vitest';
import {
  bytesOf,
  callError,
  referenceBytes,
  useAgentTestBed,
  wireInputs,
  type TestAgent,
} from './helpers.js';

/**
 * The oldest published revision of the interface, as older clients compiled it: tensor names are `string`, models
 * are addressed by `name` only (no `handle`). Same wire format: string and bytes share a wire type.
 */
const OLD_PROTO = `
syntax = "proto3";
package AWS.SageMaker.Edge;
enum DataType { UINT8 = 0; INT16 = 1; INT32 = 2; INT64 = 3; FLOAT16 = 4; FLOAT32 = 5; FLOAT64 = 6; }
message TensorMetadata { string name = 1; DataType data_type = 2; repeated int32 shape = 3; }
message SharedMemoryHandle { uint64 size = 1; uint64 offset = 2; uint64 segment_id = 3; }
message Tensor {
  TensorMetadata tensor_metadata = 1;
  oneof data { bytes byte_data = 4; SharedMemoryHandle shared_memory_handle = 5; }
}
message Model {
  string url = 1; string name = 2;
  repeated TensorMetadata input_tensor_metadatas = 3; repeated TensorMetadata output_tensor_metadatas = 4;
}
message PredictRequest { string name = 1; repeated Tensor tensors = 2; }
message PredictResponse { repeated Tensor tensors = 1; }
message DescribeModelRequest { string name = 1; }
message DescribeModelResponse { Model model = 1; }
`;

const oldRoot = protobuf.parse(OLD_PROTO, { keepCase: true }).root;

interface OldTensorMetadata {
  name: string;
  data_type: number;
  shape: number[];
}

/** A unary call through the old revision's own encoder and decoder (what an old generated stub does). */
function oldCall<Res>(target: string, method: string, request: object): Promise<Res> {
  const requestType = oldRoot.lookupType(`AWS.SageMaker.Edge.${method}Request`);
  const responseType = oldRoot.lookupType(`AWS.SageMaker.Edge.${method}Response`);
  const client = new grpc.Client(target, grpc.credentials.createInsecure());
  return new Promise<Res>((resolve, reject) => {
    client.makeUnaryRequest(
      `/${AGENT_SERVICE_NAME}/${method}`,
      (value: object) => Buffer.from(requestType.encode(requestType.fromObject(value)).finish()),
      (bytes: Buffer) =>
        responseType.toObject(responseType.decode(bytes), {
          defaults: true,
          arrays: true,
          longs: Number,
        }) as Res,
      request,
      (error, response) => (error ? reject(error) : resolve(response!)),
    );
  }).finally(() => client.close());
}

let agent: TestAgent;

/** Tensor names outside ASCII: the agent must carry their UTF-8 bytes through unchanged. */
const INPUT_NAME = 'entrée/ž_0 🙂';
const OUTPUT_NAME = 'sortie·ü';

useAgentTestBed({
  prefix: 'agent-grpc-names-',
  workers: 1,
  async ready(bed) {
    const { files } = bed;
    agent = bed.agent;
    await agent.call('LoadModel', { url: await files.catalogue('tiny'), handle: 'tiny' });
    const unicode = await files.custom(
      new OnnxModelBuilder({ graphName: 'unicode_names' })
        .input(INPUT_NAME, 'FLOAT32', [2])
        .node('Neg', [INPUT_NAME], [OUTPUT_NAME])
        .output(OUTPUT_NAME, 'FLOAT32', [2])
        .build(),
      'unicode',
    );
    await agent.call('LoadModel', { url: unicode, handle: 'unicode' });
  },
});

describe('tensor names: string clients and bytes clients', () => {
  it('serves an old client that sends and reads tensor names as strings, addressing the model by name', async () => {
    const sample = TEST_MODELS.tiny.sampleInputs().x!;
    const response = await oldCall<{
      tensors: Array<{ tensor_metadata: OldTensorMetadata; byte_data: Buffer }>;
    }>(agent.target, 'Predict', {
      name: 'tiny',
      tensors: [
        {
          tensor_metadata: { name: 'x', data_type: AgentDataType.FLOAT32, shape: [1, 16] },
          byte_data: bytesOf(sample.data),
        },
      ],
    });
    expect(response.tensors).toHaveLength(1);
    expect(response.tensors[0]!.tensor_metadata).toEqual({
      name: 'y',
      data_type: AgentDataType.FLOAT32,
      shape: [1, 16],
    });
    expect(Buffer.compare(response.tensors[0]!.byte_data, referenceBytes('tiny').get('y')!.bytes)).toBe(0);

    const described = await oldCall<{ model: { name: string; input_tensor_metadatas: OldTensorMetadata[] } }>(
      agent.target,
      'DescribeModel',
      { name: 'unicode' },
    );
    expect(described.model.name).toBe('unicode');
    expect(described.model.input_tensor_metadatas).toEqual([
      { name: INPUT_NAME, data_type: AgentDataType.FLOAT32, shape: [2] },
    ]);
  });

  it('gives a bytes client the exact UTF-8 bytes of non-ASCII tensor names, in metadata and outputs', async () => {
    const described = await agent.call('DescribeModel', { handle: 'unicode' });
    expect(described.model?.inputTensorMetadatas[0]?.name).toEqual(Buffer.from(INPUT_NAME, 'utf8'));
    expect(described.model?.outputTensorMetadatas[0]?.name).toEqual(Buffer.from(OUTPUT_NAME, 'utf8'));
    // A client copies the metadata it was given into its request: the names match byte for byte.
    const response = await agent.call('Predict', {
      handle: 'unicode',
      tensors: [
        {
          tensorMetadata: described.model!.inputTensorMetadatas[0]!,
          byteData: bytesOf(new Float32Array([1, -2])),
        },
      ],
    });
    expect(response.tensors[0]?.tensorMetadata?.name).toEqual(Buffer.from(OUTPUT_NAME, 'utf8'));
    expect([...new Float32Array(new Uint8Array(response.tensors[0]!.byteData!).buffer)]).toEqual([-1, 2]);
  });

  it('takes a tensor name that is not UTF-8 (matched by position) and shows its bytes in hex when it is wrong', async () => {
    const notUtf8 = Buffer.from([0x78, 0xff, 0xfe, 0x00, 0xc3]);
    const [x] = wireInputs('tiny');
    const ok = await agent.call('Predict', {
      handle: 'tiny',
      tensors: [{ ...x, tensorMetadata: { ...x!.tensorMetadata!, name: notUtf8 } }],
    });
    expect(Buffer.compare(ok.tensors[0]!.byteData!, referenceBytes('tiny').get('y')!.bytes)).toBe(0);

    const error = await callError(
      agent.call('Predict', {
        handle: 'tiny',
        tensors: [{ ...x, tensorMetadata: { ...x!.tensorMetadata!, name: notUtf8, shape: [2, 8] } }],
      }),
    );
    expect(error.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(error.details).toContain(`0x${notUtf8.toString('hex')} (not UTF-8)`);
  });

  it('matches inputs by their exact bytes: a name differing in one byte falls back to position', async () => {
    const described = await agent.call('DescribeModel', { handle: 'unicode' });
    const exact = described.model!.inputTensorMetadatas[0]!.name;
    const nearly = Buffer.from(exact);
    nearly[nearly.length - 1]! ^= 1;
    for (const name of [exact, nearly]) {
      const response = await agent.call('Predict', {
        handle: 'unicode',
        tensors: [
          {
            tensorMetadata: { name, dataType: AgentDataType.FLOAT32, shape: [2] },
            byteData: bytesOf(new Float32Array([3, 4])),
          },
        ],
      });
      expect([...new Float32Array(new Uint8Array(response.tensors[0]!.byteData!).buffer)]).toEqual([-3, -4]);
    }
  });
});
