import type protobuf from 'protobufjs';
import type { DataTypeName } from '../tensors/data-type.js';
import { onnxTensorTypeNumber, type OnnxTensorTypeName } from './onnx-data-types.js';
import { ATTRIBUTE_TYPE, DATA_LOCATION, onnxProto } from './onnx-proto.js';

/**
 * Builds ONNX models in code, for tests, demos and benchmarks:
 *
 *   const model = new OnnxModelBuilder({ graphName: 'tiny' })
 *     .input('x', 'FLOAT32', [1, 16])
 *     .initializer('two', 'FLOAT32', [], new Float32Array([2]))
 *     .node('Mul', ['x', 'two'], ['y'])
 *     .output('y', 'FLOAT32', [1, 16])
 *     .build();
 *
 * Element types are our names (FLOAT32, INT64, …) or any ONNX TensorProto.DataType name (BOOL, STRING, …), so
 * tests can also build models SageMaker Edge cannot serve.
 */

export type OnnxElementType = DataTypeName | OnnxTensorTypeName;

/** A dimension: a fixed size, a symbolic name (dim_param, e.g. 'batch'), or null for an unnamed unknown size. */
export type OnnxDim = number | string | null;

/** Element values of a tensor; float16/bfloat16 as their bit patterns in a Uint16Array, bool as 0/1 bytes. */
export type OnnxTensorValues =
  | Float32Array
  | Float64Array
  | Int8Array
  | Uint8Array
  | Int16Array
  | Uint16Array
  | Int32Array
  | Uint32Array
  | BigInt64Array
  | BigUint64Array;

export interface OnnxConstantTensor {
  type: OnnxElementType;
  dims: readonly number[];
  values: OnnxTensorValues;
  /** Store the values in this file (relative to the model) instead of inside the model. */
  externalLocation?: string;
}

export type OnnxAttributeValue =
  | { kind: 'float'; value: number }
  | { kind: 'int'; value: number | bigint }
  | { kind: 'string'; value: string }
  | { kind: 'floats'; value: readonly number[] }
  | { kind: 'ints'; value: readonly (number | bigint)[] }
  | { kind: 'strings'; value: readonly string[] }
  | { kind: 'tensor'; value: OnnxConstantTensor }
  | { kind: 'graph'; value: OnnxGraphBuilder };

/** Typed attribute values: ONNX tells INT from FLOAT, and JavaScript numbers do not. */
export const onnxAttr = {
  float: (value: number): OnnxAttributeValue => ({ kind: 'float', value }),
  int: (value: number | bigint): OnnxAttributeValue => ({ kind: 'int', value }),
  string: (value: string): OnnxAttributeValue => ({ kind: 'string', value }),
  floats: (value: readonly number[]): OnnxAttributeValue => ({ kind: 'floats', value }),
  ints: (value: readonly (number | bigint)[]): OnnxAttributeValue => ({ kind: 'ints', value }),
  strings: (value: readonly string[]): OnnxAttributeValue => ({ kind: 'strings', value }),
  tensor: (value: OnnxConstantTensor): OnnxAttributeValue => ({ kind: 'tensor', value }),
  graph: (value: OnnxGraphBuilder): OnnxAttributeValue => ({ kind: 'graph', value }),
} as const;

export interface OnnxInitializerOptions {
  /** Store the data in this external file (relative to the model) instead of inside the model. */
  externalLocation?: string;
  /** Also list the initializer as a graph input (IR < 4 style: an input with a default value). */
  asGraphInput?: boolean;
}

export interface OnnxNodeOptions {
  name?: string;
  /** Operator set domain; '' (the default) is the standard ONNX domain. */
  domain?: string;
}

// Plain objects in protobufjs's camelCase shape of onnx.proto; encoded by the ModelProto type.
type ProtoObject = Record<string, unknown>;

/** External data files the model refers to, by location. */
export type OnnxExternalDataFiles = Map<string, Uint8Array>;

interface PendingNode {
  opType: string;
  input: string[];
  output: string[];
  name: string;
  domain: string;
  attributes: [string, OnnxAttributeValue][];
}

