import {
  closeSync,
  constants,
  fchmodSync,
  fstatSync,
  lstatSync,
  mkdirSync,
  openSync,
  readFileSync,
  statSync,
} from 'node:fs';
import { join } from 'node:path';

/**
 * The SQLite connection a FolderLock holds its lock with (better-sqlite3's Database is one). Injected, so that
 * this package needs no native module: the agent and the server each pass their own.
 */
export interface LockConnection {
  pragma(source: string): unknown;
  exec(source: string): unknown;
  close(): unknown;
}

export interface FolderLockOptions {
  /** Where the kernel lists file locks (default /proc/locks); read only to name the holder's pid. */
  procLocksPath?: string;
  /** Opens the lock file as a SQLite database, with no busy wait (better-sqlite3 with `timeout: 0`). */
  openDatabase: (path: string) => LockConnection;
}

/** What a FolderLock guards: its lock file's name, the folder's mode when made, and how its refusals read. */
export interface LockedFolderKind {
  /** For messages: "the data root", "the Disk capture folder". */
  label: string;
  /** The config key that names the folder. */
  configKey: string;
  /** The field naming the folder in the holder's start-failed log line: "dataRoot", "captureFolder". */
  logField: string;
  /** Why a second holder is refused, for the in-use message: "one agent per data root". */
  onePerFolder: string;
  /** What to give a second holder instead: "a data root of its own". */
  ownFolder: string;
  /** The program that holds such locks, for messages: "edgefleet-agent", "edgefleet-server". */
  program: string;
  /** How messages call that program's process: "agent", "server". */
  holder: string;
  /** The lock file's name in the folder. */
  lockFileName: string;
  /** The folder's mode when the lock creates it. */
  folderMode: number;
}

/** Where another holder's folder lies, when it is not this folder itself but one inside or around it. */
export interface NestedFolder {
  /** The other holder's folder (its real path). */
  folder: string;
  /** "inside": this folder lies inside the other; "contains": the other lies inside this one. */
  relation: 'inside' | 'contains';
}

/**
 * Another process (another edgefleet-agent or edgefleet-server, or another lock in this one) holds a folder's
 * lock: this folder's, or (`nested`) that of a folder inside or around it, which the same files would be shared
 * through.
 */
export class FolderInUseError extends Error {
  override readonly name = 'FolderInUseError';
  constructor(
    readonly kind: LockedFolderKind,
    readonly folder: string,
    /** The holder's pid, when the kernel says (Linux /proc/locks); undefined when it cannot be known. */
    readonly holderPid: number | undefined,
    readonly nested?: NestedFolder,
  ) {
    const holder = `another ${kind.program}${holderPid === undefined ? '' : ` (pid ${holderPid})`}`;
    super(
      nested === undefined
        ? `${kind.label} ${folder} (${kind.configKey}) is in use by ${holder}; ${kind.onePerFolder}: stop that ${kind.holder}, or give this one ${kind.ownFolder}`
        : `${kind.label} ${folder} (${kind.configKey}) ${nested.relation === 'inside' ? 'lies inside' : 'contains'} ${nested.folder}, ${kind.label} of ${holder}; ${kind.onePerFolder}: stop that ${kind.holder}, or give this one ${kind.ownFolder}, neither inside nor containing another ${kind.holder}'s`,
    );
  }
}

/**
 * Why a lock could not be taken, for the holder's exit code: whether starting again can help.
 * - `unsafe`: the lock file is a link, not a regular file, another user's, or not a SQLite file: a person must
 *   remove it (or chown it).
 * - `access`: the folder or the file may not be made or written: permissions, a read-only filesystem, a part of
 *   the path that is a file. A person must fix the permissions or the mount, or name another folder.
 * - `failed`: anything else (an I/O error, no space or no inodes left, no file descriptors): it may pass.
 */
export type FolderLockProblem = 'unsafe' | 'access' | 'failed';

/**
 * A folder's lock could not be taken for a reason other than another holder: the folder or the lock file cannot
 * be made, opened or locked, or the lock file is not safe to use. The message names the path and the cause.
 */
export class FolderLockError extends Error {
  override readonly name = 'FolderLockError';
  readonly problem: FolderLockProblem;
  constructor(
    readonly kind: LockedFolderKind,
    readonly folder: string,
    message: string,
    options?: { cause?: unknown; problem?: FolderLockProblem },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.problem = options?.problem ?? 'failed';
  }
}

/** File system error codes a person must fix (permissions, the mount, the path), with what each means. */
const ACCESS_ERRNO: Record<string, string> = {
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EROFS: 'the filesystem is read-only',
  // mkdir (recursive) of a path that is a file.
  EEXIST: 'a file is there, not a folder',
  ENOTDIR: 'a part of its path is a file, not a folder',
  EISDIR: 'a folder is in the way',
  ENAMETOOLONG: 'the path is too long',
  ELOOP: 'too many symbolic links in its path',
};

