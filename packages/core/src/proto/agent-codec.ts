import protobuf from 'protobufjs';
import { AGENT_PROTO_SOURCE } from './agent-proto.js';
import type { AgentMessageName, AgentMessages, MessageInit } from './agent-messages.js';

/** The protobuf package of the SageMaker Edge agent interface. */
export const AGENT_PROTO_PACKAGE = 'AWS.SageMaker.Edge';

/** Thrown when bytes are not a valid encoding of the expected message. */
export class AgentMessageDecodeError extends Error {
  constructor(
    readonly messageName: AgentMessageName,
    readonly reason: string,
  ) {
    super(
      `malformed ${AGENT_PROTO_PACKAGE}.${messageName}: ${reason}; expected a valid protobuf encoding of it`,
    );
    this.name = 'AgentMessageDecodeError';
  }
}

/** Encodes and decodes the messages of agent.proto. */
export interface AgentCodec {
  /**
   * The wire bytes of a message. Bytes fields of 1 KiB or more (tensor data) are not copied on the way: the
   * output is assembled from the caller's Buffers in a single copy (the one contiguous Buffer gRPC needs).
   * Byte-identical to protobufjs's own encoding (fields in field-number order, proto3 defaults left out).
   */
  encode<N extends AgentMessageName>(name: N, message: MessageInit<AgentMessages[N]>): Buffer;
  /**
   * The message in `bytes`. Bytes fields (tensor data, tensor names) are views into `bytes`, not copies, so they
   * are valid while `bytes` is. uint64/int64 fields become numbers: exact up to 2^53 − 1, which covers every
   * real shmid, offset, size and timestamp; a larger value becomes the nearest double, still far beyond any real
   * segment or time, so the agent's range checks reject it. Enums stay numbers (proto3 enums are open).
   * @throws AgentMessageDecodeError when `bytes` is not a valid encoding.
   */
  decode<N extends AgentMessageName>(name: N, bytes: Uint8Array): AgentMessages[N];
}

/** Bytes fields at least this long go into the output as they are instead of through protobufjs's writer. */
const ZERO_COPY_MIN_BYTES = 1024;

const WIRE_TYPE_LENGTH_DELIMITED = 2;

const TO_OBJECT_OPTIONS: protobuf.IConversionOptions = {
  longs: Number,
  defaults: true,
  arrays: true,
  oneofs: true,
};

/** Parses agent.proto and returns its codec. The protobufjs types are private to the returned codec. */
export function createAgentCodec(): AgentCodec {
  const root = protobuf.parse(AGENT_PROTO_SOURCE).root;
  root.resolveAll();
  const types = new Map<AgentMessageName, protobuf.Type>();
  const typeOf = (name: AgentMessageName): protobuf.Type => {
    let type = types.get(name);
    if (type === undefined) {
      type = root.lookupType(`${AGENT_PROTO_PACKAGE}.${name}`);
      types.set(name, type);
    }
    return type;
  };
  const chunked = new ChunkedEncoder();

  return {
    encode(name, message) {
      return chunked.encode(typeOf(name), message as Record<string, unknown>);
    },
    decode<N extends AgentMessageName>(name: N, bytes: Uint8Array): AgentMessages[N] {
      const type = typeOf(name);
      // protobufjs returns subarray views for bytes fields only when reading a Buffer; wrap without copying.
      const buffer = Buffer.isBuffer(bytes)
        ? bytes
        : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      let decoded: protobuf.Message;
      try {
        decoded = type.decode(buffer);
      } catch (error) {
        throw new AgentMessageDecodeError(name, error instanceof Error ? error.message : String(error));
      }
      return type.toObject(decoded, TO_OBJECT_OPTIONS) as AgentMessages[N];
    },
  };
}

/**
 * Encodes a message as a list of chunks: protobufjs encodes runs of small fields, while large bytes fields and
 * the messages around them are framed by hand (tag, length) around the caller's own Buffer, so tensor data is
 * copied once, by the final concat, instead of by every buffer growth and length-prefix shift in the writer.
 */
class ChunkedEncoder {
  private readonly containsBytes = new Map<protobuf.Type, boolean>();
  private readonly sortedFields = new Map<protobuf.Type, protobuf.Field[]>();

  private readonly bytesPaths = new Map<protobuf.Type, protobuf.Field[]>();

  encode(type: protobuf.Type, message: Record<string, unknown>): Buffer {
    // Without a large bytes value (every small Predict response, every other message) protobufjs's own encoding
    // in one pass is cheaper than framing chunks by hand, and it is the reference encoding anyway.
    if (!this.hasLargeBytes(type, message)) return type.encode(message).finish() as Buffer;
    const chunks: Uint8Array[] = [];
    const length = this.collect(type, message, chunks);
    return Buffer.concat(chunks, length);
  }

