import type { ServerResponse } from 'node:http';
import type { ResponseBudget } from '../body-budget/index.js';

/**
 * Counts `res`'s bytes that its connection could not hand to the kernel, because the client does not read, in
 * the response budget shared with the gRPC door (docs/security.md#limits): from when the whole response is on
 * the socket ('prefinish') until the socket has written it out ('finish') or the response is gone ('close').
 * Past the budget, the connection whose answers have waited longest is closed. A client that reads leaves nothing
 * queued, or what is in transit for a moment.
 */
export function countUnreadResponse(budget: ResponseBudget, res: ServerResponse): void {
  res.once('prefinish', () => {
    const socket = res.socket;
    // Node attaches a keep-alive connection's next response only once this one has finished: what the socket
    // holds now is this response's.
    const bytes = socket?.writableLength ?? 0;
    if (socket == null || bytes === 0) return;
    const release = budget.queued(socket, 'rest', () => socket.destroy(), bytes);
    res.once('finish', release);
    res.once('close', release);
  });
}