/** Other file system error codes, in words: they may pass. */
const FAILED_ERRNO: Record<string, string> = {
  ENOSPC: 'no space or no inodes left on its filesystem',
  EDQUOT: "the user's disk quota is used up",
  EIO: 'an I/O error',
  EMFILE: 'this process has too many files open',
  ENFILE: 'the system has too many files open',
  ENOMEM: 'out of memory',
  EAGAIN: 'the resource is busy',
};

/**
 * SQLite primary result codes a person must fix, and those for a file that is not (or no longer) a SQLite file.
 * better-sqlite3 turns extended result codes on, so `code` is often e.g. SQLITE_READONLY_DIRECTORY: matched by its
 * primary code (sqlitePrimaryCode).
 */
const ACCESS_SQLITE = new Set(['SQLITE_READONLY', 'SQLITE_CANTOPEN', 'SQLITE_PERM', 'SQLITE_AUTH']);
const DAMAGED_SQLITE = new Set(['SQLITE_NOTADB', 'SQLITE_CORRUPT']);

/**
 * A file system or SQLite error as "what it means (CODE)", and whether a person must fix it ('access', 'unsafe':
 * a SQLite file that is not one) or it may pass ('failed'). For holders' other files too (the server's database).
 */
export function describeFileError(error: unknown): { words: string; problem: FolderLockProblem } {
  const code = String((error as { code?: unknown }).code ?? '');
  if (code.startsWith('SQLITE_')) return { words: sqliteWords(error), problem: sqliteProblem(error) };
  return fsCause(error);
}

/** A file system error as "what it means (CODE)", and whether a person must fix it. */
function fsCause(error: unknown): { words: string; problem: FolderLockProblem } {
  const code = (error as NodeJS.ErrnoException).code;
  if (code !== undefined && code in ACCESS_ERRNO)
    return { words: `${ACCESS_ERRNO[code]} (${code})`, problem: 'access' };
  if (code !== undefined && code in FAILED_ERRNO)
    return { words: `${FAILED_ERRNO[code]} (${code})`, problem: 'failed' };
  return { words: code ?? (error as Error).message, problem: 'failed' };
}

/** What to do, for a lock that cannot be taken because of `problem`, in `folder`. */
function adviceFor(problem: FolderLockProblem, kind: LockedFolderKind): string {
  return problem === 'access'
    ? `: fix the folder's permissions or mount, or set ${kind.configKey} to a folder the ${kind.holder}'s user (uid ${process.getuid?.()}) can write`
    : `; starting the ${kind.holder} again may succeed once that passes`;
}

/**
 * An exclusive hold on a folder, for its holder's whole life: SQLite's POSIX lock on `<folder>/<lock file>`, held
 * by a connection in `locking_mode=EXCLUSIVE` after an exclusive transaction, so the kernel drops it when the
 * process ends in any way (SIGKILL, OOM killer, power cut): there is never a stale lock to clean up. The file
 * stays; removing it on release would let a third process lock a new file while a second holds the old one.
 * The agent's data root and Disk capture folder locks are such locks; so is the server's SQLite database lock.
 *
 * Nothing else in the process may open the lock file: a POSIX lock is the process's, and closing any descriptor
 * of the file drops it (SQLite keeps its own descriptors open until the lock is released; a stat is harmless).
 * Other files in the folder are not affected: the lock is on the lock file only.
 */
export class FolderLock {
  readonly folder: string;
  /** The lock file. */
  readonly path: string;
  #db: LockConnection | undefined;
  /** The locked file's identity, to tell when another file has taken its path. */
  readonly #file: { dev: bigint; ino: bigint } | undefined;

  private constructor(folder: string, path: string, db: LockConnection) {
    this.folder = folder;
    this.path = path;
    this.#db = db;
    this.#file = fileIdentity(path);
  }

