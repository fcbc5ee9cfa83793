import { DeviceApiError } from '../fleet/index.js';
import { RefusedByStoreError, RetryLaterError } from './object-store.js';

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
