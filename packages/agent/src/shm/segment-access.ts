import type { SegmentStat } from './sysv-shm-addon.js';

/** Who is asking, as the kernel saw the process at the other end of the agent's Unix socket (SO_PEERCRED). */
export interface PeerCredentials {
  pid: number;
  uid: number;
  gid: number;
  /** Supplementary groups (SO_PEERGROUPS); empty where the kernel cannot tell them. */
  groups: readonly number[];
}

/**
 * Whether `peer` could attach the segment itself, read-only (`'read'`: shmat with SHM_RDONLY) or read-write: the
 * kernel's ipcperms rule. The owner or creator uses the owner bits, a member of the owner's or creator's group the
 * group bits, anyone else the other bits; root (uid 0, which holds CAP_IPC_OWNER) may attach anything. The agent
 * reads and writes segments with its own rights, so without this check a caller could read any segment the agent
 * can, or have it write inference outputs where the caller could not.
 */
export function peerMay(stat: SegmentStat, peer: PeerCredentials, access: 'read' | 'write'): boolean {
  const bit = access === 'read' ? 0o4 : 0o2;
  if (peer.uid === 0) return true;
  if (peer.uid === stat.ownerUid || peer.uid === stat.creatorUid) return (stat.mode & (bit << 6)) !== 0;
  const inGroup = (gid: number) => peer.gid === gid || peer.groups.includes(gid);
  if (inGroup(stat.ownerGid) || inGroup(stat.creatorGid)) return (stat.mode & (bit << 3)) !== 0;
  return (stat.mode & bit) !== 0;
}
