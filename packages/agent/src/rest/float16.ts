/**
 * IEEE 754 half precision (binary16) from and to JavaScript numbers. Node 20 has no Float16Array, and JSON
 * carries FP16 tensors as ordinary numbers, so the REST API converts them here.
 */

const HALF_MAX_MAGNITUDE_BEFORE_INFINITY = 65520; // halfway between 65504 (largest half) and 65536
const SMALLEST_NORMAL = 2 ** -14;
const SUBNORMAL_STEP = 2 ** -24;

/** Rounds to the nearest whole number, ties to even (what IEEE 754 conversion does). */
function roundHalfEven(x: number): number {
  const floor = Math.floor(x);
  const rest = x - floor;
  if (rest > 0.5) return floor + 1;
  if (rest < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

/** The binary16 bit pattern nearest to `value` (round to nearest, ties to even; overflow gives ±Infinity). */
export function toFloat16Bits(value: number): number {
  if (Number.isNaN(value)) return 0x7e00;
  const sign = value < 0 || Object.is(value, -0) ? 0x8000 : 0;
  const magnitude = Math.abs(value);
  if (magnitude >= HALF_MAX_MAGNITUDE_BEFORE_INFINITY) return sign | 0x7c00;
  if (magnitude < SMALLEST_NORMAL) {
    // Subnormal (or zero): a whole multiple of 2^-24; a result of 1024 is the smallest normal, which the
    // same bit arithmetic expresses.
    return sign | roundHalfEven(magnitude / SUBNORMAL_STEP);
  }
  let exponent = Math.floor(Math.log2(magnitude));
  // log2 can be off by one next to powers of two; settle it exactly.
  if (2 ** exponent > magnitude) exponent--;
  else if (2 ** (exponent + 1) <= magnitude) exponent++;
  // magnitude / 2^exponent is in [1, 2); dividing by a power of two and subtracting 1 are exact in a double.
  let mantissa = roundHalfEven((magnitude / 2 ** exponent - 1) * 1024);
  if (mantissa === 1024) {
    mantissa = 0;
    exponent++;
  }
  const biased = exponent + 15;
  if (biased >= 31) return sign | 0x7c00;
  return sign | (biased << 10) | mantissa;
}

/** The number a binary16 bit pattern stands for. */
export function fromFloat16Bits(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const mantissa = bits & 0x3ff;
  if (exponent === 0) return sign * mantissa * SUBNORMAL_STEP;
  if (exponent === 31) return mantissa === 0 ? sign * Infinity : NaN;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}
