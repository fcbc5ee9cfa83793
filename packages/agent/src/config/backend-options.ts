import type { OrtSessionConfig, TensorRtOptions } from '../inference/session-options.js';
import { ConfigError } from './errors.js';

export const BACKEND_OPTIONS_KEY = 'sagemaker_edge_dlr_backend_options';

/**
 * What `sagemaker_edge_dlr_backend_options` (`KEY=VALUE; KEY=VALUE`, the original's DLR/TVM runtime flags) can
 * set in ONNX Runtime. Keys are matched case-insensitively. docs/config.md has the table.
 */
type Target =
  | { kind: 'intra' }
  | { kind: 'inter' }
  | { kind: 'optimization' }
  | { kind: 'device' }
  | { kind: 'trt'; option: keyof TensorRtOptions; type: 'bool' | 'int' | 'path' }
  | { kind: 'unsupported'; why: string };

const TARGETS: Record<string, Target> = {
  TVM_NUM_THREADS: { kind: 'intra' },
  OMP_NUM_THREADS: { kind: 'intra' },
  DLR_NUM_THREADS: { kind: 'intra' },
  ORT_INTRA_OP_NUM_THREADS: { kind: 'intra' },
  ORT_INTER_OP_NUM_THREADS: { kind: 'inter' },
  ORT_GRAPH_OPTIMIZATION_LEVEL: { kind: 'optimization' },
  DLR_DEVICE_ID: { kind: 'device' },
  ORT_DEVICE_ID: { kind: 'device' },
  TVM_TENSORRT_CACHE_DIR: { kind: 'trt', option: 'engineCachePath', type: 'path' },
  ORT_TENSORRT_CACHE_PATH: { kind: 'trt', option: 'engineCachePath', type: 'path' },
  ORT_TENSORRT_ENGINE_CACHE_PATH: { kind: 'trt', option: 'engineCachePath', type: 'path' },
  TRT_ENGINE_CACHE_PATH: { kind: 'trt', option: 'engineCachePath', type: 'path' },
  ORT_TENSORRT_ENGINE_CACHE_ENABLE: { kind: 'trt', option: 'engineCacheEnable', type: 'bool' },
  TRT_ENGINE_CACHE_ENABLE: { kind: 'trt', option: 'engineCacheEnable', type: 'bool' },
  TVM_TENSORRT_MAX_WORKSPACE_SIZE: { kind: 'trt', option: 'maxWorkspaceSize', type: 'int' },
  ORT_TENSORRT_MAX_WORKSPACE_SIZE: { kind: 'trt', option: 'maxWorkspaceSize', type: 'int' },
  TRT_MAX_WORKSPACE_SIZE: { kind: 'trt', option: 'maxWorkspaceSize', type: 'int' },
  TVM_TENSORRT_USE_FP16: { kind: 'trt', option: 'fp16Enable', type: 'bool' },
  ORT_TENSORRT_FP16_ENABLE: { kind: 'trt', option: 'fp16Enable', type: 'bool' },
  TRT_FP16_ENABLE: { kind: 'trt', option: 'fp16Enable', type: 'bool' },
  TVM_TENSORRT_USE_INT8: { kind: 'trt', option: 'int8Enable', type: 'bool' },
  ORT_TENSORRT_INT8_ENABLE: { kind: 'trt', option: 'int8Enable', type: 'bool' },
  TRT_INT8_ENABLE: { kind: 'trt', option: 'int8Enable', type: 'bool' },
  TVM_TENSORRT_CACHE_SIZE: {
    kind: 'unsupported',
    why: 'ONNX Runtime keeps one engine per subgraph and has no engine-cache size limit',
  },
  TVM_TENSORRT_CACHE_LIMIT: {
    kind: 'unsupported',
    why: 'ONNX Runtime keeps one engine per subgraph and has no engine-cache size limit',
  },
};

/** Splits `KEY=VALUE; KEY=VALUE` into entries; throws ConfigError on an entry without `=` or a key. */
export function parseBackendOptions(text: string): Array<{ key: string; value: string }> {
  const entries: Array<{ key: string; value: string }> = [];
  for (const part of text.split(';')) {
    const entry = part.trim();
    if (entry === '') continue;
    const eq = entry.indexOf('=');
    if (eq <= 0) {
      throw new ConfigError(
        BACKEND_OPTIONS_KEY,
        `${BACKEND_OPTIONS_KEY}: ${JSON.stringify(entry)} is not KEY=VALUE; expected entries like "TVM_NUM_THREADS=2; TVM_TENSORRT_CACHE_DIR=/var/cache/trt" separated by ";"`,
      );
    }
    entries.push({ key: entry.slice(0, eq).trim(), value: entry.slice(eq + 1).trim() });
  }
  return entries;
}

