/**
 * packages/agent/docs/logs.md lists every `event` the agent logs, at the level the code logs it: the comparison
 * of scripts/agent-log-events.mjs (run it to see rows to add).
 */
import { describe, expect, it } from 'vitest';
import {
  compareLogEvents,
  documentedLogEvents,
  scanLogEvents,
} from '../../../../scripts/agent-log-events.mjs';

describe('the agent log events table (docs/logs.md)', () => {
  it('names every event the code logs, no other, each at its levels', () => {
    const { missing, stale, wrongLevel } = compareLogEvents();
    expect(missing.map((e) => `${e.event} (${e.where.join(', ')})`)).toEqual([]);
    expect(stale).toEqual([]);
    expect(wrongLevel).toEqual([]);
  });

  it('the scan finds events, their levels and templates, and the table parser reads rows, not the header', () => {
    const events = scanLogEvents();
    const byName = new Map(events.map((e) => [e.event, e]));
    expect(byName.get('start-failed')?.levels).toEqual(new Set(['fatal']));
    expect(byName.get('deployment-rollback-failed')?.levels).toEqual(new Set(['error']));
    // Fields built first and passed to one of several calls (fleet-client.ts).
    expect(byName.get('fleet-<step>-failed')?.levels).toEqual(new Set(['warn', 'error', 'debug']));
    // Every event's level is found, but an error class's own event (logged by whoever catches it).
    expect(events.filter((e) => e.levels.size === 0).map((e) => e.event)).toEqual([
      'capture-spool-read-failed',
      'capture-spool-rewrite-failed',
    ]);
    expect(byName.get('capture-spool-damaged')?.levels).toEqual(new Set(['warn']));
    const rows = documentedLogEvents(
      '| `event` | Level |\n| --- | --- |\n| `ready` | info |\n| `start-failed` | fatal |\n',
    );
    expect([...rows]).toEqual([
      ['ready', 'info'],
      ['start-failed', 'fatal'],
    ]);
  });
});
