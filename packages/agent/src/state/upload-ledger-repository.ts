import type { Database } from 'better-sqlite3';

/** A file as the periodic upload saw it; a file rewritten since (other size or mtime) is a new file. */
export interface LedgerFile {
  /** Relative to the capture disk root. */
  path: string;
  size: number;
  mtimeMs: number;
}

/** Which Disk capture files the periodic upload has put in the bucket (for files it keeps). */
export interface UploadLedger {
  isUploaded(file: LedgerFile): boolean;
  mark(file: LedgerFile, at: number): void;
  /** Forgets every entry whose path is not in `present` (the files were removed by someone). */
  retain(present: ReadonlySet<string>): void;
}

export class UploadLedgerRepository implements UploadLedger {
  readonly #db: Database;

  constructor(db: Database) {
    this.#db = db;
  }

  isUploaded(file: LedgerFile): boolean {
    return (
      this.#db
        .prepare('SELECT 1 FROM uploaded_files WHERE path = ? AND size = ? AND mtime_ms = ?')
        .get(file.path, file.size, Math.trunc(file.mtimeMs)) !== undefined
    );
  }

  mark(file: LedgerFile, at: number): void {
    this.#db
      .prepare(
        'INSERT OR REPLACE INTO uploaded_files (path, size, mtime_ms, uploaded_at) VALUES (?, ?, ?, ?)',
      )
      .run(file.path, file.size, Math.trunc(file.mtimeMs), at);
  }

  retain(present: ReadonlySet<string>): void {
    const paths = (this.#db.prepare('SELECT path FROM uploaded_files').all() as { path: string }[]).map(
      (r) => r.path,
    );
    const remove = this.#db.prepare('DELETE FROM uploaded_files WHERE path = ?');
    this.#db.transaction(() => {
      for (const path of paths) if (!present.has(path)) remove.run(path);
    })();
  }
}

/** The same ledger in memory (no local database): a restart uploads kept files again, under the same keys. */
export class MemoryUploadLedger implements UploadLedger {
  readonly #files = new Map<string, string>();

  isUploaded(file: LedgerFile): boolean {
    return this.#files.get(file.path) === `${file.size}:${Math.trunc(file.mtimeMs)}`;
  }

  mark(file: LedgerFile): void {
    this.#files.set(file.path, `${file.size}:${Math.trunc(file.mtimeMs)}`);
  }

  retain(present: ReadonlySet<string>): void {
    for (const path of this.#files.keys()) if (!present.has(path)) this.#files.delete(path);
  }
}
