/**
 * GET /edgefleet/v1/status, EdgeFleet's own: what the device runs and what its update engine is doing, for
 * `edgefleet agent status`. Where the agent keeps its files is for its operators only (root, or the agent's own
 * user, on the Unix socket): model file paths, and update reasons, which name files and URLs. Every other caller
 * (another local user, anyone on TCP) gets the rest: see docs/rest-api.md.
 */
import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import type { ModelRegistry } from '../models/index.js';
import { JSON_TYPE } from './rest-errors.js';
import type { PeerOf } from './shared-memory-routes.js';

/** What the status says instead of an update's reason to a caller who is not an operator. */
export const REASON_WITHHELD = 'withheld (only root or the agent’s user see reasons)';

export interface AgentStatusRouteOptions {
  registry: ModelRegistry;
  /** The agent's version. */
  version: string;
  /** What the status adds to the models (e.g. `deployments`, the update engine's state). */
  agentStatus?: () => Record<string, unknown>;
  /** The credentials of a request's connection on the Unix socket (null: unknown, e.g. TCP). */
  peerOf: PeerOf;
  /** The agent's own uid (an operator, as root is); default: this process's. */
  agentUid?: number;
}

const DeploymentsStatusSchema = z.looseObject({
  models: z.array(z.looseObject({ reason: z.string().nullish() })).optional(),
});

export function registerAgentStatusRoute(app: FastifyInstance, options: AgentStatusRouteOptions): void {
  const { registry, version, peerOf } = options;
  const agentUid = options.agentUid ?? process.getuid?.();
  app.get('/edgefleet/v1/status', async (request, reply) => {
    const caller = peerOf(request.raw.socket);
    const operator = caller !== null && (caller.uid === 0 || caller.uid === agentUid);
    const models = registry.list().map((m) => ({
      name: m.name,
      version: m.version,
      packageName: m.packageName,
      ...(operator && { path: m.path }),
      loadedAt: m.loadedAt.toISOString(),
      signatureVerified: m.signature.verified,
      requests: m.requests,
    }));
    const extra = options.agentStatus?.() ?? {};
    const status = { version, models, ...(operator ? extra : withoutReasons(extra)) };
    return reply.type(JSON_TYPE).send(JSON.stringify(status));
  });
}

/** The status with REASON_WITHHELD for every update reason given (null ones stay null: there is none). */
function withoutReasons(status: Record<string, unknown>): Record<string, unknown> {
  const parsed = DeploymentsStatusSchema.safeParse(status.deployments);
  if (!parsed.success || parsed.data.models === undefined) return status;
  const models = parsed.data.models.map((m) => (m.reason == null ? m : { ...m, reason: REASON_WITHHELD }));
  return { ...status, deployments: { ...parsed.data, models } };
}
