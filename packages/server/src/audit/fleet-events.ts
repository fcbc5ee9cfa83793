import type { FastifyRequest } from 'fastify';
import type { Logger } from 'pino';

/**
 * Who caused a fleet event, by what names them in the server's own records, never by a secret: an operator by
 * API token name and id (a console session names its token too), a SageMaker caller by access key id, a device
 * by the name on its certificate, the server itself by the worker that acted.
 */
export type Actor =
  | { kind: 'operator'; name: string; tokenId: string }
  | { kind: 'access-key'; accessKeyId: string; name: string }
  | { kind: 'device'; device: string }
  /** An enrollment token, by the device it was created for (absent: a token that matched none). */
  | { kind: 'enrollment-token'; device?: string }
  | { kind: 'server'; worker: string }
  /** A command or test that calls a service in-process, without a request (edgefleet-server token …). */
  | { kind: 'local' };

export const LOCAL_ACTOR: Actor = { kind: 'local' };

/** The operator a request was authenticated as (bearer token or console session); `local` without one. */
export function operatorActorOf(request: FastifyRequest): Actor {
  const operator = request.operator;
  return operator === undefined
    ? LOCAL_ACTOR
    : { kind: 'operator', name: operator.name, tokenId: operator.tokenId };
}

/** The SageMaker facade's caller: the access key that signed the request, by id (never its secret). */
export function accessKeyActor(key: { accessKeyId: string; name: string }): Actor {
  return { kind: 'access-key', accessKeyId: key.accessKeyId, name: key.name };
}

/** The device a device-API request was authenticated as. */
export function deviceActorOf(request: FastifyRequest): Actor {
  return request.device === undefined ? LOCAL_ACTOR : { kind: 'device', device: request.device.deviceName };
}

/** How the actor reads in a line's text: `operator "ci" (token 0f3a…)`, `device cam-7`. */
function describe(actor: Actor): string {
  switch (actor.kind) {
    case 'operator':
      return `operator "${actor.name}" (token ${actor.tokenId})`;
    case 'access-key':
      return `access key ${actor.accessKeyId} ("${actor.name}")`;
    case 'device':
      return `device ${actor.device}`;
    case 'enrollment-token':
      return actor.device === undefined
        ? 'an enrollment token'
        : `the enrollment token of device ${actor.device}`;
    case 'server':
      return `the server (${actor.worker})`;
    case 'local':
      return 'a local command';
  }
}

/** What happened to what, and how it ended: the fields every fleet event line carries besides the actor. */
export interface FleetEvent {
  /** snake_case name of the event (plan_created, device_failed, token_revoked…); docs/operations.md lists them. */
  event: string;
  /** `created`, `revoked`, `failed`, `refused`…: what came of it. */
  outcome: string;
  /** The objects it concerns, by name or id (plan, stage, device, fleet, tokenId, accessKeyId, serial…). */
  object: Record<string, string | number | undefined>;
  /** The line's text; it names the actor itself. */
  message: string;
}

/**
 * The operator's log of fleet events (issue: an operator following the journal could not see a rollout fail):
 * one structured line per event at info, or at warn for what an operator must act on (a device's failure, a
 * rollback, a failed stage, a revoked certificate presented). Services get one by their constructor; lines
 * name no secret (tokens, keys, URLs with signatures): callers pass names and ids only.
 */
export class FleetEventLog {
  constructor(private readonly logger: Logger) {}

  info(actor: Actor, event: FleetEvent): void {
    this.write('info', actor, event);
  }

  warn(actor: Actor, event: FleetEvent): void {
    this.write('warn', actor, event);
  }

  private write(level: 'info' | 'warn', actor: Actor, event: FleetEvent): void {
    const object = Object.fromEntries(Object.entries(event.object).filter((entry) => entry[1] !== undefined));
    this.logger[level](
      // The objects first: none of them can stand in for the event, its outcome or its actor.
      { ...object, event: event.event, outcome: event.outcome, actor },
      `${event.message} (by ${describe(actor)})`,
    );
  }
}
