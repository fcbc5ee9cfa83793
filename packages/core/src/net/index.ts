export * from './canonical-host.js';
export * from './connection-limits.js';
export * from './listener-limits.js';
export * from './loopback.js';
export * from './refusal-log.js';
