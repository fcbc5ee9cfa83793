import { DeviceApiError } from '../fleet/index.js';
import { RefusedByStoreError, RetryLaterError } from './object-store.js';

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
      // A network error (ECONNREFUSED, ETIMEDOUT, …) or an answer of S3 (the AWS SDK's $metadata).
      typeof (e as NodeJS.ErrnoException).code === 'string' ||
      '$metadata' in e
    ) {
      expected = true;
    }
  }
  return { ...(failure !== undefined && { failure }), ...(!expected && { err: error }) };
}
