// The device↔server contract and the field rules both sides share (docs/architecture.md).
export * from './field-rules.js';
export * from './device-api.js';
export * from './package-url.js';
