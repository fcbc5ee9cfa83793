import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ResponseBudget, responseBudgetWarning, slowReaderLog } from '../../src/body-budget/index.js';

/** A connection as the budget sees it: a key, and whether the budget closed it. */
function connection() {
  const state = { closed: 0 };
  return { state, close: () => void state.closed++ };
}

describe('ResponseBudget', () => {
  it('counts answers until released, once each', () => {
    const budget = new ResponseBudget(100);
    const a = connection();
    const first = budget.queued(a, 'grpc', a.close, 30);
    const second = budget.queued(a, 'grpc', a.close, 20);
    expect(budget.queuedBytes).toBe(50);
    first();
    first();
    expect(budget.queuedBytes).toBe(20);
    second();
    expect(budget.queuedBytes).toBe(0);
    expect(budget.queued(a, 'grpc', a.close, 0)).toBeTypeOf('function');
    expect(budget.queuedBytes).toBe(0);
    expect(a.state.closed).toBe(0);
  });

  it('past the limit, closes the connections whose oldest answer has waited longest, whatever their size, until within it', () => {
    const closedDoors: Array<[string, number]> = [];
    const budget = new ResponseBudget(100, {
      onSlowReaderClosed: (door, bytes) => closedDoors.push([door, bytes]),
    });
    const [slow, slower, reader] = [connection(), connection(), connection()];
    budget.queued(slower, 'rest', slower.close, 10);
    budget.queued(slow, 'grpc', slow.close, 30);
    budget.queued(slower, 'rest', slower.close, 10);
    budget.queued(slow, 'grpc', slow.close, 30);
    expect(budget.queuedBytes).toBe(80);
    // A reader's answer, larger than what either holds, passes the limit: the older two go, in age order.
    const inTransit = budget.queued(reader, 'rest', reader.close, 75);
    expect([slower.state.closed, slow.state.closed, reader.state.closed]).toEqual([1, 1, 0]);
    expect(closedDoors).toEqual([
      ['rest', 20],
      ['grpc', 60],
    ]);
    expect(budget.queuedBytes).toBe(75);
    expect(budget.slowReadersClosed).toBe(2);
    // What a closed connection reports later is not counted.
    budget.queued(slow, 'grpc', slow.close, 50)();
    expect(budget.queuedBytes).toBe(75);
    inTransit();
    expect(budget.queuedBytes).toBe(0);
  });

  it('closes the connection whose own answer passes the limit when no other holds any', () => {
    const budget = new ResponseBudget(100);
    const alone = connection();
    budget.queued(alone, 'grpc', alone.close, 60);
    budget.queued(alone, 'grpc', alone.close, 60);
    expect(alone.state.closed).toBe(1);
    expect(budget.queuedBytes).toBe(0);
  });

  it('refuses a limit that is not a positive whole number', () => {
    expect(() => new ResponseBudget(0)).toThrow(/positive whole number of bytes, not 0/);
    expect(() => new ResponseBudget(1.5)).toThrow(RangeError);
  });

  it('warns when the budget is smaller than -m, the largest answer', () => {
    expect(responseBudgetWarning(4 << 20, 4 << 20)).toBeUndefined();
    expect(responseBudgetWarning(1 << 20, 4 << 20)).toMatch(
      /^edgefleet_max_responses_queued_bytes \(1048576 bytes\) is smaller than the largest answer the agent sends, a gRPC message of up to -m \(4194304 bytes\)/,
    );
  });

  describe('slowReaderLog', () => {
    afterEach(() => void vi.useRealTimers());

    it('counts every closing, logs the first, and the ones in the minute after it as one line then', () => {
      vi.useFakeTimers();
      const lines: Array<{ event: string; msg: string; count?: number }> = [];
      const logger = pino(
        { level: 'warn' },
        new Writable({
          write(chunk: Buffer, _encoding, done) {
            lines.push(JSON.parse(chunk.toString()) as { event: string; msg: string });
            done();
          },
        }),
      );
      const counted: string[] = [];
      const log = slowReaderLog(logger, 1000, (door) => counted.push(door));
      log('grpc', 600);
      log('rest', 500);
      log('grpc', 700);
      expect(counted).toEqual(['grpc', 'rest', 'grpc']);
      expect(lines.map((line) => line.event)).toEqual(['slow_reader_closed']);
      expect(lines[0]!.msg).toMatch(
        /^closed a gRPC connection whose client left 600 bytes of answers unread: .*budget of 1000 bytes/,
      );
      vi.runOnlyPendingTimers();
      expect(lines.slice(1)).toEqual([
        expect.objectContaining({
          event: 'slow_readers_closed',
          count: 2,
          msg: expect.stringMatching(/^closed 2 more connections/),
        }),
      ]);
      // A quiet minute later, the next closing is logged at once again.
      log('rest', 800);
      expect(lines.at(-1)).toMatchObject({
        event: 'slow_reader_closed',
        msg: expect.stringMatching(/^closed a REST connection/),
      });
    });
  });
});
