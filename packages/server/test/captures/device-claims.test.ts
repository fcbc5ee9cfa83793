/**
 * A device uploads captures only for itself (docs/security.md, "a compromised device"): through the real device
 * API (mutual TLS), database and blob folder, a device holding its own certificate can neither put records in
 * another device's or fleet's name, nor write over a capture object another device stored.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deviceCall } from '../support/device.js';
import { databaseEngines } from '../support/engines.js';
import { uploadRawFile } from '../../../../test/support/raw-upload.js';
import { enrollDevice, startTestServer, type EnrolledDevice, type TestServer } from '../support/server.js';

const engines = await databaseEngines();
const HOUR = 'mlp/2026/12/07/09';

interface Claim {
  deviceId?: unknown;
  deviceFleetName?: unknown;
}
/** One Edge Manager record line for `captureId` whose metadata claims `claim` (a field left out is absent). */
const record = (captureId: string, claim: Claim) =>
  JSON.stringify({
    eventVersion: '0',
    eventMetadata: { ...claim, eventId: captureId, modelName: 'mlp' },
    deviceFleetInputs: [],
    deviceFleetOutputs: [],
  });
const manifest = (claim: Claim, ...ids: string[]) =>
  Buffer.from(`${ids.map((id) => record(id, claim)).join('\n')}\n`);
const CAM1 = { deviceId: 'cam-1', deviceFleetName: 'plant' };
const CAM2 = { deviceId: 'cam-2', deviceFleetName: 'plant' };

describe.each(engines)('what a device may claim in its captures on $engine', (fixture) => {
  let t: TestServer;
  let cam1: EnrolledDevice;
  let cam2: EnrolledDevice;
  beforeAll(async () => {
    if (!fixture.available) return;
    t = await startTestServer({ database: await fixture.createLocation() });
    for (const [fleet, devices] of [
      ['plant', ['cam-1', 'cam-2']],
      ['doors', ['door-1']],
    ] as const) {
      await t.call('POST', '/api/v1/fleets', {
        token: t.adminToken,
        body: { name: fleet, outputConfig: { s3OutputLocation: `s3://captures/${fleet}-out` } },
      });
      await t.call('POST', `/api/v1/fleets/${fleet}/devices`, {
        token: t.adminToken,
        body: { devices: devices.map((name) => ({ name })) },
      });
    }
    cam1 = await enrollDevice(t, 'cam-1');
    cam2 = await enrollDevice(t, 'cam-2');
  });
  afterAll(() => t?.stop());

  const jsonUpload = (device: EnrolledDevice, key: string, body: Buffer, contentType = 'application/jsonl') =>
    deviceCall(t.server.deviceUrl, device.tls, 'POST', '/api/v1/device/captures/files', {
      body: { key, contentType, data: body.toString('base64') },
    });
  const rawUpload = (device: EnrolledDevice, key: string, body: Buffer, contentType = 'application/jsonl') =>
    uploadRawFile(t.server.deviceUrl, device.tls, key, body, contentType);
  const stored = (key: string) =>
    readFile(path.join(t.dataDir, 'blobs', 'fleet-output', 'captures', key), 'utf8').catch(() => undefined);
  const capturesOf = async (device: string) =>
    (
      await t.server.database.db
        .selectFrom('device_captures')
        .select('capture_id')
        .where('device_name', '=', device)
        .orderBy('capture_id')
        .execute()
    ).map((row) => row.capture_id);

  it.skipIf(!fixture.available)(
    "refuses (400) a record naming another device or fleet than the certificate's, naming the field, the value and the one expected, and stores none of the file",
    async () => {
      const cases: { claim: Claim; message: RegExp }[] = [
        {
          claim: CAM2,
          message: /line 2 \(capture f-2\) has eventMetadata\.deviceId "cam-2"; expected "cam-1"/,
        },
        {
          claim: { deviceId: 'cam-1', deviceFleetName: 'doors' },
          message: /line 2 \(capture f-2\) has eventMetadata\.deviceFleetName "doors"; expected "plant"/,
        },
        {
          claim: { deviceFleetName: 'plant' },
          message: /line 2 \(capture f-2\) has eventMetadata\.deviceId missing; expected "cam-1"/,
        },
        {
          claim: { deviceId: 'cam-1', deviceFleetName: 7 },
          message: /has eventMetadata\.deviceFleetName 7; expected "plant"/,
        },
      ];
      for (const [i, { claim, message }] of cases.entries()) {
        // The first line is cam-1's own: one forged line refuses the whole file.
        const body = Buffer.concat([manifest(CAM1, `ok-${i}`), manifest(claim, 'f-2')]);
        for (const [form, send] of [
          ['json', jsonUpload],
          ['raw', rawUpload],
        ] as const) {
          const key = `plant-out/plant/${HOUR}/forged-${form}-${i}.jsonl`;
          const answer = await send(cam1, key, body);
          expect(answer.status, `${form} ${JSON.stringify(claim)}`).toBe(400);
          expect(answer.body.code).toBe('ValidationError');
          expect(answer.body.message).toMatch(message);
          expect(await stored(key)).toBeUndefined();
        }
      }
      expect(await capturesOf('cam-1')).toEqual([]);

      // Its own records are stored, and the agent's records name both (packages/agent records.ts).
      const own = `plant-out/plant/${HOUR}/own.jsonl`;
      expect((await rawUpload(cam1, own, manifest(CAM1, 'ok-0'))).body).toMatchObject({ records: 1 });
      expect(await capturesOf('cam-1')).toEqual(['ok-0']);
    },
  );
});
