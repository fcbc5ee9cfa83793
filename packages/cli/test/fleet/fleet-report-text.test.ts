import { describe, expect, it } from 'vitest';
import { describeReport } from '../../src/fleet/fleet-command.js';
import { fleetReportSchema } from '../../src/server-client/schemas.js';

describe('fleet report text', () => {
  const report = {
    fleetName: 'plant',
    outputConfig: { s3OutputLocation: 's3://b/p' },
    reportGenerated: '2026-12-07T06:00:00.000Z',
    deviceStats: { connectedDeviceCount: 1, registeredDeviceCount: 2, neverSeenDeviceCount: 0 },
    agentVersions: [],
    modelStats: [],
  };

  it("says an outage of the fleet's output location as the server words it", () => {
    const message =
      'output location s3://b/p missing bucket since 2026-12-07T05:59:00.000Z (last failed upload ' +
      '2026-12-07T06:00:00.000Z): bucket b does not exist (404); ' +
      'create it, or name an existing bucket; devices keep their captures and retry';
    const text = describeReport(
      fleetReportSchema.parse({
        ...report,
        outputOutage: {
          outputLocation: 's3://b/p',
          since: '2026-12-07T05:59:00.000Z',
          problem: 'missing-bucket',
          reason: 'x',
          message,
        },
      }),
    ).join('\n');
    expect(text).toMatch(new RegExp(`\\noutput\\s+${message.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}\\n`));
  });

  it('shows the location alone while uploads land (and from an older server)', () => {
    expect(describeReport(fleetReportSchema.parse(report)).join('\n')).toMatch(/\noutput\s+s3:\/\/b\/p\n/);
  });
});
