import protobuf from 'protobufjs';

/**
 * The subset of onnx.proto (https://github.com/onnx/onnx/blob/main/onnx/onnx.proto) that EdgeFleet reads and
 * writes: names and field numbers exactly as upstream, so models from any exporter decode the same way.
 * Fields left out (doc strings, training info, quantization annotations, …) are skipped by the decoder.
 * protobufjs turns the snake_case names into camelCase properties (`ir_version` → `irVersion`).
 */
const ONNX_PROTO_SUBSET = `
syntax = "proto2";
package onnx;

message AttributeProto {
  enum AttributeType {
    UNDEFINED = 0; FLOAT = 1; INT = 2; STRING = 3; TENSOR = 4; GRAPH = 5; SPARSE_TENSOR = 11; TYPE_PROTO = 13;
    FLOATS = 6; INTS = 7; STRINGS = 8; TENSORS = 9; GRAPHS = 10; SPARSE_TENSORS = 12; TYPE_PROTOS = 14;
  }
  optional string name = 1;
  optional string ref_attr_name = 21;
  optional AttributeType type = 20;
  optional float f = 2;
  optional int64 i = 3;
  optional bytes s = 4;
  optional TensorProto t = 5;
  optional GraphProto g = 6;
  optional SparseTensorProto sparse_tensor = 22;
  repeated float floats = 7;
  repeated int64 ints = 8;
  repeated bytes strings = 9;
  repeated TensorProto tensors = 10;
  repeated GraphProto graphs = 11;
  repeated SparseTensorProto sparse_tensors = 23;
}

message ValueInfoProto {
  optional string name = 1;
  optional TypeProto type = 2;
  optional string doc_string = 3;
}

message NodeProto {
  repeated string input = 1;
  repeated string output = 2;
  optional string name = 3;
  optional string op_type = 4;
  optional string domain = 7;
  repeated AttributeProto attribute = 5;
}

message ModelProto {
  optional int64 ir_version = 1;
  repeated OperatorSetIdProto opset_import = 8;
  optional string producer_name = 2;
  optional string producer_version = 3;
  optional string domain = 4;
  optional int64 model_version = 5;
  optional string doc_string = 6;
  optional GraphProto graph = 7;
  repeated StringStringEntryProto metadata_props = 14;
  repeated FunctionProto functions = 25;
}

message StringStringEntryProto {
  optional string key = 1;
  optional string value = 2;
}

message GraphProto {
  repeated NodeProto node = 1;
  optional string name = 2;
  repeated TensorProto initializer = 5;
  repeated SparseTensorProto sparse_initializer = 15;
  optional string doc_string = 10;
  repeated ValueInfoProto input = 11;
  repeated ValueInfoProto output = 12;
  repeated ValueInfoProto value_info = 13;
}

message TensorProto {
  enum DataLocation {
    DEFAULT = 0;
    EXTERNAL = 1;
  }
  repeated int64 dims = 1;
  optional int32 data_type = 2;
  repeated float float_data = 4 [packed = true];
  repeated int32 int32_data = 5 [packed = true];
  repeated bytes string_data = 6;
  repeated int64 int64_data = 7 [packed = true];
  optional string name = 8;
  optional bytes raw_data = 9;
  repeated StringStringEntryProto external_data = 13;
  optional DataLocation data_location = 14;
  repeated double double_data = 10 [packed = true];
  repeated uint64 uint64_data = 11 [packed = true];
}

message SparseTensorProto {
  optional TensorProto values = 1;
  optional TensorProto indices = 2;
  repeated int64 dims = 3;
}

message TensorShapeProto {
  message Dimension {
    oneof value {
      int64 dim_value = 1;
      string dim_param = 2;
    }
    optional string denotation = 3;
  }
  repeated Dimension dim = 1;
}

message TypeProto {
  message Tensor {
    optional int32 elem_type = 1;
    optional TensorShapeProto shape = 2;
  }
  message Sequence {
    optional TypeProto elem_type = 1;
  }
  message Map {
    optional int32 key_type = 1;
    optional TypeProto value_type = 2;
  }
  message Optional {
    optional TypeProto elem_type = 1;
  }
  message SparseTensor {
    optional int32 elem_type = 1;
    optional TensorShapeProto shape = 2;
  }
  message Opaque {
    optional string domain = 1;
    optional string name = 2;
  }
  oneof value {
    Tensor tensor_type = 1;
    Sequence sequence_type = 4;
    Map map_type = 5;
    Optional optional_type = 9;
    SparseTensor sparse_tensor_type = 8;
    Opaque opaque_type = 7;
  }
  optional string denotation = 6;
}

message OperatorSetIdProto {
  optional string domain = 1;
  optional int64 version = 2;
}

message FunctionProto {
  optional string name = 1;
  repeated string input = 4;
  repeated string output = 5;
  repeated NodeProto node = 7;
  repeated OperatorSetIdProto opset_import = 9;
  optional string domain = 10;
}
`;

