import { TEST_MODELS, type DataTypeName, type TestModelName, type TestModelTensors } from '@edgefleet/core';
import type { AgentErrorCode } from '../../src/models/index.js';
import { bytesOf } from './model-packages.js';

/** A request tensor, door-neutral: each door's runner writes it in its own wire format (bytes sent as they are). */
export interface CaseTensor {
  name: string;
  dataType: DataTypeName;
  shape: number[];
  data: Uint8Array;
}

export type CaseOutcome =
  /** Succeeds with the catalogue reference outputs (by output name), within the model's float tolerance. */
  | { outputs: TestModelTensors; tolerance: number }
  /** Fails with this code (each door's status for it) and a message matching `message`. */
  | { code: AgentErrorCode; message: RegExp };

export interface RequestCase {
  name: string;
  /** The model name in the request. */
  model: string;
  inputs: CaseTensor[];
  expect: CaseOutcome;
}

/** The catalogue models the cases need loaded, each under its catalogue name. */
export const CASE_MODELS = ['tiny', 'multi-io', 'mlp'] as const satisfies readonly TestModelName[];

function tensors(
  model: TestModelName,
  inputs: TestModelTensors = TEST_MODELS[model].sampleInputs(),
): CaseTensor[] {
  return TEST_MODELS[model].inputs.map((declared) => {
    const tensor = inputs[declared.name]!;
    return {
      name: declared.name,
      dataType: tensor.dataType,
      shape: tensor.shape,
      data: bytesOf(tensor.data),
    };
  });
}

const tinyX = tensors('tiny')[0]!;
const mlpBatch: TestModelTensors = {
  features: { dataType: 'FLOAT32', shape: [4, 4], data: new Float32Array(16).map((_, i) => (i % 5) - 2) },
};

/**
 * Predict (gRPC) and infer (KServe v2 REST) requests with the outcome both doors must give: the same success, or
 * the same AgentError code (gRPC status / HTTP status by the standard mapping) and message. Every door is a thin
 * adapter over ModelRegistry, so a case that passes on one door and fails on the other is a door that decides
 * something itself.
 */
export const REQUEST_CASES: readonly RequestCase[] = [
  {
    name: 'a valid request',
    model: 'tiny',
    inputs: [tinyX],
    expect: { outputs: TEST_MODELS.tiny.reference(TEST_MODELS.tiny.sampleInputs()), tolerance: 0 },
  },
  {
    name: 'inputs in another order than the model’s, matched by name',
    model: 'multi-io',
    inputs: [...tensors('multi-io')].reverse(),
    expect: {
      outputs: TEST_MODELS['multi-io'].reference(TEST_MODELS['multi-io'].sampleInputs()),
      tolerance: TEST_MODELS['multi-io'].tolerance,
    },
  },
  {
    name: 'a batch of 4 where the model declares -1',
    model: 'mlp',
    inputs: tensors('mlp', mlpBatch),
    expect: { outputs: TEST_MODELS.mlp.reference(mlpBatch), tolerance: TEST_MODELS.mlp.tolerance },
  },
  {
    name: 'a model that is not loaded',
    model: 'absent',
    inputs: [tinyX],
    expect: { code: 'NOT_FOUND', message: /no model named "absent" is loaded/ },
  },
  {
    name: 'more tensors than the model takes',
    model: 'tiny',
    inputs: [tinyX, { ...tinyX, name: 'extra' }],
    expect: { code: 'INVALID_ARGUMENT', message: /takes 1 input tensor .*; the request has 2/ },
  },
  {
    name: 'another data type than the model’s',
    model: 'tiny',
    inputs: [{ ...tinyX, dataType: 'INT32' }],
    expect: { code: 'INVALID_ARGUMENT', message: /is INT32; the model expects FLOAT32/ },
  },
  {
    name: 'a shape the model does not take',
    model: 'tiny',
    inputs: [{ ...tinyX, shape: [2, 8] }],
    expect: { code: 'INVALID_ARGUMENT', message: /shape \[2, 8\] does not fit the model/ },
  },
  {
    name: 'another rank than the model’s',
    model: 'tiny',
    inputs: [{ ...tinyX, shape: [16] }],
    expect: { code: 'INVALID_ARGUMENT', message: /shape \[16\] does not fit the model/ },
  },
  {
    name: 'fewer bytes than the shape needs',
    model: 'tiny',
    inputs: [{ ...tinyX, data: tinyX.data.subarray(0, 60) }],
    expect: { code: 'INVALID_ARGUMENT', message: /60 bytes of data; shape \[1, 16\] of FLOAT32 needs 64/ },
  },
  {
    name: 'more bytes than the shape needs',
    model: 'tiny',
    inputs: [{ ...tinyX, data: new Uint8Array(68) }],
    expect: { code: 'INVALID_ARGUMENT', message: /68 bytes of data; shape \[1, 16\] of FLOAT32 needs 64/ },
  },
];
