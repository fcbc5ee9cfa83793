import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';
import { describe, expect, it } from 'vitest';
import { AGENT_PROTO_SOURCE } from '../../src/proto/agent-proto.js';

const PROTO_FILE = fileURLToPath(new URL('../../src/proto/agent.proto', import.meta.url));

describe('agent.proto', () => {
  it('is carried verbatim by agent-proto.ts (regenerate the string when the .proto changes)', async () => {
    expect(AGENT_PROTO_SOURCE).toBe(await readFile(PROTO_FILE, 'utf8'));
  });

  it('declares the seven methods of AWS.SageMaker.Edge.Agent with their messages', () => {
    const root = protobuf.parse(AGENT_PROTO_SOURCE).root;
    root.resolveAll();
    const service = root.lookupService('AWS.SageMaker.Edge.Agent');
    const methods = Object.values(service.methods).map((m) => [m.name, m.requestType, m.responseType]);
    expect(methods).toEqual([
      ['Predict', 'PredictRequest', 'PredictResponse'],
      ['LoadModel', 'LoadModelRequest', 'LoadModelResponse'],
      ['UnLoadModel', 'UnLoadModelRequest', 'UnLoadModelResponse'],
      ['ListModels', 'ListModelsRequest', 'ListModelsResponse'],
      ['DescribeModel', 'DescribeModelRequest', 'DescribeModelResponse'],
      ['CaptureData', 'CaptureDataRequest', 'CaptureDataResponse'],
      ['GetCaptureDataStatus', 'GetCaptureDataStatusRequest', 'GetCaptureDataStatusResponse'],
    ]);
  });

  it('numbers every field as the spec does, deprecated ones included', () => {
    const root = protobuf.parse(AGENT_PROTO_SOURCE, { keepCase: true }).root;
    const fields = (name: string): string[] =>
      root
        .lookupType(`AWS.SageMaker.Edge.${name}`)
        .fieldsArray.map((f) => `${f.name}=${f.id}:${f.repeated ? 'repeated ' : ''}${f.type}`);
    expect(fields('TensorMetadata')).toEqual([
      'name=1:bytes',
      'data_type=2:DataType',
      'shape=3:repeated int32',
    ]);
    expect(fields('SharedMemoryHandle')).toEqual(['size=1:uint64', 'offset=2:uint64', 'segment_id=3:uint64']);
    expect(fields('Tensor')).toEqual([
      'tensor_metadata=1:TensorMetadata',
      'byte_data=4:bytes',
      'shared_memory_handle=5:SharedMemoryHandle',
    ]);
    expect(fields('Model')).toEqual([
      'url=1:string',
      'name=2:string',
      'input_tensor_metadatas=3:repeated TensorMetadata',
      'output_tensor_metadatas=4:repeated TensorMetadata',
      'handle=5:string',
    ]);
    expect(fields('PredictRequest')).toEqual([
      'name=1:string',
      'tensors=2:repeated Tensor',
      'handle=3:string',
    ]);
    expect(fields('PredictResponse')).toEqual(['tensors=1:repeated Tensor']);
    expect(fields('LoadModelRequest')).toEqual(['url=1:string', 'name=2:string', 'handle=3:string']);
    expect(fields('LoadModelResponse')).toEqual(['model=1:Model']);
    expect(fields('UnLoadModelRequest')).toEqual(['name=1:string', 'handle=2:string']);
    expect(fields('UnLoadModelResponse')).toEqual([]);
    expect(fields('ListModelsRequest')).toEqual([]);
    expect(fields('ListModelsResponse')).toEqual(['models=1:repeated Model']);
    expect(fields('DescribeModelRequest')).toEqual(['name=1:string', 'handle=2:string']);
    expect(fields('DescribeModelResponse')).toEqual(['model=1:Model']);
    expect(fields('AuxiliaryData')).toEqual([
      'name=1:string',
      'encoding=2:Encoding',
      'byte_data=3:bytes',
      'shared_memory_handle=4:SharedMemoryHandle',
    ]);
    expect(fields('CaptureDataRequest')).toEqual([
      'model_name=1:string',
      'capture_id=2:string',
      'inference_timestamp=3:Timestamp',
      'input_tensors=4:repeated Tensor',
      'output_tensors=5:repeated Tensor',
      'inputs=6:repeated AuxiliaryData',
      'outputs=7:repeated AuxiliaryData',
      'model_handle=8:string',
    ]);
    expect(fields('CaptureDataResponse')).toEqual([]);
    expect(fields('GetCaptureDataStatusRequest')).toEqual(['capture_id=1:string']);
    expect(fields('GetCaptureDataStatusResponse')).toEqual(['status=1:CaptureDataStatus']);
    expect(fields('Timestamp')).toEqual(['seconds=1:int64', 'nanos=2:int32']);

    const deprecated = [
      'Model',
      'PredictRequest',
      'LoadModelRequest',
      'UnLoadModelRequest',
      'DescribeModelRequest',
    ]
      .map((type) => root.lookupType(`AWS.SageMaker.Edge.${type}`).fields['name']?.options?.['deprecated'])
      .concat(
        root.lookupType('AWS.SageMaker.Edge.CaptureDataRequest').fields['model_name']?.options?.[
          'deprecated'
        ],
      );
    expect(deprecated).toEqual([true, true, true, true, true, true]);

    const enumValues = (name: string): Record<string, number> =>
      root.lookupEnum(`AWS.SageMaker.Edge.${name}`).values;
    expect(enumValues('DataType')).toEqual({
      UINT8: 0,
      INT16: 1,
      INT32: 2,
      INT64: 3,
      FLOAT16: 4,
      FLOAT32: 5,
      FLOAT64: 6,
    });
    expect(enumValues('Encoding')).toEqual({ CSV: 0, JSON: 1, NONE: 2, BASE64: 3 });
    expect(enumValues('CaptureDataStatus')).toEqual({ FAILURE: 0, SUCCESS: 1, IN_PROGRESS: 2, NOT_FOUND: 3 });
  });
});