  /**
   * Takes the lock, creating the folder (kind.folderMode) and the lock file (0600) when missing; never waits.
   * Throws FolderInUseError when another process (or another lock in this one) holds it, FolderLockError when
   * the folder or file cannot be made or locked, or the lock file is a link, not a regular file, or another user's.
   */
  static acquire(folder: string, kind: LockedFolderKind, options: FolderLockOptions): FolderLock {
    const path = join(folder, kind.lockFileName);
    try {
      mkdirSync(folder, { recursive: true, mode: kind.folderMode });
    } catch (error) {
      const { words, problem } = fsCause(error);
      throw new FolderLockError(
        kind,
        folder,
        `cannot create ${kind.label} ${folder}: ${words}; expected a folder the ${kind.holder} can create and write${adviceFor(problem, kind)}`,
        { cause: error, problem },
      );
    }
    prepareLockFile(folder, path, kind);
    let db: LockConnection;
    try {
      db = options.openDatabase(path);
    } catch (error) {
      const problem = sqliteProblem(error);
      throw new FolderLockError(
        kind,
        folder,
        `cannot open the lock file ${path}: ${sqliteWords(error)}; expected a file the ${kind.holder} can create and write in ${kind.label}${adviceFor(problem, kind)}`,
        { cause: error, problem },
      );
    }
    try {
      db.pragma('locking_mode = EXCLUSIVE');
      // In exclusive locking mode the lock an exclusive transaction takes is kept after it ends.
      db.exec('BEGIN EXCLUSIVE');
      db.exec('COMMIT');
    } catch (error) {
      db.close();
      if ((error as { code?: unknown }).code === 'SQLITE_BUSY')
        throw new FolderInUseError(kind, folder, lockHolderPid(path, options.procLocksPath));
      const problem = sqliteProblem(error);
      throw new FolderLockError(
        kind,
        folder,
        `cannot lock ${path}: ${sqliteWords(error)}; expected a SQLite lock file the ${kind.holder} can write` +
          (problem === 'unsafe'
            ? ': it is not one (it keeps nothing: remove it)'
            : problem === 'access'
              ? ` (its filesystem is read-only, or the ${kind.holder}'s user may not write it)${adviceFor(problem, kind)}`
              : adviceFor(problem, kind)),
        { cause: error, problem },
      );
    }
    return new FolderLock(folder, path, db);
  }

  /** Whether the lock is still held (until release). */
  get held(): boolean {
    return this.#db !== undefined;
  }

