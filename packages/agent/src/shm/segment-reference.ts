import type { SegmentStat } from './sysv-shm-addon.js';

/**
 * What tells one System V segment from another that later reuses its id: its size, creator and the time of its
 * creation (or last IPC_SET). The kernel gives an id back only after the segment is destroyed, and a new segment
 * with the same id and the same size, creator pid and ctime would have to be created by the same process within
 * the same second after a full cycle of the id's sequence number.
 */
export interface SegmentIdentity {
  size: number;
  creatorPid: number;
  changeTime: number;
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
  return { size: stat.size, creatorPid: stat.creatorPid, changeTime: stat.changeTime };
}

export function sameSegment(a: SegmentIdentity, b: SegmentIdentity): boolean {
  return a.size === b.size && a.creatorPid === b.creatorPid && a.changeTime === b.changeTime;
}
