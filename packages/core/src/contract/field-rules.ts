/**
 * Field rules both ends of the device↔server link apply, from the SageMaker Edge Manager API
 * (/work/shared/spec/sagemaker-cloud-api.md and sme-agent-api.md): one definition, so the agent never sends what
 * the server refuses and the limits cannot drift apart.
 */
import { z } from 'zod';

/** Model names: letters and digits, optionally joined by hyphens (no `_` or `.`), the agent API's rule. */
export const MODEL_NAME_PATTERN = /^[a-zA-Z0-9](-*[a-zA-Z0-9])*$/;
/** Longest model name a device reports or loads (Edge Manager's ModelName, max 255). */
export const MAX_MODEL_NAME_LENGTH = 255;
/** Longest model name the control plane stores and packages (an EntityName, max 63). */
export const MAX_PACKAGED_MODEL_NAME_LENGTH = 63;

/** Versions: agent versions and the model versions devices report (Version, max 64). */
export const VERSION_PATTERN = /^[a-zA-Z0-9 _.]+$/;
export const MAX_VERSION_LENGTH = 64;
/** Model versions the control plane stores and packages (EdgeVersion, max 30). */
export const MAX_PACKAGED_MODEL_VERSION_LENGTH = 30;

/** Devices one registration call takes (RegisterDevices' Devices, max 100): the CLI sends larger lists in batches. */
export const MAX_DEVICES_PER_REGISTRATION = 100;

/** A version also names a file and a path segment (`<name>-<version>.tar.gz`, `…/versions/<version>`). */
export const isPathSafeVersion = (version: string): boolean => version !== '.' && version !== '..';
export const PATH_SAFE_VERSION_MESSAGE = 'a model version cannot be "." or ".."';

/** Data-plane DeviceName / DeviceFleetName (which, unlike the control plane's, allow `_`). */
export const DATA_PLANE_NAME_PATTERN = /^[a-zA-Z0-9](-*_*[a-zA-Z0-9])*$/;
/** EntityName: deployments, model handles, fleets, devices and jobs in the control plane. */
export const ENTITY_NAME_PATTERN = /^[a-zA-Z0-9](-*[a-zA-Z0-9])*$/;
/** Longest SageMaker EntityName (fleet, device, job names). */
export const MAX_ENTITY_NAME_LENGTH = 63;
export const METRIC_NAME_PATTERN = /^[a-zA-Z0-9](-*[a-zA-Z0-9])*$/;
export const DIMENSION_PATTERN = /^[a-zA-Z0-9](-*[a-zA-Z0-9/])*$/;

/** Tensors: most dimensions, and most elements, any tensor the agent accepts or a package declares may have. */
export const MAX_TENSOR_RANK = 32;
export const MAX_TENSOR_ELEMENTS = 2 ** 40;

/** Most models one heartbeat lists, and most metrics in one list. */
export const MAX_MODELS_PER_HEARTBEAT = 256;
export const MAX_METRICS_PER_LIST = 500;
/**
 * Most metrics in one heartbeat, AgentMetrics and every model's ModelMetrics together: the lists' own bounds
 * allow 128 500. EdgeFleet's agent sends at most 8 + 6 per model (1 544 with 256 models).
 */
export const MAX_METRICS_PER_HEARTBEAT = 2000;
/** Free-text fields (status messages, reasons). */
export const MAX_MESSAGE_LENGTH = 4096;

/** True when the string contains no NUL: PostgreSQL cannot store U+0000 in text, so no input may carry one. */
export const hasNoNul = (value: string): boolean => !value.includes('\u0000');
export const NO_NUL_MESSAGE = 'expected no NUL (U+0000) character';

/** Free text of at most `max` characters, without NUL. */
export const textSchema = (max: number) => z.string().max(max).refine(hasNoNul, NO_NUL_MESSAGE);

export const modelNameSchema = z
  .string()
  .min(1)
  .max(MAX_MODEL_NAME_LENGTH)
  .regex(MODEL_NAME_PATTERN, 'expected letters and digits joined by - (no _ or .)');

export const versionSchema = z
  .string()
  .min(1)
  .max(MAX_VERSION_LENGTH)
  .regex(VERSION_PATTERN, 'expected letters, digits, spaces, _ and .');

export const dataPlaneNameSchema = z
  .string()
  .max(63)
  .regex(DATA_PLANE_NAME_PATTERN, 'expected letters and digits joined by - or _ (max 63)');

export const entityNameSchema = z
  .string()
  .max(MAX_ENTITY_NAME_LENGTH)
  .regex(ENTITY_NAME_PATTERN, 'expected letters and digits joined by -');
