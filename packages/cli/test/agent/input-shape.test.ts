import { describe, expect, it } from 'vitest';
import { nestedShape, resolveInput } from '../../src/agent/input-shape.js';

const row512 = Array.from({ length: 512 }, (_, i) => i / 512);

describe('edgefleet agent predict: the shape of an --input', () => {
  it('takes the shape from the nesting, adding leading 1s up to the model rank', () => {
    expect(resolveInput('input', [-1, -1], [row512])).toMatchObject({ shape: [1, 512] });
    expect(resolveInput('input', [-1, -1], row512).shape).toEqual([1, 512]);
    expect(resolveInput('features', [-1, 4], [[1, 2, 3, 4]]).shape).toEqual([1, 4]);
    expect(
      resolveInput(
        'features',
        [-1, 4],
        [
          [1, 2, 3, 4],
          [5, 6, 7, 8],
        ],
      ),
    ).toEqual({ shape: [2, 4], values: [1, 2, 3, 4, 5, 6, 7, 8] });
    expect(resolveInput('state', [2, -1, 3], [[[1, 2, 3]], [[4, 5, 6]]]).shape).toEqual([2, 1, 3]);
  });

  it('reads a flat list for a multi-dimensional input, the dynamic dimension from the count', () => {
    expect(resolveInput('features', [-1, 4], [1, 2, 3, 4, 5, 6, 7, 8]).shape).toEqual([2, 4]);
    expect(resolveInput('a', [2, 2], [1, 2, 3, 4]).shape).toEqual([2, 2]);
  });

  it('accepts a bare number for an input that holds one value', () => {
    expect(resolveInput('sr', [], 16000)).toEqual({ shape: [], values: [16000] });
    expect(resolveInput('sr', [1], 16000)).toEqual({ shape: [1], values: [16000] });
    expect(resolveInput('counts', [-1], 5)).toEqual({ shape: [1], values: [5] });
    expect(resolveInput('sr', [], [16000])).toEqual({ shape: [], values: [16000] });
  });

  it('keeps an explicit {"shape", "data"}', () => {
    expect(resolveInput('features', [-1, 4], { shape: [1, 4], data: [1, 2, 3, 4] }).shape).toEqual([1, 4]);
    expect(resolveInput('features', [-1, 4], { data: [[1, 2, 3, 4]] }).shape).toEqual([1, 4]);
  });

  it('says what shape was expected and what was given', () => {
    expect(() => resolveInput('features', [-1, 4], [1, 2])).toThrow(
      'input features: given 2 values of shape [2], but the model expects [-1, 4] (-1: any size)',
    );
    expect(() => resolveInput('features', [-1, 4], [[1, 2, 3]])).toThrow(
      'given 3 values of shape [1, 3], but the model expects [-1, 4]',
    );
    expect(() => resolveInput('a', [2, 2], 7)).toThrow(
      'input a is a single number; the model expects shape [2, 2], so give a list',
    );
    expect(() => resolveInput('a', [2, 2], 'x')).toThrow(/input a is "x"; expected a number/);
    expect(() => nestedShape('a', [[1, 2], [3]])).toThrow(
      'input a is ragged at depth 2: a list of 1 values where the first has 2',
    );
    expect(() => nestedShape('a', [[1, 2], 3])).toThrow('input a mixes numbers and lists at depth 1');
  });
});
