export * from './invocation.js';
export * from './aws-profile.js';
