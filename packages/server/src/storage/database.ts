import { chmodSync, closeSync, mkdirSync, openSync, statSync } from 'node:fs';
import path from 'node:path';
import SqliteDatabase from 'better-sqlite3';
import { describeFileError, type FolderLockProblem } from '@edgefleet/core';
import {
  Kysely,
  PostgresDialect,
  SqliteDialect,
  SqliteDriver,
  sql,
  type CompiledQuery,
  type DatabaseConnection,
  type QueryResult,
  type Driver,
  type PostgresPool,
  type PostgresPoolClient,
  type SqliteDatabase as KyselySqliteDatabase,
} from 'kysely';
import pg from 'pg';
import { NETWORK_ERROR_CODES } from '../errors/network-error-codes.js';
import type { DatabaseSchema } from './schema.js';

export type DatabaseEngine = 'sqlite' | 'postgres';

export type DatabaseLocation = { engine: 'sqlite'; file: string } | { engine: 'postgres'; url: string };

/** An open connection (pool) to the control-plane state, on either engine. */
export interface ServerDatabase {
  readonly engine: DatabaseEngine;
  readonly db: Kysely<DatabaseSchema>;
  /** Where the state lives, with any password removed (for logs). */
  readonly description: string;
  /**
   * Answers a trivial query or throws (readiness). PostgreSQL: on its own pool connection, the query bounded by
   * `timeoutMs` (getting the connection first is bounded by the pool's connection timeout); one that does not
   * answer in time is destroyed, not returned to the pool, so the next ping starts afresh. SQLite: `timeoutMs` is
   * not used (its one connection is in-process; a query waiting behind a transaction is the caller's deadline's).
   */
  ping(timeoutMs: number): Promise<void>;
  close(): Promise<void>;
}

/** Two or more `keyword=value` pairs separated by whitespace, as libpq's connection strings are written. */
const LIBPQ_KEYWORD_STRING = /^[a-z_]+\s*=\s*\S*\s+[a-z_]+\s*=/i;

/**
 * Reads a `--database` value: `postgres://…` / `postgresql://…` selects PostgreSQL; `sqlite:<path>`,
 * `file:<path>` or a plain path selects a SQLite file (relative paths resolve against `baseDir`).
 * Errors show the value with any password masked: they reach the terminal and the journal.
 */
export function parseDatabaseLocation(value: string, baseDir: string): DatabaseLocation {
  const trimmed = value.trim();
  if (trimmed === '')
    throw new Error('database location is empty; expected postgres://… or a SQLite file path');
  if (/^postgres(ql)?:\/\//i.test(trimmed)) return { engine: 'postgres', url: trimmed };
  const unsupported = (why: string): Error =>
    new Error(
      `unsupported database location "${maskUrlCredentials(value)}" (${why}); ` +
        'expected postgres://user:password@host:port/database or a SQLite file path (sqlite:<path> for a path with a colon)',
    );
  const prefixed = /^(sqlite|file):/i.test(trimmed);
  // A typo in a URL ("postgress://", "postgres:/", "postgres//") must not quietly become a SQLite file
  // named after the URL, password included.
  if (!prefixed && /^[a-z][a-z0-9+.-]+:/i.test(trimmed)) throw unsupported('not a postgres:// URL');
  const file = trimmed.replace(/^(sqlite|file):(\/\/)?/i, '');
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(file)) throw unsupported('not a postgres:// URL');
  // Any '@' after a ':', even past a '/': a password may hold '/' ("postgres//u:p/w@h").
  if (!prefixed && /:[\s\S]*@/.test(file)) throw unsupported('looks like a URL with a password');
  // A libpq keyword string ("host=h user=u password=…") would otherwise become a SQLite file named after it,
  // password included, and `init` would print that name.
  if (/(^|[\s?&;])password\s*=/i.test(file) || (!prefixed && LIBPQ_KEYWORD_STRING.test(file)))
    throw unsupported('a libpq keyword string is not supported');
  return { engine: 'sqlite', file: path.resolve(baseDir, file) };
}

/**
 * Names of parameters whose values are secrets: libpq's `password` and `sslpassword`, and what other URLs carry
 * (`client_secret`, `access_token`, `X-Amz-Signature`, `X-Amz-Credential`…). Broad on purpose: a value masked
 * that was no secret costs little.
 */
