// The limiter is shared with the agent (its capture upload and listener lines): one implementation, in core.
export { LineLimiter, MAX_LIMITED_KEYS, REPEATED_LINE_INTERVAL_MS } from '@edgefleet/core';
