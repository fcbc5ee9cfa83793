import { createHash } from 'node:crypto';
import type { SelectableDevice } from '../devices/index.js';
import type { DeviceSelection } from './deployment-schemas.js';

/** True when the device carries every tag the selection names. */
function hasTags(device: SelectableDevice, tags: Record<string, string> | undefined): boolean {
  return Object.entries(tags ?? {}).every(([key, value]) => device.tags[key] === value);
}

/**
 * A device's place in a plan's percentage order: a hash of plan and device name, so the order is the same on
 * every read and every replica, differs between plans (one plan's canaries are not always the next one's),
 * and does not depend on when devices registered.
 */
function rank(planName: string, deviceName: string): string {
  return createHash('sha256').update(`${planName}\u0000${deviceName}`).digest('hex');
}

/**
 * Which devices a stage targets when it starts, from the fleet's devices at that moment (`fleet`), leaving
 * out those an earlier stage of the plan already targeted (`taken`).
 * - SELECTION: the named devices of the fleet; NAMECONTAINS: names containing the text, ignoring case.
 * - PERCENTAGE p: ceil(p% of the fleet's devices that match the tags), the first ones in `rank` order
 *   among devices not yet targeted; 100 takes every one left.
 * - tags (EdgeFleet's): narrow every subset type to devices carrying all the tags.
 */
export function selectDevices(
  planName: string,
  selection: DeviceSelection,
  fleet: readonly SelectableDevice[],
  taken: ReadonlySet<string>,
): string[] {
  const candidates = fleet.filter((d) => hasTags(d, selection.tags));
  const free = candidates.filter((d) => !taken.has(d.name));
  switch (selection.subsetType) {
    case 'SELECTION': {
      const wanted = new Set(selection.deviceNames ?? []);
      return free.filter((d) => wanted.has(d.name)).map((d) => d.name);
    }
    case 'NAMECONTAINS': {
      const text = (selection.deviceNameContains ?? '').toLowerCase();
      return free.filter((d) => d.name.toLowerCase().includes(text)).map((d) => d.name);
    }
    case 'PERCENTAGE': {
      const count = Math.ceil(((selection.percentage ?? 0) * candidates.length) / 100);
      return free
        .map((d) => ({ name: d.name, rank: rank(planName, d.name) }))
        .sort((a, b) => (a.rank < b.rank ? -1 : a.rank > b.rank ? 1 : 0))
        .slice(0, count)
        .map((d) => d.name)
        .sort();
    }
  }
}

/**
 * Whether a device that no stage targeted (it joined the fleet, or was re-registered, after the plan's
 * stages started) falls under the plan once the plan completed: it does when a stage's rule names it by
 * name or text, or is PERCENTAGE 100 (the whole fleet), and its tags match. A partial percentage is a
 * sample of the fleet as it was, never extended to newcomers.
 */
export function selectsNewcomer(selection: DeviceSelection, device: SelectableDevice): boolean {
  if (!hasTags(device, selection.tags)) return false;
  switch (selection.subsetType) {
    case 'SELECTION':
      return (selection.deviceNames ?? []).includes(device.name);
    case 'NAMECONTAINS':
      return device.name.toLowerCase().includes((selection.deviceNameContains ?? '').toLowerCase());
    case 'PERCENTAGE':
      return selection.percentage === 100;
  }
}
