import { DATA_TYPES, DATA_TYPE_NAMES, dataTypeFromKserve, type DataTypeName } from '@edgefleet/core';
import { RestError } from './rest-errors.js';

/** Every datatype the Open Inference Protocol defines. */
export const KSERVE_DATATYPES = [
  'BOOL',
  'UINT8',
  'UINT16',
  'UINT32',
  'UINT64',
  'INT8',
  'INT16',
  'INT32',
  'INT64',
  'FP16',
  'FP32',
  'FP64',
  'BYTES',
  'BF16',
] as const;

/** The KServe datatypes the agent serves: those the SageMaker Edge data types (and our manifests) can express. */
export const SUPPORTED_KSERVE_DATATYPES: readonly string[] = DATA_TYPE_NAMES.map(
  (name) => DATA_TYPES[name].kserve,
);

/** The KServe name of one of our data types ('FLOAT32' → 'FP32'). */
export function kserveDatatype(dataType: DataTypeName): string {
  return DATA_TYPES[dataType].kserve;
}

/**
 * Our data type for a request's `datatype` string; a RestError 400 saying why when there is none: either the
 * protocol defines it but no model here can take it, or it is not a KServe datatype at all (names are
 * case-sensitive, as the protocol says).
 */
export function dataTypeOfKserve(datatype: string, what: string): DataTypeName {
  const dataType = dataTypeFromKserve(datatype);
  if (dataType !== undefined) return dataType;
  const supported = SUPPORTED_KSERVE_DATATYPES.join(', ');
  if ((KSERVE_DATATYPES as readonly string[]).includes(datatype)) {
    throw new RestError(
      400,
      `${what} has datatype ${datatype}, which this agent does not serve; expected one of ${supported}`,
    );
  }
  throw new RestError(
    400,
    `${what} has datatype ${JSON.stringify(datatype)}, which is not a KServe datatype; expected one of ${supported} (case-sensitive)`,
  );
}
