/**
 * The largest capture upload body the device route reads for a file of at most `maxFileBytes`: base64 is 4/3 of
 * the bytes, and the JSON around it is small. One source for the route and the config's cross-checks.
 */
export function captureBodyLimitBytes(maxFileBytes: number): number {
  return Math.ceil((maxFileBytes * 4) / 3) + 64 * 1024;
}