const SECRET_NAME = /pass|pwd|secret|token|key|credential|signature/i;
/**
 * libpq keywords that match SECRET_NAME but hold a file's path, not its contents: the path helps in an error,
 * pg_dump needs it, and the file is protected by its own mode.
 */
const PATH_VALUED_KEYWORDS = new Set(['sslkey', 'sslcert', 'sslrootcert', 'sslcrl', 'sslcrldir', 'passfile']);

/**
 * Whether a URL query parameter's or libpq keyword's value is a secret, by its name: as written or decoded
 * (`pass%77ord=`: a URL parser decodes the name before libpq sees it), in any case, but for a path-valued
 * keyword. The one rule for masking and for the command lines `backup` prints.
 */
export function isSecretName(name: string): boolean {
  let decoded = name;
  try {
    decoded = decodeURIComponent(name);
  } catch {
    // a malformed escape: the name as written is checked
  }
  if (PATH_VALUED_KEYWORDS.has(decoded.toLowerCase())) return false;
  return SECRET_NAME.test(name) || SECRET_NAME.test(decoded);
}

/** A secret found in a URL-like value: what names it (a parameter's name, or `password` for user info), and where. */
interface SecretRange {
  name: string;
  start: number;
  end: number;
}

/** The `user:password@` password; with several '@', up to the last (passwords hold '@'). */
function userInfoSecret(value: string): SecretRange[] {
  const at = value.lastIndexOf('@');
  if (at < 0) return [];
  const schemeEnd = value.indexOf('://');
  const userStart = schemeEnd >= 0 && schemeEnd < at ? schemeEnd + 3 : 0;
  const colon = value.indexOf(':', userStart);
  return colon < 0 || colon > at ? [] : [{ name: 'password', start: colon + 1, end: at }];
}

/**
 * The values of secret query parameters (`?password=…`, `&sslpassword=…`, also after ';'): each up to the next
 * '&' or the end, so a ';' or '#' in it (sent unencoded) is masked too.
 */