const root = protobuf.parse(ONNX_PROTO_SUBSET).root;

/** The protobufjs message types, resolved once; they hold no per-call state. */
export const onnxProto = {
  ModelProto: root.lookupType('onnx.ModelProto'),
  GraphProto: root.lookupType('onnx.GraphProto'),
} as const;

/** An int64 as protobufjs decodes it: a `Long` (the `long` package is installed) or, when small, a number. */
export type Int64 = number | { toString(): string };

/** Numeric values of TensorProto.DataLocation. */
export const DATA_LOCATION = { DEFAULT: 0, EXTERNAL: 1 } as const;

/** Numeric values of AttributeProto.AttributeType used by the builder. */
export const ATTRIBUTE_TYPE = {
  FLOAT: 1,
  INT: 2,
  STRING: 3,
  TENSOR: 4,
  GRAPH: 5,
  FLOATS: 6,
  INTS: 7,
  STRINGS: 8,
  TENSORS: 9,
} as const;

// Shapes of decoded messages, as far as this package reads them. Absent optional fields read as protobufjs
// defaults (0, '', empty arrays, null for messages); `Object.hasOwn` tells present from absent.

export interface StringStringEntryMessage {
  key: string;
  value: string;
}

export interface TensorMessage {
  dims: Int64[];
  dataType: number;
  name: string;
  rawData: Uint8Array;
  externalData: StringStringEntryMessage[];
  dataLocation: number;
}

export interface SparseTensorMessage {
  values: TensorMessage | null;
  indices: TensorMessage | null;
}

export interface DimensionMessage {
  dimValue: Int64;
  dimParam: string;
  /** Which member of the `value` oneof is set, if any. */
  value?: 'dimValue' | 'dimParam';
}

export interface TensorShapeMessage {
  dim: DimensionMessage[];
}

export interface TensorTypeMessage {
  elemType: number;
  shape: TensorShapeMessage | null;
}

export interface TypeMessage {
  tensorType: TensorTypeMessage | null;
  /** Which member of the `value` oneof is set, if any. */
  value?: 'tensorType' | 'sequenceType' | 'mapType' | 'optionalType' | 'sparseTensorType' | 'opaqueType';
}

export interface ValueInfoMessage {
  name: string;
  type: TypeMessage | null;
}

export interface AttributeMessage {
  name: string;
  t: TensorMessage | null;
  g: GraphMessage | null;
  sparseTensor: SparseTensorMessage | null;
  tensors: TensorMessage[];
  graphs: GraphMessage[];
  sparseTensors: SparseTensorMessage[];
}

export interface NodeMessage {
  opType: string;
  attribute: AttributeMessage[];
}

export interface GraphMessage {
  node: NodeMessage[];
  name: string;
  initializer: TensorMessage[];
  sparseInitializer: SparseTensorMessage[];
  input: ValueInfoMessage[];
  output: ValueInfoMessage[];
}

export interface OperatorSetIdMessage {
  domain: string;
  version: Int64;
}

export interface FunctionMessage {
  name: string;
  node: NodeMessage[];
}

export interface ModelMessage {
  irVersion: Int64;
  opsetImport: OperatorSetIdMessage[];
  producerName: string;
  producerVersion: string;
  graph: GraphMessage | null;
  functions: FunctionMessage[];
}

/** An int64 field as a JS number, or undefined when it does not fit exactly (beyond ±2^53). */
export function int64ToNumber(value: Int64): number | undefined {
  const n = typeof value === 'number' ? value : Number(value.toString());
  return Number.isSafeInteger(n) ? n : undefined;
}
