export {
  OnnxModelError,
  OnnxModelInfoSchema,
  parseOnnxModelInfo,
  readOnnxModelInfo,
  type OnnxModelErrorReason,
  type OnnxModelInfo,
  type ParseOnnxOptions,
} from './model-info.js';
export {
  ONNX_MODEL_BUILDER_DEFAULTS,
  OnnxGraphBuilder,
  OnnxModelBuilder,
  onnxAttr,
  type OnnxAttributeValue,
  type OnnxConstantTensor,
  type OnnxDim,
  type OnnxElementType,
  type OnnxExternalDataFiles,
  type OnnxInitializerOptions,
  type OnnxModelOptions,
  type OnnxNodeOptions,
  type OnnxTensorValues,
} from './model-builder.js';
export { ONNX_TENSOR_TYPES, onnxTensorTypeName, type OnnxTensorTypeName } from './onnx-data-types.js';
