/** The one-process lock on a SQLite state database: one lock per database file, whatever path names it. */
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DatabaseInUseError, lockSqliteDatabase } from '../../src/storage/index.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-sqlite-lock-'));
});
afterAll(() => rm(dir, { recursive: true, force: true }));

describe('lockSqliteDatabase', () => {
  it('takes one lock for a database file and a link to it, or to its folder', async () => {
    const dataDir = path.join(dir, 'var', 'state');
    await mkdir(dataDir, { recursive: true });
    const stateFile = path.join(dataDir, 'state.db');
    await writeFile(stateFile, '');
    const fileLink = path.join(dir, 'link.db');
    await symlink(stateFile, fileLink);
    const folderLink = path.join(dir, 'state-folder');
    await symlink(dataDir, folderLink);

    const held = lockSqliteDatabase(stateFile);
    try {
      // Another name for the same file (--database /srv/link.db): refused, naming the path it was given.
      expect(() => lockSqliteDatabase(fileLink)).toThrow(DatabaseInUseError);
      expect(() => lockSqliteDatabase(fileLink)).toThrow(
        `database ${fileLink} is in use by another edgefleet-server`,
      );
      expect(() => lockSqliteDatabase(path.join(folderLink, 'state.db'))).toThrow(DatabaseInUseError);
      // A database not created yet, in a linked folder: the same lock as the real folder's.
      const fresh = lockSqliteDatabase(path.join(folderLink, 'new.db'));
      try {
        expect(() => lockSqliteDatabase(path.join(dataDir, 'new.db'))).toThrow(DatabaseInUseError);
      } finally {
        fresh.release();
      }
    } finally {
      held.release();
    }
    // Released: the link takes it now.
    lockSqliteDatabase(fileLink).release();
  });
});
