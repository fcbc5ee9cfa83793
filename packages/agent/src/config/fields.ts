import { z } from 'zod';
import { MAX_MODEL_NAME_LENGTH, MODEL_NAME_PATTERN } from '@edgefleet/core';
import { DynamicBatchingRuleSchema, type DynamicBatchingRule } from './batching-rules.js';
import { AutoCaptureRuleSchema, type AutoCaptureRule } from './capture-rules.js';
import { EXECUTION_PROVIDER_NAMES, type ExecutionProviderConfig } from '../inference/session-options.js';

/**
 * The kinds of value a config key holds, each with its lenient reading (real configs write `"30"` for 30,
 * `"true"` for true, `""` for "not set") and the zod schema the read value must then satisfy.
 */
export interface FieldKind<T = unknown> {
  /** What the key takes, for error messages ("expected …"). */
  expected: string;
  /** Lenient reading; `undefined` means "unset". Values it does not understand are passed on for zod to refuse. */
  read: (value: unknown) => unknown;
  schema: z.ZodType<T>;
}

/** null, "" and whitespace-only strings mean "unset"; other strings are trimmed. */
function unset(value: unknown): unknown {
  if (value === null) return undefined;
  if (typeof value === 'string') {
    const trimmed = value.trim();
    return trimmed === '' ? undefined : trimmed;
  }
  return value;
}

export function text(max = 1024): FieldKind<string> {
  return {
    expected: `a string of at most ${max} characters`,
    read: (v) => {
      const value = unset(v);
      return typeof value === 'number' && Number.isFinite(value) ? String(value) : value;
    },
    schema: z.string().max(max),
  };
}

/** A string that must match a pattern (described in `expected`). */
export function matching(pattern: RegExp, expected: string): FieldKind<string> {
  return {
    expected,
    read: unset,
    schema: z.string().regex(pattern),
  };
}

export function path(): FieldKind<string> {
  return {
    expected: 'a file-system path (a string)',
    read: unset,
    schema: z
      .string()
      .max(4096)
      .refine((p) => !p.includes('\0')),
  };
}

/** A socket path, or `false` / "none" / "off" for no listener (null). */
export function socketPathOrNone(): FieldKind<string | null> {
  return {
    expected: 'a socket path, or false / "none" for no listener',
    read: (v) => {
      const value = unset(v);
      if (value === false) return null;
      if (typeof value === 'string' && ['none', 'off', 'false', 'disabled'].includes(value.toLowerCase()))
        return null;
      return value;
    },
    schema: z
      .string()
      .max(4096)
      .refine((p) => !p.includes('\0'))
      .nullable(),
  };
}

export function integer(min: number, max: number, example: number): FieldKind<number> {
  return {
    expected: `a whole number from ${min} to ${max} (a JSON number or a string such as "${example}")`,
    read: (v) => {
      const value = unset(v);
      return typeof value === 'string' && /^[+-]?\d{1,15}$/.test(value) ? Number(value) : value;
    },
    schema: z.number().int().min(min).max(max),
  };
}

/** Units of byteSize: SI (kB = 1000) and IEC (KiB = 1024); a bare K, M, G, T is binary, as `ls -h` and systemd read it. */
const BYTE_UNITS = new Map<string, number>([
  ['b', 1],
  ['k', 1024],
  ['kb', 1000],
  ['kib', 1024],
  ['m', 1024 ** 2],
  ['mb', 1000 ** 2],
  ['mib', 1024 ** 2],
  ['g', 1024 ** 3],
  ['gb', 1000 ** 3],
  ['gib', 1024 ** 3],
  ['t', 1024 ** 4],
  ['tb', 1000 ** 4],
  ['tib', 1024 ** 4],
  ['p', 1024 ** 5],
  ['pb', 1000 ** 5],
  ['pib', 1024 ** 5],
]);

