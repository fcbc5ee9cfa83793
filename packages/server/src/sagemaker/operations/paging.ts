import { z } from 'zod';
import { encodePageToken } from '../../http/pagination.js';
import { AwsError } from '../aws-errors.js';

/** NextToken and MaxResults as SageMaker list operations take them (MaxResults 1-100, default 10). */
export const pagingInput = z.object({
  NextToken: z.string().max(8192).optional(),
  MaxResults: z.int().min(1).max(100).optional(),
});

const DEFAULT_MAX_RESULTS = 10;

function decode(list: string, token: string | undefined): string | undefined {
  if (token === undefined || token === '') return undefined;
  try {
    const parsed: unknown = JSON.parse(Buffer.from(token, 'base64url').toString('utf8'));
    const { l, a } = parsed as { l?: unknown; a?: unknown };
    if (l === list && typeof a === 'string') return a;
  } catch {
    // fall through
  }
  throw new AwsError(
    'ValidationException',
    `1 validation error detected: Value at 'NextToken' failed to satisfy constraint: not a token from a previous ${list} call`,
  );
}

/**
 * One page of a keyset-paginated native listing, with NextToken in the same stateless form the native API
 * uses (any replica can continue it). `fetch` is asked for one row more than the page to know if more follow.
 */
export async function pageOf<T>(
  list: string,
  input: { NextToken?: string | undefined; MaxResults?: number | undefined },
  fetch: (after: string | undefined, limit: number) => Promise<T[]>,
  keyOf: (item: T) => string,
): Promise<{ items: T[]; nextToken?: string }> {
  const limit = input.MaxResults ?? DEFAULT_MAX_RESULTS;
  const rows = await fetch(decode(list, input.NextToken), limit + 1);
  if (rows.length <= limit) return { items: rows };
  const items = rows.slice(0, limit);
  return { items, nextToken: encodePageToken(list, keyOf(items[items.length - 1] as T)) };
}

/** Pages an in-memory list (e.g. a resource's tags) by position. */
export function pageOfList<T>(
  list: string,
  input: { NextToken?: string | undefined; MaxResults?: number | undefined },
  items: T[],
  keyOf: (item: T) => string,
): { items: T[]; nextToken?: string } {
  const after = decode(list, input.NextToken);
  const limit = input.MaxResults ?? DEFAULT_MAX_RESULTS;
  const rest = after === undefined ? items : items.filter((item) => keyOf(item) > after);
  if (rest.length <= limit) return { items: rest };
  const page = rest.slice(0, limit);
  return { items: page, nextToken: encodePageToken(list, keyOf(page[page.length - 1] as T)) };
}
