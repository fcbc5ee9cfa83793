/** Types of scripts/agent-log-events.mjs, for the test that runs its comparison. */
export interface CodeLogEvent {
  event: string;
  levels: Set<string>;
  message: string | undefined;
  where: string[];
}
export const REPO_ROOT: string;
export const LOG_EVENTS_DOC: string;
export function scanLogEvents(root?: string): CodeLogEvent[];
export function eventPattern(name: string): RegExp;
export function documentedLogEvents(markdown: string): Map<string, string>;
export function compareLogEvents(root?: string): {
  code: CodeLogEvent[];
  missing: CodeLogEvent[];
  stale: string[];
  wrongLevel: string[];
};
