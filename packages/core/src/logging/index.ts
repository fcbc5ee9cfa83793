export * from './line-limiter.js';
