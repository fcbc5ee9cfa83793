import { randomUUID } from 'node:crypto';
import { text } from 'node:stream/consumers';
import type { Kysely } from 'kysely';
import { BlobNotFoundError, type BlobStore } from '../blobs/index.js';
import { claimServerSetting, type DatabaseSchema } from '../storage/index.js';

/** The marker object at the root of the blob store (under its prefix): the store's id, which the database records. */
export const BLOB_STORE_MARKER_KEY = 'edgefleet-store-id';
const ID_SETTING = 'blob_store_id';
/** Where the store was when its id was recorded or last confirmed: only for messages. */
const LOCATION_SETTING = 'blob_store_location';
const ID = /^[0-9a-f-]{36}$/;
/** A marker is an id and a newline; a few bytes more tell a damaged one. */
const MARKER_READ_BYTES = 64;
/** `<prefix><id>`: an id a start of this database wrote into the store as its marker before the claim. */
const PROPOSAL_SETTING_PREFIX = 'blob_store_proposal:';
/** Set while a database made on a store that did not answer has not recorded its store yet. */
const NEW_DATABASE_SETTING = 'blob_store_unchecked_new_database';

/** What the settings that choose the blob store are, for messages. */
const BLOB_SETTINGS =
  'blob (--blob, EDGEFLEET_BLOB) and, for S3, --blob-endpoint (EDGEFLEET_BLOB_ENDPOINT, s3.endpoint)';

/**
 * Ties the database to one blob store, as it is to one device CA: every blob key in the database means something
 * in one store only, so a server (or replica) given another store would record uploads the others cannot read
 * and fail every read of what they wrote. The store holds a marker object with a random id; the database records
 * that id. A store without a marker next to a database without an id (the first start, or a database from before
 * this check) gets one; the same id on both sides is the same store, wherever it is reached from (another
 * endpoint name, a moved folder): a store moved with its objects, the marker among them, keeps working. A
 * store without the marker, or with another database's, is refused, naming both places and the setting to fix.
 *
 * `location` names this store for messages: no credentials in it. Once `signal` is aborted (the server is
 * stopping) the check writes nothing more, to the store or the database, its store requests in flight end, and
 * it rejects.
 */
export async function bindBlobStore(
  db: Kysely<DatabaseSchema>,
  blobs: BlobStore,
  location: string,
  options: { allowTakeover?: boolean; signal?: AbortSignal } = {},
): Promise<void> {
  const beforeWrite = () => options.signal?.throwIfAborted();
  const recorded = await readSetting(db, ID_SETTING);
  const marker = await readMarker(blobs, location, options.signal);
  if (recorded === undefined) {
    if (
      marker !== undefined &&
      options.allowTakeover !== true &&
      (await readSetting(db, NEW_DATABASE_SETTING)) !== undefined &&
      !(await isOwnProposal(db, marker))
    )
      throw newDatabaseRefusal(
        location,
        marker,
        'this database is new (its first start could not check the store, which did not answer)',
      );
    // Written before the database records it, so a start cut short in between leaves the marker (taken up by the
    // next start), never a recorded id without one. Replicas starting together on a fresh store each write
    // theirs; a loser writes the winner's after the winner wrote its own, so the marker ends as the recorded id.
    const wrote = marker === undefined;
    const proposed = marker ?? randomUUID();
    if (wrote) {
      // Noted before the marker is written: a loser that stops before it writes the winner's id leaves a marker
      // the next start can tell is this database's own (and puts right) instead of refusing it for ever.
      beforeWrite();
      await db
        .insertInto('server_settings')
        .values({ key: `${PROPOSAL_SETTING_PREFIX}${proposed}`, value: location })
        .onConflict((oc) => oc.column('key').doNothing())
        .execute();
      beforeWrite();
      await writeMarker(blobs, proposed, options.signal);
    }
    beforeWrite();
    const claimed = await claimServerSetting(db, ID_SETTING, proposed);
    if (claimed !== proposed) {
      // A marker this start did not write, and no replica of this database did, is another database's store:
      // never overwritten.
      if (!wrote && !(await isOwnProposal(db, proposed)))
        throw refusal(await recordedLocation(db), claimed, location, marker);
      beforeWrite();
      await writeMarker(blobs, claimed, options.signal);
    }
    beforeWrite();
    await claimServerSetting(db, LOCATION_SETTING, location);
    beforeWrite();
    await db.deleteFrom('server_settings').where('key', '=', NEW_DATABASE_SETTING).execute();
    return;
  }
  if (marker !== recorded) {
    if (marker === undefined || !(await isOwnProposal(db, marker)))
      throw refusal(await recordedLocation(db), recorded, location, marker);
    // A replica of this database lost the first start's race and stopped before it put the recorded id back.
    beforeWrite();
    await writeMarker(blobs, recorded, options.signal);
  }
  // The same store under another name (moved, another endpoint): the next refusal names where it is now.
  beforeWrite();
  await db
    .insertInto('server_settings')
    .values({ key: LOCATION_SETTING, value: location })
    .onConflict((oc) => oc.column('key').doUpdateSet({ value: location }))
    .execute();
}

