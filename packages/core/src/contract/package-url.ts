/**
 * PackageUrl: where a device downloads a deployment's package, a path on the device API. It names one of the
 * server's two package routes, each segment in the one spelling the server writes (encodeURIComponent of a
 * valid name), so a URL cannot climb out of the package routes: `.`/`..` segments (also as `%2e%2e`), empty
 * segments (`//`), backslashes, encoded slashes, queries and fragments are all refused.
 */
import { z } from 'zod';
import {
  ENTITY_NAME_PATTERN,
  isPathSafeVersion,
  MAX_ENTITY_NAME_LENGTH,
  MAX_PACKAGED_MODEL_NAME_LENGTH,
  MAX_PACKAGED_MODEL_VERSION_LENGTH,
  MODEL_NAME_PATTERN,
  VERSION_PATTERN,
} from './field-rules.js';

/** A packaging job's package: `/api/v1/device/packages/<job>`. */
export const JOB_PACKAGE_ROUTE = '/api/v1/device/packages/';
/** An uploaded package: `/api/v1/device/model-packages/<model>/<version>`. */
export const UPLOADED_PACKAGE_ROUTE = '/api/v1/device/model-packages/';

const MAX_PACKAGE_URL_LENGTH = 1024;

export type PackageRef =
  { kind: 'job'; job: string } | { kind: 'uploaded'; modelName: string; modelVersion: string };

/** The PackageUrl of a package (what the server sends in GetDeployments). */
export function packageUrlOf(ref: PackageRef): string {
  return ref.kind === 'job'
    ? `${JOB_PACKAGE_ROUTE}${encodeURIComponent(ref.job)}`
    : `${UPLOADED_PACKAGE_ROUTE}${encodeURIComponent(ref.modelName)}/${encodeURIComponent(ref.modelVersion)}`;
}

const PACKAGE_URL_EXPECTED =
  `expected ${JOB_PACKAGE_ROUTE}<job name> or ${UPLOADED_PACKAGE_ROUTE}<model name>/<model version>, ` +
  'each segment a valid name percent-encoded as the server writes it (no ".", "..", empty segments, ' +
  'backslashes, encoded slashes, query or fragment)';

/** A segment decoded, or undefined unless it is exactly encodeURIComponent of what it decodes to. */
function decodeCanonical(segment: string): string | undefined {
  try {
    const decoded = decodeURIComponent(segment);
    return encodeURIComponent(decoded) === segment ? decoded : undefined;
  } catch {
    return undefined;
  }
}

const isJobName = (s: string) => s.length <= MAX_ENTITY_NAME_LENGTH && ENTITY_NAME_PATTERN.test(s);
const isModelName = (s: string) => s.length <= MAX_PACKAGED_MODEL_NAME_LENGTH && MODEL_NAME_PATTERN.test(s);
const isModelVersion = (s: string) =>
  s.length <= MAX_PACKAGED_MODEL_VERSION_LENGTH && VERSION_PATTERN.test(s) && isPathSafeVersion(s);

/** What a PackageUrl names, or an error saying what was wrong and what was expected. */
export function parsePackageUrl(url: string): { ref: PackageRef } | { error: string } {
  const fail = (why: string) => ({
    error: `PackageUrl ${JSON.stringify(url)} ${why}; ${PACKAGE_URL_EXPECTED}`,
  });
  if (url.length > MAX_PACKAGE_URL_LENGTH) return fail(`is longer than ${MAX_PACKAGE_URL_LENGTH} characters`);
  const route = [JOB_PACKAGE_ROUTE, UPLOADED_PACKAGE_ROUTE].find((prefix) => url.startsWith(prefix));
  if (route === undefined) return fail("is not one of the server's package routes");
  const segments = url.slice(route.length).split('/').map(decodeCanonical);
  if (route === JOB_PACKAGE_ROUTE) {
    const [job] = segments;
    if (segments.length !== 1 || job === undefined || !isJobName(job)) return fail('does not name one job');
    return { ref: { kind: 'job', job } };
  }
  const [modelName, modelVersion] = segments;
  if (
    segments.length !== 2 ||
    modelName === undefined ||
    modelVersion === undefined ||
    !isModelName(modelName) ||
    !isModelVersion(modelVersion)
  )
    return fail('does not name one model version');
  return { ref: { kind: 'uploaded', modelName, modelVersion } };
}

export const packageUrlSchema = z.string().superRefine((url, ctx) => {
  const parsed = parsePackageUrl(url);
  if ('error' in parsed) ctx.addIssue({ code: 'custom', message: parsed.error });
});
