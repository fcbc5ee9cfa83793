export { initServer, type InitResult } from './init.js';
export { createLogger } from './logger.js';
export { openStores, startServer, type ServerHandle, type StartServerOptions } from './start-server.js';
