export * from './connection-limits.js';
export * from './listener-limits.js';
