import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CaptureMetrics } from '../../src/capture/capture-metrics.js';
import { DiskDestination, PeriodicUpload } from '../../src/capture/index.js';
import { EdgeFleetObjectStore } from '../../src/capture/edgefleet-store.js';
import { renderBatch } from '../../src/capture/records.js';
import { MemoryUploadLedger } from '../../src/state/index.js';
import {
  enrollDevice,
  operator,
  removeControlPlane,
  startControlPlane,
  type ControlPlane,
} from '../fleet/support.js';
import { captureItem } from './helpers.js';

// The periodic upload against a real control plane that takes files of at most 1 KiB: every 2 KiB side file is
// refused for good (413), as every file is after an operator changes the fleet output's prefix (403).
let plane: ControlPlane;
let store: EdgeFleetObjectStore;
let dir: string;

beforeAll(async () => {
  plane = await startControlPlane({ config: { captures: { maxFileBytes: 1024 } } });
  dir = await mkdtemp(join(tmpdir(), 'ef-periodic-lines-'));
  await operator(plane, 'POST', '/api/v1/fleets', {
    name: 'plant',
    outputConfig: { s3OutputLocation: 's3://captures/edge' },
  });
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- the enrolled agent config, read key by key
  const config: any = JSON.parse(await readFile(await enrollDevice(plane, 'plant', 'cam-1', dir), 'utf8'));
  store = new EdgeFleetObjectStore({
    endpoint: plane.deviceEndpoint,
    certFile: config.sagemaker_edge_provider_aws_cert_file,
    keyFile: config.sagemaker_edge_provider_aws_cert_pk_file,
    caFile: config.sagemaker_edge_provider_aws_ca_cert_file,
  });
}, 60_000);

afterAll(async () => {
  store?.close();
  await removeControlPlane(plane, dir);
});

const T = Date.UTC(2026, 11, 6, 5);

describe('capture periodic upload: lines of refused files', () => {
  it('writes the first refused file’s line, then at most one a minute with the number left out, and counts every file (review GL N3)', async () => {
    const root = await mkdtemp(join(tmpdir(), 'ef-periodic-lines-root-'));
    const disk = new DiskDestination(root);
    const write = async (batchId: string, ids: string[]) => {
      const batch = renderBatch(
        batchId,
        ids.map((id, i) => ({
          ...captureItem(id, Buffer.alloc(2048, i + 1), 'mlp'),
          inferenceTime: T + i,
          receivedAt: T + i,
        })),
        {
          folderPrefix: 'edge',
          fleetName: 'plant',
          deviceName: 'cam-1',
          base64EmbedLimit: 64,
          modelMonitorFormat: false,
          urlFor: (key) => disk.urlFor(key),
        },
      );
      await disk.write(batch.files);
    };
    await write('6'.repeat(32), ['la', 'lb', 'lc']);
    const registry = new Registry();
    const metrics = new CaptureMetrics(registry, {
      queueDepth: () => 0,
      spoolBytes: () => 0,
      spoolBatches: () => 0,
    });
    const lines: { fields: Record<string, unknown>; message: string }[] = [];
    const line = (fields: object, message: string) =>
      lines.push({ fields: fields as Record<string, unknown>, message });
    let now = T;
    const upload = new PeriodicUpload({
      root,
      folderPrefix: 'edge',
      store,
      periodMs: 3_600_000,
      keepFiles: false,
      ledger: new MemoryUploadLedger(),
      metrics,
      logger: { info: line, warn: line, error: line },
      now: () => now,
    });
    const refusedLines = () => lines.filter((l) => l.fields.event === 'capture-upload-refused');
    try {
      // Three side files refused in one round, and their manifest (over 1 KiB too): one line, four counted.
      expect(await upload.runOnce()).toBe(0);
      expect(refusedLines()).toHaveLength(1);
      expect(refusedLines()[0]!.fields).not.toHaveProperty('refusedNotLogged');
      expect(await registry.getSingleMetricAsString('edgefleet_capture_refused_files_total')).toContain(
        'edgefleet_capture_refused_files_total{via="periodic"} 4',
      );
      // A minute later, a new refused side file (its manifest taken): its line says the three left out.
      await write('7'.repeat(32), ['ld']);
      now += 61_000;
      expect(await upload.runOnce()).toBe(1);
      expect(refusedLines()).toHaveLength(2);
      expect(refusedLines()[1]).toMatchObject({
        fields: { refusedNotLogged: 3 },
        message: expect.stringMatching(/\(3 more refused file\(s\) since the last line, not logged\)$/),
      });
      expect(await registry.getSingleMetricAsString('edgefleet_capture_refused_files_total')).toContain(
        'edgefleet_capture_refused_files_total{via="periodic"} 5',
      );
    } finally {
      await upload.close();
    }
  });
});