  /**
   * What became of the lock file since it was locked: undefined while it is still the file locked, else
   * "removed" or "replaced by another file". Either way the lock no longer keeps a second holder out: it locks the
   * file now at the path (a clean-up of old files may remove the lock file, which is never written). An lstat
   * only (opening the file would drop the lock).
   */
  lockFileChange(): 'removed' | 'replaced by another file' | undefined {
    if (this.#file === undefined) return undefined;
    const now = fileIdentity(this.path);
    if (now === undefined) return 'removed';
    return now.dev === this.#file.dev && now.ino === this.#file.ino ? undefined : 'replaced by another file';
  }

  /** Lets the lock go. Safe to call more than once. */
  release(): void {
    this.#db?.close();
    this.#db = undefined;
  }
}

/** A SQLite (better-sqlite3) error opening or locking the lock file: whether a person must act. */
function sqliteProblem(error: unknown): FolderLockProblem {
  const code = sqlitePrimaryCode(String((error as { code?: unknown }).code ?? ''));
  if (DAMAGED_SQLITE.has(code)) return 'unsafe';
  if (ACCESS_SQLITE.has(code)) return 'access';
  return fsCause(error).problem;
}

/** The primary result code of a SQLite (extended) code: SQLITE_READONLY_DIRECTORY → SQLITE_READONLY. */
function sqlitePrimaryCode(code: string): string {
  return /^SQLITE_[A-Z]+/.exec(code)?.[0] ?? code;
}

/** SQLite's message with its code, e.g. "attempt to write a readonly database (SQLITE_READONLY)". */
function sqliteWords(error: unknown): string {
  const code = (error as { code?: unknown }).code;
  const message = (error as Error).message;
  return typeof code === 'string' && !message.includes(code) ? `${message} (${code})` : message;
}

/** The device and inode of what is at `path` (no link followed), or undefined when nothing is there. */
function fileIdentity(path: string): { dev: bigint; ino: bigint } | undefined {
  try {
    const { dev, ino } = lstatSync(path, { bigint: true });
    return { dev, ino };
  } catch {
    return undefined;
  }
}

/**
 * Makes sure the lock file is the holder's own regular file, mode 0600, before SQLite opens it: whoever can open
 * it, even read-only and only for a moment (a descriptor outlives a later chmod), can hold a read lock on it and
 * keep the holder from ever starting again. A new file is created 0600 (never the umask's 0640/0644 that SQLite
 * would give it); a link, anything but a regular file, or a file of another user is refused, and no link is
 * followed here (so nothing outside the folder is created or chmodded). SQLite then opens the file by path: a
 * link swapped in after this check needs write access to the folder (the agent makes its data root 0700, the server its data dir).
 *
 * A descriptor is opened only to create the file or to tighten an older run's mode: closing a descriptor drops
 * this process's POSIX locks on the file, and a 0600 file of ours, which another lock in this process would
 * have left, needs only an lstat.
 */
function prepareLockFile(folder: string, path: string, kind: LockedFolderKind): void {
  const refuse = (found: string) =>
    new FolderLockError(
      kind,
      folder,
      `the lock file ${path} is ${found}; expected a regular file owned by the ${kind.holder}'s user (uid ${process.getuid?.()}), or none (the ${kind.holder} creates it): remove it (it keeps nothing)`,
      { problem: 'unsafe' },
    );
  const cannot = (error: unknown) => {
    const { words, problem } = fsCause(error);
    return new FolderLockError(
      kind,
      folder,
      `cannot create or open the lock file ${path}: ${words}; expected a file the ${kind.holder} can create and write in ${kind.label}${adviceFor(problem, kind)}`,
      { cause: error, problem },
    );
  };
  let found;
  try {
    found = lstatSync(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw cannot(error);
  }
  if (found) {
    if (found.isSymbolicLink()) throw refuse('a symbolic link');
    if (!found.isFile()) throw refuse('not a regular file');
    if (process.getuid && found.uid !== process.getuid()) throw refuse(`owned by uid ${found.uid}`);
    if ((found.mode & 0o777) === 0o600) return;
  }
  const { O_CREAT, O_EXCL, O_RDONLY, O_RDWR, O_NOFOLLOW, O_NONBLOCK } = constants;
  let fd;
  try {
    // O_NOFOLLOW and O_NONBLOCK: a link or a FIFO put there since the lstat is refused, not followed or waited on.
    fd = openSync(
      path,
      // Read-only is enough for fchmod, so an older file the owner cannot write is still tightened.
      found ? O_RDONLY | O_NOFOLLOW | O_NONBLOCK : O_CREAT | O_EXCL | O_RDWR | O_NOFOLLOW,
      0o600,
    );
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ELOOP') throw refuse('a symbolic link');
    // Another holder starting at the same moment made it first: check its file as any existing one.
    if (code === 'EEXIST') return prepareLockFile(folder, path, kind);
    throw cannot(error);
  }
  try {
    const opened = fstatSync(fd);
    if (!opened.isFile()) throw refuse('not a regular file');
    if (process.getuid && opened.uid !== process.getuid()) throw refuse(`owned by uid ${opened.uid}`);
    // Through the descriptor, so no link is followed; also undoes a umask that took the owner's own bits.
    if ((opened.mode & 0o777) !== 0o600) fchmodSync(fd, 0o600);
  } finally {
    // Nothing holds a lock on a file this call created; one found loose was not made 0600 by a lock of this
    // process (acquire does that before locking), so no lock of ours is dropped unless it was chmodded since.
    closeSync(fd);
  }
}

/**
 * The pid of the process holding a lock on `path`, as /proc/locks lists it, or undefined: not Linux, no /proc,
 * several holders, or the holder in a pid namespace this process cannot see (listed as pid 0). Called once this
 * process's own attempt is closed, so the one listed holds the lock (an agent or a server, or a tool keeping a read open).
 */
export function lockHolderPid(path: string, procLocksPath = '/proc/locks'): number | undefined {
  try {
    const { dev, ino } = statSync(path, { bigint: true });
    return lockHolder(readFileSync(procLocksPath, 'utf8'), dev, ino);
  } catch {
    return undefined;
  }
}

/**
 * The one pid holding POSIX (or open-file-description) locks on the file `dev`/`ino` in /proc/locks text, or
 * undefined. Lines look like `1: POSIX  ADVISORY  WRITE 4321 fe:00:2272354 1073741824 1073742335`; waiters
 * (`1: -> POSIX …`) hold nothing and are skipped, and so are flock() locks, which SQLite does not take.
 */
export function lockHolder(procLocks: string, dev: bigint, ino: bigint): number | undefined {
  // glibc's dev_t encoding (gnu_dev_major/minor); /proc/locks prints the major and minor in hex.
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn);
  const minor = (dev & 0xffn) | ((dev >> 12n) & ~0xffn);
  const pids = new Set<number>();
  for (const line of procLocks.split('\n')) {
    const match =
      /^\d+:\s+(?:POSIX|OFDLCK)\s+\S+\s+(?:READ|WRITE)\s+(-?\d+)\s+([0-9a-f]+):([0-9a-f]+):(\d+)\s/.exec(
        line,
      );
    if (!match) continue;
    const [, pid, lineMajor, lineMinor, lineIno] = match;
    if (BigInt(`0x${lineMajor}`) !== major || BigInt(`0x${lineMinor}`) !== minor || BigInt(lineIno!) !== ino)
      continue;
    pids.add(Number(pid));
  }
  const [only] = pids;
  return pids.size === 1 && only !== undefined && only > 0 ? only : undefined;
}