/** A graph: the model's main graph, or a subgraph for If/Loop/Scan attributes. */
export class OnnxGraphBuilder {
  readonly #name: string;
  readonly #inputs: ProtoObject[] = [];
  readonly #outputs: ProtoObject[] = [];
  readonly #initializers: [string, OnnxConstantTensor][] = [];
  readonly #nodes: PendingNode[] = [];

  constructor(name: string) {
    this.#name = name;
  }

  /** A graph input. `shape` null declares a tensor of unknown rank. */
  input(name: string, type: OnnxElementType, shape: readonly OnnxDim[] | null): this {
    this.#inputs.push(valueInfo(name, type, shape));
    return this;
  }

  output(name: string, type: OnnxElementType, shape: readonly OnnxDim[] | null): this {
    this.#outputs.push(valueInfo(name, type, shape));
    return this;
  }

  /** A graph input of a non-tensor type (for testing rejection): a sequence of tensors of `elementType`. */
  sequenceInput(name: string, elementType: OnnxElementType): this {
    this.#inputs.push({
      name,
      type: { sequenceType: { elemType: { tensorType: { elemType: onnxTensorTypeNumber(elementType) } } } },
    });
    return this;
  }

  /** A named constant tensor (a weight), stored as little-endian raw_data or in an external file. */
  initializer(
    name: string,
    type: OnnxElementType,
    dims: readonly number[],
    values: OnnxTensorValues,
    options: OnnxInitializerOptions = {},
  ): this {
    const tensor: OnnxConstantTensor = { type, dims, values };
    if (options.externalLocation !== undefined) tensor.externalLocation = options.externalLocation;
    checkTensor(name, tensor);
    this.#initializers.push([name, tensor]);
    if (options.asGraphInput) this.#inputs.push(valueInfo(name, type, dims));
    return this;
  }

  node(
    opType: string,
    inputs: readonly string[],
    outputs: readonly string[],
    attributes: Record<string, OnnxAttributeValue> = {},
    options: OnnxNodeOptions = {},
  ): this {
    for (const [attrName, value] of Object.entries(attributes)) {
      if (value.kind === 'tensor') checkTensor(attrName, value.value);
    }
    this.#nodes.push({
      opType,
      input: [...inputs],
      output: [...outputs],
      name: options.name ?? `${opType}_${this.#nodes.length}`,
      domain: options.domain ?? '',
      attributes: Object.entries(attributes),
    });
    return this;
  }

  /** The GraphProto object; tensor data stored externally is laid out into `files`. */
  protected graphProto(files: OnnxExternalDataFiles): ProtoObject {
    return {
      name: this.#name,
      input: this.#inputs,
      output: this.#outputs,
      initializer: this.#initializers.map(([name, tensor]) => tensorProto(name, tensor, files)),
      node: this.#nodes.map(({ attributes, ...node }) => ({
        ...node,
        attribute: attributes.map(([name, value]) => this.#attributeProto(name, value, files)),
      })),
    };
  }

  #attributeProto(name: string, attribute: OnnxAttributeValue, files: OnnxExternalDataFiles): ProtoObject {
    const utf8 = (text: string): Uint8Array => new TextEncoder().encode(text);
    switch (attribute.kind) {
      case 'float':
        return { name, type: ATTRIBUTE_TYPE.FLOAT, f: attribute.value };
      case 'int':
        // int64 as a decimal string: protobufjs converts it without losing bits beyond 2^53.
        return { name, type: ATTRIBUTE_TYPE.INT, i: attribute.value.toString() };
      case 'string':
        return { name, type: ATTRIBUTE_TYPE.STRING, s: utf8(attribute.value) };
      case 'floats':
        return { name, type: ATTRIBUTE_TYPE.FLOATS, floats: [...attribute.value] };
      case 'ints':
        return { name, type: ATTRIBUTE_TYPE.INTS, ints: attribute.value.map((value) => value.toString()) };
      case 'strings':
        return { name, type: ATTRIBUTE_TYPE.STRINGS, strings: attribute.value.map(utf8) };
      case 'tensor':
        return { name, type: ATTRIBUTE_TYPE.TENSOR, t: tensorProto(name, attribute.value, files) };
      case 'graph':
        return { name, type: ATTRIBUTE_TYPE.GRAPH, g: attribute.value.graphProto(files) };
    }
  }
}

