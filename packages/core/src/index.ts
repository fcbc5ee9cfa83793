export * from './tensors/data-type.js';
export * from './tensors/tensor-metadata.js';
export * from './onnx/index.js';
export * from './signing/index.js';
export * from './package/index.js';
export * from './proto/index.js';
export * from './contract/index.js';
export * from './net/index.js';
export * from './device-identity/index.js';
export * from './cli/index.js';
export * from './folder-lock/index.js';
export * from './logging/index.js';
// Both the manifest and the wire protocol have a "TensorMetadata"; the manifest's is the one most code means.
export type { TensorMetadata } from './tensors/tensor-metadata.js';
export type { TensorMetadata as WireTensorMetadata } from './proto/agent-messages.js';
