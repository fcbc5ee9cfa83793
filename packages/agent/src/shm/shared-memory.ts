import type { Socket } from 'node:net';
import { markAsUntransferable } from 'node:worker_threads';
import { z } from 'zod';
import { peerMay, type PeerCredentials } from './segment-access.js';
import { identityOf, type SegmentReference } from './segment-reference.js';
import { isSysvShmSystemError } from './sysv-shm-addon.js';
import type { SegmentStat, SysvShmAddon } from './sysv-shm-addon.js';

/** Largest System V shmid (an int). */
const MAX_SHMID = 2 ** 31 - 1;

/** A SharedMemoryHandle as decoded from a request (see @edgefleet/core's proto): where a tensor's bytes lie. */
export const SegmentLocationSchema = z.object({
  segmentId: z.number().refine((value) => Number.isInteger(value) && value >= 0 && value <= MAX_SHMID, {
    error: (issue) =>
      `segment_id ${String(issue.input)} is not a System V shmid (an integer 0..${MAX_SHMID})`,
  }),
  offset: z.number().refine((value) => Number.isSafeInteger(value) && value >= 0, {
    error: (issue) => `offset ${String(issue.input)} is not a byte offset (an integer 0..2^53−1)`,
  }),
  /** 0 means "derive the length from the tensor's shape and type". */
  size: z.number().refine((value) => Number.isSafeInteger(value) && value >= 0, {
    error: (issue) =>
      `size ${String(issue.input)} is not a byte length (an integer 0..2^53−1; 0 = derive it)`,
  }),
});
export type SegmentLocation = z.infer<typeof SegmentLocationSchema>;

export type SharedMemoryErrorCode =
  /** The handle or expected length is not a valid number. */
  | 'INVALID_HANDLE'
  /** `size` is set and differs from the length the tensor's shape and type give. */
  | 'SIZE_MISMATCH'
  /** offset + length lies past the end of the segment. */
  | 'OUT_OF_BOUNDS'
  /** No segment has this id (never existed, or removed: EINVAL / EIDRM). */
  | 'SEGMENT_NOT_FOUND'
  /** The agent may not read the segment (EACCES / EPERM). */
  | 'ACCESS_DENIED'
  /** The segment exists but could not be attached (e.g. ENOMEM, EMFILE), or the reader is closed. */
  | 'ATTACH_FAILED'
  /** The id names another segment than the one the agent checked (removed and its id reused, or IPC_SET since). */
  | 'SEGMENT_CHANGED';

/** The one error type SharedMemoryReader throws. Every code but ATTACH_FAILED is the client's mistake. */
export class SharedMemoryError extends Error {
  constructor(
    readonly code: SharedMemoryErrorCode,
    message: string,
    readonly segmentId?: number,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = 'SharedMemoryError';
  }
}

/**
 * A tensor's bytes in a segment, held until `release()`. While held, the segment stays mapped (a reader never
 * unmaps memory that may be in use). After release, `data` must not be used: it may become zero-length at any
 * time. `data` is read-only memory: writing to it kills the process. As a safety net, a lease whose `data`
 * is garbage-collected unreleased is released then.
 */
export interface SegmentLease {
  readonly data: Buffer;
  /** Where `data` lies, for an inference worker to map the same bytes itself (see SegmentReference). */
  readonly reference: SegmentReference;
  release(): void;
}

export interface SharedMemoryReaderOptions {
  addon: SysvShmAddon;
  /** Attachments kept mapped for reuse across requests (clients usually reuse a segment). Default 16. */
  maxCachedSegments?: number;
  /**
   * A read checks the other cached segments (IPC_STAT each, to let go of removed ones) at most this often, in
   * milliseconds; 0 = on every read. Default 1000. Between those, `sweep()` on a timer lets go of them.
   */
  readSweepIntervalMs?: number;
  /** Milliseconds for `readSweepIntervalMs` (tests give their own). Default performance.now. */
  now?: () => number;
}

/** One mapping of a segment, possibly shared by several leases. */
interface Attachment {
  readonly segmentId: number;
  readonly buffer: ArrayBuffer;
  /** Leases not yet released. An attachment out of the cache is unmapped when this drops to 0. */
  leases: number;
}

