import { z } from 'zod';

/**
 * Tensor element types, as the SageMaker Edge agent API numbers them (`AWS.SageMaker.Edge.DataType`).
 * The names are what manifests, capture records and our REST API use; the numbers are the wire values.
 */
export const DATA_TYPES = {
  UINT8: { wire: 0, bytes: 1, onnx: 2, ort: 'uint8', kserve: 'UINT8' },
  INT16: { wire: 1, bytes: 2, onnx: 5, ort: 'int16', kserve: 'INT16' },
  INT32: { wire: 2, bytes: 4, onnx: 6, ort: 'int32', kserve: 'INT32' },
  INT64: { wire: 3, bytes: 8, onnx: 7, ort: 'int64', kserve: 'INT64' },
  FLOAT16: { wire: 4, bytes: 2, onnx: 10, ort: 'float16', kserve: 'FP16' },
  FLOAT32: { wire: 5, bytes: 4, onnx: 1, ort: 'float32', kserve: 'FP32' },
  FLOAT64: { wire: 6, bytes: 8, onnx: 11, ort: 'float64', kserve: 'FP64' },
} as const;

export type DataTypeName = keyof typeof DATA_TYPES;
export const DATA_TYPE_NAMES = Object.keys(DATA_TYPES) as DataTypeName[];
export const DataTypeNameSchema = z.enum(DATA_TYPE_NAMES as [DataTypeName, ...DataTypeName[]]);

/** Byte size of one element of this type. */
export function elementSize(type: DataTypeName): number {
  return DATA_TYPES[type].bytes;
}

/** The DataType for a SageMaker Edge wire value, or undefined when the value is not one. */
export function dataTypeFromWire(wire: number): DataTypeName | undefined {
  return DATA_TYPE_NAMES.find((name) => DATA_TYPES[name].wire === wire);
}

/** The DataType for an ONNX TensorProto.DataType value, or undefined when SageMaker Edge cannot express it. */
export function dataTypeFromOnnx(onnx: number): DataTypeName | undefined {
  return DATA_TYPE_NAMES.find((name) => DATA_TYPES[name].onnx === onnx);
}

/** The DataType for an onnxruntime tensor type string ('float32', …). */
export function dataTypeFromOrt(ort: string): DataTypeName | undefined {
  return DATA_TYPE_NAMES.find((name) => DATA_TYPES[name].ort === ort);
}

/** The DataType for a KServe v2 datatype string ('FP32', …). */
export function dataTypeFromKserve(kserve: string): DataTypeName | undefined {
  return DATA_TYPE_NAMES.find((name) => DATA_TYPES[name].kserve === kserve);
}
