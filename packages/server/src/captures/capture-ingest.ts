import { createHash, randomUUID, type Hash } from 'node:crypto';
import { pipeline, Transform, type Readable, type TransformCallback } from 'node:stream';
import type { Kysely } from 'kysely';
import {
  assertValidBlobKey,
  BlobKeyConflictError,
  BlobStoreUnavailableError,
  type BlobStore,
  type BlobStoreProblem,
} from '../blobs/index.js';
import { DomainError } from '../errors/index.js';
import { clearOutputOutage, markOutputOutage, outageNeedsRecording } from '../fleets/index.js';
import type { DatabaseSchema } from '../storage/schema.js';
import { parseOutputLocation, type FleetOutputs } from './fleet-output.js';

export interface CaptureLimits {
  /** Largest file accepted. */
  maxFileBytes: number;
  /** Bytes one device may upload per UTC day. */
  dailyQuotaBytesPerDevice: number;
  /**
   * A raw file up to this many bytes (captures.largeBodyBytes) takes no upload slot, so it is read whole before
   * it is stored; only larger ones, whose number the slots bound, are streamed to the store as they arrive.
   */
  largeBodyBytes: number;
}

export interface CaptureFile {
  /** The agent's key: `<prefix>/<fleet>/<model>/YYYY/MM/DD/HH/…` (see packages/agent/docs/capture.md). */
  key: string;
  contentType: string;
  body: Buffer;
}

/** A capture file still arriving (the device API's raw form): exactly `contentLength` bytes will come. */
export interface CaptureFileStream {
  key: string;
  contentType: string;
  body: Readable;
  contentLength: number;
}

export interface StoredCaptureFile {
  /** Where the file is now (`s3://…` or `file://…`). */
  location: string;
  /** Capture records written for the first time. */
  records: number;
  /** Records left out because the same capture was stored before (from another file). */
  duplicates: number;
  /** Bytes written (0 when every record was a duplicate). */
  bytes: number;
}

/** Where one capture file goes: the store, its key there, and the fleet's output location (for messages). */
interface OutputTarget {
  store: BlobStore;
  storedKey: string;
  location: string;
  /** The outage the fleet's row records now (its problem), read with the location; null: none. */
  outageProblem: string | null;
  /** When the recorded outage's last failure was (null: none recorded). */
  outageLastFailureAt: number | null;
  /** The object's address, `s3://<bucket>/<key>`, whatever store holds it: what capture_objects records. */
  objectUrl: string;
  /** The records' format, by where the key is: `edge` (`<fleet>/…`) or `model-monitor` (`_model-monitor/…`). */
  format: 'edge' | 'model-monitor';
  /** The fleet's KMS key, for an S3 target: the object is written with SSE-KMS under it. */
  sseKmsKeyId?: string;
}

/** What capture_objects says of an object's address when a device claims it (see #claim). */
type Claim =
  /** No write of it landed yet (new, or an earlier one failed): write it, as the upload holding `token`. */
  | { stored: false; token: string }
  /** A write landed: this upload is the same file again, or other content (refused). */
  | { stored: true; sha256: string; bytes: number };

/**
 * Who writes capture objects: this server process (its registration id in server_instances, which prefixes the
 * write tokens it takes, `<id>.<random>`) and how to tell whether another process that holds a write still runs.
 */
export interface CaptureWriter {
  id: string;
  /**
   * Whether the server process `holderId` (a token's prefix; undefined: a token of an older build, which names
   * none) may still be writing: false only where it certainly is not (captureHolderMayWrite: on SQLite none but
   * this one can run; on PostgreSQL a holder of this host whose process is gone). A holder on another host may be
   * frozen or cut off from the database and still writing, however old its server_instances row.
   */
  isRunning(holderId: string | undefined): Promise<boolean>;
}

/** Where CaptureIngest reports a fleet output that stopped or started working again (the server's logger). */
export interface FleetOutputLog {
  warn(fields: Record<string, unknown>, message: string): void;
  info(fields: Record<string, unknown>, message: string): void;
}

/** What a device is told of a fleet output that cannot be used: the problem, never where the store is. */
const DEVICE_PROBLEM_TEXT: Record<BlobStoreProblem, string> = {
  'missing-bucket': 'its bucket does not exist',
  forbidden: 'the server may not write to its bucket',
  credentials: 'the server has no S3 credentials',
  unreachable: 'its object store is not answering',
};

/**
 * An outage's reason as the fleet report shows it: the store's own reason with the S3 endpoint (the server's
 * s3.endpoint, which may be an internal host or carry credentials in its URL) replaced by the setting's name.
 * On AWS (no s3.endpoint) the reason's "AWS S3 (region …)" stays: it is no secret, and there is no such setting
 * to name. The reason names no credential: S3 errors carry none, and its hints name settings, never their values.
 */
export function operatorReasonOf(error: BlobStoreUnavailableError): string {
  if (error.endpoint === '' || !error.endpointConfigured) return error.reason;
  return error.reason.split(error.endpoint).join("the server's S3 endpoint (s3.endpoint)");
}

const isManifest = (key: string) => key.endsWith('.jsonl');
/** The folder below a fleet output's prefix that holds Model Monitor records (the agent's MODEL_MONITOR_FOLDER). */
const MODEL_MONITOR_FOLDER = '_model-monitor';

/**
 * The fleet a capture key (below the output's prefix, as `segments`) belongs to and its record format: the
 * Edge Manager layout `<fleet>/<model>/…`, or the Model Monitor layout `_model-monitor/<model>/<fleet>/…`, where
 * the model plays Model Monitor's endpoint and the fleet its variant. `_model-monitor` is no fleet's name (fleet
 * names start with a letter or digit). Undefined: neither layout.
 */