function queryParameterSecrets(value: string): SecretRange[] {
  const ranges: SecretRange[] = [];
  const parameter = /[?&;]([^=&?;#\s]*)=/g;
  for (let match = parameter.exec(value); match !== null; match = parameter.exec(value)) {
    if (!isSecretName(match[1]!)) continue;
    const start = match.index + match[0].length;
    const amp = value.indexOf('&', start);
    const end = amp < 0 ? value.length : amp;
    ranges.push({ name: match[1]!, start, end });
    parameter.lastIndex = end;
  }
  return ranges;
}

/** The values of a libpq keyword string's secret keywords: `password=value`, `sslpassword = 'quoted \' value'`. */
function keywordSecrets(value: string): SecretRange[] {
  const ranges: SecretRange[] = [];
  const keyword = /(^|\s)([A-Za-z_][A-Za-z0-9_]*)(\s*=\s*)('(?:[^'\\]|\\.)*'?|\S*)/g;
  for (let match = keyword.exec(value); match !== null; match = keyword.exec(value)) {
    if (!isSecretName(match[2]!)) continue;
    const start = match.index + match[1]!.length + match[2]!.length + match[3]!.length;
    ranges.push({ name: match[2]!, start, end: start + match[4]!.length });
  }
  return ranges;
}

function secretRanges(value: string): SecretRange[] {
  return [...userInfoSecret(value), ...queryParameterSecrets(value), ...keywordSecrets(value)].filter(
    (range) => range.end > range.start,
  );
}

/**
 * The names of the secrets a URL-like value holds, as written (`password` for the user info's), each once: for a
 * warning that says which to take out.
 */
export function urlSecretNames(value: string): string[] {
  return [...new Set(secretRanges(value).map((range) => range.name))];
}

/**
 * Replaces the secrets of a URL-like value with `***`: the password of `scheme://user:password@host…` (also when
 * malformed), the value of every query parameter whose name says it is a secret (`password`, `sslpassword`,
 * `…secret…`, `…token…`, `…key…`: isSecretName; not a path-valued keyword such as `sslkey`), and a libpq keyword
 * string's (`password=value` or `password='quoted value'`). Works on the text, not a URL parser, so that a value
 * the parser refuses is masked too; each rule finds its ranges in the original text and all are masked, so one
 * rule's match cannot hide another's secret; when in doubt it masks more (the user name, the host) rather than less.
 */
export function maskUrlCredentials(value: string): string {
  const ranges = secretRanges(value).sort((a, b) => a.start - b.start);
  // Overlapping or touching ranges read as one '***'.
  const merged: [number, number][] = [];
  for (const { start, end } of ranges) {
    const last = merged.at(-1);
    if (last !== undefined && start <= last[1]) last[1] = Math.max(last[1], end);
    else merged.push([start, end]);
  }
  let masked = '';
  let from = 0;
  for (const [start, end] of merged) {
    masked += `${value.slice(from, start)}***`;
    from = end;
  }
  return masked + value.slice(from);
}

/**
 * The SQLite database file cannot be opened at start. `problem` (as core's describeFileError): 'failed' may pass
 * (an I/O error, a full disk); the others need a person (permissions, a read-only filesystem, not a SQLite file).
 */
export class DatabaseOpenError extends Error {
  override readonly name = 'DatabaseOpenError';
  constructor(
    message: string,
    readonly problem: FolderLockProblem,
    options: { cause: unknown },
  ) {
    super(message, options);
  }
}

/**
 * The database cannot be used now (unreachable, shutting down, out of connections, busy): an outage of a
 * dependency, not a fault of the request, which the HTTP layer answers with 503.
 */
export class DatabaseUnavailableError extends Error {
  constructor(
    /** Where the state lives, password masked. */
    readonly database: string,
    cause: unknown,
  ) {
    super(
      `the database ${database} cannot be used now: ${cause instanceof Error ? cause.message : String(cause)}`,
      {
        cause,
      },
    );
    this.name = 'DatabaseUnavailableError';
  }
}

/**
 * Why a write failed when the disk under the server's state failed it, not the request: 'full' for no space or
 * quota left (SQLite's SQLITE_FULL, the file system's ENOSPC / EDQUOT, PostgreSQL's 53100 disk_full), 'io' for
 * an I/O error (SQLite's SQLITE_IOERR and its extended codes except SQLITE_IOERR_NOMEM, which is memory, EIO).
 * Undefined for any other error.
 */
export function diskFaultOf(error: unknown): 'full' | 'io' | undefined {
  return diskFaultCodeOf(error)?.fault;
}

/**
 * The disk fault `error` or what it wraps (DatabaseUnavailableError, a migration's message, a plain Error's
 * `cause`) says, with the code that says it: the code tells whose disk it was (SQLite's or PostgreSQL's
 * codes: the database's; a file system's: the files the server writes itself).
 */
export function diskFaultCodeOf(error: unknown): { fault: 'full' | 'io'; code: string } | undefined {
  for (let cause = error, depth = 0; cause !== undefined && cause !== null && depth < 5; depth++) {
    const code = (cause as { code?: unknown }).code;
    if (typeof code === 'string') {
      if (['SQLITE_FULL', 'ENOSPC', 'EDQUOT', '53100'].includes(code)) return { fault: 'full', code };
      if ((code.startsWith('SQLITE_IOERR') && code !== 'SQLITE_IOERR_NOMEM') || code === 'EIO')
        return { fault: 'io', code };
    }
    cause = (cause as { cause?: unknown }).cause;
  }
  return undefined;
}

/**
 * A failure of the connection rather than of the statement: a socket error, pg's own connection messages, or
 * a SQLSTATE of class 08 (connection exception), 57P01-57P03 (server shutting down or starting), 3D000 (the
 * database dropped under a running server) or 53300 (too
 * many connections); SQLite's SQLITE_BUSY (another writer held the file past busy_timeout); and a disk that is
 * full or failing under the database (diskFaultOf): no request can write until an operator frees space.
 */
export function isDatabaseOutage(error: unknown): boolean {
  const { code, message } = (error ?? {}) as { code?: unknown; message?: unknown };
  if (typeof code === 'string') {
    if (NETWORK_ERROR_CODES.has(code) || code.startsWith('08')) return true;
    if (['57P01', '57P02', '57P03', '53300', '3D000', 'SQLITE_BUSY'].includes(code)) return true;
  }
  if (diskFaultOf(error) !== undefined) return true;
  return /Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error/i.test(
    String(message),
  );
}

/**
 * The pool as Kysely sees it, its connection failures turned into DatabaseUnavailableError. One wrapper per pg
 * client, kept as long as the client: Kysely caches its connection object by the client it is handed, so a new
 * wrapper per checkout would make a new connection object (and run any onCreateConnection) every time.
 */
export function outageAwarePool(pool: pg.Pool, database: string): PostgresPool {
  const translate = (error: unknown) =>
    isDatabaseOutage(error) ? new DatabaseUnavailableError(database, error) : error;
  const wrappers = new WeakMap<pg.PoolClient, PostgresPoolClient>();
  return {
    connect: async () => {
      let client: pg.PoolClient;
      try {
        client = await pool.connect();
      } catch (error) {
        throw translate(error);
      }
      const known = wrappers.get(client);
      if (known) return known;
      const query = (...args: unknown[]): unknown => {
        const result = (client.query as (...a: unknown[]) => unknown)(...args);
        // A cursor (streamed query) is returned as it is; its reads fail in their own way.
        return result instanceof Promise
          ? result.catch((error: unknown) => {
              throw translate(error);
            })
          : result;
      };
      const wrapper: PostgresPoolClient = {
        query: query as PostgresPoolClient['query'],
        release: () => client.release(),
      };
      wrappers.set(client, wrapper);
      return wrapper;
    },
    end: () => pool.end(),
  };
}

// bigint (int8, e.g. epoch milliseconds and COUNT(*)) arrives as a string from pg; our values fit in a double.
const INT8_OID = 20;
const pgTypes = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
    oid === INT8_OID && format !== 'binary'
      ? (value: string) => Number(value)
      : pg.types.getTypeParser(oid, format ?? 'text')) as typeof pg.types.getTypeParser,
};