/** 1048576 → "1 MiB": the largest binary unit that divides the size, for messages. */
function binarySize(bytes: number): string {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let unit = 0;
  // 0 is a multiple of every unit: without the first test it would read "0 PiB".
  while (bytes !== 0 && unit < units.length - 1 && bytes % 1024 ** (unit + 1) === 0) unit++;
  return `${bytes / 1024 ** unit} ${units[unit]}`;
}

/** A size in bytes: a whole number, or a string such as "512MiB", "1.5 GB", "2G" (whole bytes once scaled). */
export function byteSize(min: number, max: number, example: string): FieldKind<number> {
  return {
    expected: `a size in bytes from ${binarySize(min)} to ${binarySize(max)}: a whole number, or a string with a unit such as "${example}" (kB, MB, GB = powers of 1000; KiB, MiB, GiB or K, M, G = powers of 1024)`,
    read: (v) => {
      const value = unset(v);
      if (typeof value !== 'string') return value;
      const match = /^(\d{1,16}(?:\.\d{1,6})?)\s*([a-z]{0,3})$/i.exec(value);
      const scale = match ? (match[2] === '' ? 1 : BYTE_UNITS.get(match[2]!.toLowerCase())) : undefined;
      if (!match || scale === undefined) return value; // passed on as given, for zod to refuse
      const bytes = Number(match[1]) * scale;
      // "0.3kB" is 300 bytes, not 300.00000000000006; a true fraction of a byte stays one (and is refused).
      return Math.abs(bytes - Math.round(bytes)) < 1e-6 ? Math.round(bytes) : bytes;
    },
    schema: z.number().int().min(min).max(max),
  };
}

/** A whole number that is 0 (off) or from `min` to `max`. */
export function offOrWithin(min: number, max: number): z.ZodType<number> {
  return z
    .number()
    .int()
    .refine((value) => value === 0 || (value >= min && value <= max));
}

/** 0 (off), or a size from `min` to `max` read as byteSize reads one. */
export function byteSizeOrOff(min: number, max: number, example: string): FieldKind<number> {
  const size = byteSize(min, max, example);
  return { expected: `0 (off), or ${size.expected}`, read: size.read, schema: offOrWithin(min, max) };
}

const TRUE_WORDS = new Set(['true', 'yes', 'on', '1']);
const FALSE_WORDS = new Set(['false', 'no', 'off', '0']);

export function flag(): FieldKind<boolean> {
  return {
    expected: 'true or false (a JSON boolean, or "true"/"false", "1"/"0", "yes"/"no")',
    read: (v) => {
      const value = unset(v);
      if (typeof value === 'string') {
        const word = value.toLowerCase();
        if (TRUE_WORDS.has(word)) return true;
        if (FALSE_WORDS.has(word)) return false;
      }
      if (value === 1) return true;
      if (value === 0) return false;
      return value;
    },
    schema: z.boolean(),
  };
}

/** One of fixed words, matched case-insensitively and returned as spelled here. */
export function choice<const T extends readonly [string, ...string[]]>(values: T): FieldKind<T[number]> {
  return {
    expected: `one of ${values.join(', ')}`,
    read: (v) => {
      const value = unset(v);
      if (typeof value !== 'string') return value;
      return values.find((c) => c.toLowerCase() === value.toLowerCase()) ?? value;
    },
    schema: z.enum(values) as unknown as z.ZodType<T[number]>,
  };
}

export function httpUrl(): FieldKind<string> {
  return {
    expected: 'an http:// or https:// URL, e.g. "https://edgefleet.example.com"',
    read: unset,
    schema: z
      .string()
      .max(2048)
      .refine((u) => {
        if (!URL.canParse(u)) return false;
        const protocol = new URL(u).protocol;
        return protocol === 'https:' || protocol === 'http:';
      }),
  };
}

/** An AWS-style endpoint: a URL or a bare host name (AWS printed credential endpoints without a scheme). */
export function endpoint(): FieldKind<string> {
  return {
    expected: 'a host name or an https:// URL',
    read: unset,
    schema: z
      .string()
      .max(2048)
      .refine((e) => URL.canParse(e.includes('://') ? e : `https://${e}`)),
  };
}

