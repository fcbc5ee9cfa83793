/**
 * The KServe v2 system shared memory extension (as Triton implements it): clients register regions of shared
 * memory by name, then name them in inference requests for inputs (read where they lie, no request body) and
 * outputs (written there, no response body). Regions are System V segments (agent/src/shm): `key` is the
 * segment's id (shmid) as a decimal string, where Triton takes a POSIX shm_open name.
 *
 * Only callers on the agent's Unix socket, whose credentials the kernel gives (SO_PEERCRED), may register or use
 * regions, and only segments they could attach themselves: read for registering and inputs, write for outputs
 * (the same check as the gRPC door's shared memory). Each request checks again, against the segment as it is
 * then; the inference worker checks once more that the segment is still as checked (see SegmentIdentity).
 * Unlike Triton, region names are not one namespace for all callers: each user (uid) has its own, root included,
 * and a region is found by (uid, name). Two users may each register "input0"; each sees, uses and unregisters only
 * its own, and another user's region is not registered to a caller wherever it is named (register included), so
 * that no local user learns another's names, shmids, sizes or uid, nor takes the names another's app uses first
 * (squatting them, to make its register fail). Each user may hold at most MAX_REGIONS_PER_UID regions.
 *
 * A region is in use while a request that names it runs: unregistering it waits for those requests (at most
 * UNREGISTER_WAIT_MS), so that once unregister has answered the agent touches that memory no more.
 */
import type { Socket } from 'node:net';
import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import type { OutputSegment } from '../inference/index.js';
import type { PredictTensor } from '../models/index.js';
import {
  SharedMemoryError,
  type PeerCredentials,
  type SegmentLease,
  type SharedMemoryReader,
} from '../shm/index.js';
import { describeIssues, type SharedMemoryPlace } from './infer-request.js';
import { RequestBody } from './request-body.js';
import { RestError } from './rest-errors.js';

/** Regions registered at once, across callers; more are refused until some are unregistered. */
export const MAX_REGIONS = 256;
/**
 * Regions one user (by the uid of its socket, SO_PEERCRED) may have registered at once, root included: so that one
 * local user cannot take the whole pool (MAX_REGIONS) and deny the others.
 */
export const MAX_REGIONS_PER_UID = 64;

export const RegisterRegionSchema = z.object({
  key: z.string().regex(/^\d{1,10}$/, 'expected a System V shared memory id (shmid) as a decimal string'),
  offset: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).default(0),
  byte_size: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER),
});

/**
 * How long unregistering a region waits for the requests using it: as long as a request may take on the REST
 * listeners. Past it, unregister fails and the region stays registered.
 */
export const UNREGISTER_WAIT_MS = 30_000;

interface Region {
  name: string;
  key: string;
  segmentId: number;
  offset: number;
  byteSize: number;
  /** Who registered it: the namespace it is in; only they see, use or unregister it. */
  ownerUid: number;
  /** Requests running that name it (for inputs or outputs). */
  uses: number;
  /** Being unregistered: new requests may not use it. */
  unregistering: boolean;
  /** Called once `uses` drops to 0. */
  whenIdle: Array<() => void>;
}

/** One request's use of the regions it names; `release` once nothing of the request touches them any more. */
export interface RegionUse {
  release(): void;
}

/** Finds the credentials of the connection a request came on (null: not the Unix socket, or unknown). */
export type PeerOf = (socket: Socket) => PeerCredentials | null;

export interface SharedMemoryRegionsOptions {
  /** See UNREGISTER_WAIT_MS (the default). */
  unregisterWaitMs?: number;
  /** See MAX_REGIONS_PER_UID (the default). */
  maxRegionsPerUid?: number;
}

const statusOf = (region: Region) => ({
  name: region.name,
  key: region.key,
  offset: region.offset,
  byte_size: region.byteSize,
});

const notRegistered = (name: string) =>
  new RestError(404, `no system shared memory region named ${JSON.stringify(name)} is registered`);

const unixSocketOnly = () =>
  new RestError(
    403,
    'system shared memory is only for callers on the agent’s Unix socket, whose credentials it knows',
  );

/** HTTP statuses for the shared memory errors: the client's mistakes are 400, refusals 403. */
function restErrorOf(error: unknown): unknown {
  if (!(error instanceof SharedMemoryError)) return error;
  if (error.code === 'ACCESS_DENIED') return new RestError(403, error.message);
  if (error.code === 'ATTACH_FAILED') return new RestError(500, error.message);
  return new RestError(400, error.message);
}