const STATEMENT_CACHE_SIZE = 500;

/**
 * Kysely prepares every query anew; preparing costs more than running a small statement. Reusing prepared
 * statements by SQL text (the same queries recur with new parameters) roughly halves the cost of a
 * heartbeat on SQLite. Least recently used statements are dropped past the cache size.
 */
function withStatementCache(sqlite: SqliteDatabase.Database): KyselySqliteDatabase {
  const cache = new Map<string, SqliteDatabase.Statement>();
  return {
    close: () => sqlite.close(),
    prepare: (text: string) => {
      let statement = cache.get(text);
      if (statement !== undefined) {
        cache.delete(text);
      } else {
        statement = sqlite.prepare(text);
        if (cache.size >= STATEMENT_CACHE_SIZE) cache.delete(cache.keys().next().value as string);
      }
      cache.set(text, statement);
      return statement;
    },
  };
}

/**
 * Kysely's SQLite driver, except that a transaction SQLite has already ended is not rolled back again. When
 * SQLite has ended the transaction itself (a failed COMMIT, some SQLITE_FULL and SQLITE_IOERR cases; a
 * SQLITE_FULL inside one statement may undo only that statement and leave the transaction open, and then the
 * ROLLBACK runs as usual), kysely's ROLLBACK would fail ("cannot rollback - no transaction is active") and that
 * error would replace the one that says why (the full disk) in the answer and the log.
 *
 * A ROLLBACK that fails while the transaction is still open is tried once more. If the transaction is still
 * open after that, the one connection would stay inside it: every later write would join a transaction that is
 * never committed (lost at restart, readable meanwhile, so nothing would look wrong). The driver then gives the
 * database up: it refuses every later use (DatabaseUnavailableError: 503 for requests, /readyz not ready); a
 * server exits so that its supervisor restarts it, which discards the open transaction. The original error
 * still propagates; `onRollbackFailure` hears each failed ROLLBACK and whether the connection was given up.
 *
 * A statement SQLite answers with SQLITE_CORRUPT or SQLITE_NOTADB (damage the start check did not see: it
 * happened since, or the file is too large to check at start) gives the database up too: writing on into a
 * damaged file may spread the damage. That statement and every later use throw DatabaseUnavailableError
 * whose cause is damagedDatabaseError (the file, and how to restore it); `onDamaged` hears it once.
 *
 * `onWriteCommitted` hears each write that reached the file: a committed transaction that changed rows, or a
 * statement outside a transaction that did, RETURNING ones included (readiness: the disk takes writes again after
 * an I/O error). It compares SQLite's total_changes() before and after, so a transaction SQLite rolled back
 * itself is never taken for a write.
 */