/**
 * Refuses to create a new database's schema on a blob store that already holds another database's marker: the
 * new database would take that store's id as its own and share it, and each would then delete the other's
 * objects under the same keys (a packaging job's folder, for one). Called before the first migration, while the
 * database is still empty, so a start refused here leaves it empty and the next start checks again (a store
 * that does not answer is checked later instead: markStoreUncheckedForNewDatabase). A database that has its schema is not new: one from before this check,
 * or one whose first start stopped between writing the marker and recording it, takes up the marker it finds
 * (bindBlobStore).
 *
 * `database` and `location` name the two for messages: no credentials in them.
 */
export async function refuseAnotherDatabasesStore(
  blobs: BlobStore,
  location: string,
  database: string,
  isStillEmpty: () => Promise<boolean>,
): Promise<void> {
  const marker = await readMarker(blobs, location);
  if (marker === undefined) return;
  // A replica of the same database may have created the schema and written the marker since this start looked.
  if (!(await isStillEmpty())) return;
  throw newDatabaseRefusal(location, marker, `the database ${database} is new (empty)`);
}

/**
 * Notes in a new database that its store was not checked before its schema was made (the store did not answer):
 * bindBlobStore then refuses a marker it finds unless this database wrote it, as refuseAnotherDatabasesStore
 * would have. Removed once the database records its store.
 */
export async function markStoreUncheckedForNewDatabase(db: Kysely<DatabaseSchema>): Promise<void> {
  await db
    .insertInto('server_settings')
    .values({ key: NEW_DATABASE_SETTING, value: 'true' })
    .onConflict((oc) => oc.column('key').doNothing())
    .execute();
}

function newDatabaseRefusal(location: string, marker: string, database: string): BlobStoreMismatchError {
  return new BlobStoreMismatchError(
    `the blob store ${location} holds another database's blobs (its ${BLOB_STORE_MARKER_KEY} is ${marker}), ` +
      `and ${database}: give this server an empty blob store or prefix of its own ` +
      `(${BLOB_SETTINGS}), or point --database (EDGEFLEET_DATABASE) at that store's database. Only if that ` +
      'database is gone for good and this one replaces it: set allowEmptyDatabase (--allow-empty-database ' +
      'true, or EDGEFLEET_ALLOW_EMPTY_DATABASE=true) to take the store over',
  );
}

/** The configured blob store is not the one the database's blobs are in. */
export class BlobStoreMismatchError extends Error {
  override readonly name = 'BlobStoreMismatchError';
}

/** bindBlobStore as a check to repeat until it passes once (blobStoreBinder). */
export interface BlobStoreBinder {
  /**
   * Checks the store unless a check passed already. Throws BlobStoreMismatchError for the wrong store (or a
   * damaged marker), the store's own error while it does not answer, and an error once stop was called.
   */
  bind(): Promise<void>;
  /**
   * Server shutdown: a check in flight writes nothing more (to the store or the database, which close next), its
   * store requests are aborted, and it is waited for, at most stopWaitMs (then it and every bind() waiting on it
   * reject, and onAbandoned is called); later checks are refused.
   */
  stop(): Promise<void>;
}

export interface BlobStoreBinderOptions {
  allowTakeover?: boolean;
  /**
   * How long stop waits for a check in flight that does not end when aborted (a database or store that does not
   * answer an aborted request): well within systemd's TimeoutStopSec (30 s), so the rest of the shutdown runs.
   */
  stopWaitMs?: number;
  /** Told when stop stopped waiting for a check (it writes nothing more: each write first checks the signal). */
  onAbandoned?: (waitedMs: number) => void;
}

const DEFAULT_STOP_WAIT_MS = 5000;

/**
 * bindBlobStore as a check to repeat until it passes once: a store that does not answer at start is checked when
 * it answers again (watchBlobStoreBinding, and the readiness check), so an outage does not keep the server from
 * starting, and a wrong store is still found. One check at a time: callers while one runs share it (each would
 * read the marker, and on a fresh store write one of its own).
 */
export function blobStoreBinder(
  db: Kysely<DatabaseSchema>,
  blobs: BlobStore,
  location: string,
  options: BlobStoreBinderOptions = {},
): BlobStoreBinder {
  const stopping = new AbortController();
  const stopWaitMs = options.stopWaitMs ?? DEFAULT_STOP_WAIT_MS;
  let bound = false;
  let inFlight: Promise<void> | undefined;
  /** Rejects once stop gave up waiting: ends every bind() still waiting on a check that does not end. */
  let abandon!: (reason: Error) => void;
  const abandoned = new Promise<never>((_resolve, reject) => (abandon = reject));
  abandoned.catch(() => undefined);
  return {
    bind: () => {
      if (bound) return Promise.resolve();
      if (stopping.signal.aborted) return Promise.reject(stopping.signal.reason as Error);
      const allowTakeover = options.allowTakeover === true;
      inFlight ??= Promise.race([
        bindBlobStore(db, blobs, location, { allowTakeover, signal: stopping.signal }).then(() => {
          bound = true;
        }),
        abandoned,
      ]).finally(() => {
        inFlight = undefined;
      });
      return inFlight;
    },
    stop: async () => {
      stopping.abort(new Error('the blob store check ended: the server is stopping'));
      const check = inFlight;
      if (check === undefined) return;
      let timer: NodeJS.Timeout | undefined;
      const gaveUp = await Promise.race([
        check.then(
          () => false,
          () => false,
        ),
        new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), stopWaitMs))),
      ]);
      clearTimeout(timer);
      if (!gaveUp) return;
      abandon(new Error(`the blob store check was abandoned after ${stopWaitMs} ms: the server is stopping`));
      options.onAbandoned?.(stopWaitMs);
    },
  };
}

