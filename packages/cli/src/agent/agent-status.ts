import { request } from 'node:http';
import { resolve } from 'node:path';
import { z } from 'zod';
import { defaultRestSocketPath } from '@edgefleet/core';
import { CliError, EXIT, table, type Output } from '../cli-io.js';
import { agentTimedOut } from './agent-timeout.js';

/** The agent's GET /edgefleet/v1/status answer (its REST socket); fields the CLI does not show pass through. */
export const agentStatusSchema = z.looseObject({
  version: z.string(),
  models: z.array(
    z.looseObject({
      name: z.string(),
      version: z.string(),
      loadedAt: z.string(),
      signatureVerified: z.boolean(),
    }),
  ),
  deployments: z
    .looseObject({
      enabled: z.boolean(),
      models: z
        .array(
          z.looseObject({
            handle: z.string(),
            deployment: z.string(),
            state: z.string(),
            version: z.string().nullable(),
            previousVersion: z.string().nullable(),
            held: z.boolean(),
            reason: z.string().nullable(),
            updatedAt: z.string(),
            // An older agent sends neither: it does not tell.
            loaded: z.boolean().optional(),
            notLoadedReason: z.string().nullable().optional(),
            // Why the load at the agent's start failed; only operators see it, and an older agent does not send it.
            loadFailure: z.string().nullable().optional(),
            // An older agent does not send it.
            lastFailure: z
              .looseObject({
                deployment: z.string(),
                state: z.string(),
                version: z.string().nullable(),
                reason: z.string().nullable(),
                endedAt: z.string(),
              })
              .nullable()
              .optional(),
          }),
        )
        .optional(),
      // Set while the agent cannot record an update's state for want of space; an older agent does not send it.
      storageFull: z
        .looseObject({ deployment: z.string().nullable(), message: z.string(), since: z.string() })
        .nullable()
        .optional(),
    })
    .optional(),
});
export type AgentStatus = z.infer<typeof agentStatusSchema>;

const MAX_ANSWER_BYTES = 4 * 1024 * 1024;

export interface AgentStatusTarget {
  /** `--rest-socket`: the REST socket itself. */
  restSocket?: string | undefined;
  /** `--socket`: the gRPC socket, beside which the agent puts its REST socket by default. */
  socket?: string | undefined;
  timeoutSeconds: number;
}

const socketPath = (socket: string) => resolve(socket.replace(/^unix:(\/\/)?/, ''));

/**
 * The REST socket to ask: `--rest-socket`, else the default one beside `--socket`'s gRPC socket (as the agent
 * derives it), else $EDGEFLEET_AGENT_REST_SOCKET, else beside $EDGEFLEET_AGENT_SOCKET.
 */
export function restSocketOf(target: Omit<AgentStatusTarget, 'timeoutSeconds'>): string {
  if (target.restSocket) return socketPath(target.restSocket);
  if (target.socket) return defaultRestSocketPath(socketPath(target.socket));
  if (process.env.EDGEFLEET_AGENT_REST_SOCKET) return socketPath(process.env.EDGEFLEET_AGENT_REST_SOCKET);
  if (process.env.EDGEFLEET_AGENT_SOCKET)
    return defaultRestSocketPath(socketPath(process.env.EDGEFLEET_AGENT_SOCKET));
  throw new CliError(
    'say which agent: --socket <its gRPC socket> (the REST socket beside it is asked), --rest-socket <path> (its edgefleet_rest_socket_path), EDGEFLEET_AGENT_SOCKET or EDGEFLEET_AGENT_REST_SOCKET',
    EXIT.usage,
  );
}

