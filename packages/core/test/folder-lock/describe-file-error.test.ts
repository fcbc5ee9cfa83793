/**
 * describeFileError classifies SQLite errors by their primary result code: better-sqlite3 turns extended result
 * codes on, so a read-only database folder is SQLITE_READONLY_DIRECTORY, not SQLITE_READONLY.
 */
import { describe, expect, it } from 'vitest';
import { describeFileError } from '../../src/index.js';

function sqliteError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

describe('describeFileError', () => {
  it.each([
    ['SQLITE_READONLY', 'access'],
    ['SQLITE_READONLY_DIRECTORY', 'access'],
    ['SQLITE_READONLY_DBMOVED', 'access'],
    ['SQLITE_CANTOPEN', 'access'],
    ['SQLITE_CANTOPEN_ISDIR', 'access'],
    ['SQLITE_CANTOPEN_FULLPATH', 'access'],
    ['SQLITE_NOTADB', 'unsafe'],
    ['SQLITE_CORRUPT', 'unsafe'],
    ['SQLITE_CORRUPT_INDEX', 'unsafe'],
    ['SQLITE_IOERR_WRITE', 'failed'],
    ['SQLITE_FULL', 'failed'],
    ['SQLITE_BUSY_SNAPSHOT', 'failed'],
  ] as const)('%s: %s', (code, problem) => {
    const described = describeFileError(sqliteError(code, 'what SQLite said'));
    expect(described).toEqual({ words: `what SQLite said (${code})`, problem });
  });

  it("keeps SQLite's message as it is when it already names the code", () => {
    const message = 'attempt to write a readonly database (SQLITE_READONLY_DIRECTORY)';
    expect(describeFileError(sqliteError('SQLITE_READONLY_DIRECTORY', message))).toEqual({
      words: message,
      problem: 'access',
    });
  });
});
