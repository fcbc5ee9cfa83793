import { DATA_TYPES, DATA_TYPE_NAMES, type DataTypeName } from '../tensors/data-type.js';

/** ONNX TensorProto.DataType: every element type ONNX defines, by its name in onnx.proto. */
export const ONNX_TENSOR_TYPES = {
  FLOAT: 1,
  UINT8: 2,
  INT8: 3,
  UINT16: 4,
  INT16: 5,
  INT32: 6,
  INT64: 7,
  STRING: 8,
  BOOL: 9,
  FLOAT16: 10,
  DOUBLE: 11,
  UINT32: 12,
  UINT64: 13,
  COMPLEX64: 14,
  COMPLEX128: 15,
  BFLOAT16: 16,
  FLOAT8E4M3FN: 17,
  FLOAT8E4M3FNUZ: 18,
  FLOAT8E5M2: 19,
  FLOAT8E5M2FNUZ: 20,
  UINT4: 21,
  INT4: 22,
  FLOAT4E2M1: 23,
  FLOAT8E8M0: 24,
  UINT2: 25,
  INT2: 26,
} as const;

export type OnnxTensorTypeName = keyof typeof ONNX_TENSOR_TYPES;

/** The onnx.proto name of an element type number, e.g. 9 → 'BOOL'; unknown numbers read 'type 99'. */
export function onnxTensorTypeName(onnxType: number): string {
  const entry = Object.entries(ONNX_TENSOR_TYPES).find(([, value]) => value === onnxType);
  return entry ? entry[0] : `type ${onnxType}`;
}

/** The element types SageMaker Edge can carry, each as "ONNX name (our name)", e.g. "FLOAT (FLOAT32)". */
export function supportedOnnxTensorTypes(): string {
  return DATA_TYPE_NAMES.map((name: DataTypeName) => {
    const onnxName = onnxTensorTypeName(DATA_TYPES[name].onnx);
    return onnxName === name ? name : `${onnxName} (${name})`;
  }).join(', ');
}

/** The ONNX element type number for one of our data types or an ONNX type name. */
export function onnxTensorTypeNumber(type: DataTypeName | OnnxTensorTypeName): number {
  return type in DATA_TYPES
    ? DATA_TYPES[type as DataTypeName].onnx
    : ONNX_TENSOR_TYPES[type as OnnxTensorTypeName];
}
