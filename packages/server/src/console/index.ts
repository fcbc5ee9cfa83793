export { ChangeFeed, type ChangeTopic } from './change-feed.js';
export { consoleEventRoutes } from './event-routes.js';
export {
  CSRF_HEADER,
  consoleSessionAuthenticator,
  consoleSignOutAuthenticator,
  SESSION_COOKIE,
} from './session-auth.js';
export { consoleSessionRoutes } from './session-routes.js';
export { ConsoleSessionStore, EXPIRED_SESSION_KEPT_MS, MAX_SESSIONS_PER_TOKEN } from './session-store.js';
export { CONSOLE_CSP, consoleStaticRoutes, defaultConsoleDir } from './static-files.js';