export function captureKeyLayoutOf(
  segments: readonly string[],
): { fleet: string; format: 'edge' | 'model-monitor' } | undefined {
  if (segments[0] !== MODEL_MONITOR_FOLDER)
    return segments.length >= 2 ? { fleet: segments[0]!, format: 'edge' } : undefined;
  // The model, the fleet, and at least the file below them.
  return segments.length >= 4 ? { fleet: segments[2]!, format: 'model-monitor' } : undefined;
}
/**
 * A key another device claimed. 403, not 409: no retry can change it, while agents take a 409 as passing. The
 * agent keeps a file refused with 403 and retries its batch (the batches behind it go meanwhile); after 10 such
 * attempts that store nothing it sets the whole batch aside, failing all of its captures.
 */
function keyTakenError(key: string): DomainError {
  return new DomainError(
    'Forbidden',
    `capture key ${key} holds another device's capture; capture objects are written once, by the device that stored them; expected a key of this device's own (the agent names each file, side files included, after its batch)`,
    { key },
  );
}
const utcDay = (ms: number) => new Date(ms).toISOString().slice(0, 10);
const DAY_MS = 86_400_000;
/** Whole seconds until the next UTC midnight (at least 1): when a daily quota renews. */
export const secondsToNextUtcDay = (ms: number) =>
  Math.max(1, Math.ceil((Math.floor(ms / DAY_MS) * DAY_MS + DAY_MS - ms) / 1000));
/**
 * The least an upload is charged against the daily quota, whatever its size: each object's claim is a row of
 * capture_objects (its key and address, up to ~2 KiB), so tiny or fully duplicate files still cost quota, and a
 * device cannot grow the table past its quota's worth of rows a day.
 */
export const MIN_OBJECT_CHARGE_BYTES = 1024;
const chargeOf = (bytes: number) => Math.max(bytes, MIN_OBJECT_CHARGE_BYTES);
/**
 * How long an upload holds the write of its object (capture_objects.write_token) before another upload of the key
 * may take it over, whoever holds it: longer than any upload can last (the request deadline), so that a live
 * upload keeps it. Some held writes end sooner (see #holderEnded): one of this process whose upload was answered
 * (its claim could not be dropped: the database failed with it), or one of a server process certainly gone (on
 * SQLite any other; on PostgreSQL one of this host whose pid no longer runs), is free at once. A write of a server
 * on another host waits for this lease, even when its row stopped being refreshed: a frozen or partitioned replica
 * can still be writing.
 */
const WRITE_LEASE_MS = 15 * 60_000;
/** Rows per IN (…) list: well under SQLite's and PostgreSQL's bind-parameter limits. */
const CHUNK = 500;

/** The 413 for a capture file over captures.maxFileBytes (`key` unknown: a raw body refused before its query is checked). */
export function checkCaptureFileSize(
  key: string | undefined,
  bytes: number,
  limits: Pick<CaptureLimits, 'maxFileBytes'>,
): void {
  if (bytes === 0)
    throw new DomainError(
      'ValidationError',
      `the capture file${key === undefined ? '' : ` ${key}`} is empty; expected a manifest of at least one record or a side file of at least one byte`,
    );
  if (bytes > limits.maxFileBytes)
    throw new DomainError(
      'PayloadTooLarge',
      `the capture file${key === undefined ? '' : ` ${key}`} is ${bytes} bytes; the server accepts at most ${limits.maxFileBytes} per file (captures.maxFileBytes)`,
      { maxFileBytes: limits.maxFileBytes },
    );
}

/**
 * Capture files devices upload through the control plane, written to their fleet's output location.
 *
 * Idempotent by capture id: a manifest's records (one JSON line each, `eventMetadata.eventId` = capture id) are
 * recorded per device and record format; a record already stored from another manifest is left out. Objects
 * are written once (capture_objects): the device that claimed a key first is the only one that may write it,
 * and once a write of it landed, the same file sent again (the agent's at-least-once retry) is answered without
 * writing, while other content is refused.
 */
export class CaptureIngest {
  readonly #db: Kysely<DatabaseSchema>;
  readonly #outputs: FleetOutputs;
  readonly #limits: CaptureLimits;
  readonly #now: () => number;
  readonly #log: FleetOutputLog | undefined;
  /** Output locations whose last write failed because the store cannot be used: logged once, not per upload. */
  readonly #failing = new Set<string>();
  readonly #writer: CaptureWriter;
  /** The write tokens of this process's uploads not answered yet: a token of its own not here holds nothing. */
  readonly #writing = new Set<string>();

  constructor(options: {
    db: Kysely<DatabaseSchema>;
    outputs: FleetOutputs;
    limits: CaptureLimits;
    now?: () => number;
    /** Hears a fleet output becoming unusable (once, until it works again) and working again. */
    log?: FleetOutputLog;
    /** This server process; without it, a process of its own whose fellow writers all count as running. */
    writer?: CaptureWriter;
  }) {
    this.#db = options.db;
    this.#outputs = options.outputs;
    this.#limits = options.limits;
    this.#now = options.now ?? Date.now;
    this.#log = options.log;
    this.#writer = options.writer ?? { id: randomUUID(), isRunning: () => Promise.resolve(true) };
  }