export interface BackendOptionsOverlay {
  intraOpNumThreads?: number;
  interOpNumThreads?: number;
  graphOptimizationLevel?: OrtSessionConfig['graphOptimizationLevel'];
  deviceId?: number;
  tensorrt: TensorRtOptions;
}

/**
 * Maps the entries onto ONNX Runtime settings. Entries with no ONNX Runtime meaning become warnings; a value
 * of the wrong kind for a key we do map is fatal (it names the key inside the option string).
 */
export function mapBackendOptions(entries: Array<{ key: string; value: string }>): {
  overlay: BackendOptionsOverlay;
  warnings: string[];
} {
  const overlay: BackendOptionsOverlay = { tensorrt: {} };
  const warnings: string[] = [];
  for (const { key, value } of entries) {
    const target = TARGETS[key.toUpperCase()];
    if (!target) {
      warnings.push(`${BACKEND_OPTIONS_KEY}: ${key} has no ONNX Runtime equivalent and is ignored`);
      continue;
    }
    const bad = (expected: string): never => {
      throw new ConfigError(
        BACKEND_OPTIONS_KEY,
        `${BACKEND_OPTIONS_KEY}: ${key}=${JSON.stringify(value)}; expected ${expected}`,
      );
    };
    switch (target.kind) {
      case 'intra':
        overlay.intraOpNumThreads = wholeNumber(value) ?? bad('a whole number of threads ≥ 0');
        break;
      case 'inter':
        overlay.interOpNumThreads = wholeNumber(value) ?? bad('a whole number of threads ≥ 0');
        break;
      case 'device':
        overlay.deviceId = wholeNumber(value) ?? bad('a device number ≥ 0');
        break;
      case 'optimization':
        overlay.graphOptimizationLevel =
          optimizationLevel(value) ?? bad('disabled, basic, extended, layout or all (or ORT_ENABLE_*)');
        break;
      case 'trt': {
        const parsed =
          target.type === 'bool'
            ? (flag(value) ?? bad('1/0 or true/false'))
            : target.type === 'int'
              ? (positiveNumber(value) ?? bad('a whole number of bytes > 0'))
              : value || bad('a folder path');
        (overlay.tensorrt as Record<string, unknown>)[target.option] = parsed;
        if (target.option === 'engineCachePath' && overlay.tensorrt.engineCacheEnable === undefined) {
          overlay.tensorrt.engineCacheEnable = true;
        }
        break;
      }
      case 'unsupported':
        warnings.push(`${BACKEND_OPTIONS_KEY}: ${key} is ignored: ${target.why}`);
        break;
    }
  }
  return { overlay, warnings };
}

function wholeNumber(text: string): number | undefined {
  return /^\d{1,6}$/.test(text) ? Number(text) : undefined;
}

function positiveNumber(text: string): number | undefined {
  if (!/^\d{1,16}$/.test(text)) return undefined;
  const n = Number(text);
  return n > 0 && Number.isSafeInteger(n) ? n : undefined;
}

function flag(text: string): boolean | undefined {
  const t = text.toLowerCase();
  if (['1', 'true', 'yes', 'on'].includes(t)) return true;
  if (['0', 'false', 'no', 'off'].includes(t)) return false;
  return undefined;
}

function optimizationLevel(text: string): OrtSessionConfig['graphOptimizationLevel'] | undefined {
  const t = text.toLowerCase();
  const names: Record<string, OrtSessionConfig['graphOptimizationLevel']> = {
    disabled: 'disabled',
    ort_disable_all: 'disabled',
    '0': 'disabled',
    basic: 'basic',
    ort_enable_basic: 'basic',
    '1': 'basic',
    extended: 'extended',
    ort_enable_extended: 'extended',
    '2': 'extended',
    layout: 'layout',
    ort_enable_layout: 'layout',
    '3': 'layout',
    all: 'all',
    ort_enable_all: 'all',
    '99': 'all',
  };
  return names[t];
}
