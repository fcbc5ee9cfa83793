import { mkdtemp, readFile, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CaptureSpool, RefusedByStoreError } from '../../src/capture/index.js';
import { EdgeFleetObjectStore } from '../../src/capture/edgefleet-store.js';
import { X509Certificate } from 'node:crypto';
import {
  enrollDevice,
  operator,
  reenroll,
  removeControlPlane,
  startControlPlane,
  until,
  type ControlPlane,
} from '../fleet/support.js';

// The EdgeFleet destination against a real control plane: a file the server refuses for good (here a key
// outside the fleet's output prefix, 403) fails its captures at once and does not hold back later batches.
let plane: ControlPlane;
let store: EdgeFleetObjectStore;
let dir: string;
let certFile: string;

beforeAll(async () => {
  plane = await startControlPlane();
  dir = await mkdtemp(join(tmpdir(), 'ef-dest-'));
  await operator(plane, 'POST', '/api/v1/fleets', {
    name: 'plant',
    outputConfig: { s3OutputLocation: 's3://captures/edge' },
  });
  const config = JSON.parse(await readFile(await enrollDevice(plane, 'plant', 'cam-1', dir), 'utf8'));
  certFile = config.sagemaker_edge_provider_aws_cert_file;
  store = new EdgeFleetObjectStore({
    endpoint: plane.deviceEndpoint,
    certFile: config.sagemaker_edge_provider_aws_cert_file,
    keyFile: config.sagemaker_edge_provider_aws_cert_pk_file,
    caFile: config.sagemaker_edge_provider_aws_ca_cert_file,
  });
});

afterAll(async () => {
  store?.close();
  await removeControlPlane(plane, dir);
});

const manifest = (id: string) =>
  Buffer.from(`${JSON.stringify({ eventVersion: '0', eventMetadata: { eventId: id, modelName: 'mlp' } })}\n`);

describe('EdgeFleet capture destination', () => {
  it('marks a refused batch FAILURE with the server reason and delivers the next one', async () => {
    await expect(store.put('elsewhere/x.jsonl', manifest('x'), 'application/jsonl')).rejects.toBeInstanceOf(
      RefusedByStoreError,
    );

    const delivered: string[] = [];
    const dropped: { ids: readonly string[]; detail: string }[] = [];
    const spool = new CaptureSpool({
      dir: join(dir, 'spool'),
      quotaBytes: 1024 * 1024,
      store,
      retry: { initialMs: 50, maxMs: 100 },
      onDelivered: (ids) => delivered.push(...ids),
      onDropped: (ids, detail) => dropped.push({ ids, detail }),
    });
    await spool.open();
    const batch = (id: string, key: string, createdAt: number) => ({
      batchId: id.padEnd(32, '0'),
      captureIds: [id],
      oldestReceivedAt: createdAt,
      files: [{ key, contentType: 'application/jsonl', body: manifest(id) }],
    });
    await spool.add(batch('aaaa', 'elsewhere/plant/mlp/a.jsonl', 1));
    await spool.add(batch('bbbb', 'edge/plant/mlp/2026/12/06/05/b.jsonl', 2));
    await until(() => (delivered.length > 0 ? true : undefined), 'the second batch is delivered', 20_000);

    expect(delivered).toEqual(['bbbb']);
    expect(dropped).toHaveLength(1);
    expect(dropped[0]!.ids).toEqual(['aaaa']);
    expect(dropped[0]!.detail).toMatch(
      /refused by the EdgeFleet control plane .*outside fleet plant's output/,
    );
    expect(await readdir(join(dir, 'spool'))).toEqual([]);
    await spool.close();
  });

  it('uploads with the certificate in the files now, after a renewal or re-enrollment revoked the old one', async () => {
    const serialOf = async () => new X509Certificate(await readFile(certFile, 'utf8')).serialNumber;
    const key = (name: string) => `edge/plant/mlp/2026/12/06/05/${name}.jsonl`;
    await store.put(key('before'), manifest('before'), 'application/jsonl');
    const oldSerial = await serialOf();
    await reenroll(plane, 'cam-1', dir);
    expect(await serialOf()).not.toBe(oldSerial);
    await operator(plane, 'POST', '/api/v1/devices/cam-1/certificates/revoke', { serial: oldSerial });
    await store.put(key('after'), manifest('after'), 'application/jsonl');
  });
});