/** File permission bits written in octal like chmod: "0660", "660", "0o660", or the JSON number 660. */
export function fileMode(): FieldKind<number> {
  return {
    expected: 'permission bits in octal, like chmod: "0660", "0o660" or 660',
    read: (v) => {
      const value = unset(v);
      if (typeof value === 'string') {
        const match = /^(?:0o|0)?([0-7]{3,4})$/i.exec(value);
        return match ? Number.parseInt(match[1]!, 8) : value;
      }
      if (typeof value === 'number' && Number.isInteger(value) && /^[0-7]{3,4}$/.test(String(value))) {
        return Number.parseInt(String(value), 8);
      }
      return value === undefined ? undefined : Number.NaN;
    },
    schema: z.number().int().min(0).max(0o7777),
  };
}

// Port 0: any free port (the "listening" log line says which); tests use it.
const HostPortSchema = z.object({ host: z.string().min(1), port: z.number().int().min(0).max(65535) });

/** A TCP listen address: "host:port", "[::1]:port", a bare port, or a JSON number; the host defaults to 127.0.0.1. */
export function listenAddress(): FieldKind<{ host: string; port: number }> {
  return {
    expected: 'a TCP address "host:port" or a port number (the host defaults to 127.0.0.1)',
    read: (v) => {
      const value = unset(v);
      if (typeof value === 'number') return { host: '127.0.0.1', port: value };
      if (typeof value !== 'string') return value;
      const portOnly = /^\d{1,5}$/.exec(value);
      if (portOnly) return { host: '127.0.0.1', port: Number(value) };
      const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\s[\]]+)):(\d{1,5})$/.exec(value);
      return match ? { host: match[1] ?? match[2], port: Number(match[3]) } : value;
    },
    schema: HostPortSchema,
  };
}

/** Execution providers: an array of names, or one comma-separated string; `name:deviceId` picks a device. */
export function executionProviders(): FieldKind<ExecutionProviderConfig[]> {
  return {
    expected: `a list of execution providers from ${EXECUTION_PROVIDER_NAMES.join(', ')} (an array, or "tensorrt,cuda,cpu"; "cuda:1" picks device 1)`,
    read: (v) => {
      const value = unset(v);
      const items =
        typeof value === 'string'
          ? value.split(',')
          : Array.isArray(value)
            ? (value as unknown[])
            : undefined;
      if (!items) return value;
      const eps: unknown[] = [];
      for (const item of items) {
        if (typeof item !== 'string') return value;
        const match = /^\s*([a-zA-Z]+)\s*(?::\s*(\d{1,3}))?\s*$/.exec(item);
        if (!match) return value;
        eps.push({
          name: match[1]!.toLowerCase(),
          ...(match[2] !== undefined && { deviceId: Number(match[2]) }),
        });
      }
      return eps;
    },
    schema: z
      .array(
        z.object({ name: z.enum(EXECUTION_PROVIDER_NAMES), deviceId: z.number().int().min(0).optional() }),
      )
      .min(1)
      .max(EXECUTION_PROVIDER_NAMES.length),
  };
}

const PreloadModelSchema = z.strictObject({
  /** The extracted package folder, as LoadModel's url: absolute, or relative to the agent's working directory. */
  url: z.string().min(1).max(4096),
  /** The name it is served under (LoadModel's handle). */
  name: z.string().max(MAX_MODEL_NAME_LENGTH).regex(MODEL_NAME_PATTERN),
});

/** Models to load at start-up: a list of {"url": "<package folder>", "name": "<model name>"}, names distinct. */
export function modelList(): FieldKind<Array<z.infer<typeof PreloadModelSchema>>> {
  return {
    expected:
      'a list of {"url": "<extracted package folder>", "name": "<model name: letters and digits joined by hyphens>"}, each name once',
    read: unset,
    schema: z
      .array(PreloadModelSchema)
      .max(1024)
      .refine((models) => new Set(models.map((m) => m.name)).size === models.length),
  };
}

