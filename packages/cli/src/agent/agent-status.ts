import { request } from 'node:http';
import { resolve } from 'node:path';
import { z } from 'zod';
import { CliError, EXIT, table, type Output } from '../cli-io.js';

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
    })
    .optional(),
});
export type AgentStatus = z.infer<typeof agentStatusSchema>;

const MAX_ANSWER_BYTES = 4 * 1024 * 1024;

/** Asks the agent on its REST Unix socket what it runs and what its update engine is doing. */
export async function fetchAgentStatus(socketOption: string | undefined): Promise<AgentStatus> {
  const socket = socketOption ?? process.env.EDGEFLEET_AGENT_REST_SOCKET;
  if (!socket)
    throw new CliError(
      'say which agent: --rest-socket <path> (its edgefleet_rest_socket_path) or EDGEFLEET_AGENT_REST_SOCKET',
      EXIT.usage,
    );
  const path = resolve(socket.replace(/^unix:(\/\/)?/, ''));
  const { status, body } = await new Promise<{ status: number; body: string }>((done, fail) => {
    const req = request({ socketPath: path, path: '/edgefleet/v1/status', timeout: 10_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (chunk: string) => {
        body += chunk;
        if (body.length > MAX_ANSWER_BYTES) req.destroy(new Error('the answer is too large'));
      });
      res.on('end', () => done({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy(new Error('no answer within 10 s')));
    req.on('error', (error: NodeJS.ErrnoException) =>
      fail(
        new CliError(
          error.code === 'ENOENT' || error.code === 'ECONNREFUSED'
            ? `no agent answers on ${path} (is it running? is it the REST socket, edgefleet_rest_socket_path?)`
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
              d.notLoadedReason ?? d.reason ?? '',
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
