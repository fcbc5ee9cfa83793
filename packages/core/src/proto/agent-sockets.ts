import { basename, dirname, extname, join } from 'node:path';

/**
 * The agent's REST Unix socket when `edgefleet_rest_socket_path` is not set: beside the gRPC socket given with
 * `-a`, `/run/agent.sock` → `/run/agent.rest.sock` (a name without `.sock` gets `.rest.sock` appended). Shared
 * by the agent and the CLI, which finds the REST socket from the gRPC one the same way.
 */
export function defaultRestSocketPath(grpcSocketPath: string): string {
  const ext = extname(grpcSocketPath);
  const stem = ext === '.sock' ? basename(grpcSocketPath, ext) : basename(grpcSocketPath);
  return join(dirname(grpcSocketPath), `${stem}.rest.sock`);
}