/**
 * Reads a rule object as the config's own values are read: its `numbers` written as strings that match `pattern`
 * ("0.01", "8") as numbers, its `names` trimmed. Anything else is passed on for the schema to refuse.
 */
function ruleReader(numbers: readonly string[], pattern: RegExp, names: readonly string[]) {
  return (rule: unknown): unknown => {
    if (typeof rule !== 'object' || rule === null || Array.isArray(rule)) return rule;
    const copy: Record<string, unknown> = { ...(rule as Record<string, unknown>) };
    for (const key of numbers) {
      const value = copy[key];
      if (typeof value === 'string' && pattern.test(value)) copy[key] = Number(value);
    }
    for (const key of names) {
      const value = copy[key];
      if (typeof value === 'string') copy[key] = value.trim();
    }
    return copy;
  };
}

const readRule = ruleReader(['sampleRate', 'topScoreBelow'], /^\s*[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?\s*$/i, [
  'model',
  'output',
]);

/**
 * Automatic capture rules (AutoCaptureRuleSchema): a list of rule objects, one object for a single rule, or either
 * as a JSON string (configs written by tools that quote every value). Unknown rule keys are refused, so a
 * misspelt `samplerate` is not silently dropped; `model` must be `*` or a valid model name.
 */
export function autoCaptureRules(): FieldKind<AutoCaptureRule[]> {
  return {
    expected:
      'a list of automatic capture rules such as [{"model": "resnet", "sampleRate": 0.01}, {"model": "*", "topScoreBelow": 0.6, "output": "probabilities"}]: model is "*" or a model name, each rule has sampleRate (0 to 1), topScoreBelow (a number), or both',
    read: (v) => readRuleList(v, readRule),
    schema: z
      .array(
        AutoCaptureRuleSchema.strict().refine(
          (rule) => rule.model === '*' || MODEL_NAME_PATTERN.test(rule.model),
          {
            message: 'expected "*" or a model name (letters and digits joined by hyphens)',
            path: ['model'],
          },
        ),
      )
      .max(1024),
  };
}

/** A list of rule objects, one object for a single rule, or either as a JSON string; anything else passed on. */
function readRuleList(v: unknown, readOne: (rule: unknown) => unknown): unknown {
  let value = unset(v);
  if (typeof value === 'string' && /^[[{]/.test(value)) {
    try {
      value = JSON.parse(value) as unknown;
    } catch {
      return value;
    }
  }
  if (typeof value === 'object' && value !== null && !Array.isArray(value)) value = [value];
  return Array.isArray(value) ? value.map(readOne) : value;
}

const readBatchingRule = ruleReader(['maxBatchSize', 'instances'], /^\s*\d{1,15}\s*$/, [
  'model',
  'dimension',
]);

/**
 * Dynamic batching rules (DynamicBatchingRuleSchema): a list, one rule without the list, or either as a JSON
 * string. Each model at most once; unknown rule keys are refused, so a misspelt `maxbatchsize` is not dropped.
 */
export function dynamicBatchingRules(): FieldKind<DynamicBatchingRule[]> {
  return {
    expected:
      'a list of dynamic batching rules such as [{"model": "silero-vad", "maxBatchSize": 8, "dimension": "batch", "instances": 1}]: model is one model name (no "*"), maxBatchSize a whole number from 2 to 1024, dimension (optional) the symbolic batch dimension the model names, instances (optional) its sessions from 1 to 64, each model at most once',
    read: (v) => readRuleList(v, readBatchingRule),
    schema: z
      .array(DynamicBatchingRuleSchema)
      .max(1024)
      .superRefine((rules, ctx) => {
        const first = new Map<string, number>();
        rules.forEach((rule, i) => {
          const earlier = first.get(rule.model);
          if (earlier === undefined) first.set(rule.model, i);
          else
            ctx.addIssue({
              code: 'custom',
              path: [i, 'model'],
              message: `${JSON.stringify(rule.model)} has a rule already (item ${earlier + 1}); expected each model at most once`,
            });
        });
      }),
  };
}
