/**
 * A device uploads captures only for itself (docs/security.md, "a compromised device"): through the real device
 * API (mutual TLS), database and blob folder, a device holding its own certificate can neither put records in
 * another device's or fleet's name, nor write over a capture object another device stored.
 */
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deviceCall } from '../support/device.js';
import { captureUsageOf } from '../support/capture-usage.js';
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
/** One Model Monitor record line (packages/agent records.ts): no device or fleet unless `claim` adds them. */
const monitorRecord = (captureId: string, claim: Claim = {}) =>
  JSON.stringify({
    captureData: { endpointInput: { mode: 'INPUT', data: '{}', encoding: 'JSON' } },
    eventMetadata: { ...claim, eventId: captureId, inferenceId: captureId },
    eventVersion: '0',
  });
const CAM1 = { deviceId: 'cam-1', deviceFleetName: 'plant' };
const CAM2 = { deviceId: 'cam-2', deviceFleetName: 'plant' };

describe.each(engines)('what a device may claim in its captures on $engine', (fixture) => {
  let t: TestServer;
  let cam1: EnrolledDevice;
  let cam2: EnrolledDevice;
  beforeAll(async () => {
    if (!fixture.available) return;
    // Side files over 1 KiB stream to the store (the raw form's other path).
    t = await startTestServer({
      database: await fixture.createLocation(),
      config: { captures: { largeBodyBytes: 1024 } },
    });
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
  const storedBytes = (key: string) =>
    readFile(path.join(t.dataDir, 'blobs', 'fleet-output', 'captures', key));
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

  it.skipIf(!fixture.available)(
    "refuses (403: not the device's to write; agents keep the batch and set it aside after repeated refusals) a fleet-mate's upload to a key another device stored, manifest or side file, leaving the object as it was",
    async () => {
      const manifestKey = `plant-out/plant/${HOUR}/cam1-batch.jsonl`;
      const small = `plant-out/plant/${HOUR}/raw-data/cam1-small.bin`;
      const large = `plant-out/plant/${HOUR}/raw-data/cam1-large.bin`;
      const smallBody = randomBytes(100);
      const largeBody = randomBytes(4096);
      expect((await rawUpload(cam1, manifestKey, manifest(CAM1, 'w-1'))).status).toBe(200);
      expect((await rawUpload(cam1, small, smallBody, 'application/octet-stream')).status).toBe(200);
      expect((await rawUpload(cam1, large, largeBody, 'application/octet-stream')).status).toBe(200);
      const usage = await captureUsageOf(t, 'cam-2');

      for (const [key, body, form] of [
        [manifestKey, manifest(CAM2, 'w-2'), 'raw'],
        [manifestKey, manifest(CAM2, 'w-2'), 'json'],
        // Even the same bytes: it is cam-1's object.
        [small, smallBody, 'raw'],
        [small, randomBytes(100), 'json'],
        [large, randomBytes(4096), 'raw'],
      ] as const) {
        const answer = await (form === 'raw' ? rawUpload : jsonUpload)(
          cam2,
          key,
          body,
          key.endsWith('.jsonl') ? 'application/jsonl' : 'application/octet-stream',
        );
        expect(answer.status, `${form} ${key}`).toBe(403);
        expect(answer.body).toMatchObject({ code: 'Forbidden' });
        expect(answer.body.message).toMatch(
          new RegExp(`capture key ${key} holds another device's capture; capture objects are written once`),
        );
      }
      expect(await stored(manifestKey)).toBe(manifest(CAM1, 'w-1').toString());
      expect((await storedBytes(small)).equals(smallBody)).toBe(true);
      expect((await storedBytes(large)).equals(largeBody)).toBe(true);
      expect(await capturesOf('cam-2')).toEqual([]);
      expect(await captureUsageOf(t, 'cam-2')).toBe(usage);
    },
  );

  it.skipIf(!fixture.available)(
    'answers a device sending its own stored file again (a retry) as stored, without writing or charging it, and refuses other content there (403: no retry can change it)',
    async () => {
      const manifestKey = `plant-out/plant/${HOUR}/retry.jsonl`;
      const small = `plant-out/plant/${HOUR}/raw-data/retry-small.bin`;
      const large = `plant-out/plant/${HOUR}/raw-data/retry-large.bin`;
      const manifestBody = manifest(CAM1, 'r-1', 'r-2');
      const smallBody = randomBytes(100);
      const largeBody = randomBytes(4096);
      const first = await rawUpload(cam1, manifestKey, manifestBody);
      expect(first.body).toMatchObject({ records: 2, bytes: manifestBody.length });
      expect((await rawUpload(cam1, small, smallBody, 'application/octet-stream')).status).toBe(200);
      expect((await rawUpload(cam1, large, largeBody, 'application/octet-stream')).status).toBe(200);
      const usage = await captureUsageOf(t, 'cam-1');

      // The same files again, in either form: 200, nothing written, nothing charged.
      for (const [key, body, type] of [
        [manifestKey, manifestBody, 'application/jsonl'],
        [small, smallBody, 'application/octet-stream'],
        [large, largeBody, 'application/octet-stream'],
      ] as const) {
        for (const send of [rawUpload, jsonUpload]) {
          const again = await send(cam1, key, body, type);
          expect(again.status, key).toBe(200);
          expect(again.body).toMatchObject({ records: 0, duplicates: 0, bytes: 0 });
        }
      }
      expect(await captureUsageOf(t, 'cam-1')).toBe(usage);

      // Other content at its own key: refused, naming what is stored; the object stays.
      const otherLarge = Buffer.from(largeBody);
      otherLarge[0] = otherLarge[0]! ^ 0xff;
      for (const [key, body, type] of [
        [manifestKey, manifest(CAM1, 'r-1', 'r-3'), 'application/jsonl'],
        [small, randomBytes(100), 'application/octet-stream'],
        // Same length (read through, then compared), and another length (refused before a byte is read).
        [large, otherLarge, 'application/octet-stream'],
        [large, randomBytes(2048), 'application/octet-stream'],
      ] as const) {
        const answer = await rawUpload(cam1, key, body, type);
        expect(answer.status, key).toBe(403);
        expect(answer.body.message).toMatch(
          new RegExp(
            `capture key ${key} is stored already with other content \\(\\d+ bytes, SHA-256 [0-9a-f]{64}`,
          ),
        );
      }
      expect(await stored(manifestKey)).toBe(manifestBody.toString());
      expect((await storedBytes(large)).equals(largeBody)).toBe(true);
      expect(await capturesOf('cam-1')).not.toContain('r-3');
      expect(await captureUsageOf(t, 'cam-1')).toBe(usage);
    },
  );

  it.skipIf(!fixture.available)(
    'stores Model Monitor records under _model-monitor/<model>/<its own fleet>/ only, in its own name, written once',
    async () => {
      const own = `plant-out/_model-monitor/mlp/plant/2026/12/07/09/mm-own.jsonl`;
      const body = (form: string) =>
        Buffer.from(`${monitorRecord(`mm-1-${form}`)}\n${monitorRecord(`mm-2-${form}`, CAM1)}\n`);
      for (const [form, send] of [
        ['raw', rawUpload],
        ['json', jsonUpload],
      ] as const) {
        const key = own.replace('mm-own', `mm-own-${form}`);
        const answer = await send(cam1, key, body(form));
        expect(answer.status, form).toBe(200);
        expect(answer.body).toMatchObject({ records: 2, duplicates: 0 });
        expect(await stored(key)).toBe(body(form).toString());
      }
      // Recorded once, as Model Monitor records (not as the Edge Manager ones of the same captures).
      expect(
        (await rawUpload(cam1, `plant-out/plant/${HOUR}/mm-edge.jsonl`, manifest(CAM1, 'mm-1-raw'))).body,
      ).toMatchObject({ records: 1, duplicates: 0 });

      // Another fleet's Model Monitor folder, or a key that is not the layout: 403, nothing stored.
      for (const key of [
        'plant-out/_model-monitor/mlp/doors/2026/12/07/09/x.jsonl',
        'plant-out/_model-monitor/plant/x.jsonl',
        'plant-out/_model-monitor/x.jsonl',
        'doors-out/_model-monitor/mlp/plant/2026/12/07/09/x.jsonl',
      ]) {
        const answer = await rawUpload(cam1, key, Buffer.from(`${monitorRecord('mm-x')}\n`));
        expect(answer.status, key).toBe(403);
        expect(answer.body.message).toMatch(
          /expected keys under plant-out\/plant\/ \(or plant-out\/_model-monitor\/<model>\/plant\/ for Model Monitor records\)/,
        );
        expect(await stored(key)).toBeUndefined();
      }

      // A record naming another device: 400; a fleet-mate writing over cam-1's file: 403.
      const forged = await rawUpload(
        cam1,
        `plant-out/_model-monitor/mlp/plant/2026/12/07/09/mm-forged.jsonl`,
        Buffer.from(`${monitorRecord('mm-3', CAM2)}\n`),
      );
      expect(forged.status).toBe(400);
      expect(forged.body.message).toMatch(/has eventMetadata\.deviceId "cam-2"; expected "cam-1"/);
      const over = await rawUpload(
        cam2,
        own.replace('mm-own', 'mm-own-raw'),
        Buffer.from(`${monitorRecord('mm-4')}\n`),
      );
      expect(over.status).toBe(403);
      expect(await stored(own.replace('mm-own', 'mm-own-raw'))).toBe(body('raw').toString());
      expect(await capturesOf('cam-2')).toEqual([]);
    },
  );

  it.skipIf(!fixture.available)(
    "refuses a manifest at a key whose records another device stored before objects were claimed (an older server's)",
    async () => {
      const key = `plant-out/plant/${HOUR}/older.jsonl`;
      expect((await rawUpload(cam1, key, manifest(CAM1, 'o-1'))).status).toBe(200);
      // As stored by a server before migration 0022: device_captures names cam-1, no claim is recorded.
      await t.server.database.db
        .deleteFrom('capture_objects')
        .where('object_url', '=', `s3://captures/${key}`)
        .execute();
      const answer = await rawUpload(cam2, key, manifest(CAM2, 'o-2'));
      expect(answer.status).toBe(403);
      expect(await stored(key)).toBe(manifest(CAM1, 'o-1').toString());
    },
  );
});
