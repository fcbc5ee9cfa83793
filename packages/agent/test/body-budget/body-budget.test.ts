import { describe, expect, it } from 'vitest';
import { BodyBudget, bodyBudgetWarning } from '../../src/body-budget/index.js';

const MiB = 1024 ** 2;

describe('the body budget', () => {
  it('takes what fits, refuses (taking nothing) what would pass the limit, and counts what is given back', () => {
    const budget = new BodyBudget(10);
    expect(budget.take(6)).toBe(true);
    expect(budget.take(5)).toBe(false);
    expect(budget.usedBytes).toBe(6);
    budget.give(6);
    expect(budget.take(10)).toBe(true);
    expect(budget.describeRefusal('the next 1 bytes of this request body')).toMatch(
      /10 bytes of request bodies are being received or held already; the next 1 bytes of this request body would pass the agent's budget of 10 bytes/,
    );
  });

  it('warns when the configured budget is smaller than the largest body or -m: such requests could never fit', () => {
    expect(bodyBudgetWarning(256 * MiB, 64 * MiB, 4 * MiB)).toBeUndefined();
    expect(bodyBudgetWarning(64 * MiB, 64 * MiB, 64 * MiB)).toBeUndefined();
    expect(bodyBudgetWarning(16 * MiB, 64 * MiB, 4 * MiB)).toMatch(
      /^edgefleet_max_bodies_in_flight_bytes \(16777216 bytes\) is smaller than the largest request the agent accepts, a REST body of up to 67108864 bytes: .* expected at least 67108864 bytes, or leave it unset$/,
    );
    expect(bodyBudgetWarning(100 * MiB, 128 * MiB, 128 * MiB)).toMatch(
      /a gRPC message of up to -m \(134217728 bytes\).* expected at least 134217728 bytes/,
    );
  });
});
