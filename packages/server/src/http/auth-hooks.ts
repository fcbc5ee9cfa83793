import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { AuthRequirement } from './routes.js';

/** How one app checks each requirement it supports; an absent entry means the app has no such routes. */
export type Authenticators = Partial<
  Record<Exclude<AuthRequirement, 'public'>, (request: FastifyRequest) => Promise<void>>
>;

/**
 * Refuses, at registration, any route that does not declare an auth requirement this app can check, and
 * checks the requirement before anything else (body parsing, validation) happens for a request.
 */
export function installAuth(app: FastifyInstance, authenticators: Authenticators): void {
  app.addHook('onRoute', (route) => {
    const auth = route.config?.auth;
    if (auth === undefined) {
      throw new Error(`route ${route.method} ${route.url} declares no auth requirement`);
    }
    if (auth !== 'public' && authenticators[auth] === undefined) {
      throw new Error(
        `route ${route.method} ${route.url} needs "${auth}" auth, which this server does not offer`,
      );
    }
  });
  app.addHook('onRequest', async (request) => {
    const auth = request.routeOptions.config?.auth;
    if (auth === undefined || auth === 'public') return;
    await authenticators[auth]?.(request);
  });
}
