import type { TensorMetadata } from '@edgefleet/core';
const utf8 = new TextDecoder('utf-8', { fatal: true });

/** A client's tensor name for messages: quoted text when it is UTF-8, else its bytes in hex. */
export function showTensorName(name: Uint8Array): string {
  if (name.length === 0) return '(unnamed)';
  try {
    return JSON.stringify(utf8.decode(name));
  } catch {
    const hex = Buffer.from(name.subarray(0, 32)).toString('hex');
    return `0x${hex}${name.length > 32 ? '…' : ''} (not UTF-8)`;
  }
}

/** A model's tensor name as the bytes a client sends and receives (manifest names are UTF-8 text). */
export function tensorNameBytes(name: string): Buffer {
  return Buffer.from(name, 'utf8');
}

/** Each model's declared tensor names as bytes, made once per model rather than per request. */
const declaredNamesOf = new WeakMap<readonly TensorMetadata[], Buffer[]>();

/** The declared tensors' names as bytes, in their order (shared by every request: nobody writes to them). */
export function declaredNameBytes(declared: readonly TensorMetadata[]): Buffer[] {
  let names = declaredNamesOf.get(declared);
  if (names === undefined) {
    names = declared.map((d) => tensorNameBytes(d.name));
    declaredNamesOf.set(declared, names);
  }
  return names;
}
