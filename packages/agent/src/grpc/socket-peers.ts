import type { Socket } from 'node:net';
import type { PeerCredentials } from '../shm/index.js';

/** Reads a connected Unix socket's peer credentials (SharedMemoryReader's peerCredentialsOf); null: unknown. */
export type PeerCredentialsReader = (socket: Socket) => PeerCredentials | null;

/** What a handler asks of its call to find its connection (grpc-js ServerUnaryCall fits). */
export interface CallPeer {
  getPeer(): string;
}

/**
 * The credentials of each connection on the agent's Unix socket, found per call. grpc-js does not hand a call its
 * socket, so each accepted socket gets a unique tag as its `remoteAddress` (empty for Unix sockets), which
 * grpc-js reports as the call's peer (`call.getPeer()`). A call whose connection is not known, or whose
 * credentials could not be read, gets null: shared memory is then refused (fail closed).
 */
export class SocketPeers {
  readonly #read: PeerCredentialsReader | null;
  readonly #peers = new Map<string, PeerCredentials>();
  #next = 0;

  constructor(read: PeerCredentialsReader | null) {
    this.#read = read;
  }

  /** Call on every accepted connection, before grpc-js sees it. */
  accepted(socket: Socket): void {
    const tag = `unix-peer-${++this.#next}`;
    // Unknown credentials: this connection gets no shared memory.
    const credentials = this.#read?.(socket) ?? null;
    if (credentials !== null) this.#peers.set(tag, credentials);
    Object.defineProperty(socket, 'remoteAddress', { value: tag, configurable: true });
    socket.once('close', () => this.#peers.delete(tag));
  }

  of(call: CallPeer): PeerCredentials | null {
    return this.#peers.get(call.getPeer()) ?? null;
  }

  /** Connections open now whose credentials are known. */
  get size(): number {
    return this.#peers.size;
  }
}