export interface OnnxModelOptions {
  graphName?: string;
  /** ONNX IR version; 8 by default (ONNX 1.10–1.13). */
  irVersion?: number;
  /** Version of the default ('' = ai.onnx) operator set; 17 by default. */
  opset?: number;
  /** Further operator sets, e.g. { domain: 'com.microsoft', version: 1 }. */
  extraOpsets?: readonly { domain: string; version: number }[];
  producerName?: string;
  producerVersion?: string;
  /** ModelProto.metadata_props: free-form key/value pairs, e.g. class labels. */
  metadata?: Record<string, string>;
}

export const ONNX_MODEL_BUILDER_DEFAULTS = {
  irVersion: 8,
  opset: 17,
  producerName: 'edgefleet-model-builder',
  producerVersion: '1',
} as const;

/** A whole model: its main graph plus the ModelProto fields around it. */
export class OnnxModelBuilder extends OnnxGraphBuilder {
  readonly #options: OnnxModelOptions;

  constructor(options: OnnxModelOptions = {}) {
    super(options.graphName ?? 'main');
    this.#options = options;
  }

  /** The serialized model. Throws when a tensor is stored externally: use buildWithExternalData for those. */
  build(): Uint8Array {
    const { model, externalData } = this.buildWithExternalData();
    if (externalData.size > 0) {
      throw new Error(
        `the model keeps tensors in external files (${[...externalData.keys()].join(', ')}); use buildWithExternalData() to get them`,
      );
    }
    return model;
  }

