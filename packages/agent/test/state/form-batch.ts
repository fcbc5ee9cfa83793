import type { CaptureQueueRepository, StoredCaptureRow } from '../../src/state/index.js';

/**
 * Puts up to `limit` of the oldest waiting captures in batch `batchId` without reading them back (what
 * SqliteCaptureQueue.formBatch records once it has read them); returns them, oldest first.
 */
export function formBatch(
  repository: CaptureQueueRepository,
  batchId: string,
  limit: number,
): StoredCaptureRow[] {
  const rows = repository.waiting(limit);
  repository.assignBatch(
    batchId,
    rows.map((row) => row.captureId),
    [],
    0,
  );
  return rows;
}
