import { CliError, EXIT } from '../cli-io.js';

/** One `--input` entry resolved against the model's declared shape: the shape to send and its values, flat. */
export interface ResolvedInput {
  shape: number[];
  values: unknown[];
}

const shapeText = (shape: readonly number[]) => `[${shape.join(', ')}]`;
const declaredText = (shape: readonly number[]) =>
  `${shapeText(shape)}${shape.includes(-1) ? ' (-1: any size)' : ''}`;

/**
 * The shape of a nested JSON array, from its nesting: `[[1, 2, 3]]` → [1, 3]. Every row at one depth must
 * have the same length; a ragged array is refused with where it differs.
 */
export function nestedShape(name: string, value: unknown[]): number[] {
  const shape: number[] = [];
  let level: unknown[] = [value];
  for (let depth = 0; ; depth += 1) {
    const arrays = level.filter(Array.isArray);
    if (arrays.length === 0) return shape;
    if (arrays.length !== level.length)
      throw new CliError(
        `input ${name} mixes numbers and lists at depth ${depth}; expected a rectangular nested list`,
        EXIT.usage,
      );
    const length = arrays[0]!.length;
    const odd = arrays.findIndex((a) => a.length !== length);
    if (odd >= 0)
      throw new CliError(
        `input ${name} is ragged at depth ${depth + 1}: a list of ${arrays[odd]!.length} values where the first has ${length}; expected a rectangular nested list`,
        EXIT.usage,
      );
    shape.push(length);
    level = arrays.flat();
  }
}

const fits = (given: readonly number[], declared: readonly number[]) =>
  given.length === declared.length && given.every((d, i) => declared[i] === -1 || declared[i] === d);

/**
 * What `edgefleet agent predict --input` accepts for one input, against the model's declared shape (-1 dims
 * are dynamic): `{"shape": […], "data": […]}` (shape as given); a nested list (shape from the nesting, with
 * leading 1s added up to the model's rank, so `[…512…]` fits [-1, 512]); a flat list for a multi-dimensional
 * input (the one dynamic dimension, if any, taken from the count); a bare number for an input holding one
 * value (rank 0, [1], [-1], [1, 1]…).
 */
export function resolveInput(name: string, declared: readonly number[], value: unknown): ResolvedInput {
  if (typeof value === 'number') {
    const shape = declared.map((d) => (d === -1 ? 1 : d));
    if (shape.some((d) => d !== 1))
      throw new CliError(
        `input ${name} is a single number; the model expects shape ${declaredText(declared)}, so give a list`,
        EXIT.usage,
      );
    return { shape, values: [value] };
  }
  if (Array.isArray(value)) {
    const given = nestedShape(name, value);
    const values = value.flat(Infinity) as unknown[];
    // Missing leading (batch) dimensions are 1: [x, y, z] for a [-1, 3] input is one row.
    const padded = [...Array<number>(Math.max(0, declared.length - given.length)).fill(1), ...given];
    if (fits(padded, declared)) return { shape: padded, values };
    if (declared.length === 0 && values.length === 1) return { shape: [], values };
    if (given.length === 1 && declared.length > 1) {
      const fixed = declared.filter((d) => d !== -1).reduce((a, b) => a * b, 1);
      const dynamic = declared.filter((d) => d === -1).length;
      if (dynamic <= 1 && fixed > 0 && values.length % fixed === 0) {
        const shape = declared.map((d) => (d === -1 ? values.length / fixed : d));
        if (dynamic === 1 || values.length === fixed) return { shape, values };
      }
    }
    throw new CliError(
      `input ${name}: given ${values.length} values of shape ${shapeText(given)}, but the model expects ${declaredText(declared)}; ` +
        'nest the list to the shape, or give {"shape": […], "data": […]}',
      EXIT.usage,
    );
  }
  if (typeof value === 'object' && value !== null && 'data' in value) {
    const spec = value as { shape?: unknown; data: unknown };
    const data = Array.isArray(spec.data) ? (spec.data.flat(Infinity) as unknown[]) : [spec.data];
    if (spec.shape === undefined) return resolveInput(name, declared, spec.data);
    if (!Array.isArray(spec.shape) || !spec.shape.every((d) => Number.isInteger(d) && (d as number) >= 0))
      throw new CliError(
        `input ${name}: "shape" is ${JSON.stringify(spec.shape)}; expected a list of whole numbers`,
        EXIT.usage,
      );
    return { shape: spec.shape as number[], values: data };
  }
  throw new CliError(
    `input ${name} is ${JSON.stringify(value)}; expected a number, a (nested) list of numbers, or {"shape": […], "data": […]}`,
    EXIT.usage,
  );
}
