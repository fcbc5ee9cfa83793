/**
 * GET /edgefleet/v1/status, EdgeFleet's own: what the device runs and what its update engine is doing, for
 * `edgefleet agent status`. Where the agent keeps its files is for its operators only (root, or the agent's own
 * user, on the Unix socket): model file paths, and update reasons, which name files and URLs. Every other caller
 * (another local user, anyone on TCP) gets a view built from an allowlist of fields, so that a field the update
 * engine adds later reaches them only once it is listed here: see docs/rest-api.md.
 */
import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { DEPLOYMENT_STATES } from '../deployments/deployment-state.js';
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

/** A failure message, as a caller who is not an operator sees it: only whether there is one. */
const WithheldReasonSchema = z
  .string()
  .nullable()
  .transform((reason) => (reason === null ? null : REASON_WITHHELD));

/**
 * The fields of an update (UpdateEngine's DeploymentModelStatus) that a caller who is not an operator sees; z.object
 * drops every other. The two reasons are failure messages (file paths, lock paths, package URLs).
 */
const PublicDeploymentModelSchema = z.object({
  handle: z.string(),
  deployment: z.string(),
  state: z.enum(DEPLOYMENT_STATES),
  desired: z.enum(['DEPLOY', 'UNDEPLOY']),
  version: z.string().nullable(),
  previousVersion: z.string().nullable(),
  committedVersion: z.string().nullable(),
  held: z.boolean(),
  // Not failure messages: whether the handle serves, and (for a deployed one that does not) the agent's own words.
  loaded: z.boolean(),
  notLoadedReason: z.string().nullable(),
  unloadedByApplicationAt: z.string().nullable(),
  reason: WithheldReasonSchema,
  rollbackFailureReason: WithheldReasonSchema,
  startedAt: z.string(),
  updatedAt: z.string(),
  endedAt: z.string().nullable(),
  lastFailure: z
    .object({
      deployment: z.string(),
      state: z.enum(['RolledBack', 'Failed']),
      version: z.string().nullable(),
      reason: WithheldReasonSchema,
      rollbackFailureReason: WithheldReasonSchema,
      startedAt: z.string(),
      endedAt: z.string(),
    })
    .nullable(),
});

/** `deployments` as the daemon gives it: `models` is parsed apart, so that a bad update drops the updates only. */
const DeploymentsSchema = z.object({
  enabled: z.boolean(),
  models: z.unknown().optional(),
  storageFull: z.unknown().optional(),
});
const PublicDeploymentModelsSchema = z.array(PublicDeploymentModelSchema);
/** The update engine's StorageFullStatus: which deployment waits for space and since when; the words name files. */
const PublicStorageFullSchema = z
  .object({
    deployment: z.string().nullable(),
    since: z.string(),
    reason: WithheldReasonSchema,
    message: WithheldReasonSchema,
  })
  .nullable();

/** Distinct status warnings logged at most (each once). */
const MAX_DISTINCT_WARNINGS = 16;

export function registerAgentStatusRoute(app: FastifyInstance, options: AgentStatusRouteOptions): void {
  const { registry, version, peerOf } = options;
  const agentUid = options.agentUid ?? process.getuid?.();
  // Each distinct warning once: any caller may ask for the status, and must not be able to flood the log.
  const warned = new Set<string>();
  const warnOnce = (message: string): void => {
    if (warned.has(message) || warned.size >= MAX_DISTINCT_WARNINGS) return;
    warned.add(message);
    app.log.warn(message);
  };
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
    const status = {
      version,
      models,
      ...(operator ? extra : publicAgentStatus(extra, warnOnce)),
    };
    return reply.type(JSON_TYPE).send(JSON.stringify(status));
  });
}

/**
 * What a caller who is not an operator sees of the agent's status: `deployments` alone, built from the fields
 * listed above. It fails closed: updates that do not parse (the engine's shape changed) are left out, with a
 * warning, rather than copied.
 */
export function publicAgentStatus(
  status: Record<string, unknown>,
  warn: (message: string) => void,
): Record<string, unknown> {
  if (status.deployments === undefined) return {};
  const deployments = DeploymentsSchema.safeParse(status.deployments);
  if (!deployments.success) {
    warn(`the agent status' deployments are left out for this caller: ${z.prettifyError(deployments.error)}`);
    return {};
  }
  const { enabled, models } = deployments.data;
  const full =
    deployments.data.storageFull === undefined
      ? undefined
      : PublicStorageFullSchema.safeParse(deployments.data.storageFull);
  if (full?.success === false)
    warn(`the agent status' storage-full report is left out for this caller: ${z.prettifyError(full.error)}`);
  const storageFull = full?.success ? { storageFull: full.data } : {};
  if (models === undefined) return { deployments: { enabled, ...storageFull } };
  const updates = PublicDeploymentModelsSchema.safeParse(models);
  if (!updates.success) {
    warn(
      `the agent status' deployment models are left out for this caller: ${z.prettifyError(updates.error)}`,
    );
    return { deployments: { enabled, ...storageFull } };
  }
  return { deployments: { enabled, models: updates.data, ...storageFull } };
}
