/**
 * The text of agent.proto, carried as a string so that it is found at run time from dist/ too (tsc does not copy
 * .proto files). agent.proto stays the source of truth; test/proto/agent-proto.test.ts fails when they differ.
 */
export const AGENT_PROTO_SOURCE = `// The Amazon SageMaker Edge Manager agent interface, newest revision (a superset of the older two, which stay
// wire-compatible: unknown fields are ignored and string and bytes share a wire type).
// Source of truth for EdgeFleet's agent; agent-proto.ts carries the same text for run time (a test keeps them equal).
syntax = "proto3";

package AWS.SageMaker.Edge;

service Agent {
  rpc Predict(PredictRequest) returns (PredictResponse);
  rpc LoadModel(LoadModelRequest) returns (LoadModelResponse);
  rpc UnLoadModel(UnLoadModelRequest) returns (UnLoadModelResponse);
  rpc ListModels(ListModelsRequest) returns (ListModelsResponse);
  rpc DescribeModel(DescribeModelRequest) returns (DescribeModelResponse);
  rpc CaptureData(CaptureDataRequest) returns (CaptureDataResponse);
  rpc GetCaptureDataStatus(GetCaptureDataStatusRequest) returns (GetCaptureDataStatusResponse);
}

enum DataType {
  UINT8 = 0;
  INT16 = 1;
  INT32 = 2;
  INT64 = 3;
  FLOAT16 = 4;
  FLOAT32 = 5;
  FLOAT64 = 6;
}

enum Encoding {
  CSV = 0;
  JSON = 1;
  NONE = 2;
  BASE64 = 3;
}

enum CaptureDataStatus {
  FAILURE = 0;
  SUCCESS = 1;
  IN_PROGRESS = 2;
  NOT_FOUND = 3;
}

// The package's own timestamp, not google.protobuf.Timestamp (same field numbers and types).
message Timestamp {
  int64 seconds = 1;
  int32 nanos = 2;
}

message TensorMetadata {
  // bytes in the newest revision, string in the older ones; may be non-UTF-8, so it is echoed byte for byte.
  bytes name = 1;
  DataType data_type = 2;
  repeated int32 shape = 3;
}

// A System V shared memory segment (segment_id is a shmid). size 0 means "derive from shape and type".
message SharedMemoryHandle {
  uint64 size = 1;
  uint64 offset = 2;
  uint64 segment_id = 3;
}

message Tensor {
  TensorMetadata tensor_metadata = 1;
  oneof data {
    bytes byte_data = 4;
    SharedMemoryHandle shared_memory_handle = 5;
  }
}

message Model {
  string url = 1;
  string name = 2 [deprecated = true];
  repeated TensorMetadata input_tensor_metadatas = 3;
  repeated TensorMetadata output_tensor_metadatas = 4;
  string handle = 5;
}

message PredictRequest {
  string name = 1 [deprecated = true];
  repeated Tensor tensors = 2;
  string handle = 3;
}

message PredictResponse {
  repeated Tensor tensors = 1;
}

message LoadModelRequest {
  string url = 1;
  string name = 2 [deprecated = true];
  string handle = 3;
}

message LoadModelResponse {
  Model model = 1;
}

message UnLoadModelRequest {
  string name = 1 [deprecated = true];
  string handle = 2;
}

message UnLoadModelResponse {
}

message ListModelsRequest {
}

message ListModelsResponse {
  repeated Model models = 1;
}

message DescribeModelRequest {
  string name = 1 [deprecated = true];
  string handle = 2;
}

message DescribeModelResponse {
  Model model = 1;
}

// Spelled AuxilaryData in the older revisions; the name is not on the wire.
message AuxiliaryData {
  string name = 1;
  Encoding encoding = 2;
  oneof data {
    bytes byte_data = 3;
    SharedMemoryHandle shared_memory_handle = 4;
  }
}

message CaptureDataRequest {
  string model_name = 1 [deprecated = true];
  string capture_id = 2;
  Timestamp inference_timestamp = 3;
  repeated Tensor input_tensors = 4;
  repeated Tensor output_tensors = 5;
  repeated AuxiliaryData inputs = 6;
  repeated AuxiliaryData outputs = 7;
  string model_handle = 8;
}

message CaptureDataResponse {
}

message GetCaptureDataStatusRequest {
  string capture_id = 1;
}

message GetCaptureDataStatusResponse {
  CaptureDataStatus status = 1;
}
`;
