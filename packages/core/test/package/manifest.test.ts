import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DATA_TYPE_NAMES } from '../../src/tensors/data-type.js';
import { MODEL_NAME_PATTERN } from '../../src/contract/field-rules.js';
import { ModelNameSchema, PackageManifestSchema, type PackageManifest } from '../../src/package/manifest.js';

const tensor = fc.record({
  name: fc.string({ minLength: 1, maxLength: 20 }),
  dataType: fc.constantFrom(...DATA_TYPE_NAMES),
  shape: fc.array(fc.integer({ min: -1, max: 4096 }), { maxLength: 6 }),
});
const validManifest: fc.Arbitrary<PackageManifest> = fc.record({
  schemaVersion: fc.constant(1 as const),
  name: fc.stringMatching(/^[a-zA-Z0-9](-?[a-zA-Z0-9]){0,20}$/),
  version: fc.stringMatching(/^[a-zA-Z0-9 _.]{1,30}$/).filter((v) => v !== '.' && v !== '..'),
  framework: fc.constant('onnx' as const),
  model: fc.record({
    file: fc.constant('model.onnx'),
    externalData: fc.array(fc.stringMatching(/^[a-z]{1,8}(\/[a-z]{1,8})?\.bin$/), { maxLength: 3 }),
    irVersion: fc.nat(20),
    opsetImports: fc.array(fc.record({ domain: fc.constantFrom('', 'ai.onnx.ml'), version: fc.nat(25) }), {
      maxLength: 2,
    }),
    producer: fc.string({ maxLength: 30 }),
  }),
  inputs: fc.array(tensor, { minLength: 1, maxLength: 4 }),
  outputs: fc.array(tensor, { minLength: 1, maxLength: 4 }),
  createdAt: fc
    .date({ min: new Date(0), max: new Date(4e12), noInvalidDate: true })
    .map((d) => d.toISOString()),
});

describe('PackageManifestSchema', () => {
  it('accepts every well-formed manifest, unchanged through JSON', () => {
    fc.assert(
      fc.property(validManifest, (manifest) => {
        expect(PackageManifestSchema.parse(JSON.parse(JSON.stringify(manifest)))).toEqual(manifest);
      }),
    );
  });

  it('never throws on arbitrary JSON: it parses or reports issues with paths', () => {
    fc.assert(
      fc.property(fc.jsonValue(), (value) => {
        const result = PackageManifestSchema.safeParse(value);
        if (!result.success) expect(result.error.issues.length).toBeGreaterThan(0);
      }),
    );
  });

  it('refuses a valid manifest with one field broken, naming that field', () => {
    const breakers: [string, (m: Record<string, unknown>) => void][] = [
      ['name', (m) => (m.name = 'has_underscore')],
      ['version', (m) => (m.version = 'v/1')],
      ['version', (m) => (m.version = '..')],
      ['framework', (m) => (m.framework = 'tensorflow')],
      ['model', (m) => ((m.model as Record<string, unknown>).file = '../escape.onnx')],
      ['inputs', (m) => (m.inputs = [])],
      ['createdAt', (m) => (m.createdAt = 'yesterday')],
      ['unexpected', (m) => (m.unexpected = true)],
    ];
    fc.assert(
      fc.property(validManifest, fc.constantFrom(...breakers), (manifest, [field, breakIt]) => {
        const broken = structuredClone(manifest) as unknown as Record<string, unknown>;
        breakIt(broken);
        const result = PackageManifestSchema.safeParse(broken);
        expect(result.success).toBe(false);
        const paths = result.error!.issues.map(
          (i) => (i.path[0] as string | undefined) ?? (i as { keys?: string[] }).keys?.[0],
        );
        expect(paths).toContain(field);
      }),
    );
  });

  it('model names follow the agent rule exactly', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 70 }), (name) => {
        expect(ModelNameSchema.safeParse(name).success).toBe(
          MODEL_NAME_PATTERN.test(name) && name.length <= 63,
        );
      }),
    );
  });
});
