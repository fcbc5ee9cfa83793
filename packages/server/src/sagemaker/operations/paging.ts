import { z } from 'zod';
import { encodePageToken, pageTokenPosition } from '../../http/pagination.js';
import { AwsError } from '../aws-errors.js';
import { timestampInput } from '../operation.js';

/** NextToken and MaxResults as SageMaker list operations take them (MaxResults 1-100, default 10). */
export const pagingInput = z.object({
  NextToken: z.string().max(8192).optional(),
  MaxResults: z.int().min(1).max(100).optional(),
});

const DEFAULT_MAX_RESULTS = 10;

function decode(list: string, token: string | undefined): string | undefined {
  if (token === undefined || token === '') return undefined;
  const position = pageTokenPosition(list, token);
  if (position !== undefined) return position;
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

/** The time filters SageMaker list operations share. */
export const timeFilterInput = z.object({
  CreationTimeAfter: timestampInput.optional(),
  CreationTimeBefore: timestampInput.optional(),
  LastModifiedTimeAfter: timestampInput.optional(),
  LastModifiedTimeBefore: timestampInput.optional(),
});
type TimeFilters = z.output<typeof timeFilterInput>;

/** Whether an item created and last modified at these times passes the filters (bounds exclusive). */
export function withinTimeFilters(
  item: { createdAt: number; updatedAt: number },
  filters: TimeFilters,
): boolean {
  const inRange = (at: number, after?: number, before?: number) =>
    (after === undefined || at > after) && (before === undefined || at < before);
  return (
    inRange(item.createdAt, filters.CreationTimeAfter, filters.CreationTimeBefore) &&
    inRange(item.updatedAt, filters.LastModifiedTimeAfter, filters.LastModifiedTimeBefore)
  );
}

/** Lists are in name order, ascending (keyset pagination by name); any other order is refused, naming SortBy. */
export function requireNameOrder(
  what: string,
  nameKey: string,
  input: { SortBy?: string | undefined; SortOrder?: string | undefined },
): void {
  if ((input.SortBy ?? nameKey) !== nameKey || (input.SortOrder ?? 'Ascending') !== 'Ascending') {
    throw new AwsError(
      'ValidationException',
      `1 validation error detected: Value at 'SortBy' failed to satisfy constraint: EdgeFleet lists ${what} by ${nameKey}, Ascending only`,
    );
  }
}