class SqliteDriverKeepingCause extends SqliteDriver {
  #unusable: DatabaseUnavailableError | undefined;
  #connection: DatabaseConnection | undefined;
  /** total_changes() when the open transaction began: a COMMIT past it is a write that reached the file. */
  #changesAtBegin = 0;
  /** `select total_changes()`, prepared once (only when onWriteCommitted listens). */
  #totalChangesStatement: SqliteDatabase.Statement | undefined;

  constructor(
    config: ConstructorParameters<typeof SqliteDriver>[0],
    private readonly sqlite: SqliteDatabase.Database,
    private readonly file: string,
    private readonly listeners: SqliteListeners,
  ) {
    super(config);
  }

  override async acquireConnection(): Promise<DatabaseConnection> {
    if (this.#unusable !== undefined) throw this.#unusable;
    const connection = await super.acquireConnection();
    // Asked again once the connection is ours: a use that was waiting for it while the failed transaction held
    // it would otherwise write into that transaction (answered 200, lost at restart).
    if (this.#unusable !== undefined) {
      await super.releaseConnection();
      throw this.#unusable;
    }
    // SQLite has one connection: one wrapper, made once.
    this.#connection ??= this.#watched(connection);
    return this.#connection;
  }

  /** `connection`, its damage errors giving the database up, its writes heard (see the class comment). */
  #watched(connection: DatabaseConnection): DatabaseConnection {
    return {
      executeQuery: async <R>(query: CompiledQuery): Promise<QueryResult<R>> => {
        const hearing = this.listeners.onWriteCommitted !== undefined;
        const wasInTransaction = this.sqlite.inTransaction;
        const changesBefore = hearing ? this.#totalChanges() : 0;
        let result: QueryResult<R>;
        try {
          result = await connection.executeQuery<R>(query);
        } catch (error) {
          // Heard nothing: a failed statement wrote nothing that stays, and a transaction SQLite ended itself
          // leaves no state behind (the next BEGIN counts from its own start).
          throw this.#damaged(error) ?? error;
        }
        if (hearing) {
          const changesAfter = this.#totalChanges();
          if (!wasInTransaction && this.sqlite.inTransaction) this.#changesAtBegin = changesBefore;
          else if (!this.sqlite.inTransaction) {
            // Outside a transaction: this statement's own changes. Ending one: a COMMIT (not a ROLLBACK) of a
            // transaction that changed rows since its BEGIN.
            const from = wasInTransaction ? this.#changesAtBegin : changesBefore;
            const committed = !wasInTransaction || !/^\s*rollback\b/i.test(query.sql);
            if (committed && changesAfter > from) this.listeners.onWriteCommitted?.();
          }
        }
        return result;
      },
      streamQuery: <R>(query: CompiledQuery, chunkSize?: number): AsyncIterableIterator<QueryResult<R>> => {
        const rows = connection.streamQuery<R>(query, chunkSize);
        const damaged = (error: unknown) => this.#damaged(error) ?? error;
        return (async function* () {
          try {
            yield* rows;
          } catch (error) {
            throw damaged(error);
          }
        })();
      },
    };
  }

  /**
   * Rows inserted, updated or deleted on the connection since it opened, rolled back ones included. Compared
   * before and after, it counts what a statement wrote whether or not it returns rows (RETURNING), and it keeps
   * no flag a transaction SQLite ended itself could leave behind.
   */
  #totalChanges(): number {
    this.#totalChangesStatement ??= this.sqlite.prepare('select total_changes()').pluck();
    return Number(this.#totalChangesStatement.get());
  }

  /** The error to throw for `error` when it says the file is damaged (the database then given up); else undefined. */
  #damaged(error: unknown): DatabaseUnavailableError | undefined {
    if (!isDamagedDatabaseError(error)) return undefined;
    if (this.#unusable === undefined) {
      const damage = damagedDatabaseError(
        this.file,
        `${error instanceof Error ? error.message : String(error)}, found in use after the start check`,
        error,
      );
      this.#unusable = new DatabaseUnavailableError(`sqlite:${this.file}`, damage);
      this.listeners.onDamaged?.(damage);
    }
    return this.#unusable;
  }

  override async rollbackTransaction(connection: DatabaseConnection): Promise<void> {
    if (!this.sqlite.inTransaction) return;
    try {
      await super.rollbackTransaction(connection);
      return;
    } catch (error) {
      if (!this.sqlite.inTransaction) {
        this.listeners.onRollbackFailure?.(error, 'ended');
        return;
      }
      try {
        await super.rollbackTransaction(connection);
        this.listeners.onRollbackFailure?.(error, 'ended');
        return;
      } catch (again) {
        if (!this.sqlite.inTransaction) {
          this.listeners.onRollbackFailure?.(again, 'ended');
          return;
        }
        this.#unusable ??= new DatabaseUnavailableError(
          `sqlite:${this.file}`,
          new Error(
            'a transaction could not be rolled back and is still open on the one SQLite connection; ' +
              'the server refuses to write into it (its writes would be lost): restart the server',
            { cause: again },
          ),
        );
        this.listeners.onRollbackFailure?.(again, 'unusable');
      }
    }
  }
}

