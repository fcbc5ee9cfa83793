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

/** The position a page token of `list` holds; undefined when the token is not one of that list's. */
export function pageTokenPosition(list: string, token: string): string | undefined {
  try {
    const parsed: unknown = JSON.parse(Buffer.from(token, 'base64url').toString('utf8'));
    const { l, a } = (parsed ?? {}) as { l?: unknown; a?: unknown };
    return l === list && typeof a === 'string' ? a : undefined;
  } catch {
    return undefined;
  }
}

export function decodePageToken(list: string, token: string | undefined): string | undefined {
  if (token === undefined) return undefined;
  const position = pageTokenPosition(list, token);
  if (position !== undefined) return position;
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