/**
 * Reads tensors out of System V segments named by SageMaker Edge SharedMemoryHandles, with bounds checks against
 * the segment's real size and a small cache of read-only attachments.
 *
 * Cache validity: while we hold a segment attached, the kernel cannot give its id to another segment, so a
 * cached shmid always maps the segment that id names. A cached attachment is dropped when IPC_STAT on its id
 * fails or says the segment is marked for removal (we would otherwise keep a removed segment alive); each read
 * re-checks the segment it uses, and the idle ones are swept by reads (at most every readSweepIntervalMs) and by
 * the owner's timer (`sweep`).
 */
export class SharedMemoryReader {
  private readonly addon: SysvShmAddon;
  private readonly maxCachedSegments: number;
  /** By shmid, least recently used first. */
  private readonly cache = new Map<number, Attachment>();
  /**
   * Read-write mappings of segments outputs were written to, by shmid, least recently used first: clients reuse
   * their output regions, and mapping a segment per write costs a page fault per page. Kept, checked and swept
   * like `cache`; nothing outside a write holds them, so they are unmapped as soon as they are dropped.
   */
  private readonly writable = new Map<number, ArrayBuffer>();
  private readonly unreleased = new FinalizationRegistry<() => void>((release) => release());
  private closed = false;
  private readonly readSweepIntervalMs: number;
  private readonly now: () => number;
  private lastSweep = -Infinity;

  constructor(options: SharedMemoryReaderOptions) {
    this.addon = options.addon;
    this.maxCachedSegments = options.maxCachedSegments ?? 16;
    if (!Number.isInteger(this.maxCachedSegments) || this.maxCachedSegments < 0) {
      throw new RangeError(`maxCachedSegments must be an integer ≥ 0, not ${this.maxCachedSegments}`);
    }
    this.readSweepIntervalMs = options.readSweepIntervalMs ?? 1000;
    if (!(this.readSweepIntervalMs >= 0)) {
      throw new RangeError(`readSweepIntervalMs must be a number ≥ 0, not ${this.readSweepIntervalMs}`);
    }
    this.now = options.now ?? (() => performance.now());
  }

  /**
   * The bytes of one tensor: `expectedByteLength` (shape × element size) bytes at `location.offset` in segment
   * `location.segmentId`. `location.size` 0 means that length; any other size must equal it. `caller` is the
   * process asking (its socket's peer credentials): a segment it could not attach itself is ACCESS_DENIED, as
   * is any segment when the caller is unknown (null: not on the agent's Unix socket).
   * @throws SharedMemoryError, and nothing else.
   */
  readTensorFromSegment(
    location: SegmentLocation,
    expectedByteLength: number,
    caller: PeerCredentials | null,
  ): SegmentLease {
    if (this.closed) throw new SharedMemoryError('ATTACH_FAILED', 'the shared memory reader is closed');
    const { segmentId, offset, length } = validate(location, expectedByteLength);
    const stat = this.checkAccess(segmentId, caller, 'read');
    checkBounds(segmentId, offset, length, stat.size);

    let attachment = this.cache.get(segmentId);
    if (attachment !== undefined && (stat.markedForRemoval || attachment.buffer.byteLength !== stat.size)) {
      this.retire(attachment);
      attachment = undefined;
    }
    if (attachment === undefined) {
      attachment = this.attach(segmentId);
      // A segment marked for removal is still served (Linux lets clients remove it right after attaching it
      // themselves), but not cached: it is unmapped when this lease ends.
      if (!stat.markedForRemoval && this.maxCachedSegments > 0) this.cache.set(segmentId, attachment);
    } else {
      this.cache.delete(segmentId);
      this.cache.set(segmentId, attachment);
    }

    // The authoritative check: against the mapping itself, whose length V8 enforces on every view.
    try {
      checkBounds(segmentId, offset, length, attachment.buffer.byteLength);
    } catch (error) {
      this.detachIfUnused(attachment);
      throw error;
    }
    const lease = this.lease(attachment, {
      segmentId,
      offset,
      byteLength: length,
      identity: identityOf(stat),
    });
    // IPC_STAT of every cached segment on every read would cost more than the read: the timer's sweep (see
    // readSweepIntervalMs) lets go of removed segments meanwhile; a cache over its size is trimmed at once.
    const now = this.now();
    if (now - this.lastSweep >= this.readSweepIntervalMs) {
      this.lastSweep = now;
      this.sweepExcept(segmentId);
    } else if (this.cache.size > this.maxCachedSegments) {
      this.trimCache();
    }
    return lease;
  }