  /**
   * A write to a fleet's output that failed because the store cannot be used (its bucket missing, no access,
   * S3 down) becomes a 503 with Retry-After naming the output and the problem: the agent keeps the capture and
   * sends it again later. The reason (it names the S3 endpoint, an internal host) goes to the log, never to the
   * device; the fleet's row records the outage (its reason without the endpoint) for the fleet report. The first
   * such failure of a location is logged; the next ones are not, until a write there succeeds again.
   */
  async #unavailable(
    error: unknown,
    fleet: string,
    { location, outageProblem, outageLastFailureAt }: OutputTarget,
  ): Promise<DomainError | undefined> {
    if (!(error instanceof BlobStoreUnavailableError)) return undefined;
    // The operator sees it in the fleet report and console: written when the state changes, and to move the
    // last failure's time on at most once a minute, not per upload.
    const at = this.#now();
    if (
      outageNeedsRecording(
        { problem: outageProblem, lastFailureAt: outageLastFailureAt },
        { problem: error.problem, at },
      )
    )
      await markOutputOutage(this.#db, fleet, location, {
        problem: error.problem,
        reason: operatorReasonOf(error),
        at,
      }).catch((failure: unknown) =>
        this.#log?.warn(
          { event: 'fleet_output_outage_not_recorded', fleet, err: failure },
          `could not record the outage of fleet ${fleet}'s output in the database`,
        ),
      );
    if (!this.#failing.has(location)) {
      this.#failing.add(location);
      this.#log?.warn(
        { event: 'fleet_output_unavailable', fleet, outputLocation: location, problem: error.problem },
        `captures of fleet ${fleet} cannot be written to ${location}: ${error.reason}; devices keep them and retry (logged once until it works again)`,
      );
    }
    const operatorMistake = error.problem !== 'unreachable';
    return new DomainError(
      'DependencyUnavailable',
      `fleet ${fleet}'s output location ${location} cannot be written now: ${DEVICE_PROBLEM_TEXT[error.problem]} (${error.problem}); keep the capture and send it again later${operatorMistake ? ` (the server's operator must fix the bucket or the fleet's output: "edgefleet fleet update ${fleet} --output s3://…")` : ''}`,
      {
        fleet,
        outputLocation: location,
        problem: error.problem,
        retryAfterSeconds: operatorMistake ? 60 : 15,
      },
    );
  }

  async #written(fleet: string, { location, outageProblem }: OutputTarget): Promise<void> {
    // The upload has landed: a failure to clear the mark must not fail it (the next upload clears it).
    if (outageProblem !== null)
      await clearOutputOutage(this.#db, fleet, location).catch((failure: unknown) =>
        this.#log?.warn(
          { event: 'fleet_output_outage_not_cleared', fleet, err: failure },
          `could not clear the recorded outage of fleet ${fleet}'s output in the database`,
        ),
      );
    if (this.#failing.delete(location))
      this.#log?.info(
        { event: 'fleet_output_available', fleet, outputLocation: location },
        `captures of fleet ${fleet} are written to ${location} again`,
      );
  }

  async store(
    device: { deviceName: string; fleetName: string },
    file: CaptureFile,
  ): Promise<StoredCaptureFile> {
    this.#checkSize(file.key, file.body.length);
    return this.#storeWhole(device, file, await this.#targetOf(device, file.key));
  }

  async #storeWhole(
    device: { deviceName: string; fleetName: string },
    file: CaptureFile,
    target: OutputTarget,
  ): Promise<StoredCaptureFile> {
    const { store, storedKey } = target;
    let body = file.body;
    let records: string[] = [];
    let duplicates = 0;
    const { format } = target;
    const sent = { sha256: sha256Of(file.body), bytes: file.body.length };
    let lines: string[] = [];
    let ids: string[] = [];
    if (isManifest(file.key)) {
      lines = file.body
        .toString('utf8')
        .split('\n')
        .filter((l) => l.trim() !== '');
      if (lines.length === 0)
        throw new DomainError(
          'ValidationError',
          `the capture manifest ${file.key} has no records (only blank lines); expected one capture record per line`,
        );
      ids = lines.map((line, i) => captureIdOf(line, file.key, i + 1, device, format));
    }
    // Read before any charge: a retry of a stored file (the agent's, after an answer it did not get) writes
    // nothing and costs nothing, so that a device near its quota is not refused until midnight for it.
    const stored = await this.#storedObject(device.deviceName, file.key, target);
    if (stored !== undefined) {
      this.#checkSameFile(file.key, stored, sent);
      return { location: store.locationOf(storedKey), records: 0, duplicates: 0, bytes: 0 };
    }
    // A manifest's records stored already (a batch made again after a crash) are neither written nor paid for.
    let storedElsewhere = new Set<string>();
    let storedHere = new Set<string>();
    let kept = lines;
    if (isManifest(file.key)) {
      ({ storedElsewhere, storedHere } = await this.#stored(device.deviceName, format, file.key, ids));
      kept = lines.filter((_, i) => !storedElsewhere.has(ids[i]!));
      duplicates = lines.length - kept.length;
    }
    // Charged before the claim: a claim is a row, so a device past its quota adds none. Only what is written is
    // paid for, with the least charge for the claim's row.
    const charged = chargeOf(
      !isManifest(file.key)
        ? sent.bytes
        : kept.length === 0
          ? 0
          : duplicates > 0
            ? Buffer.byteLength(`${kept.join('\n')}\n`)
            : sent.bytes,
    );
    const day = await this.#charge(device.deviceName, charged);
    const refund = (bytes: number) =>
      bytes <= 0 ? Promise.resolve() : this.#refund(device.deviceName, day, bytes).catch(() => undefined);
    let claim: Claim;
    try {
      claim = await this.#claim(device.deviceName, file.key, target, isManifest(file.key));
    } catch (error) {
      await refund(charged);
      throw error;
    }
    if (claim.stored) {
      // Stored since the read above (another upload of the same file): paid for then.
      await refund(charged);
      this.#checkSameFile(file.key, claim, sent);
      return { location: store.locationOf(storedKey), records: 0, duplicates: 0, bytes: 0 };
    }
    try {
      if (isManifest(file.key)) {
        if (kept.length === 0) {
          await this.#markStored(device.deviceName, target, claim.token, sent);
          return {
            location: store.locationOf(storedKey),
            records: 0,
            duplicates,
            bytes: 0,
          };
        }
        records = [...new Set(ids)].filter((id) => !storedElsewhere.has(id) && !storedHere.has(id));
        if (duplicates > 0) body = Buffer.from(`${kept.join('\n')}\n`);
      }

      try {
        await store.put(storedKey, body, {
          contentType: file.contentType,
          contentLength: body.length,
          ...(target.sseKmsKeyId !== undefined && { sseKmsKeyId: target.sseKmsKeyId }),
        });
      } catch (error) {
        // Nothing was stored: the agent retries, and must not pay for the failure (else an outage of the
        // fleet's bucket fills the day's quota with bytes that never landed), nor keep a row for it.
        await refund(charged);
        await this.#dropClaim(device.deviceName, target, claim.token);
        throw (
          conflictOf(error, file.key) ?? (await this.#unavailable(error, device.fleetName, target)) ?? error
        );
      }
      await this.#written(device.fleetName, target);
      if (records.length > 0) {
        const at = this.#now();
        for (let i = 0; i < records.length; i += CHUNK)
          await this.#db
            .insertInto('device_captures')
            .values(
              records.slice(i, i + CHUNK).map((captureId) => ({
                device_name: device.deviceName,
                capture_id: captureId,
                record_format: format,
                object_key: file.key,
                stored_at: at,
              })),
            )
            .onConflict((oc) => oc.columns(['device_name', 'capture_id', 'record_format']).doNothing())
            .execute();
      }
      // Last: a retry after anything above failed writes again (and records what is missing).
      await this.#markStored(device.deviceName, target, claim.token, sent);
      return {
        location: store.locationOf(storedKey),
        records: records.length,
        duplicates,
        bytes: body.length,
      };
    } finally {
      this.#endWrite(claim);
    }
  }

  /**
   * A capture file sent raw: every check that needs no byte of it (size, key, fleet output, quota) comes before
   * the body is read. A side file larger than captures.largeBodyBytes (it holds an upload slot) is streamed to the
   * fleet's output as it arrives, never held whole; a smaller one, which holds no slot, and a manifest (at most
   * captures.maxFileBytes, and read for its capture ids anyway) are read into memory first and stored as store()
   * does. So no store request (an S3 socket, a temp file) is held open while a device sends, beyond the slots: a
   * device trickling many small files would otherwise take every socket of its bucket's S3 client, which other
   * fleets share. A body that ends short of its length (the device went away, the request deadline cut it off)
   * fails the upload: nothing is stored and its charge (if taken) is taken back.
   */
  async storeStream(
    device: { deviceName: string; fleetName: string },
    file: CaptureFileStream,
  ): Promise<StoredCaptureFile> {
    this.#checkSize(file.key, file.contentLength);
    const target = await this.#targetOf(device, file.key);
    if (isManifest(file.key) || file.contentLength <= this.#limits.largeBodyBytes) {
      const body = await readExactly(file.body, file.contentLength, file.key);
      return this.#storeWhole(device, { key: file.key, contentType: file.contentType, body }, target);
    }
    const { store, storedKey } = target;
    // A retry of a stored file costs nothing (read before any charge, as in #storeWhole).
    const stored = await this.#storedObject(device.deviceName, file.key, target);
    if (stored !== undefined) return this.#sameStream(file, stored, store.locationOf(storedKey));
    // Charged before the claim (a row), and before the body streams, so parallel uploads cannot pass the quota.
    const charged = chargeOf(file.contentLength);
    const day = await this.#charge(device.deviceName, charged);
    const refund = () => this.#refund(device.deviceName, day, charged).catch(() => undefined);
    let claim: Claim;
    try {
      claim = await this.#claim(device.deviceName, file.key, target, false);
    } catch (error) {
      await refund();
      throw error;
    }
    if (claim.stored) {
      // Stored since the read above: paid for then.
      await refund();
      return this.#sameStream(file, claim, store.locationOf(storedKey));
    }
    try {
      // A stored claim has returned or thrown above (another length is never the same file).
      const { token } = claim as Extract<Claim, { stored: false }>;
      // A body that fails (cut off, too long) aborts the write: the store's side would otherwise wait for the rest.
      const abort = new AbortController();
      const hash = createHash('sha256');
      const body = checkedLength(file.body, file.contentLength, file.key, hash);
      body.once('error', (error) => abort.abort(error));
      let bodyEnded = false;
      body.once('end', () => (bodyEnded = true));
      try {
        await store.put(storedKey, body, {
          contentType: file.contentType,
          contentLength: file.contentLength,
          signal: abort.signal,
          ...(target.sseKmsKeyId !== undefined && { sseKmsKeyId: target.sseKmsKeyId }),
        });
      } catch (error) {
        // As in store(): a failed write is not paid for. The body's unread rest is not drained: the answer goes out
        // with Connection: close (http/request-deadline.ts), so that the device still learns why.
        await refund();
        await this.#dropClaim(device.deviceName, target, token);
        // A store that stopped answering while the device had not sent all of its body: the device paused longer
        // than the store's socket timeout, which says nothing about the store (no outage logged or marked).
        if (!bodyEnded && isTimeout(error))
          throw new DomainError(
            'RequestTimeout',
            `the capture file ${file.key} stopped arriving before its ${file.contentLength} bytes were in (the write to the fleet's output timed out waiting for them); send it again`,
          );
        throw (
          conflictOf(error, file.key) ?? (await this.#unavailable(error, device.fleetName, target)) ?? error
        );
      }
      await this.#written(device.fleetName, target);
      await this.#markStored(device.deviceName, target, token, {
        sha256: hash.digest('hex'),
        bytes: file.contentLength,
      });
      return { location: store.locationOf(storedKey), records: 0, duplicates: 0, bytes: file.contentLength };
    } finally {
      this.#endWrite(claim);
    }
  }

  /**
   * Answers a streamed file sent again to a stored key: its digest is known only once all of it is in, so it is
   * read (bounded by captures.maxFileBytes, no store request open), then compared. Another length is other
   * content without reading a byte (403).
   */
  async #sameStream(
    file: CaptureFileStream,
    stored: { sha256: string; bytes: number },
    location: string,
  ): Promise<StoredCaptureFile> {
    if (stored.bytes !== file.contentLength)
      this.#checkSameFile(file.key, stored, { sha256: '', bytes: file.contentLength });
    const hash = createHash('sha256');
    for await (const chunk of checkedLength(file.body, file.contentLength, file.key, hash)) void chunk;
    this.#checkSameFile(file.key, stored, { sha256: hash.digest('hex'), bytes: file.contentLength });
    return { location, records: 0, duplicates: 0, bytes: 0 };
  }

  /**
   * What a write of the object landed, if this device's did (read only: no row is added, so a device past its
   * quota still adds none); another device's claim of it is 403, as #claim says.
   */
  async #storedObject(
    device: string,
    key: string,
    target: OutputTarget,
  ): Promise<{ sha256: string; bytes: number } | undefined> {
    const row = await this.#db
      .selectFrom('capture_objects')
      .select(['device_name', 'sha256', 'bytes'])
      .where('object_url', '=', target.objectUrl)
      .executeTakeFirst();
    if (row === undefined) return undefined;
    if (row.device_name !== device) throw keyTakenError(key);
    return row.sha256 !== null && row.bytes !== null
      ? { sha256: row.sha256, bytes: Number(row.bytes) }
      : undefined;
  }

  /**
   * Whether `bytes` sent to `key` would be a retry of a file this device stored there (same length; its digest
   * is checked once the body is in), which costs no quota: read before a body, so that such a retry is not
   * refused for a quota it does not use. False for anything not so, a key that names no fleet output included.
   */
  async isStoredRetry(
    device: { deviceName: string; fleetName: string },
    key: string,
    bytes: number,
  ): Promise<boolean> {
    try {
      const stored = await this.#storedObject(device.deviceName, key, await this.#targetOf(device, key));
      return stored?.bytes === bytes;
    } catch {
      // Refused later, with its own answer, once the body is read.
      return false;
    }
  }

  #checkSize(key: string, bytes: number): void {
    checkCaptureFileSize(key, bytes, this.#limits);
  }

  /** Where the device's capture `key` goes: refused unless it is a valid key under its own fleet's output. */
  async #targetOf(device: { deviceName: string; fleetName: string }, key: string): Promise<OutputTarget> {
    try {
      assertValidBlobKey(key);
    } catch (error) {
      throw new DomainError('ValidationError', (error as Error).message);
    }
    const fleet = await this.#db
      .selectFrom('fleets')
      .select([
        'output_s3_location',
        'output_kms_key_id',
        'output_outage_problem',
        'output_outage_last_failure_at',
      ])
      .where('name', '=', device.fleetName)
      .executeTakeFirst();
    if (fleet === undefined) throw new DomainError('NotFound', `fleet ${device.fleetName} does not exist`);
    const target = this.#outputs.targetFor(fleet.output_s3_location, fleet.output_kms_key_id);
    if (target === undefined)
      throw new DomainError(
        'Conflict',
        `fleet ${device.fleetName}'s output location ${fleet.output_s3_location} is not an s3://bucket/prefix URI; update it with "edgefleet fleet update ${device.fleetName} --output s3://…"`,
      );
    // A device writes only its own fleet's captures, under the fleet's output prefix: `<prefix>/<fleet>/…`, or
    // with the Model Monitor format on, `<prefix>/_model-monitor/<model>/<fleet>/…`.
    const root = target.prefix === '' ? '' : `${target.prefix}/`;
    // With no prefix the fleet's name is still in the key: else a device could write over another fleet's
    // captures, or the server's own blobs when they share the bucket.
    const underPrefix = key.startsWith(root);
    const layout = underPrefix ? captureKeyLayoutOf(key.slice(root.length).split('/')) : undefined;
    if (layout === undefined || layout.fleet !== device.fleetName)
      throw new DomainError(
        'Forbidden',
        `capture key ${key} is outside fleet ${device.fleetName}'s output; expected keys under ${root}${device.fleetName}/ (or ${root}${MODEL_MONITOR_FOLDER}/<model>/${device.fleetName}/ for Model Monitor records) (set sagemaker_edge_core_folder_prefix to "${target.prefix === '' ? '/' : target.prefix}"${target.prefix === '' ? ', which means none' : ''}; "edgefleet device enroll" does)`,
      );

    // A fleet output that shares the server's own blob space (same bucket, overlapping prefix) must not let a
    // device write over models or packages the server signs and serves; the operator has to move the output.
    const reserved = target.reservedPrefix;
    const storedKey = target.keyFor(key);
    // Checked before any claim, charge or write: else the write fails late (ENAMETOOLONG, a 500).
    const maxSegment = target.store.maxKeySegmentLength;
    const long =
      maxSegment === undefined ? undefined : key.split('/').find((segment) => segment.length > maxSegment);
    if (long !== undefined)
      throw new DomainError(
        'ValidationError',
        `capture key ${key} has a segment of ${long.length} characters; the server's local blob folder holds segments (between slashes) of at most ${maxSegment} characters; expected shorter file and folder names (S3 outputs have no such limit)`,
        { maxKeySegmentLength: maxSegment },
      );
    if (reserved !== undefined && (reserved === '' || storedKey.startsWith(`${reserved}/`)))
      throw new DomainError(
        'Conflict',
        `fleet ${device.fleetName}'s output location ${fleet.output_s3_location} overlaps the server's own blob store (s3://${reserved === '' ? '<bucket>' : `<bucket>/${reserved}`}); captures are not written there; move the output with "edgefleet fleet update ${device.fleetName} --output s3://…"`,
      );
    return {
      store: target.store,
      storedKey,
      format: layout.format,
      ...(target.sseKmsKeyId !== undefined && { sseKmsKeyId: target.sseKmsKeyId }),
      // targetFor took the location, so it parses.
      objectUrl: `s3://${parseOutputLocation(fleet.output_s3_location)!.bucket}/${key}`,
      location: fleet.output_s3_location,
      outageProblem: fleet.output_outage_problem,
      outageLastFailureAt:
        fleet.output_outage_last_failure_at === null ? null : Number(fleet.output_outage_last_failure_at),
    };
  }

  /**
   * Claims the object's address for the device, or finds it claimed: capture objects are written once, by the
   * device that claimed them first (its retries included), so that no fleet-mate can write over them. A key
   * claimed by another device is 403 (keyTakenError); so is a manifest at a key whose records another device
   * stored before capture_objects existed (their device_captures rows name it). The first insert wins, on every replica. An
   * object not stored yet is written by one upload at a time (its write_token): another upload of it meanwhile
   * is 409, which the agent retries.
   */
  async #claim(device: string, key: string, target: OutputTarget, manifest: boolean): Promise<Claim> {
    const taken = () => keyTakenError(key);
    if (manifest) {
      const other = await this.#db
        .selectFrom('device_captures')
        .select('device_name')
        .where('object_key', '=', key)
        .where('device_name', '<>', device)
        .limit(1)
        .executeTakeFirst();
      if (other !== undefined) throw taken();
    }
    const token = `${this.#writer.id}.${randomUUID()}`;
    const now = this.#now();
    // Held from here until the upload is answered (the caller's #endWrite), so that no retry takes it meanwhile.
    this.#writing.add(token);
    let claim: Claim | undefined;
    try {
      claim = await this.#takeWrite(device, target, token, now, taken, underWay);
      return claim;
    } finally {
      // Only a write this upload took stays held; its caller gives it back when answered (#endWrite).
      if (claim === undefined || claim.stored) this.#writing.delete(token);
    }

    function underWay(): DomainError {
      return new DomainError(
        'Conflict',
        `capture key ${key} is being written by another upload of this device's now; capture objects are written once; send it again once that upload is answered`,
        { key },
      );
    }
  }

  async #takeWrite(
    device: string,
    target: OutputTarget,
    token: string,
    now: number,
    taken: () => DomainError,
    underWay: () => DomainError,
  ): Promise<Claim> {
    await this.#db
      .insertInto('capture_objects')
      .values({
        object_url: target.objectUrl,
        device_name: device,
        sha256: null,
        bytes: null,
        claimed_at: now,
        write_token: token,
        write_started_at: now,
      })
      .onConflict((oc) => oc.column('object_url').doNothing())
      .execute();
    const read = () =>
      this.#db
        .selectFrom('capture_objects')
        .select(['device_name', 'sha256', 'bytes', 'write_token'])
        .where('object_url', '=', target.objectUrl)
        .executeTakeFirst();
    let row = await read();
    // Gone since the insert: a failed write dropped it, or the retention sweep; the upload tries again.
    if (row === undefined) throw underWay();
    if (row.device_name !== device) throw taken();
    if (row.sha256 !== null && row.bytes !== null)
      return { stored: true, sha256: row.sha256, bytes: Number(row.bytes) };
    if (row.write_token === token) return { stored: false, token };
    // Its own claim, not stored: an earlier write failed (no token), or one is under way (its token), or one
    // whose upload ended without giving the write back (#holderEnded): that one is taken if it still holds it.
    const held = row.write_token;
    const ended = held !== null && (await this.#holderEnded(held));
    const took = await this.#db
      .updateTable('capture_objects')
      .set({ write_token: token, write_started_at: now })
      .where('object_url', '=', target.objectUrl)
      .where('device_name', '=', device)
      .where('sha256', 'is', null)
      .where((eb) =>
        eb.or([
          eb('write_token', 'is', null),
          eb('write_started_at', '<', now - WRITE_LEASE_MS),
          ...(ended ? [eb('write_token', '=', held)] : []),
        ]),
      )
      .executeTakeFirst();
    if (Number(took.numUpdatedRows) === 1) return { stored: false, token };
    row = await read();
    if (row?.sha256 != null && row.bytes !== null && row.device_name === device)
      return { stored: true, sha256: row.sha256, bytes: Number(row.bytes) };
    throw underWay();
  }

  /**
   * Whether the upload holding `token` is over though its write is still held (the holder could not give it
   * back): a token of this process none of its uploads holds (answered, its claim not dropped as the database
   * failed), or of a server process certainly gone (killed mid-write; it never dropped it: CaptureWriter.isRunning).
   */
  async #holderEnded(token: string): Promise<boolean> {
    const dot = token.indexOf('.');
    const holder = dot > 0 ? token.slice(0, dot) : undefined;
    if (holder === this.#writer.id) return !this.#writing.has(token);
    return !(await this.#writer.isRunning(holder));
  }

  /** The upload holding `claim`'s write was answered, whatever the outcome (see #writing). */
  #endWrite(claim: Claim | undefined): void {
    if (claim !== undefined && !claim.stored) this.#writing.delete(claim.token);
  }

  /** A stored object sent again must be the same file (a retry), else 403: objects are written once. */
  #checkSameFile(
    key: string,
    stored: { sha256: string; bytes: number },
    sent: { sha256: string; bytes: number },
  ): void {
    if (stored.sha256 === sent.sha256 && stored.bytes === sent.bytes) return;
    // 403 as a key another device holds: no retry of this file can change it.
    throw new DomainError(
      'Forbidden',
      `capture key ${key} is stored already with other content (${stored.bytes} bytes, SHA-256 ${stored.sha256}; this file: ${sent.bytes} bytes); capture objects are written once; expected the same file again, or a new key`,
      { key, storedBytes: stored.bytes, storedSha256: stored.sha256 },
    );
  }

  /** Drops the device's claim of an object whose write failed: no row stays for an object that is not there. */
  async #dropClaim(device: string, target: OutputTarget, token: string): Promise<void> {
    await this.#db
      .deleteFrom('capture_objects')
      .where('object_url', '=', target.objectUrl)
      .where('device_name', '=', device)
      .where('sha256', 'is', null)
      .where('write_token', '=', token)
      .execute()
      .catch(() => undefined);
  }

  /**
   * Records what the device's write of the object was, once it landed (a retry of it is then no write): only
   * while this upload still holds the write, so that the digest recorded is of the file written.
   */
  async #markStored(
    device: string,
    target: OutputTarget,
    token: string,
    sent: { sha256: string; bytes: number },
  ): Promise<void> {
    const marked = await this.#db
      .updateTable('capture_objects')
      .set({ sha256: sent.sha256, bytes: sent.bytes, write_token: null, write_started_at: null })
      .where('object_url', '=', target.objectUrl)
      .where('device_name', '=', device)
      .where('write_token', '=', token)
      .executeTakeFirst();
    if (Number(marked.numUpdatedRows) !== 1)
      throw new DomainError(
        'Conflict',
        `the write of capture key ${target.objectUrl} outlasted its lease and another upload took it over; send the file again`,
      );
  }

  /**
   * Capture bytes the device may still upload today, and when its quota renews: read before an upload's body,
   * so that a device over its quota costs the server no body at all.
   */
  async remainingToday(device: string): Promise<{ bytes: number; renewsInSeconds: number }> {
    const now = this.#now();
    const row = await this.#db
      .selectFrom('device_capture_usage')
      .select('bytes')
      .where('device_name', '=', device)
      .where('day', '=', utcDay(now))
      .executeTakeFirst();
    const used = row === undefined ? 0 : Number(row.bytes);
    return {
      bytes: Math.max(0, this.#limits.dailyQuotaBytesPerDevice - used),
      renewsInSeconds: secondsToNextUtcDay(now),
    };
  }

  /** Which of `ids` are stored for this device and format already: from another manifest than `key`, or from it. */
  async #stored(
    device: string,
    format: string,
    key: string,
    ids: string[],
  ): Promise<{ storedElsewhere: Set<string>; storedHere: Set<string> }> {
    const storedElsewhere = new Set<string>();
    const storedHere = new Set<string>();
    const unique = [...new Set(ids)];
    for (let i = 0; i < unique.length; i += CHUNK) {
      const rows = await this.#db
        .selectFrom('device_captures')
        .select(['capture_id', 'object_key'])
        .where('device_name', '=', device)
        .where('record_format', '=', format)
        .where('capture_id', 'in', unique.slice(i, i + CHUNK))
        .execute();
      for (const row of rows) (row.object_key === key ? storedHere : storedElsewhere).add(row.capture_id);
    }
    return { storedElsewhere, storedHere };
  }

  /**
   * Adds `bytes` to the device's usage today, refusing (429) what would go over the daily quota. The add comes
   * first and the check reads its result, so concurrent uploads (on PostgreSQL, other replicas') queue on the
   * row's lock instead of all passing one read; a refused add is rolled back with its transaction.
   */
  async #charge(device: string, bytes: number): Promise<string> {
    const day = utcDay(this.#now());
    const quota = this.#limits.dailyQuotaBytesPerDevice;
    await this.#db.transaction().execute(async (trx) => {
      const row = await trx
        .insertInto('device_capture_usage')
        .values({ device_name: device, day, bytes })
        .onConflict((oc) =>
          oc
            .columns(['device_name', 'day'])
            .doUpdateSet({ bytes: (eb) => eb('device_capture_usage.bytes', '+', bytes) }),
        )
        .returning('bytes')
        .executeTakeFirstOrThrow();
      const used = Number(row.bytes) - bytes;
      if (used + bytes > quota)
        throw new DomainError(
          'LimitExceeded',
          `device ${device} has uploaded ${used} capture bytes today (UTC); ${bytes} more would pass its daily quota of ${quota} (captures.dailyQuotaBytesPerDevice); the agent keeps the batch and retries`,
          { usedBytes: used, quotaBytes: quota, retryAfterSeconds: secondsToNextUtcDay(this.#now()) },
        );
    });
    return day;
  }

  /** Takes back a charge for bytes that were not stored. */
  async #refund(device: string, day: string, bytes: number): Promise<void> {
    await this.#db
      .updateTable('device_capture_usage')
      .set((eb) => ({ bytes: eb('bytes', '-', bytes) }))
      .where('device_name', '=', device)
      .where('day', '=', day)
      .execute();
  }
}