export interface BindingWatchOptions {
  /** Called once, when the store turns out not to be the database's. */
  onMismatch: (error: BlobStoreMismatchError) => void;
  /** The first wait, doubled after each failed check up to maxDelayMs. */
  initialDelayMs?: number;
  maxDelayMs?: number;
}

/**
 * Repeats `bind` in the background until it passes or finds the wrong store, so that the check does not wait for
 * a readiness poll that may never come (a plain `serve`; devices never poll): the server serves meanwhile, and
 * the sooner it learns the store is another database's, the fewer blobs it writes there. `stop` waits for a check
 * already running (stop the binder first, so that it writes nothing more).
 */
export function watchBlobStoreBinding(
  bind: () => Promise<void>,
  options: BindingWatchOptions,
): { stop(): Promise<void> } {
  const maxDelayMs = options.maxDelayMs ?? 30_000;
  let delayMs = options.initialDelayMs ?? 1000;
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  /** The check now running, which stop waits for: it may still write (the marker, the database's record). */
  let running: Promise<void> | undefined;
  const attempt = async () => {
    try {
      await bind();
      return;
    } catch (error) {
      if (error instanceof BlobStoreMismatchError) {
        stopped = true;
        options.onMismatch(error);
        return;
      }
      // Still not answering: the readiness check reports it meanwhile.
    }
    if (stopped) return;
    delayMs = Math.min(delayMs * 2, maxDelayMs);
    schedule();
  };
  const schedule = () => {
    timer = setTimeout(() => {
      running = attempt().finally(() => {
        running = undefined;
      });
    }, delayMs);
    // Never what keeps the process alive.
    timer.unref();
  };
  schedule();
  return {
    stop: async () => {
      stopped = true;
      clearTimeout(timer);
      await running;
    },
  };
}

function refusal(
  recordedAt: string,
  recordedId: string,
  location: string,
  marker: string | undefined,
): Error {
  const found =
    marker === undefined
      ? `holds no ${BLOB_STORE_MARKER_KEY} marker`
      : `belongs to another database (its ${BLOB_STORE_MARKER_KEY} is ${marker})`;
  return new BlobStoreMismatchError(
    `the blob store ${location} is not this database's: the database's blobs are in ${recordedAt} ` +
      `(store id ${recordedId}), and ${location} ${found}; give every server the store the others use ` +
      `(${BLOB_SETTINGS}). To move the blobs, copy every object of the old store, ${BLOB_STORE_MARKER_KEY} ` +
      'included, to the new one, then point the blob setting at it',
  );
}

async function recordedLocation(db: Kysely<DatabaseSchema>): Promise<string> {
  return (await readSetting(db, LOCATION_SETTING)) ?? 'the store it was first started with';
}

async function isOwnProposal(db: Kysely<DatabaseSchema>, id: string): Promise<boolean> {
  return (await readSetting(db, `${PROPOSAL_SETTING_PREFIX}${id}`)) !== undefined;
}

async function readSetting(db: Kysely<DatabaseSchema>, key: string): Promise<string | undefined> {
  const row = await db
    .selectFrom('server_settings')
    .select('value')
    .where('key', '=', key)
    .executeTakeFirst();
  return row?.value;
}

async function readMarker(
  blobs: BlobStore,
  location: string,
  signal?: AbortSignal,
): Promise<string | undefined> {
  let body: string;
  try {
    // At most MARKER_READ_BYTES: whatever else lies at that key (a large object someone put there) is damaged,
    // and is not read into memory whole.
    const range = { start: 0, end: MARKER_READ_BYTES - 1 };
    body = (
      await text(await blobs.get(BLOB_STORE_MARKER_KEY, range, signal === undefined ? {} : { signal }))
    ).trim();
  } catch (error) {
    if (error instanceof BlobNotFoundError) return undefined;
    throw error;
  }
  if (!ID.test(body))
    throw new BlobStoreMismatchError(
      `the blob store ${location} cannot be told apart from another database's: its ${BLOB_STORE_MARKER_KEY} ` +
        `object is damaged (${JSON.stringify(body.slice(0, 40))}); expected a store id (36 characters of 0-9, ` +
        'a-f and -): write into it the id the database records (server_settings blob_store_id)',
    );
  return body;
}

async function writeMarker(blobs: BlobStore, id: string, signal?: AbortSignal): Promise<void> {
  await blobs.put(BLOB_STORE_MARKER_KEY, `${id}\n`, {
    contentType: 'text/plain',
    ...(signal !== undefined && { signal }),
  });
}