/**
 * Hears a failed SQLite ROLLBACK: 'ended' when the transaction ended anyway (a second ROLLBACK, or SQLite
 * itself), 'unusable' when it is still open and the database refuses every later use until a restart.
 */
export type RollbackFailureListener = (error: unknown, outcome: 'ended' | 'unusable') => void;

/** What the SQLite driver tells its opener (OpenDatabaseOptions). */
interface SqliteListeners {
  onRollbackFailure?: RollbackFailureListener | undefined;
  onDamaged?: ((error: DatabaseOpenError) => void) | undefined;
  onWriteCommitted?: (() => void) | undefined;
}

class SqliteDialectKeepingCause extends SqliteDialect {
  constructor(
    private readonly driverConfig: ConstructorParameters<typeof SqliteDialect>[0],
    private readonly sqlite: SqliteDatabase.Database,
    private readonly file: string,
    private readonly listeners: SqliteListeners,
  ) {
    super(driverConfig);
  }

  override createDriver(): Driver {
    return new SqliteDriverKeepingCause(this.driverConfig, this.sqlite, this.file, this.listeners);
  }
}

const DAMAGED_SQLITE_CODE = /^SQLITE_(CORRUPT|NOTADB)/;

/** True when `error` (or what it wraps) is SQLite saying the file is damaged or not a database. */
export function isDamagedDatabaseError(error: unknown): boolean {
  for (let cause = error, depth = 0; cause !== undefined && cause !== null && depth < 5; depth++) {
    const code = (cause as { code?: unknown }).code;
    if (typeof code === 'string' && DAMAGED_SQLITE_CODE.test(code)) return true;
    cause = (cause as { cause?: unknown }).cause;
  }
  return false;
}

/** PostgreSQL's class XX: internal_error (XX000), data_corrupted (XX001), index_corrupted (XX002). */
const DAMAGED_POSTGRES_CODE = /^XX[0-9A-Z]{3}$/;

/**
 * The SQLSTATE when `error` (or what it wraps) is PostgreSQL reporting damaged data or an internal error
 * (class XX); else undefined. Not given up, unlike SQLite's: see dependencyUnavailableOf.
 */
export function damagedPostgresCodeOf(error: unknown): string | undefined {
  for (let cause = error, depth = 0; cause !== undefined && cause !== null && depth < 5; depth++) {
    const code = (cause as { code?: unknown }).code;
    if (typeof code === 'string' && DAMAGED_POSTGRES_CODE.test(code)) return code;
    cause = (cause as { cause?: unknown }).cause;
  }
  return undefined;
}

/**
 * The SQLite file is damaged: restarting cannot help (exit 2, 'unsafe'), a person must restore a backup. The
 * message names the file, what is wrong and the way out.
 */
export function damagedDatabaseError(file: string, detail: string, cause?: unknown): DatabaseOpenError {
  return new DatabaseOpenError(
    `the SQLite database ${file} is damaged (${detail}); the server cannot use it. Restore the latest backup: ` +
      'with no server running on it, `edgefleet-server restore --from <backup file>` (it keeps the damaged ' +
      `file beside it as ${path.basename(file)}.before-restore-<time>); see "Backup and restore" in the server README ` +
      '(packages/server/README.md#backup-and-restore)',
    'unsafe',
    { cause },
  );
}

/**
 * Databases up to this size are checked at every start (quick_check reads every page: about 0.2 s per 100 MB
 * when cached, longer from disk). A larger one, a fleet's metrics history, would hold every start up for as long
 * as it takes to read it all; its damage is found where it is used (migrations, requests) instead.
 */
const QUICK_CHECK_MAX_BYTES = 1024 ** 3;

