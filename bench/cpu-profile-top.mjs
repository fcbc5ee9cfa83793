// The top frames of a V8 CPU profile (`node --cpu-prof`) by self time, as a Markdown table: what the benchmark
// doc shows before and after a change (see docs/benchmarks.md).
//
//   node bench/cpu-profile-top.mjs <file.cpuprofile> [--top 12]
import { readFileSync } from 'node:fs';

const file = process.argv[2];
if (!file) {
  console.error('usage: node bench/cpu-profile-top.mjs <file.cpuprofile> [--top N]');
  process.exit(2);
}
const topIndex = process.argv.indexOf('--top');
const top = topIndex > 0 ? Number(process.argv[topIndex + 1]) : 12;
const profile = JSON.parse(readFileSync(file, 'utf8'));
const byId = new Map(profile.nodes.map((node) => [node.id, node]));
// Each sample's time is the gap to the next one; it counts for the sampled frame only (self time).
const self = new Map();
let total = 0;
profile.samples.forEach((id, i) => {
  const micros = profile.timeDeltas[i + 1] ?? 0;
  const { callFrame } = byId.get(id);
  const where = callFrame.url
    ? `${callFrame.url.split('/').slice(-2).join('/')}:${callFrame.lineNumber + 1}`
    : '';
  const key = `${callFrame.functionName || '(anonymous)'} ${where}`.trim();
  self.set(key, (self.get(key) ?? 0) + micros);
  total += micros;
});
const idle = self.get('(idle)') ?? 0;
console.log(`${file}: ${(total / 1e6).toFixed(2)} s sampled, ${((100 * idle) / total).toFixed(1)} % idle\n`);
console.log('| frame (self time) | ms | % of busy |\n|---|---|---|');
for (const [key, micros] of [...self]
  .filter(([k]) => k !== '(idle)')
  .sort((a, b) => b[1] - a[1])
  .slice(0, top))
  console.log(`| ${key} | ${(micros / 1000).toFixed(0)} | ${((100 * micros) / (total - idle)).toFixed(1)} |`);
