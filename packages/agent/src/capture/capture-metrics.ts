import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

const UPLOAD_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

/**
 * Capture's Prometheus metrics, registered on the agent's registry (AgentMetrics.registry). Counts are of
 * captures (CaptureData requests or automatic samples) unless the name says files.
 */
export class CaptureMetrics {
  readonly accepted: Counter<'model' | 'source'>;
  readonly rejected: Counter<'code'>;
  readonly written: Counter<'destination'>;
  readonly uploaded: Counter<'via'>;
  readonly uploadedFiles: Counter<'via'>;
  readonly refusedFiles: Counter<'via'>;
  readonly dropped: Counter<'reason'>;
  readonly autoSkipped: Counter<'model' | 'reason'>;
  readonly uploadDuration: Histogram<'via'>;
  readonly writeFailures: Counter<'destination'>;
  readonly spoolMissingFiles: Counter;
  readonly setAsideRemoved: Counter;

  constructor(
    registry: Registry,
    gauges: { queueDepth: () => number; spoolBytes: () => number; spoolBatches: () => number },
  ) {
    const registers = [registry];
    this.accepted = new Counter({
      name: 'edgefleet_capture_accepted_total',
      help: 'Captures accepted, by model and source (api: CaptureData, auto: sampled from Predict)',
      labelNames: ['model', 'source'],
      registers,
    });
    this.rejected = new Counter({
      name: 'edgefleet_capture_rejected_total',
      help: 'CaptureData requests refused, by error code',
      labelNames: ['code'],
      registers,
    });
    this.written = new Counter({
      name: 'edgefleet_capture_written_total',
      help: 'Captures written to their destination (disk, or s3 directly)',
      labelNames: ['destination'],
      registers,
    });
    this.uploaded = new Counter({
      name: 'edgefleet_capture_uploaded_total',
      help: 'Captures delivered to the bucket later: from the offline spool (via=spool)',
      labelNames: ['via'],
      registers,
    });
    this.uploadedFiles = new Counter({
      name: 'edgefleet_capture_uploaded_files_total',
      help: 'Files put in the bucket by the spool (via=spool) or the periodic upload of Disk captures (via=periodic)',
      labelNames: ['via'],
      registers,
    });
    this.refusedFiles = new Counter({
      name: 'edgefleet_capture_refused_files_total',
      help: "Files the store refused (too large, a bad record, a key not allowed), by the spool (via=spool) or the periodic upload of Disk captures (via=periodic). Given up only when the control plane itself answered 413 PayloadTooLarge (the spool drops the file and the records that need it; the periodic upload removes it); kept otherwise (a proxy's 413, a 403, the server's 400): the spool retries the batch, counting the refusal at each attempt, the periodic upload skips the file while unchanged",
      labelNames: ['via'],
      registers,
    });
    this.dropped = new Counter({
      name: 'edgefleet_capture_dropped_total',
      help: 'Captures given up: spool over its disk quota (oldest first), a destination that kept failing, one that refused them for good, or a full Disk destination (quota or free-space floor)',
      labelNames: ['reason'],
      registers,
    });
    this.autoSkipped = new Counter({
      name: 'edgefleet_capture_auto_skipped_total',
      help: 'Automatic captures a rule selected but that were not taken: buffer-full, destination-full, spool-full (no room, as CaptureData would be refused), queue-failed',
      labelNames: ['model', 'reason'],
      registers,
    });
    this.uploadDuration = new Histogram({
      name: 'edgefleet_capture_upload_duration_seconds',
      help: 'Time to put one batch (direct or spool) or one file (periodic) in the bucket',
      labelNames: ['via'],
      buckets: UPLOAD_BUCKETS,
      registers,
    });
    this.writeFailures = new Counter({
      name: 'edgefleet_capture_write_failures_total',
      help: 'Batch writes that failed (each is retried, spooled, or given up)',
      labelNames: ['destination'],
      registers,
    });
    this.spoolMissingFiles = new Counter({
      name: 'edgefleet_capture_spool_missing_files_total',
      help: 'Files a spooled batch named that were gone from its folder: dropped from the batch with the records that need them',
      registers,
    });
    this.setAsideRemoved = new Counter({
      name: 'edgefleet_capture_spool_set_aside_removed_total',
      help: "Set-aside batches removed, unseen or not, to keep the spool's set-aside folder within its bounds (oldest first; the batch set aside last is never removed for its size)",
      registers,
    });
    new Gauge({
      name: 'edgefleet_capture_queue_depth',
      help: 'Captures held in the buffer: accepted and not yet written or spooled',
      registers,
      collect() {
        this.set(gauges.queueDepth());
      },
    });
    new Gauge({
      name: 'edgefleet_capture_spool_bytes',
      help: 'Bytes of batches waiting in the offline spool',
      registers,
      collect() {
        this.set(gauges.spoolBytes());
      },
    });
    new Gauge({
      name: 'edgefleet_capture_spool_batches',
      help: 'Batches waiting in the offline spool',
      registers,
      collect() {
        this.set(gauges.spoolBatches());
      },
    });
  }
}

/** What capture logs through (pino's methods fit). */
export interface CaptureLogger {
  info(details: Record<string, unknown>, message: string): void;
  warn(details: Record<string, unknown>, message: string): void;
  error(details: Record<string, unknown>, message: string): void;
}