/**
 * SQLite's quick_check: every page's structure, without matching indexes to tables (integrity_check). Throws
 * damagedDatabaseError when it finds damage. Skipped for a file over QUICK_CHECK_MAX_BYTES.
 */
function refuseDamagedDatabase(sqlite: SqliteDatabase.Database, file: string): void {
  const bytes =
    (sqlite.pragma('page_count', { simple: true }) as number) *
    (sqlite.pragma('page_size', { simple: true }) as number);
  if (bytes > QUICK_CHECK_MAX_BYTES) return;
  let problems: string[];
  try {
    problems = (sqlite.pragma('quick_check(3)') as { quick_check: string }[]).map((row) => row.quick_check);
  } catch (error) {
    if (!isDamagedDatabaseError(error)) throw error;
    problems = [(error as Error).message];
  }
  if (problems.length === 1 && problems[0] === 'ok') return;
  throw damagedDatabaseError(file, `quick_check: ${problems.join('; ')}`);
}

export interface OpenDatabaseOptions {
  /** PostgreSQL pool size; default 10. */
  maxConnections?: number;
  /** PostgreSQL: how long opening a connection (or waiting for a free one) may take; default PG_CONNECT_TIMEOUT_MS. */
  connectTimeoutMs?: number;
  /**
   * Hears errors of idle PostgreSQL connections (server restarted, network cut). Without a listener pg
   * would crash the process; the pool replaces the connection and the next query reports any real outage.
   */
  onConnectionError?: (error: Error) => void;
  /**
   * Hears a SQLite ROLLBACK that failed although a transaction was open, and whether the database is now
   * unusable until a restart; the error that made the transaction roll back is still the one thrown
   * (SqliteDriverKeepingCause).
   */
  onRollbackFailure?: RollbackFailureListener;
  /**
   * SQLite: hears, once, that a statement found the file damaged (SQLITE_CORRUPT, SQLITE_NOTADB) after the start
   * check; the database then refuses every use (DatabaseUnavailableError whose cause is `error`).
   */
  onDamaged?: (error: DatabaseOpenError) => void;
  /**
   * SQLite: hears each write that reached the file (a committed transaction or a statement outside one that
   * changed rows). PostgreSQL: never called (its disk is its server's).
   */
  onWriteCommitted?: () => void;
}

/** SQLite file modes: the database holds token hashes, CSRF tokens and sealed secrets, wherever it lies. */
const OWNER_ONLY = 0o600;

/**
 * Creates the SQLite file owner-only before SQLite opens it (SQLite gives its -wal and -shm files the
 * database file's mode), and takes group and other bits off a file, -wal or -shm an older release left
 * readable. A file the server may not chmod (another owner) is left as it is: opening it still works.
 */
function restrictToOwner(file: string): void {
  closeSync(openSync(file, 'a', OWNER_ONLY));
  for (const name of [file, `${file}-wal`, `${file}-shm`]) {
    try {
      if ((statSync(name).mode & 0o077) !== 0) chmodSync(name, OWNER_ONLY);
    } catch (error) {
      const code = (error as { code?: unknown }).code;
      if (code !== 'ENOENT' && code !== 'EPERM') throw error;
    }
  }
}