  /**
   * Checks that `caller` may use the segment as asked (read: attach it read-only; write: read-write) and that
   * `length` bytes at `offset` lie inside it; returns its status. For registering a region before any use.
   * @throws SharedMemoryError, and nothing else.
   */
  checkSegment(
    segmentId: number,
    offset: number,
    length: number,
    caller: PeerCredentials | null,
    access: 'read' | 'write',
  ): SegmentStat {
    if (this.closed) throw new SharedMemoryError('ATTACH_FAILED', 'the shared memory reader is closed');
    validate({ segmentId, offset, size: length }, length);
    const stat = this.checkAccess(segmentId, caller, access);
    checkBounds(segmentId, offset, length, stat.size);
    return stat;
  }

  /**
   * Checks as `checkSegment` does and returns where the bytes lie, for an inference worker that maps the segment
   * itself (see SegmentReference); nothing is attached here.
   * @throws SharedMemoryError, and nothing else.
   */
  referenceSegment(
    segmentId: number,
    offset: number,
    length: number,
    caller: PeerCredentials | null,
    access: 'read' | 'write',
  ): SegmentReference {
    const stat = this.checkSegment(segmentId, offset, length, caller, access);
    return { segmentId, offset, byteLength: length, identity: identityOf(stat) };
  }

  /**
   * Writes `bytes` at `offset` in the segment, for a caller who could write there itself (an inference output
   * the client asked for in shared memory, from a model run on the event loop). The segment is attached read-write
   * and kept for the next writes (`writable`, at most maxCachedSegments; let go of once removed).
   * @throws SharedMemoryError, and nothing else.
   */
  writeToSegment(segmentId: number, offset: number, bytes: Uint8Array, caller: PeerCredentials | null): void {
    const stat = this.checkSegment(segmentId, offset, bytes.byteLength, caller, 'write');
    let buffer = this.writable.get(segmentId);
    this.writable.delete(segmentId);
    if (buffer !== undefined && (stat.markedForRemoval || buffer.byteLength !== stat.size)) {
      detachQuietly(this.addon, buffer);
      buffer = undefined;
    }
    if (buffer === undefined) {
      try {
        buffer = this.addon.attachReadWrite(segmentId);
      } catch (error) {
        throw sharedMemoryErrorOf(error, segmentId, { action: 'attach', access: 'write' });
      }
      markAsUntransferable(buffer);
    }
    try {
      // The authoritative check: against the mapping itself.
      checkBounds(segmentId, offset, bytes.byteLength, buffer.byteLength);
      new Uint8Array(buffer, offset, bytes.byteLength).set(bytes);
    } finally {
      // A segment marked for removal is written but not kept (its client is letting it go).
      if (stat.markedForRemoval || this.maxCachedSegments === 0) detachQuietly(this.addon, buffer);
      else this.writable.set(segmentId, buffer);
      for (const [id, idle] of this.writable) {
        if (this.writable.size <= this.maxCachedSegments) break;
        this.writable.delete(id);
        detachQuietly(this.addon, idle);
      }
    }
  }

  /** Number of segments kept attached read-write for outputs. */
  get cachedWritableSegmentCount(): number {
    return this.writable.size;
  }

  private checkAccess(
    segmentId: number,
    caller: PeerCredentials | null,
    access: 'read' | 'write',
  ): SegmentStat {
    if (caller === null) {
      throw new SharedMemoryError(
        'ACCESS_DENIED',
        `shared memory segment ${segmentId} is refused: the agent uses shared memory only for callers on its Unix socket, whose credentials it knows; send the tensor's bytes in the request instead`,
        segmentId,
      );
    }
    const stat = this.statOrRetire(segmentId);
    if (!peerMay(stat, caller, access)) {
      throw new SharedMemoryError(
        'ACCESS_DENIED',
        `the caller (uid ${caller.uid}, gid ${caller.gid}) may not ${access} shared memory segment ${segmentId} (owner uid ${stat.ownerUid}, gid ${stat.ownerGid}, mode ${stat.mode.toString(8).padStart(4, '0')}); expected a segment the calling process could attach ${access === 'read' ? 'read-only' : 'read-write'} itself`,
        segmentId,
      );
    }
    return stat;
  }