  /** The serialized model and the contents of every external data file it names, by location. */
  buildWithExternalData(): { model: Uint8Array; externalData: OnnxExternalDataFiles } {
    const options = { ...ONNX_MODEL_BUILDER_DEFAULTS, ...this.#options };
    const externalData: OnnxExternalDataFiles = new Map();
    const model = {
      irVersion: options.irVersion,
      opsetImport: [{ domain: '', version: options.opset }, ...(options.extraOpsets ?? [])],
      producerName: options.producerName,
      producerVersion: options.producerVersion,
      graph: this.graphProto(externalData),
      metadataProps: Object.entries(options.metadata ?? {}).map(([key, value]) => ({ key, value })),
    };
    const { ModelProto } = onnxProto;
    let message: protobuf.Message;
    try {
      message = ModelProto.fromObject(model);
    } catch (error) {
      // protobufjs refuses nesting deeper than protobuf's recursion limit (100 messages), as ONNX Runtime does.
      throw new Error(`the model cannot be encoded as an ONNX ModelProto: ${(error as Error).message}`, {
        cause: error,
      });
    }
    return { model: ModelProto.encode(message).finish(), externalData };
  }
}

function valueInfo(name: string, type: OnnxElementType, shape: readonly OnnxDim[] | null): ProtoObject {
  const tensorType: ProtoObject = { elemType: onnxTensorTypeNumber(type) };
  if (shape !== null) {
    tensorType.shape = {
      dim: shape.map((dim) =>
        dim === null
          ? {}
          : typeof dim === 'string'
            ? { dimParam: dim }
            : { dimValue: checkedSize(dim, name) },
      ),
    };
  }
  return { name, type: { tensorType } };
}

function checkedSize(size: number, tensorName: string): number {
  if (!Number.isSafeInteger(size) || size < 0) {
    throw new Error(`tensor "${tensorName}": dimension ${size} is not a size ≥ 0`);
  }
  return size;
}

/** The TypedArray each element type's values must come in. */
const VALUE_ARRAYS: Partial<
  Record<OnnxTensorTypeName, { new (length: number): OnnxTensorValues; name: string }>
> = {
  FLOAT: Float32Array,
  DOUBLE: Float64Array,
  INT8: Int8Array,
  UINT8: Uint8Array,
  BOOL: Uint8Array,
  INT16: Int16Array,
  UINT16: Uint16Array,
  FLOAT16: Uint16Array,
  BFLOAT16: Uint16Array,
  INT32: Int32Array,
  UINT32: Uint32Array,
  INT64: BigInt64Array,
  UINT64: BigUint64Array,
};

const ONNX_NAME_OF: Partial<Record<OnnxElementType, OnnxTensorTypeName>> = {
  FLOAT32: 'FLOAT',
  FLOAT64: 'DOUBLE',
};

/** Throws, saying what is wrong, unless the values fit the element type and the dimensions. */
function checkTensor(name: string, tensor: OnnxConstantTensor): void {
  const onnxName = ONNX_NAME_OF[tensor.type] ?? (tensor.type as OnnxTensorTypeName);
  const expected = VALUE_ARRAYS[onnxName];
  if (expected === undefined) {
    throw new Error(
      `tensor "${name}": the builder cannot store ${onnxName} values; use a numeric element type`,
    );
  }
  if (!(tensor.values instanceof expected)) {
    throw new Error(`tensor "${name}": ${onnxName} values must come as a ${expected.name}`);
  }
  const count = tensor.dims.reduce((product, dim) => product * checkedSize(dim, name), 1);
  if (tensor.values.length !== count) {
    throw new Error(
      `tensor "${name}": shape [${tensor.dims.join(', ')}] holds ${count} elements, but ${tensor.values.length} values were given`,
    );
  }
}

/**
 * The TensorProto object. External data is appended to its file in `files`, at an offset aligned to 4096 bytes
 * as ONNX recommends for memory mapping.
 */
function tensorProto(name: string, tensor: OnnxConstantTensor, files: OnnxExternalDataFiles): ProtoObject {
  const proto = { name, dataType: onnxTensorTypeNumber(tensor.type), dims: [...tensor.dims] };
  const data = littleEndianBytes(tensor.values);
  const location = tensor.externalLocation;
  if (location === undefined) return { ...proto, rawData: data };

  const existing = files.get(location) ?? new Uint8Array(0);
  const offset = Math.ceil(existing.length / 4096) * 4096;
  const grown = new Uint8Array(offset + data.length);
  grown.set(existing);
  grown.set(data, offset);
  files.set(location, grown);
  return {
    ...proto,
    dataLocation: DATA_LOCATION.EXTERNAL,
    externalData: [
      { key: 'location', value: location },
      { key: 'offset', value: String(offset) },
      { key: 'length', value: String(data.length) },
    ],
  };
}

/** raw_data must be little-endian whatever the host's byte order (onnx.proto). */
function littleEndianBytes(values: OnnxTensorValues): Uint8Array {
  const bytes = new Uint8Array(values.length * values.BYTES_PER_ELEMENT);
  const view = new DataView(bytes.buffer);
  const step = values.BYTES_PER_ELEMENT;
  for (let i = 0; i < values.length; i++) {
    const offset = i * step;
    if (values instanceof Float32Array) view.setFloat32(offset, values[i]!, true);
    else if (values instanceof Float64Array) view.setFloat64(offset, values[i]!, true);
    else if (values instanceof BigInt64Array) view.setBigInt64(offset, values[i]!, true);
    else if (values instanceof BigUint64Array) view.setBigUint64(offset, values[i]!, true);
    else if (values instanceof Int8Array) view.setInt8(offset, values[i]!);
    else if (values instanceof Uint8Array) view.setUint8(offset, values[i]!);
    else if (values instanceof Int16Array) view.setInt16(offset, values[i]!, true);
    else if (values instanceof Uint16Array) view.setUint16(offset, values[i]!, true);
    else if (values instanceof Int32Array) view.setInt32(offset, values[i]!, true);
    else view.setUint32(offset, values[i]!, true);
  }
  return bytes;
}