export async function openDatabase(
  location: DatabaseLocation,
  options: OpenDatabaseOptions = {},
): Promise<ServerDatabase> {
  if (location.engine === 'sqlite') {
    let sqlite: SqliteDatabase.Database | undefined;
    try {
      mkdirSync(path.dirname(location.file), { recursive: true, mode: 0o700 });
      restrictToOwner(location.file);
      sqlite = new SqliteDatabase(location.file);
      // WAL lets readers proceed during the heartbeat writes; NORMAL sync is durable across process crashes.
      sqlite.pragma('journal_mode = WAL');
      sqlite.pragma('synchronous = NORMAL');
      sqlite.pragma('busy_timeout = 5000');
      sqlite.pragma('foreign_keys = ON');
      // 64 MiB of page cache: the metric indexes grow quickly and are written at heartbeat rate.
      sqlite.pragma('cache_size = -65536');
      // A damaged file found now stops the server with the way out (exit 2), not later as a failed migration
      // (exit 1, restarted for ever) or as errors on the requests that touch the damaged pages.
      refuseDamagedDatabase(sqlite, location.file);
    } catch (error) {
      sqlite?.close();
      if (error instanceof DatabaseOpenError) throw error;
      if (isDamagedDatabaseError(error))
        throw damagedDatabaseError(location.file, describeFileError(error).words, error);
      const { words, problem } = describeFileError(error);
      throw new DatabaseOpenError(
        `cannot open the SQLite database ${location.file}: ${words}` +
          (problem === 'failed'
            ? ''
            : `; expected a database file the server can create and write: fix its folder's permissions or mount, or set database (--database, EDGEFLEET_DATABASE) to a file the server's user (uid ${process.getuid?.()}) can write`),
        problem,
        { cause: error },
      );
    }
    const db = new Kysely<DatabaseSchema>({
      dialect: new SqliteDialectKeepingCause(
        { database: withStatementCache(sqlite) },
        sqlite,
        location.file,
        {
          onRollbackFailure: options.onRollbackFailure,
          onDamaged: options.onDamaged,
          onWriteCommitted: options.onWriteCommitted,
        },
      ),
    });
    return {
      engine: 'sqlite',
      db,
      description: `sqlite:${location.file}`,
      // One connection, in this process: a query waiting behind a transaction is the readiness deadline's.
      ping: async () => void (await sql`select 1`.execute(db)),
      close: () => db.destroy(),
    };
  }

  const pool = new pg.Pool({
    connectionString: location.url,
    max: options.maxConnections ?? 10,
    types: pgTypes,
    // Without them, a connection attempt or a connection on a silently dropped path (no RST) waits for ever.
    connectionTimeoutMillis: options.connectTimeoutMs ?? PG_CONNECT_TIMEOUT_MS,
    keepAlive: true,
    // The system's default idle time before the first probe is about 2 hours: a query on a silent path would hold
    // its pool connection for that long. Probes from 10 s of silence find a dead path within about a minute.
    keepAliveInitialDelayMillis: PG_KEEPALIVE_IDLE_MS,
  });
  pool.on('error', (error) => options.onConnectionError?.(error));
  const description = maskUrlCredentials(location.url);
  const db = new Kysely<DatabaseSchema>({
    dialect: new PostgresDialect({ pool: outageAwarePool(pool, description) }),
  });
  try {
    await sql`select 1`.execute(db);
  } catch (caught) {
    await db.destroy();
    const error = caught instanceof DatabaseUnavailableError ? caught.cause : caught;
    throw new Error(
      `cannot connect to PostgreSQL at ${description}: ${error instanceof Error ? error.message : String(error)}`,
      { cause: error },
    );
  }
  return {
    engine: 'postgres',
    db,
    description,
    ping: (timeoutMs) => pingPool(pool, timeoutMs),
    close: () => db.destroy(),
  };
}

/** How long opening a PostgreSQL connection, or waiting for a free one in the pool, may take. */
const PG_CONNECT_TIMEOUT_MS = 10_000;
/** Idle time before TCP keepalive probes start on a PostgreSQL connection. */
const PG_KEEPALIVE_IDLE_MS = 10_000;

/**
 * How long the readiness ping's query may take before its connection is destroyed: longer than the readiness
 * deadline (a slow answer is still reported as not answering in time), and short enough that a connection hung
 * on a dead network path does not keep /readyz failing once the database answers again (Readiness does not start
 * a check again until the one running settles).
 */
const PING_TIMEOUT_MS = 5_000;

/** `select 1` on a pool connection of its own, destroyed (not reused) when it fails or does not answer in time. */
async function pingPool(pool: pg.Pool, timeoutMs: number): Promise<void> {
  const client = await pool.connect();
  let timer: NodeJS.Timeout | undefined;
  const answered = client.query('select 1');
  // Settles on its own once the connection is destroyed below (or answers late): nobody waits for it then.
  answered.catch(() => undefined);
  try {
    await Promise.race([
      answered,
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () =>
            reject(
              new Error(`PostgreSQL did not answer a ping within ${timeoutMs} ms (its connection is closed)`),
            ),
          timeoutMs,
        );
      }),
    ]);
  } catch (error) {
    // Given an error, the pool ends the connection instead of handing it out again.
    client.release(error instanceof Error ? error : new Error(String(error)));
    throw error;
  } finally {
    clearTimeout(timer);
  }
  client.release();
}

/** Throws unless the database answers a trivial query within `timeoutMs` (readiness). */
export async function pingDatabase(database: ServerDatabase, timeoutMs = PING_TIMEOUT_MS): Promise<void> {
  await database.ping(timeoutMs);
}
