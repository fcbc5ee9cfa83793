import { describe, expect, it } from 'vitest';
import { selectDevices, selectsNewcomer } from '../../src/deployments/index.js';
import type { SelectableDevice } from '../../src/devices/index.js';

const fleet: SelectableDevice[] = Array.from({ length: 40 }, (_, i) => ({
  name: `cam-${String(i).padStart(2, '0')}`,
  tags: i % 2 === 0 ? { site: 'berlin' } : { site: 'oslo' },
  registeredAt: i,
  lastHeartbeatAt: null,
}));

describe('device selection', () => {
  it('picks a percentage deterministically, per plan, and later stages only from devices not yet targeted', () => {
    const first = selectDevices('plan-a', { subsetType: 'PERCENTAGE', percentage: 10 }, fleet, new Set());
    expect(first).toHaveLength(4);
    // The same devices on every read, whatever order the fleet comes in.
    expect(
      selectDevices('plan-a', { subsetType: 'PERCENTAGE', percentage: 10 }, [...fleet].reverse(), new Set()),
    ).toEqual(first);
    // Another plan samples other canaries.
    expect(
      selectDevices('plan-b', { subsetType: 'PERCENTAGE', percentage: 10 }, fleet, new Set()),
    ).not.toEqual(first);
    const rest = selectDevices(
      'plan-a',
      { subsetType: 'PERCENTAGE', percentage: 100 },
      fleet,
      new Set(first),
    );
    expect(rest).toHaveLength(36);
    expect(rest.some((name) => first.includes(name))).toBe(false);
    // 1 % of 40 rounds up to one device; 0 % selects none.
    expect(
      selectDevices('plan-a', { subsetType: 'PERCENTAGE', percentage: 1 }, fleet, new Set()),
    ).toHaveLength(1);
    expect(selectDevices('plan-a', { subsetType: 'PERCENTAGE', percentage: 0 }, fleet, new Set())).toEqual(
      [],
    );
  });

  it('selects by names, by text (ignoring case) and narrows by tags', () => {
    expect(
      selectDevices(
        'p',
        { subsetType: 'SELECTION', deviceNames: ['cam-01', 'cam-02', 'elsewhere'] },
        fleet,
        new Set(['cam-02']),
      ),
    ).toEqual(['cam-01']);
    expect(
      selectDevices('p', { subsetType: 'NAMECONTAINS', deviceNameContains: 'CAM-1' }, fleet, new Set()),
    ).toHaveLength(10);
    const berlin = selectDevices(
      'p',
      { subsetType: 'PERCENTAGE', percentage: 50, tags: { site: 'berlin' } },
      fleet,
      new Set(),
    );
    expect(berlin).toHaveLength(10);
    expect(berlin.every((name) => Number(name.slice(4)) % 2 === 0)).toBe(true);
  });

  it('extends a completed plan to newcomers only by rules that name them or cover the whole fleet', () => {
    const newcomer: SelectableDevice = {
      name: 'cam-99',
      tags: { site: 'oslo' },
      registeredAt: 99,
      lastHeartbeatAt: null,
    };
    expect(selectsNewcomer({ subsetType: 'PERCENTAGE', percentage: 100 }, newcomer)).toBe(true);
    expect(selectsNewcomer({ subsetType: 'PERCENTAGE', percentage: 50 }, newcomer)).toBe(false);
    expect(
      selectsNewcomer({ subsetType: 'PERCENTAGE', percentage: 100, tags: { site: 'berlin' } }, newcomer),
    ).toBe(false);
    expect(selectsNewcomer({ subsetType: 'NAMECONTAINS', deviceNameContains: '99' }, newcomer)).toBe(true);
    expect(selectsNewcomer({ subsetType: 'SELECTION', deviceNames: ['cam-01'] }, newcomer)).toBe(false);
  });
});
