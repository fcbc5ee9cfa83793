/**
 * ONNX stores large tensors outside the model file when `data_location` is EXTERNAL; `external_data["location"]`
 * is then a path relative to the model's directory (onnx.proto). Those files travel with the model in a
 * package, so a location must stay inside the package: relative, no `..`, portable separators.
 */

/** Why a location is unsafe, or undefined when it is a safe relative path. */
export function unsafeLocationReason(location: string): string | undefined {
  if (location.length === 0) return 'it is empty';
  if (location.includes('\0')) return 'it contains a NUL character';
  if (location.includes('\\')) return 'it contains a backslash (ONNX locations are POSIX paths with "/")';
  if (location.startsWith('/')) return 'it is an absolute path';
  if (/^[A-Za-z]:/.test(location)) return 'it starts with a drive letter';
  if (location.split('/').includes('..')) return 'it contains a ".." segment that leaves the model directory';
  if (normalizeLocation(location).length === 0) return 'it names the model directory itself, not a file';
  return undefined;
}

/** A safe location in canonical form: `./a//b.bin` → `a/b.bin`, so each file is listed once. */
export function normalizeLocation(location: string): string {
  return location
    .split('/')
    .filter((segment) => segment !== '' && segment !== '.')
    .join('/');
}