/** The registered regions, and reading inputs from and writing outputs to them for one request. */
export class SharedMemoryRegions {
  /** By owner uid, then by name: each uid's names are its own (a uid with none has no entry). */
  readonly #regionsByUid = new Map<number, Map<string, Region>>();
  /** Regions across all uids (MAX_REGIONS). */
  #count = 0;
  readonly #reader: SharedMemoryReader | null;
  readonly #unregisterWaitMs: number;
  readonly #maxRegionsPerUid: number;

  constructor(reader: SharedMemoryReader | null, options: SharedMemoryRegionsOptions = {}) {
    this.#reader = reader;
    this.#unregisterWaitMs = options.unregisterWaitMs ?? UNREGISTER_WAIT_MS;
    if (!(this.#unregisterWaitMs >= 0))
      throw new RangeError(`unregisterWaitMs must be a number ≥ 0, not ${this.#unregisterWaitMs}`);
    this.#maxRegionsPerUid = options.maxRegionsPerUid ?? MAX_REGIONS_PER_UID;
    if (!Number.isInteger(this.#maxRegionsPerUid) || this.#maxRegionsPerUid < 1)
      throw new RangeError(`maxRegionsPerUid must be an integer ≥ 1, not ${this.#maxRegionsPerUid}`);
  }

  get available(): boolean {
    return this.#reader !== null;
  }

  register(name: string, body: unknown, caller: PeerCredentials | null): void {
    const reader = this.#requireReader();
    const parsed = RegisterRegionSchema.safeParse(body ?? {});
    if (!parsed.success)
      throw new RestError(
        400,
        `the register request is malformed: ${describeIssues(parsed.error)}; expected {"key": "<shmid>", "offset"?, "byte_size"}`,
      );
    const { key, offset, byte_size: byteSize } = parsed.data;
    const segmentId = Number(key);
    try {
      // First, so that a caller the agent does not know (TCP) learns nothing of the regions below.
      reader.checkSegment(segmentId, offset, byteSize, caller, 'read');
    } catch (error) {
      throw restErrorOf(error);
    }
    const uid = caller!.uid;
    const owned = this.#regionsByUid.get(uid);
    if (owned?.has(name))
      throw new RestError(
        400,
        `a system shared memory region named ${JSON.stringify(name)} is already registered; unregister it first`,
      );
    const own = owned?.size ?? 0;
    if (own >= this.#maxRegionsPerUid)
      throw new RestError(
        429,
        `uid ${uid} has ${own} system shared memory regions registered, the most one user may have at once (${this.#maxRegionsPerUid}); unregister some first (POST /v2/systemsharedmemory/region/{name}/unregister, or /v2/systemsharedmemory/unregister for all that uid ${uid} registered)`,
      );
    if (this.#count >= MAX_REGIONS)
      throw new RestError(
        429,
        `${MAX_REGIONS} system shared memory regions are registered already, the most this agent keeps across all users; unregister some of yours, or retry once others have unregistered theirs`,
      );
    const namespace = owned ?? new Map<string, Region>();
    this.#regionsByUid.set(uid, namespace);
    namespace.set(name, {
      name,
      key,
      segmentId,
      offset,
      byteSize,
      ownerUid: uid,
      uses: 0,
      unregistering: false,
      whenIdle: [],
    });
    this.#count++;
  }

  /**
   * Unregisters the caller's region of that name (a name only another user holds is a 404 as an unknown one is,
   * to root too), or (no name) every region the caller's uid registered: Triton clients call that on their way
   * out. Waits for the requests using them (new ones may not use them meanwhile); past `unregisterWaitMs` those
   * still in use stay registered and it fails with a 409.
   */
  async unregister(name: string | undefined, caller: PeerCredentials | null): Promise<void> {
    this.#requireReader();
    if (caller === null) throw unixSocketOnly();
    let dropping: Region[];
    if (name === undefined) {
      dropping = [...(this.#regionsByUid.get(caller.uid)?.values() ?? [])];
    } else {
      const region = this.#find(name, caller);
      if (region === undefined) throw notRegistered(name);
      dropping = [region];
    }
    for (const region of dropping) region.unregistering = true;
    await this.#idle(dropping);
    const busy: Region[] = [];
    for (const region of dropping) {
      if (region.uses > 0) {
        region.unregistering = false;
        busy.push(region);
      } else {
        this.#remove(region);
      }
    }
    if (busy.length > 0)
      throw new RestError(
        409,
        `system shared memory ${busy.length === 1 ? 'region' : 'regions'} ${busy.map((r) => JSON.stringify(r.name)).join(', ')} still in use by a request after ${this.#unregisterWaitMs} ms, so still registered; expected the requests using it to end first (try again)`,
      );
  }

  /**
   * Marks the regions a request names as in use until `release`: unregistering them waits for it. Call before
   * anything reads or writes them, and release once nothing will (outputs written, input leases released). A
   * region being unregistered is refused; one the caller has not registered is left to the checks that name the
   * tensor.
   */
  use(names: Iterable<string>, caller: PeerCredentials | null): RegionUse {
    const used: Region[] = [];
    for (const name of new Set(names)) {
      const region = this.#find(name, caller);
      if (region === undefined) continue;
      if (region.unregistering)
        throw new RestError(
          400,
          `system shared memory region ${JSON.stringify(name)} is being unregistered; expected a registered region`,
        );
      used.push(region);
    }
    for (const region of used) region.uses++;
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        for (const region of used) {
          region.uses--;
          if (region.uses === 0) for (const resolve of region.whenIdle.splice(0)) resolve();
        }
      },
    };
  }

  /** The caller's own region of that name (none for a caller the agent does not know). */
  #find(name: string, caller: PeerCredentials | null): Region | undefined {
    return caller === null ? undefined : this.#regionsByUid.get(caller.uid)?.get(name);
  }

  /** Drops a region, unless it is gone already (an unregister that raced another). */
  #remove(region: Region): void {
    const namespace = this.#regionsByUid.get(region.ownerUid);
    if (namespace?.get(region.name) !== region) return;
    namespace.delete(region.name);
    if (namespace.size === 0) this.#regionsByUid.delete(region.ownerUid);
    this.#count--;
  }

  /** Waits until none of `regions` is in use, at most `unregisterWaitMs`. */
  async #idle(regions: Region[]): Promise<void> {
    const busy = regions.filter((region) => region.uses > 0);
    if (busy.length === 0) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all(busy.map((region) => new Promise<void>((resolve) => region.whenIdle.push(resolve)))),
      new Promise<void>((resolve) => (timer = setTimeout(resolve, this.#unregisterWaitMs))),
    ]);
    clearTimeout(timer);
  }

  /**
   * The regions `caller` registered (root's own too; none for a caller the agent does not know): unlike Triton,
   * one user does not learn the names, keys and sizes of another's. A name the caller has not registered is a
   * 404, whoever else has.
   */
  status(name: string | undefined, caller: PeerCredentials | null): ReturnType<typeof statusOf>[] {
    this.#requireReader();
    if (name === undefined) {
      if (caller === null) return [];
      return [...(this.#regionsByUid.get(caller.uid)?.values() ?? [])].map(statusOf);
    }
    const region = this.#find(name, caller);
    if (region === undefined) throw notRegistered(name);
    return [statusOf(region)];
  }

  /**
   * Puts the bytes of the inputs that name regions into them: views of the mapped segment, no copy. The leases
   * keep the segments mapped (an unregistered region or a removed segment cannot pull the memory away mid-run);
   * release them once the inference is done.
   */
  readInputs(
    inputs: PredictTensor[],
    places: ReadonlyArray<SharedMemoryPlace & { position: number }>,
    caller: PeerCredentials | null,
  ): SegmentLease[] {
    if (places.length === 0) return [];
    const reader = this.#requireReader();
    const leases: SegmentLease[] = [];
    try {
      for (const place of places) {
        const region = this.#within(place, `input #${place.position + 1}`, caller);
        const lease = reader.readTensorFromSegment(
          { segmentId: region.segmentId, offset: region.offset + place.offset, size: place.byteSize },
          place.byteSize,
          caller,
        );
        leases.push(lease);
        // A worker maps the segment itself (the reference); the inline path reads the lease's view.
        inputs[place.position]!.data = lease.data;
        inputs[place.position]!.segment = lease.reference;
      }
    } catch (error) {
      for (const lease of leases) lease.release();
      throw restErrorOf(error);
    }
    return leases;
  }

  /**
   * Checks, before the run, that the caller may write each output's place in its region, and says where that
   * lies: a worker writes the outputs straight there (see PredictOptions.outputSegments).
   */
  outputSegments(
    outputs: ReadonlyArray<{ name: string; sharedMemory?: SharedMemoryPlace }> | undefined,
    caller: PeerCredentials | null,
  ): OutputSegment[] | undefined {
    const shared = outputs?.filter((o) => o.sharedMemory !== undefined) ?? [];
    if (shared.length === 0) return undefined;
    const reader = this.#requireReader();
    const places: OutputSegment[] = [];
    for (const { name, sharedMemory: place } of shared) {
      const region = this.#within(place!, `output ${JSON.stringify(name)}`, caller);
      try {
        places.push({
          name,
          segment: reader.referenceSegment(
            region.segmentId,
            region.offset + place!.offset,
            place!.byteSize,
            caller,
            'write',
          ),
        });
      } catch (error) {
        throw restErrorOf(error);
      }
    }
    return places;
  }

  /** Writes an output into its region; the region must still be registered and large enough. */
  writeOutput(
    name: string,
    place: SharedMemoryPlace,
    bytes: Uint8Array,
    caller: PeerCredentials | null,
  ): void {
    const reader = this.#requireReader();
    const region = this.#within(place, `output ${JSON.stringify(name)}`, caller);
    if (bytes.byteLength > place.byteSize)
      throw new RestError(
        400,
        `output ${JSON.stringify(name)} is ${bytes.byteLength} bytes, but shared_memory_byte_size gives it ${place.byteSize}; expected room for the whole tensor`,
      );
    try {
      reader.writeToSegment(region.segmentId, region.offset + place.offset, bytes, caller);
    } catch (error) {
      throw restErrorOf(error);
    }
  }

  /** The caller's region a tensor names, checked to hold it (the name is looked up in the caller's uid only). */
  #within(place: SharedMemoryPlace, what: string, caller: PeerCredentials | null): Region {
    if (caller === null) throw unixSocketOnly();
    const region = this.#find(place.region, caller);
    if (region === undefined)
      throw new RestError(
        400,
        `${what} names system shared memory region ${JSON.stringify(place.region)}, which is not registered (never, or unregistered meanwhile); expected a registered region`,
      );
    if (place.offset > region.byteSize || place.byteSize > region.byteSize - place.offset)
      throw new RestError(
        400,
        `${what}: ${place.byteSize} bytes at offset ${place.offset} run past the end of region ${JSON.stringify(region.name)} (${region.byteSize} bytes); expected offset + size ≤ ${region.byteSize}`,
      );
    return region;
  }

  #requireReader(): SharedMemoryReader {
    if (!this.#reader)
      throw new RestError(
        400,
        'System V shared memory is not available on this agent (its addon did not load); send tensor data in the request',
      );
    return this.#reader;
  }
}

type RegionParams = { name: string };

/** /v2/systemsharedmemory/…: status, register and unregister, as Triton serves them. */
export function registerSharedMemoryRoutes(
  app: FastifyInstance,
  regions: SharedMemoryRegions,
  peerOf: PeerOf,
): void {
  const base = '/v2/systemsharedmemory';
  app.get(`${base}/status`, async (request) => regions.status(undefined, peerOf(request.raw.socket)));
  app.get<{ Params: RegionParams }>(`${base}/region/:name/status`, async (request) =>
    regions.status(request.params.name, peerOf(request.raw.socket)),
  );
  app.post<{ Params: RegionParams }>(`${base}/region/:name/register`, async (request) => {
    regions.register(request.params.name, parseJsonBody(request.body), peerOf(request.raw.socket));
    return {};
  });
  app.post<{ Params: RegionParams }>(`${base}/region/:name/unregister`, async (request) => {
    await regions.unregister(request.params.name, peerOf(request.raw.socket));
    return {};
  });
  app.post(`${base}/unregister`, async (request) => {
    await regions.unregister(undefined, peerOf(request.raw.socket));
    return {};
  });
}

/** The register body as the app's parser left it (a RequestBody of bytes, or nothing). */
function parseJsonBody(body: unknown): unknown {
  if (!(body instanceof RequestBody) || body.length === 0) return undefined;
  const bytes = body.view(0, body.length);
  try {
    return JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8'));
  } catch (error) {
    throw new RestError(400, `the register body is not valid JSON (${(error as Error).message})`);
  }
}
