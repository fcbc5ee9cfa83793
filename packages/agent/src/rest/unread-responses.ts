import type { ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { ResponseBudget } from '../body-budget/index.js';

/**
 * Counts each REST response's bytes that its connection could not hand to the kernel, because the client does not
 * read, in the response budget shared with the gRPC door (docs/security.md#limits): from when the whole response
 * is written (`res.end()`) until the socket has written it out ('finish') or the response or its connection is
 * gone ('close'). Past the budget, the connection whose answers have waited longest is closed. A client that reads
 * leaves nothing queued, or what is in transit for a moment.
 *
 * Counted at `end()`, not when the response reaches the socket: with HTTP/1.1 pipelining Node builds the answers
 * to requests queued behind an unsent one in full and keeps them apart from the socket (and without 'prefinish')
 * until that one has gone, so only `end()` sees them.
 */
export class UnreadResponses {
  readonly #budget: ResponseBudget;
  /** Each connection's counted responses' releases, so that its closing gives back those never attached. */
  readonly #releases = new WeakMap<Socket, Set<() => void>>();

  constructor(budget: ResponseBudget) {
    this.#budget = budget;
  }

  /** Counts `res` once it ends (call before anything writes to it). */
  count(res: ServerResponse): void {
    const socket = res.req.socket;
    const end = res.end;
    let counted = false;
    // end() has no event of its own for a response not yet attached, hence the wrapper. Counted once: a second
    // end() writes nothing.
    res.end = ((...args: unknown[]) => {
      const result: unknown = Reflect.apply(end, res, args);
      if (!counted) {
        counted = true;
        this.#counted(socket, res);
      }
      return result;
    }) as typeof res.end;
  }

  #counted(socket: Socket, res: ServerResponse): void {
    // Unattached: the bytes Node holds for it (outputSize); attached: plus what the socket holds, all of it this
    // response's (Node attaches the next response only once this one has finished).
    const bytes = res.writableLength;
    if (bytes === 0 || res.writableFinished || socket.destroyed) return;
    let releases = this.#releases.get(socket);
    if (releases === undefined) {
      const held = new Set<() => void>();
      this.#releases.set(socket, (releases = held));
      socket.once('close', () => {
        for (const release of held) release();
        this.#releases.delete(socket);
      });
    }
    const given = this.#budget.queued(socket, 'rest', () => socket.destroy(), bytes);
    const release = () => {
      given();
      releases.delete(release);
      res.removeListener('finish', release);
      res.removeListener('close', release);
    };
    releases.add(release);
    res.once('finish', release);
    res.once('close', release);
  }
}
