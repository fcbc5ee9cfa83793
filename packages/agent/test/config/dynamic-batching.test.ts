import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MODEL_NAME_PATTERN } from '@edgefleet/core';
import { ConfigError, parseAgentConfig, type ConfigContext } from '../../src/config/index.js';
import { MAX_BATCH_SIZE as MAX_DYNAMIC_BATCH_SIZE } from '../../src/inference/batching.js';

const context: ConfigContext = { cwd: '/srv/agent', cpuCount: 4, grpcSocketPath: '/tmp/edge.sock' };
const KEY = 'edgefleet_dynamic_batching';

function rulesOf(value: unknown) {
  return parseAgentConfig({ [KEY]: value }, context).config.inference.dynamicBatching;
}

function errorOf(value: unknown): ConfigError {
  try {
    parseAgentConfig({ [KEY]: value }, context);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return error as ConfigError;
  }
  throw new Error(`expected ${JSON.stringify(value)} to be refused`);
}

describe('edgefleet_dynamic_batching', () => {
  it('is off by default, and when set to "" or null', () => {
    expect(rulesOf(undefined)).toEqual([]);
    expect(rulesOf('')).toEqual([]);
    expect(rulesOf(null)).toEqual([]);
    expect(parseAgentConfig({}, context).config.inference.dynamicBatching).toEqual([]);
  });

  it('reads a list of rules, one rule without the list, or either as JSON text; sizes may be strings', () => {
    const rules = [
      { model: 'silero-vad', maxBatchSize: 8, dimension: 'batch' },
      { model: 'mlp', maxBatchSize: MAX_DYNAMIC_BATCH_SIZE },
    ];
    expect(rulesOf(rules)).toEqual(rules);
    expect(rulesOf(JSON.stringify(rules))).toEqual(rules);
    expect(
      rulesOf(
        '[{"model": " silero-vad ", "maxBatchSize": " 8 ", "dimension": " batch "}, {"model": "mlp", "maxBatchSize": "1024"}]',
      ),
    ).toEqual(rules);
    expect(rulesOf({ model: 'mlp', maxBatchSize: 2 })).toEqual([{ model: 'mlp', maxBatchSize: 2 }]);
    expect(rulesOf({ model: 'mlp', maxBatchSize: 2, instances: ' 1 ' })).toEqual([
      { model: 'mlp', maxBatchSize: 2, instances: 1 },
    ]);
    expect(rulesOf(JSON.stringify({ model: 'mlp', maxBatchSize: 2 }))).toEqual([
      { model: 'mlp', maxBatchSize: 2 },
    ]);
    // Symbolic dimension names are the model's own: any spelling ONNX allows.
    expect(rulesOf([{ model: 'm', maxBatchSize: 4, dimension: 'batch_size (N)' }])).toEqual([
      { model: 'm', maxBatchSize: 4, dimension: 'batch_size (N)' },
    ]);
  });

  const badValues: Array<[string, unknown, RegExp]> = [
    ['not a list', 'on', /got "on"$/],
    ['a boolean', true, /got true$/],
    ['JSON text cut short', '[{"model": "mlp", "maxBatchSize": 4', /got "\[\{\\"model/],
    ['a rule that is not an object', ['mlp'], /item 1: /],
    [
      '"*" for every model',
      [{ model: '*', maxBatchSize: 4 }],
      /item 1, model: .*"\*" is not accepted.*model by model/,
    ],
    [
      'a bad model name',
      [{ model: 'has_underscore', maxBatchSize: 4 }],
      /item 1, model: expected a model name/,
    ],
    ['no model', [{ maxBatchSize: 4 }], /item 1, model: expected a model name/],
    ['no maxBatchSize', [{ model: 'mlp' }], /item 1, maxBatchSize: expected a whole number from 2 to 1024/],
    [
      'instances 0',
      [{ model: 'mlp', maxBatchSize: 4, instances: 0 }],
      /item 1, instances: expected a whole number of sessions from 1 to 64/,
    ],
    [
      'instances not whole',
      [{ model: 'mlp', maxBatchSize: 4, instances: 1.5 }],
      /item 1, instances: expected a whole number of sessions from 1 to 64/,
    ],
    [
      'maxBatchSize 1',
      [{ model: 'mlp', maxBatchSize: 1 }],
      /item 1, maxBatchSize: expected a whole number from 2/,
    ],
    [
      'maxBatchSize 0',
      [{ model: 'mlp', maxBatchSize: '0' }],
      /item 1, maxBatchSize: expected a whole number/,
    ],
    ['maxBatchSize too big', [{ model: 'mlp', maxBatchSize: 1025 }], /item 1, maxBatchSize: .*to 1024/],
    [
      'a fractional maxBatchSize',
      [{ model: 'mlp', maxBatchSize: 2.5 }],
      /item 1, maxBatchSize: expected a whole/,
    ],
    ['maxBatchSize as a word', [{ model: 'mlp', maxBatchSize: 'eight' }], /item 1, maxBatchSize: expected/],
    [
      'an empty dimension',
      [{ model: 'mlp', maxBatchSize: 4, dimension: ' ' }],
      /item 1, dimension: expected the name/,
    ],
    [
      'a dimension that is a number',
      [{ model: 'mlp', maxBatchSize: 4, dimension: 0 }],
      /item 1, dimension: /,
    ],
    [
      'a misspelt key',
      [{ model: 'mlp', maxBatchSize: 4, maxbatchsize: 8 }],
      /item 1: Unrecognized key: "maxbatchsize"/,
    ],
    [
      'a model twice',
      [
        { model: 'mlp', maxBatchSize: 4 },
        { model: 'tiny', maxBatchSize: 4 },
        { model: 'mlp', maxBatchSize: 8 },
      ],
      /item 3, model: "mlp" has a rule already \(item 1\); expected each model at most once/,
    ],
  ];
  it.each(badValues)('refuses %s, saying what was wrong and what was expected', (_what, value, detail) => {
    const error = errorOf(value);
    expect(error.key).toBe(KEY);
    expect(error.message).toMatch(
      new RegExp(`^${KEY}: expected a list of dynamic batching rules such as \\[\\{"model": "silero-vad"`),
    );
    expect(error.message).toMatch(/got /);
    expect(error.message).toMatch(detail);
  });

  it('never crashes on arbitrary rules: a config whose rules are valid, or a ConfigError naming the key', () => {
    const field = fc.oneof(
      fc.constantFrom(
        'mlp',
        'silero-vad',
        '*',
        '',
        ' mlp ',
        'a_b',
        'batch',
        '4',
        '1',
        '1025',
        'x'.repeat(300),
      ),
      fc.string({ maxLength: 12 }),
      fc.integer({ min: -3, max: 1100 }),
      fc.double(),
      fc.boolean(),
      fc.constant(null),
    );
    const rule = fc.oneof(
      fc.record({ model: field, maxBatchSize: field, dimension: field }, { requiredKeys: [] }),
      fc.dictionary(fc.constantFrom('model', 'maxBatchSize', 'dimension', 'max_batch_size'), field),
      field,
    );
    const value = fc
      .oneof(fc.array(rule, { maxLength: 4 }), rule)
      .chain((v) => fc.constantFrom(v, JSON.stringify(v) ?? ''));
    fc.assert(
      fc.property(value, (given) => {
        let rules;
        try {
          rules = rulesOf(given);
        } catch (error) {
          expect(error).toBeInstanceOf(ConfigError);
          expect((error as ConfigError).key).toBe(KEY);
          expect((error as ConfigError).message).toMatch(/^edgefleet_dynamic_batching: expected .* got /);
          return;
        }
        expect(new Set(rules.map((r) => r.model)).size).toBe(rules.length);
        for (const r of rules) {
          expect(r.model).toMatch(MODEL_NAME_PATTERN);
          expect(Number.isInteger(r.maxBatchSize)).toBe(true);
          expect(r.maxBatchSize).toBeGreaterThanOrEqual(2);
          expect(r.maxBatchSize).toBeLessThanOrEqual(MAX_DYNAMIC_BATCH_SIZE);
          if (r.dimension !== undefined) expect(r.dimension.trim()).toBe(r.dimension);
          if (r.dimension !== undefined) expect(r.dimension).not.toBe('');
        }
      }),
      { numRuns: 2000 },
    );
  });
});