  /**
   * Unmaps idle cached segments that were removed, marked for removal, or are beyond the cache size. Reads run
   * it at most every `readSweepIntervalMs`; call it on a timer so that removed segments go promptly.
   */
  sweep(): void {
    this.sweepExcept(undefined);
  }

  private sweepExcept(keep: number | undefined): void {
    for (const attachment of [...this.cache.values()]) {
      if (attachment.segmentId === keep || attachment.leases > 0) continue;
      if (this.isStale(attachment.segmentId, attachment.buffer)) this.retire(attachment);
    }
    this.trimCache();
    for (const [segmentId, buffer] of [...this.writable]) {
      if (this.isStale(segmentId, buffer)) this.dropWritable(segmentId);
    }
  }

  /** Whether a mapping no longer fits its segment: removed, marked for removal, or resized. */
  private isStale(segmentId: number, mapping: ArrayBuffer): boolean {
    try {
      const stat = this.addon.stat(segmentId);
      return stat.markedForRemoval || stat.size !== mapping.byteLength;
    } catch {
      return true;
    }
  }

  /** Unmaps the least recently used idle segments beyond the cache size. */
  private trimCache(): void {
    for (const attachment of [...this.cache.values()]) {
      if (this.cache.size <= this.maxCachedSegments) break;
      if (attachment.leases === 0) this.retire(attachment);
    }
  }

  private dropWritable(segmentId: number): void {
    const buffer = this.writable.get(segmentId);
    if (buffer === undefined) return;
    this.writable.delete(segmentId);
    detachQuietly(this.addon, buffer);
  }

  /**
   * The credentials of the process at the other end of a connected Unix socket (SO_PEERCRED on its descriptor);
   * null where they cannot be read (no descriptor, not a Unix socket): that caller gets no shared memory.
   */
  peerCredentialsOf(socket: Socket): PeerCredentials | null {
    const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd; // net.Socket has no public fd
    if (typeof fd !== 'number' || fd < 0) return null;
    try {
      const { pid, uid, gid, groups } = this.addon.peerCredentials(fd);
      return { pid, uid, gid, groups };
    } catch {
      return null;
    }
  }

  /** Number of segments kept attached for reuse. */
  get cachedSegmentCount(): number {
    return this.cache.size;
  }

  /** Unmaps every idle segment now and every leased one on its release; later reads fail. */
  close(): void {
    this.closed = true;
    for (const attachment of [...this.cache.values()]) this.retire(attachment);
    for (const segmentId of [...this.writable.keys()]) this.dropWritable(segmentId);
  }

  private statOrRetire(segmentId: number): SegmentStat {
    try {
      return this.addon.stat(segmentId);
    } catch (error) {
      const cached = this.cache.get(segmentId);
      if (cached !== undefined) this.retire(cached);
      this.dropWritable(segmentId);
      throw sharedMemoryErrorOf(error, segmentId, { action: 'read the size of' });
    }
  }

  private attach(segmentId: number): Attachment {
    let buffer: ArrayBuffer;
    try {
      buffer = this.addon.attachReadOnly(segmentId);
    } catch (error) {
      throw sharedMemoryErrorOf(error, segmentId, { action: 'attach' });
    }
    // Transferring it to a worker would hand over memory we are about to unmap; copying is fine.
    markAsUntransferable(buffer);
    return { segmentId, buffer, leases: 0 };
  }

  private lease(attachment: Attachment, reference: SegmentReference): SegmentLease {
    const data = Buffer.from(attachment.buffer, reference.offset, reference.byteLength);
    attachment.leases += 1;
    let released = false;
    const token = {};
    const release = (): void => {
      if (released) return;
      released = true;
      this.unreleased.unregister(token);
      attachment.leases -= 1;
      this.detachIfUnused(attachment);
    };
    this.unreleased.register(data, release, token);
    return { data, reference, release };
  }

