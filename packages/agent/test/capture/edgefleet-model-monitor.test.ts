import { mkdtemp, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startCaptureService, type RunningCapture } from '../../src/capture/index.js';
import {
  agentConfig,
  enrollDevice,
  operator,
  removeControlPlane,
  startControlPlane,
  until,
  type ControlPlane,
} from '../fleet/support.js';
import { captureInput, listFiles, useModelRegistry } from './helpers.js';

// An enrolled agent's capture (its config as enrollment wrote it, the Model Monitor format on) sending to a
// real control plane: both the Edge Manager manifest and the Model Monitor file of a batch are stored.
const loaded = useModelRegistry('edgefleet-mm-', { tiny: 'tiny' });
let plane: ControlPlane;
let dir: string;
let capture: RunningCapture | undefined;

beforeAll(async () => {
  plane = await startControlPlane();
  dir = await mkdtemp(join(loaded.root, 'device-'));
  await operator(plane, 'POST', '/api/v1/fleets', {
    name: 'plant',
    outputConfig: { s3OutputLocation: 's3://captures/plant-out' },
  });
}, 60_000);

afterAll(async () => {
  await capture?.close();
  await removeControlPlane(plane, dir);
});

/** Every file the control plane (local blob folder) holds in bucket `captures`. */
const storedFiles = () => listFiles(join(plane.dataDir, 'blobs', 'fleet-output', 'captures'));

describe('EdgeFleet destination with the Model Monitor format', () => {
  it("stores both the Edge Manager manifest and the Model Monitor file of the device's batch", async () => {
    const file = await enrollDevice(plane, 'plant', 'cam-1', dir);
    const config = await agentConfig(file, dir, {
      edgefleet_capture_model_monitor_format: true,
      sagemaker_edge_core_capture_data_push_period_seconds: 1,
    });
    expect(config.capture.destination).toBe('EdgeFleet');
    capture = await startCaptureService({ config, models: loaded.registry });
    await capture.service.capture(captureInput('mm-1'));
    const status = await until(() => {
      const now = capture!.service.status('mm-1').status;
      return now === 'IN_PROGRESS' ? undefined : now;
    }, 'the capture is uploaded or fails');
    expect(status).toBe('SUCCESS');

    const files = await storedFiles();
    const edge = files.filter((f) =>
      /^plant-out\/plant\/tiny\/\d{4}\/\d\d\/\d\d\/\d\d\/[0-9a-f]{32}\.jsonl$/.test(f),
    );
    const monitor = files.filter((f) =>
      /^plant-out\/_model-monitor\/tiny\/plant\/\d{4}\/\d\d\/\d\d\/\d\d\/[0-9a-f]{32}\.jsonl$/.test(f),
    );
    expect(edge).toHaveLength(1);
    expect(monitor).toHaveLength(1);
    const root = join(plane.dataDir, 'blobs', 'fleet-output', 'captures');
    const record = JSON.parse(await readFile(join(root, monitor[0]!), 'utf8'));
    expect(record.eventMetadata.eventId).toBe('mm-1');
    expect(record.captureData.endpointInput.mode).toBe('INPUT');
  });
});
