import { prepareSocketPath as prepareUnixSocketPath, SocketPathError } from '../unix-socket/index.js';
import { EXIT_CODES, StartupError } from './exit-codes.js';

/**
 * Makes sure the agent may bind its gRPC socket at `path` (spec §1, `-a` and `-f`): see unix-socket's
 * prepareSocketPath. Throws StartupError (exit 3) saying what to do.
 */
export async function prepareSocketPath(
  path: string,
  removeStale: boolean,
): Promise<{ removedStale: boolean }> {
  try {
    return await prepareUnixSocketPath(path, { removeStale, option: '-a', removeStaleOption: '-f' });
  } catch (error) {
    if (error instanceof SocketPathError) {
      throw new StartupError(EXIT_CODES.SOCKET_UNAVAILABLE, error.message, { cause: error });
    }
    throw error;
  }
}