/**
 * The 400 for a capture key the server's local blob folder cannot hold beside one stored before (a key that is a
 * folder of another). 400, not 409: no retry can change it, while agents take a 409 as passing (for a fleet output
 * the operator has yet to fix, it may pass later). The agent keeps a file refused with 400 and retries its batch;
 * after 10 such attempts that store nothing it sets the whole batch aside, failing all of its captures. S3 outputs
 * have no such conflict.
 */
function conflictOf(error: unknown, key: string): DomainError | undefined {
  if (!(error instanceof BlobKeyConflictError)) return undefined;
  const conflicting = error.conflictingKey === error.key ? undefined : error.conflictingKey;
  // The blob keys carry the server's fleet-output/<bucket>/ folder; the device knows its own keys only.
  const folder = error.key.length - key.length;
  const theirs =
    conflicting === undefined || conflicting.length <= folder ? conflicting : conflicting.slice(folder);
  return new DomainError(
    'ValidationError',
    theirs === undefined
      ? `the capture key ${key} cannot be stored: keys under ${key}/ are stored, and the server's local blob folder cannot hold a key that is also a folder of other keys; expected capture keys that are not prefixes of each other (S3 outputs have no such limit)`
      : `the capture key ${key} cannot be stored: ${theirs} is stored, and the server's local blob folder cannot hold a key that is also a folder of other keys; expected capture keys that are not prefixes of each other (S3 outputs have no such limit)`,
    { conflictingKey: theirs ?? key },
  );
}

