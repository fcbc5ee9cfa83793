/** Error codes of a write that failed because the device's storage is full (or the user is over a disk quota). */
const STORAGE_FULL_CODES: ReadonlySet<string> = new Set(['SQLITE_FULL', 'ENOSPC', 'EDQUOT']);

/**
 * Whether `error` (or an error it wraps, as `cause`) is a write refused for want of space: SQLite's "database or
 * disk is full" or the file system's ENOSPC/EDQUOT. Such a failure is the device's state, not a bug: callers say
 * it without a stack and try again later.
 */
export function isStorageFull(error: unknown): boolean {
  for (let e = error, depth = 0; e !== null && typeof e === 'object' && depth < 8; depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && STORAGE_FULL_CODES.has(code)) return true;
    e = (e as { cause?: unknown }).cause;
  }
  return false;
}

const STORAGE_FULL_WORDS: Readonly<Record<string, string>> = {
  SQLITE_FULL: 'database or disk is full',
  ENOSPC: 'no space left on the device',
  EDQUOT: 'disk quota exceeded',
};

/**
 * What a storage-full `error` says, in words that name no local path (a file system error's message names the
 * file): for what leaves the device (the heartbeat), where any reader of the device on the server sees it.
 */
export function storageFullWords(error: unknown): string {
  for (let e = error, depth = 0; e !== null && typeof e === 'object' && depth < 8; depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && STORAGE_FULL_WORDS[code] !== undefined) return STORAGE_FULL_WORDS[code];
    e = (e as { cause?: unknown }).cause;
  }
  return "the device's storage is full";
}
