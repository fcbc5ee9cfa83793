import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { entityNameSchema, MAX_TAGS, splitS3Uri, tagListSchema } from '../../src/fields/index.js';

const alnum = fc.constantFrom(...'abcXYZ019'.split(''));

describe('entity names (the spec pattern [a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}, max 63)', () => {
  it('accepts alphanumerics joined by single or repeated hyphens', () => {
    const name = fc
      .tuple(alnum, fc.array(fc.tuple(fc.integer({ min: 0, max: 2 }), alnum), { maxLength: 20 }))
      .map(([first, rest]) => first + rest.map(([dashes, c]) => '-'.repeat(dashes) + c).join(''))
      .filter((n) => n.length <= 63);
    fc.assert(
      fc.property(name, (n) => {
        expect(entityNameSchema.safeParse(n).success).toBe(true);
      }),
    );
  });

  it('refuses leading or trailing hyphens, other characters and names over 63', () => {
    const bad = fc.oneof(
      alnum.map((c) => `-${c}`),
      alnum.map((c) => `${c}-`),
      fc.constantFrom('a_b', 'a.b', 'a b', 'ä', '', 'a/b'),
      fc.constant('a'.repeat(64)),
    );
    fc.assert(
      fc.property(bad, (n) => {
        expect(entityNameSchema.safeParse(n).success).toBe(false);
      }),
    );
  });

  it('says what is wrong with a name too long once, with its length', () => {
    const issues = entityNameSchema.safeParse(`a${'b'.repeat(69)}`).error?.issues ?? [];
    expect(issues.map((issue) => issue.message)).toEqual([
      'expected 1-63 letters, digits and inner hyphens (e.g. fleet-1); this one is 70 characters long',
    ]);
    expect(entityNameSchema.safeParse('bad_name').error?.issues.map((issue) => issue.message)).toEqual([
      'expected 1-63 letters, digits and inner hyphens (e.g. fleet-1)',
    ]);
  });
});

describe('tags', () => {
  it('allow unicode letters and the spec punctuation, unique keys, at most 50', () => {
    expect(tagListSchema.safeParse([{ key: 'Größe', value: 'groß:1/2=+-@ ok' }]).success).toBe(true);
    expect(
      tagListSchema.safeParse([
        { key: 'a', value: '1' },
        { key: 'a', value: '2' },
      ]).success,
    ).toBe(false);
    expect(tagListSchema.safeParse([{ key: 'a#', value: '1' }]).success).toBe(false);
    const many = Array.from({ length: MAX_TAGS + 1 }, (_, i) => ({ key: `k${i}`, value: 'v' }));
    expect(tagListSchema.safeParse(many).success).toBe(false);
    expect(tagListSchema.safeParse(many.slice(1)).success).toBe(true);
  });
});

describe('splitS3Uri', () => {
  it('separates bucket and prefix', () => {
    expect(splitS3Uri('s3://bucket/a/b/')).toEqual({ bucket: 'bucket', prefix: 'a/b' });
    expect(splitS3Uri('s3://bucket')).toEqual({ bucket: 'bucket', prefix: '' });
    expect(() => splitS3Uri('ftp://x')).toThrow(/not an s3/);
  });
});