/**
 * The capture id of one manifest line: its `eventMetadata.eventId` (Edge Manager and Model Monitor records). A
 * device reports only for itself: an Edge Manager record names its device and fleet (`eventMetadata.deviceId`,
 * `deviceFleetName`; the agent always writes both), which must be the certificate's, else a device could put
 * records in another device's or fleet's name into the data sets built from them. Model Monitor records name
 * neither; one that does must name the certificate's too.
 */
function captureIdOf(
  line: string,
  key: string,
  lineNumber: number,
  device: { deviceName: string; fleetName: string },
  format: 'edge' | 'model-monitor',
): string {
  let record: unknown;
  try {
    record = JSON.parse(line);
  } catch {
    throw new DomainError(
      'ValidationError',
      `${key} line ${lineNumber} is not JSON; expected one capture record per line`,
    );
  }
  const metadata = (record as { eventMetadata?: Record<string, unknown> } | null)?.eventMetadata;
  const id = metadata?.eventId;
  if (typeof id !== 'string' || id === '' || id.length > 256)
    throw new DomainError(
      'ValidationError',
      `${key} line ${lineNumber} has no eventMetadata.eventId (the capture id, 1-256 characters); expected a capture record`,
    );
  for (const [field, expected] of [
    ['deviceId', device.deviceName],
    ['deviceFleetName', device.fleetName],
  ] as const) {
    const found = metadata?.[field];
    if (found === undefined && format === 'model-monitor') continue;
    if (found !== expected) {
      // Quoted and cut short: the value is the device's, of any size.
      const shown = found === undefined ? 'missing' : JSON.stringify(found).slice(0, 80);
      throw new DomainError(
        'ValidationError',
        `${key} line ${lineNumber} (capture ${id.slice(0, 80)}) has eventMetadata.${field} ${shown}; expected ${JSON.stringify(expected)}, the uploading device's ${field === 'deviceId' ? 'name' : 'fleet'} (a device uploads only its own captures)`,
        { field: `eventMetadata.${field}`, expected, found: shown },
      );
    }
  }
  return id;
}

