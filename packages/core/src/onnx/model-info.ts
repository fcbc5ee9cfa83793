import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { dataTypeFromOnnx } from '../tensors/data-type.js';
import { TensorMetadataSchema, type TensorMetadata } from '../tensors/tensor-metadata.js';
import { normalizeLocation, unsafeLocationReason } from './external-data.js';
import { MIGRATION_GUIDE, isEdgeManagerPackageFile } from '../package/foreign-package.js';
import { onnxTensorTypeName, supportedOnnxTensorTypes } from './onnx-data-types.js';
import {
  DATA_LOCATION,
  int64ToNumber,
  onnxProto,
  type GraphMessage,
  type ModelMessage,
  type NodeMessage,
  type SparseTensorMessage,
  type TensorMessage,
  type TypeMessage,
  type ValueInfoMessage,
} from './onnx-proto.js';

/** What EdgeFleet needs to know about an ONNX model: its interface, its versions, and its companion files. */
export const OnnxModelInfoSchema = z.object({
  /** Graph inputs a caller must feed; inputs that are initializers (weights with defaults) are left out. */
  inputs: z.array(TensorMetadataSchema),
  outputs: z.array(TensorMetadataSchema),
  irVersion: z.number().int().min(1),
  opsetImports: z.array(z.object({ domain: z.string(), version: z.number().int() })),
  producerName: z.string(),
  producerVersion: z.string(),
  /** Files, relative to the model's directory, that hold externally stored tensor data (sorted, distinct). */
  externalDataFiles: z.array(z.string().min(1)),
});
export type OnnxModelInfo = z.infer<typeof OnnxModelInfoSchema>;

/** Why a model was rejected, for callers that map errors to status codes or exit codes. */
export type OnnxModelErrorReason =
  | 'not-found'
  | 'unreadable'
  | 'not-onnx'
  | 'invalid-model'
  | 'unsupported-type'
  | 'non-tensor'
  | 'unsafe-external-data'
  | 'missing-external-data';

/** A model file that EdgeFleet cannot read or cannot serve; the message says what was wrong and what is expected. */
export class OnnxModelError extends Error {
  override readonly name = 'OnnxModelError';
  readonly reason: OnnxModelErrorReason;

  constructor(message: string, reason: OnnxModelErrorReason, options?: { cause?: unknown }) {
    super(message, options);
    this.reason = reason;
  }
}

export interface ParseOnnxOptions {
  /** How messages name the model, e.g. its path; defaults to "the model". */
  source?: string;
}

/** Reads the interface and metadata of an ONNX model held in memory. Throws only OnnxModelError. */
export function parseOnnxModelInfo(bytes: Uint8Array, options: ParseOnnxOptions = {}): OnnxModelInfo {
  const source = options.source ?? 'the model';
  const model = decodeModel(bytes, source);
  const graph = model.graph!;

  const initializerNames = new Set<string>([
    ...graph.initializer.map((tensor) => tensor.name),
    ...graph.sparseInitializer.map((sparse) => sparse.values?.name ?? ''),
  ]);
  const inputs = graph.input
    .filter((input) => !initializerNames.has(input.name))
    .map((input) => tensorMetadata(input, 'input', source));
  const outputs = graph.output.map((output) => tensorMetadata(output, 'output', source));
  rejectDuplicateNames(inputs, 'input', source);
  rejectDuplicateNames(outputs, 'output', source);

  const info = {
    inputs,
    outputs,
    irVersion: int64ToNumber(model.irVersion)!,
    opsetImports: model.opsetImport.map((opset) => {
      const version = int64ToNumber(opset.version);
      if (version === undefined) {
        throw new OnnxModelError(
          `${source} imports operator set "${opset.domain}" with version ${opset.version.toString()}, which is not a valid version number`,
          'invalid-model',
        );
      }
      return { domain: opset.domain, version };
    }),
    producerName: model.producerName,
    producerVersion: model.producerVersion,
    externalDataFiles: externalDataLocations(model, source),
  };
  const checked = OnnxModelInfoSchema.safeParse(info);
  if (!checked.success) {
    const problems = checked.error.issues
      .map((issue) => `${issue.path.join('.')}: ${issue.message}`)
      .join('; ');
    throw new OnnxModelError(
      `${source} declares an interface EdgeFleet cannot record (${problems}); tensor names must be 1–1024 characters and shapes at most 32 dimensions`,
      'invalid-model',
    );
  }
  return checked.data;
}