/** Asks the agent on its REST Unix socket what it runs and what its update engine is doing. */
export async function fetchAgentStatus(target: AgentStatusTarget): Promise<AgentStatus> {
  const path = restSocketOf(target);
  const { timeoutSeconds } = target;
  const { status, body } = await new Promise<{ status: number; body: string }>((done, fail) => {
    const req = request(
      { socketPath: path, path: '/edgefleet/v1/status', timeout: timeoutSeconds * 1000 },
      (res) => {
        let body = '';
        res.setEncoding('utf8').on('data', (chunk: string) => {
          body += chunk;
          if (body.length > MAX_ANSWER_BYTES) req.destroy(new Error('the answer is too large'));
        });
        res.on('end', () => done({ status: res.statusCode ?? 0, body }));
      },
    );
    let timedOut = false;
    req.on('timeout', () => {
      timedOut = true;
      req.destroy();
    });
    req.on('error', (error: NodeJS.ErrnoException) =>
      fail(
        timedOut
          ? agentTimedOut(path, timeoutSeconds)
          : new CliError(
              error.code === 'ENOENT' || error.code === 'ECONNREFUSED'
                ? `no agent answers on ${path} (is it running? is it the REST socket, edgefleet_rest_socket_path?)`
                : error.code?.startsWith('HPE_')
                  ? // Node's HTTP parser on an HTTP/2 answer: the gRPC socket, the natural mistake.
                    `${path} answers, but not in HTTP/1.1: it is the agent's gRPC socket (-a), not its REST socket; the REST socket is ${defaultRestSocketPath(path)} unless edgefleet_rest_socket_path says otherwise (--socket ${path} finds it)`
                  : `agent ${path}: ${error.message}`,
            ),
      ),
    );
    req.end();
  });
  if (status === 404)
    throw new CliError(
      `the agent on ${path} has no status endpoint (an older agent, or not an EdgeFleet agent)`,
    );
  if (status !== 200)
    throw new CliError(`the agent on ${path} answered HTTP ${status}: ${body.slice(0, 200)}`);
  const parsed = agentStatusSchema.safeParse(JSON.parse(body));
  if (!parsed.success)
    throw new CliError(`the agent on ${path} answered an unexpected status: ${parsed.error.message}`);
  return parsed.data;
}

/** Prints the status: the models serving, then each model handle's update. */
export function printAgentStatus(status: AgentStatus, output: Output): void {
  output.result(status, () => {
    const lines = [`edgefleet-agent ${status.version}`, ''];
    lines.push(
      status.models.length === 0
        ? 'no models loaded'
        : table(
            ['model', 'version', 'signature', 'loaded at'],
            status.models.map((m) => [
              m.name,
              m.version,
              m.signatureVerified ? 'verified' : 'NOT verified',
              m.loadedAt,
            ]),
          ),
    );
    lines.push('');
    const deployments = status.deployments;
    if (deployments?.enabled && deployments.storageFull)
      lines.push(
        `deployments: STORAGE FULL since ${deployments.storageFull.since}${deployments.storageFull.deployment === null ? '' : ` (deployment ${deployments.storageFull.deployment})`}: ${deployments.storageFull.message}`,
      );
    if (!deployments?.enabled) lines.push('deployments: off (sagemaker_edge_deployment_lib_path is not set)');
    else if (!deployments.models || deployments.models.length === 0)
      lines.push('deployments: none received yet');
    else
      lines.push(
        table(
          ['model', 'deployment', 'state', 'version', 'previous', 'updated at', 'reason'],
          // Each handle's update, then the last deployment of it that failed (when that is another one).
          deployments.models.flatMap((d) => [
            [
              d.handle,
              d.deployment,
              d.held ? `${d.state} (HELD)` : d.notLoadedReason ? `${d.state} (NOT LOADED)` : d.state,
              d.version ?? '-',
              d.previousVersion ?? '-',
              d.updatedAt,
              d.notLoadedReason && d.loadFailure
                ? `${d.notLoadedReason}: ${d.loadFailure}`
                : (d.notLoadedReason ?? d.reason ?? ''),
            ],
            ...(d.lastFailure
              ? [
                  [
                    d.handle,
                    d.lastFailure.deployment,
                    `${d.lastFailure.state} (last failure)`,
                    d.lastFailure.version ?? '-',
                    '-',
                    d.lastFailure.endedAt,
                    d.lastFailure.reason ?? '',
                  ],
                ]
              : []),
          ]),
        ),
      );
    return lines;
  });
}