  /** Appends the encoding of `message` to `chunks`; returns its byte length. */
  private collect(type: protobuf.Type, message: Record<string, unknown>, chunks: Uint8Array[]): number {
    let length = 0;
    let pending: Record<string, unknown> | undefined;
    const flush = (): void => {
      if (pending === undefined) return;
      const bytes = type.encode(pending).finish();
      chunks.push(bytes);
      length += bytes.length;
      pending = undefined;
    };

    for (const field of this.fieldsOf(type)) {
      const value = message[field.name];
      if (value === undefined || value === null) continue;
      const nested = field.resolvedType instanceof protobuf.Type ? field.resolvedType : undefined;

      if (nested !== undefined && this.hasBytesField(nested)) {
        flush();
        const elements = field.repeated
          ? (value as Record<string, unknown>[])
          : [value as Record<string, unknown>];
        for (const element of elements) {
          const headerIndex = chunks.length;
          chunks.push(EMPTY);
          const bodyLength = this.collect(nested, element, chunks);
          const header = lengthDelimitedHeader(field.id, bodyLength);
          chunks[headerIndex] = header;
          length += header.length + bodyLength;
        }
      } else if (field.type === 'bytes' && !field.repeated && isLargeBytes(value)) {
        flush();
        const header = lengthDelimitedHeader(field.id, value.length);
        chunks.push(header, value);
        length += header.length + value.length;
      } else {
        (pending ??= {})[field.name] = value;
      }
    }
    flush();
    return length;
  }

  /** Whether `message` holds a bytes value of ZERO_COPY_MIN_BYTES or more, at any depth. */
  private hasLargeBytes(type: protobuf.Type, message: Record<string, unknown>): boolean {
    for (const field of this.bytesPathsOf(type)) {
      const value = message[field.name];
      if (value === undefined || value === null) continue;
      if (field.type === 'bytes') {
        if (field.repeated ? (value as unknown[]).some(isLargeBytes) : isLargeBytes(value)) return true;
        continue;
      }
      const nested = field.resolvedType as protobuf.Type;
      const elements = field.repeated
        ? (value as Record<string, unknown>[])
        : [value as Record<string, unknown>];
      for (const element of elements) {
        if (element !== null && element !== undefined && this.hasLargeBytes(nested, element)) return true;
      }
    }
    return false;
  }

  /** The fields of `type` that are bytes or messages holding bytes somewhere. */
  private bytesPathsOf(type: protobuf.Type): protobuf.Field[] {
    let fields = this.bytesPaths.get(type);
    if (fields === undefined) {
      fields = type.fieldsArray.filter(
        (field) =>
          field.type === 'bytes' ||
          (field.resolvedType instanceof protobuf.Type && this.hasBytesField(field.resolvedType)),
      );
      this.bytesPaths.set(type, fields);
    }
    return fields;
  }

  private fieldsOf(type: protobuf.Type): protobuf.Field[] {
    let fields = this.sortedFields.get(type);
    if (fields === undefined) {
      // Field-number order, as protobufjs (and the protobuf spec's canonical encoding) writes them.
      fields = [...type.fieldsArray].sort((a, b) => a.id - b.id);
      this.sortedFields.set(type, fields);
    }
    return fields;
  }

  /** Whether the type has a bytes field, directly or in a nested message (the schema has no cycles). */
  private hasBytesField(type: protobuf.Type): boolean {
    let result = this.containsBytes.get(type);
    if (result === undefined) {
      result = type.fieldsArray.some(
        (field) =>
          field.type === 'bytes' ||
          (field.resolvedType instanceof protobuf.Type && this.hasBytesField(field.resolvedType)),
      );
      this.containsBytes.set(type, result);
    }
    return result;
  }
}

const EMPTY = new Uint8Array(0);

function isLargeBytes(value: unknown): value is Uint8Array {
  return value instanceof Uint8Array && value.length >= ZERO_COPY_MIN_BYTES;
}

/** Tag (field number, wire type 2) and length, both varints. */
function lengthDelimitedHeader(fieldId: number, length: number): Buffer {
  const header = Buffer.allocUnsafe(20);
  let position = writeVarint(header, 0, fieldId * 8 + WIRE_TYPE_LENGTH_DELIMITED);
  position = writeVarint(header, position, length);
  return header.subarray(0, position);
}

function writeVarint(target: Buffer, start: number, value: number): number {
  let position = start;
  let rest = value;
  while (rest >= 0x80) {
    target[position++] = (rest % 0x80) | 0x80;
    rest = Math.floor(rest / 0x80);
  }
  target[position++] = rest;
  return position;
}
