import type { SegmentStat } from './sysv-shm-addon.js';

/**
 * What tells one System V segment from another that later reuses its id, and a segment from itself after an
 * IPC_SET: its size and creator, the time of its creation (or last IPC_SET), and the permissions the event loop
 * checked the caller against (mode, owner, creator). ctime has whole seconds only, so an IPC_SET (chmod, chown)
 * within the second of the creation or of the previous IPC_SET shows only in the permissions it changed; one that
 * changes nothing the access check reads cannot change its answer. The kernel gives an id back only after the
 * segment is destroyed, and a new segment with the same id and all these the same would have to be created by
 * the same process within the same second after a full cycle of the id's sequence number.
 */
export interface SegmentIdentity {
  size: number;
  creatorPid: number;
  changeTime: number;
  /** Permission bits, and the owner and creator ids the access check (segment-access.ts) reads. */
  mode: number;
  ownerUid: number;
  ownerGid: number;
  creatorUid: number;
  creatorGid: number;
}

/**
 * A tensor's place in a segment that the agent's event loop has checked (the caller's permission, the bounds
 * against the segment's size), handed to an inference worker instead of the bytes: the worker attaches the
 * segment itself and checks again that the id still names the segment checked (`identity`) and that the bytes lie
 * inside its mapping.
 */
export interface SegmentReference {
  segmentId: number;
  offset: number;
  /** Inputs: the tensor's length. Outputs: the room given to the tensor (it may be shorter). */
  byteLength: number;
  identity: SegmentIdentity;
}

export function identityOf(stat: SegmentStat): SegmentIdentity {
  const { size, creatorPid, changeTime, mode, ownerUid, ownerGid, creatorUid, creatorGid } = stat;
  return { size, creatorPid, changeTime, mode, ownerUid, ownerGid, creatorUid, creatorGid };
}

export function sameSegment(a: SegmentIdentity, b: SegmentIdentity): boolean {
  return (
    a.size === b.size &&
    a.creatorPid === b.creatorPid &&
    a.changeTime === b.changeTime &&
    a.mode === b.mode &&
    a.ownerUid === b.ownerUid &&
    a.ownerGid === b.ownerGid &&
    a.creatorUid === b.creatorUid &&
    a.creatorGid === b.creatorGid
  );
}

/** Bytes in one System V segment: the segment's id and an absolute byte range in it. */
export type SegmentRange = Pick<SegmentReference, 'segmentId' | 'offset' | 'byteLength'>;

/**
 * Whether two ranges share a byte of one segment. Regions are compared by the segment beneath them (two regions may
 * name one segment at different offsets): the id names one segment while the agent holds it mapped, and a reference
 * is checked against the segment's identity when it is mapped. An empty range overlaps nothing.
 */
export function rangesOverlap(a: SegmentRange, b: SegmentRange): boolean {
  return (
    a.segmentId === b.segmentId &&
    a.byteLength > 0 &&
    b.byteLength > 0 &&
    a.offset < b.offset + b.byteLength &&
    b.offset < a.offset + a.byteLength
  );
}