/**
 * Reads the interface and metadata of the ONNX model file at `modelPath`, and checks that every external data
 * file it names sits next to it (those files must travel with the model). Throws only OnnxModelError.
 */
export async function readOnnxModelInfo(modelPath: string): Promise<OnnxModelInfo> {
  let bytes: Uint8Array;
  try {
    bytes = await readFile(modelPath);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT')
      throw new OnnxModelError(`${modelPath} does not exist`, 'not-found', { cause: error });
    if (code === 'EISDIR') {
      throw new OnnxModelError(`${modelPath} is a directory; expected an ONNX model file`, 'unreadable', {
        cause: error,
      });
    }
    throw new OnnxModelError(`could not read ${modelPath}: ${(error as Error).message}`, 'unreadable', {
      cause: error,
    });
  }
  const info = parseOnnxModelInfo(bytes, { source: modelPath });
  for (const location of info.externalDataFiles) {
    const dataPath = path.join(path.dirname(modelPath), location);
    const isFile = await stat(dataPath).then(
      (stats) => stats.isFile(),
      () => false,
    );
    if (!isFile) {
      throw new OnnxModelError(
        `${modelPath} keeps tensor data in the external file "${location}", but ${dataPath} is not a readable file; external data files must sit beside the model at the paths it names`,
        'missing-external-data',
      );
    }
  }
  return info;
}

/** For a file of an Edge Manager package (compiled.so, …), what it is and what to do instead. */
function neoHint(source: string): string {
  return isEdgeManagerPackageFile(source)
    ? `; it looks like a Neo/DLR-compiled model file of a SageMaker Edge Manager package, and EdgeFleet runs ONNX models: re-export the model to ONNX and package that (see ${MIGRATION_GUIDE})`
    : '';
}

function decodeModel(bytes: Uint8Array, source: string): ModelMessage {
  if (bytes.length === 0) {
    throw new OnnxModelError(`${source} is not an ONNX model: it is empty`, 'not-onnx');
  }
  let model: ModelMessage;
  try {
    model = onnxProto.ModelProto.decode(bytes) as unknown as ModelMessage;
  } catch (error) {
    throw new OnnxModelError(
      `${source} is not an ONNX model: it does not decode as an ONNX ModelProto (${(error as Error).message})${neoHint(source)}`,
      'not-onnx',
      { cause: error },
    );
  }
  if (!Object.hasOwn(model, 'graph') || model.graph === null) {
    throw new OnnxModelError(
      `${source} is not an ONNX model: it has no graph (ModelProto.graph)${neoHint(source)}`,
      'not-onnx',
    );
  }
  const irVersion = int64ToNumber(model.irVersion);
  if (irVersion === undefined || irVersion < 1) {
    throw new OnnxModelError(
      `${source} is not an ONNX model: its ir_version is ${model.irVersion.toString()}; expected a positive IR version`,
      'not-onnx',
    );
  }
  return model;
}

const NON_TENSOR_KINDS: Record<NonNullable<TypeMessage['value']>, string> = {
  tensorType: 'tensor',
  sequenceType: 'sequence',
  mapType: 'map',
  optionalType: 'optional value',
  sparseTensorType: 'sparse tensor',
  opaqueType: 'opaque value',
};

