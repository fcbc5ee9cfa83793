export * from './tensors/data-type.js';
export * from './tensors/tensor-metadata.js';
export * from './onnx/index.js';
export * from './signing/index.js';
export * from './package/index.js';
