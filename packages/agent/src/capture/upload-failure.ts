import { LineLimiter } from '@edgefleet/core';
import { DeviceApiError } from '../fleet/index.js';
import type { CaptureLogger } from './capture-metrics.js';
import { MissingCredentialsError, RefusedByStoreError, RetryLaterError } from './object-store.js';

/** Socket and DNS error codes: the store or the server could not be reached, or dropped the connection. */
const NETWORK_ERROR_CODES: ReadonlySet<string> = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'ETIMEDOUT',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EPIPE',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
]);

function isNetworkErrorCode(code: unknown): boolean {
  return typeof code === 'string' && (NETWORK_ERROR_CODES.has(code) || code.startsWith('UND_ERR_'));
}

/**
 * The log fields of a failed capture upload, whose line's message says the reason once (the outermost error's
 * message: it names the key and the store's word or the network error), as the fleet client's lines do: the
 * device API's kind of `failure` where it answered or could not be reached, and `err` with its stack only for a
 * failure no store or network explains (a bug). A network outage is expected on a device: a stack per retry, whose
 * causes repeat the reason, says nothing more.
 */
export function uploadFailureFields(error: unknown): Record<string, unknown> {
  let failure: string | undefined;
  let expected = false;
  for (let e: unknown = error, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth += 1) {
    if (e instanceof DeviceApiError) {
      failure = e.failure;
      expected = true;
    } else if (
      e instanceof RetryLaterError ||
      e instanceof RefusedByStoreError ||
      // Its message says what to set; the SDK's stack beneath it says nothing more, once per retry.
      e instanceof MissingCredentialsError ||
      // A network error (ECONNREFUSED, ETIMEDOUT, undici's UND_ERR_…) or an answer of S3 (the AWS SDK's
      // $metadata). Not any `code`: Node's programming errors (ERR_…), SQLite's and a local file's (ENOENT,
      // EACCES on the capture) carry one too, and are bugs or faults whose stack is needed.
      isNetworkErrorCode((e as NodeJS.ErrnoException).code) ||
      '$metadata' in e
    ) {
      expected = true;
    }
  }
  return { ...(failure !== undefined && { failure }), ...(!expected && { err: error }) };
}

/**
 * What an uploader does with a store's refusal (RefusedByStoreError), the one rule the spool and the periodic upload
 * share: the file is given up (`givesUp`: the spool drops it and the records that need it, the periodic upload
 * removes it) only when the control plane itself answered 413 PayloadTooLarge (RefusedByStoreError.aboutTheFile),
 * as no setting on this device can make it take the file. Every other refusal keeps the file: a proxy's 413 (no
 * control-plane code), any 403, any 400 may pass once a setting is fixed. Undefined when `error` is no refusal.
 */
export function storeRefusal(error: unknown): { error: RefusedByStoreError; givesUp: boolean } | undefined {
  if (!(error instanceof RefusedByStoreError)) return undefined;
  return { error, givesUp: error.aboutTheFile };
}

/** The end of a limited line's message: how many were left out since the last line (`unit`: "failed round(s)"). */
export function repeatsNote(leftOut: number, unit: string): string {
  return leftOut > 0
    ? `${leftOut} more ${unit} since the last line, not logged`
    : 'repeats logged at most once a minute';
}

/**
 * The failed attempts of one uploader (the spool, the periodic upload) and their lines: each failure counted, its
 * line the first of a run, then at most one a minute (an outage retried at the backoff's pace writes a line a
 * minute, not one per retry); the first success after failures writes `capture-upload-resumed`.
 */
export class UploadFailureLines {
  readonly #lines: LineLimiter;
  #failures = 0;

  constructor(options: { now?: () => number } = {}) {
    this.#lines = new LineLimiter({ ...(options.now !== undefined && { now: options.now }) });
  }

  /** Failed attempts since the last success. */
  get failures(): number {
    return this.#failures;
  }

  /**
   * Counts a failed attempt. Undefined when its line is to be left out (one was written within the minute, or
   * `logged` is false: the caller says it another way), else how many were left out since the last line.
   */
  failed(options: { logged?: boolean } = {}): { leftOut: number } | undefined {
    this.#failures += 1;
    if (options.logged === false) return undefined;
    const admitted = this.#lines.admit('upload');
    return admitted === undefined ? undefined : { leftOut: admitted.leftOut };
  }

  /** A success: after failures, the info line `capture-upload-resumed` (`message` given their number); the count starts over. */
  succeeded(logger: CaptureLogger | undefined, store: string, message: (failures: number) => string): void {
    if (this.#failures === 0) return;
    const notLogged = this.#lines.forget('upload');
    logger?.info(
      {
        event: 'capture-upload-resumed',
        store,
        failures: this.#failures,
        ...(notLogged > 0 && { failuresNotLogged: notLogged }),
      },
      message(this.#failures),
    );
    this.#failures = 0;
  }
}
