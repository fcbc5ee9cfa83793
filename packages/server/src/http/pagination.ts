import { z } from 'zod';
import { ApiError } from './errors.js';

export const DEFAULT_PAGE_SIZE = 50;
export const MAX_PAGE_SIZE = 500;

/** Query parameters every list route accepts. */
export const pageQuerySchema = z.object({
  limit: z.coerce
    .number()
    .int()
    .min(1)
    .max(MAX_PAGE_SIZE)
    .default(DEFAULT_PAGE_SIZE)
    .describe(`Most items to return (1-${MAX_PAGE_SIZE})`),
  nextToken: z.string().min(1).max(8192).optional().describe('Token from the previous page'),
});

/**
 * Page tokens are opaque to clients: the sort key of the last item returned, plus the list they belong to,
 * so a token from one list is refused by another. They hold no server state, so any replica can continue
 * a listing another one started.
 */
export function encodePageToken(list: string, after: string): string {
  return Buffer.from(JSON.stringify({ l: list, a: after }), 'utf8').toString('base64url');
}

export function decodePageToken(list: string, token: string | undefined): string | undefined {
  if (token === undefined) return undefined;
  try {
    const parsed: unknown = JSON.parse(Buffer.from(token, 'base64url').toString('utf8'));
    if (
      typeof parsed === 'object' &&
      parsed !== null &&
      (parsed as { l?: unknown }).l === list &&
      typeof (parsed as { a?: unknown }).a === 'string'
    ) {
      return (parsed as { a: string }).a;
    }
  } catch {
    // fall through to the error below
  }
  throw new ApiError(400, 'ValidationError', `nextToken is not a token from this ${list} listing`, {
    in: 'querystring',
  });
}

/** Takes `limit + 1` rows and turns the extra one into a next-page token. */
export function toPage<T>(
  list: string,
  rows: T[],
  limit: number,
  keyOf: (row: T) => string,
): { items: T[]; nextToken?: string } {
  if (rows.length <= limit) return { items: rows };
  const items = rows.slice(0, limit);
  return { items, nextToken: encodePageToken(list, keyOf(items[items.length - 1] as T)) };
}