function tensorMetadata(value: ValueInfoMessage, role: 'input' | 'output', source: string): TensorMetadata {
  if (value.name.length === 0) {
    throw new OnnxModelError(
      `${source} has a graph ${role} without a name; every ${role} must be named`,
      'invalid-model',
    );
  }
  const label = `${role} "${value.name}"`;
  const type = value.type;
  if (type === null || type.value === undefined) {
    throw new OnnxModelError(`${source}: ${label} declares no type; expected a tensor type`, 'invalid-model');
  }
  if (type.value !== 'tensorType' || type.tensorType === null) {
    throw new OnnxModelError(
      `${source}: ${label} is a ${NON_TENSOR_KINDS[type.value]}, not a tensor; SageMaker Edge exchanges tensors only`,
      'non-tensor',
    );
  }
  const { elemType, shape } = type.tensorType;
  if (elemType === 0) {
    throw new OnnxModelError(`${source}: ${label} declares no element type (UNDEFINED)`, 'invalid-model');
  }
  const dataType = dataTypeFromOnnx(elemType);
  if (dataType === undefined) {
    throw new OnnxModelError(
      `${source}: ${label} has element type ${onnxTensorTypeName(elemType)} (ONNX TensorProto.DataType ${elemType}), which SageMaker Edge cannot express; supported element types: ${supportedOnnxTensorTypes()}`,
      'unsupported-type',
    );
  }
  if (shape === null) {
    throw new OnnxModelError(
      `${source}: ${label} declares no shape, not even its rank; export the model with shapes (or run ONNX shape inference on it)`,
      'invalid-model',
    );
  }
  const dims = shape.dim.map((dim, index) => {
    if (dim.value !== 'dimValue') return -1; // a symbolic (dim_param) or unknown dimension
    const size = int64ToNumber(dim.dimValue);
    if (size === undefined || size < 0) {
      throw new OnnxModelError(
        `${source}: ${label} has dimension ${index} of size ${dim.dimValue.toString()}; expected a size ≥ 0 or a symbolic dimension`,
        'invalid-model',
      );
    }
    return size;
  });
  return { name: value.name, dataType, shape: dims };
}

function rejectDuplicateNames(tensors: TensorMetadata[], role: 'input' | 'output', source: string): void {
  const seen = new Set<string>();
  for (const { name } of tensors) {
    if (seen.has(name)) {
      throw new OnnxModelError(
        `${source} declares the ${role} "${name}" twice; names must be distinct`,
        'invalid-model',
      );
    }
    seen.add(name);
  }
}

/** The distinct, normalized locations of every externally stored tensor, in any graph or function. */
function externalDataLocations(model: ModelMessage, source: string): string[] {
  const locations = new Set<string>();

  const visitTensor = (tensor: TensorMessage | null): void => {
    if (tensor === null || tensor.dataLocation !== DATA_LOCATION.EXTERNAL) return;
    const label = tensor.name ? `tensor "${tensor.name}"` : 'an unnamed tensor';
    const entry = tensor.externalData.find((item) => item.key === 'location');
    if (entry === undefined) {
      throw new OnnxModelError(
        `${source}: ${label} is stored externally but its external_data names no "location"`,
        'invalid-model',
      );
    }
    const reason = unsafeLocationReason(entry.value);
    if (reason !== undefined) {
      throw new OnnxModelError(
        `${source}: ${label} keeps its data in "${entry.value}", which cannot travel with the model because ${reason}; expected a relative path inside the model's directory`,
        'unsafe-external-data',
      );
    }
    locations.add(normalizeLocation(entry.value));
  };
  const visitSparse = (sparse: SparseTensorMessage | null): void => {
    if (sparse === null) return;
    visitTensor(sparse.values);
    visitTensor(sparse.indices);
  };
  const visitNodes = (nodes: NodeMessage[]): void => {
    for (const node of nodes) {
      for (const attribute of node.attribute) {
        visitTensor(attribute.t);
        attribute.tensors.forEach(visitTensor);
        visitSparse(attribute.sparseTensor);
        attribute.sparseTensors.forEach(visitSparse);
        if (attribute.g !== null) visitGraph(attribute.g);
        attribute.graphs.forEach(visitGraph);
      }
    }
  };
  // Nesting is bounded by the decoder's recursion limit, so plain recursion is safe here.
  const visitGraph = (graph: GraphMessage): void => {
    graph.initializer.forEach(visitTensor);
    graph.sparseInitializer.forEach(visitSparse);
    visitNodes(graph.node);
  };

  visitGraph(model.graph!);
  for (const fn of model.functions) visitNodes(fn.node);
  return [...locations].sort();
}