  private retire(attachment: Attachment): void {
    if (this.cache.get(attachment.segmentId) === attachment) this.cache.delete(attachment.segmentId);
    this.detachIfUnused(attachment);
  }

  private detachIfUnused(attachment: Attachment): void {
    if (attachment.leases > 0 || this.cache.get(attachment.segmentId) === attachment) return;
    detachQuietly(this.addon, attachment.buffer);
  }
}

/** Detaches a mapping, ignoring one already detached (what a cleanup path wants). */
export function detachQuietly(addon: SysvShmAddon, buffer: ArrayBuffer): void {
  try {
    addon.detach(buffer);
  } catch {
    // Already detached.
  }
}

function validate(
  location: SegmentLocation,
  expectedByteLength: number,
): { segmentId: number; offset: number; length: number } {
  const parsed = SegmentLocationSchema.safeParse(location);
  if (!parsed.success) {
    throw new SharedMemoryError(
      'INVALID_HANDLE',
      `invalid shared memory handle: ${parsed.error.issues
        .map((issue) =>
          issue.code === 'custom' ? issue.message : `${issue.path.join('.')}: ${issue.message}`,
        )
        .join('; ')}`,
    );
  }
  const { segmentId, offset, size } = parsed.data;
  if (!Number.isSafeInteger(expectedByteLength) || expectedByteLength < 0) {
    throw new SharedMemoryError(
      'INVALID_HANDLE',
      `the tensor's byte length ${expectedByteLength} is not an integer 0..2^53−1`,
      segmentId,
    );
  }
  if (size !== 0 && size !== expectedByteLength) {
    throw new SharedMemoryError(
      'SIZE_MISMATCH',
      `shared memory handle size is ${size} bytes but the tensor's shape and type make ${expectedByteLength} ` +
        `(set size to ${expectedByteLength}, or to 0 to let the agent derive it)`,
      segmentId,
    );
  }
  return { segmentId, offset, length: expectedByteLength };
}

function checkBounds(segmentId: number, offset: number, length: number, segmentSize: number): void {
  if (offset > segmentSize || length > segmentSize - offset) {
    throw new SharedMemoryError(
      'OUT_OF_BOUNDS',
      `tensor of ${length} bytes at offset ${offset} runs past the end of shared memory segment ${segmentId} ` +
        `(${segmentSize} bytes); expected offset + length ≤ ${segmentSize}`,
      segmentId,
    );
  }
}

/**
 * The SharedMemoryError for a failed addon call on a segment, by its errno: EINVAL or EIDRM SEGMENT_NOT_FOUND,
 * EACCES or EPERM ACCESS_DENIED, anything else ATTACH_FAILED. `action` is what failed ("attach", "read the status
 * of"), `access` what the agent needed (read-only or read-write), `what` (optional) the tensor, as a prefix.
 */
export function sharedMemoryErrorOf(
  error: unknown,
  segmentId: number,
  { action, access = 'read', what }: { action: string; access?: 'read' | 'write'; what?: string },
): SharedMemoryError {
  const code = isSysvShmSystemError(error) ? error.code : undefined;
  const detail = error instanceof Error ? error.message : String(error);
  const prefix = what === undefined ? '' : `${what}: `;
  if (code === 'EINVAL' || code === 'EIDRM') {
    return new SharedMemoryError(
      'SEGMENT_NOT_FOUND',
      `${prefix}shared memory segment ${segmentId} does not exist (removed, or never created): cannot ${action} it (${detail})`,
      segmentId,
      { cause: error },
    );
  }
  if (code === 'EACCES' || code === 'EPERM') {
    return new SharedMemoryError(
      'ACCESS_DENIED',
      `${prefix}the agent may not ${access} shared memory segment ${segmentId}: cannot ${action} it (${detail}); ` +
        `expected a segment ${access === 'read' ? 'readable' : 'writable'} by the agent’s user (clients usually set mode ${access === 'read' ? '0400' : '0600'} as the same user)`,
      segmentId,
      { cause: error },
    );
  }
  return new SharedMemoryError(
    'ATTACH_FAILED',
    `${prefix}cannot ${action} shared memory segment ${segmentId}: ${detail}`,
    segmentId,
    { cause: error },
  );
}