/**
 * `body`, which must be exactly `length` bytes: one that ends short or breaks off (the device went away) fails the
 * stream, so that no store keeps part of a file; one that runs long too (HTTP framing prevents it; this keeps
 * the length given to the store true regardless).
 */
/** The S3 client's socket timeout (as the store's "not answering", or raw). */
function isTimeout(error: unknown): boolean {
  const cause = error instanceof BlobStoreUnavailableError ? error.cause : error;
  return (cause as { name?: unknown } | undefined)?.name === 'TimeoutError';
}

function checkedLength(body: Readable, length: number, key: string, hash?: Hash): Readable {
  let seen = 0;
  const checked = new Transform({
    transform(chunk: Buffer, _encoding, done: TransformCallback) {
      seen += chunk.length;
      hash?.update(chunk);
      if (seen > length)
        done(new Error(`the capture file ${key} is longer than its Content-Length of ${length}`));
      else done(null, chunk);
    },
    flush(done: TransformCallback) {
      done(
        seen === length
          ? null
          : new Error(`the capture file ${key} ended after ${seen} of its ${length} bytes`),
      );
    },
  });
  // pipeline, not pipe: an error of the request (the connection closed) reaches the store's side as well.
  pipeline(body, checked, () => undefined);
  return checked;
}

const sha256Of = (body: Buffer) => createHash('sha256').update(body).digest('hex');

/** The whole body, which must be exactly `length` bytes (a manifest or a small file, bounded by captures.maxFileBytes). */
async function readExactly(body: Readable, length: number, key: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of checkedLength(body, length, key)) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks, length);
}
