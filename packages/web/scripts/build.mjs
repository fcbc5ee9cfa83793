// Builds the console: OpenAPI document → typed client schema (openapi-typescript) → type check → esbuild bundle
// with content-hashed names → index.html → brotli and gzip copies the server sends as they are.
import { execFileSync } from 'node:child_process';
import { mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { brotliCompressSync, constants, gzipSync } from 'node:zlib';

const webDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const distDir = path.join(webDir, 'dist');

// Up to date when nothing it is built from changed since dist/index.html was written: its sources, the built
// server and core (their routes and schemas make the API document) and the lockfile. `npm start`, `npm test`
// and `npm run bench` build first; this skips ~10 s of work there. `--force` builds anyway.
async function newestChange(file) {
  const info = await stat(file).catch(() => undefined);
  if (!info?.isDirectory()) return info?.mtimeMs ?? 0;
  const entries = await readdir(file);
  return Math.max(info.mtimeMs, ...(await Promise.all(entries.map((e) => newestChange(path.join(file, e))))));
}
const builtAt = (await stat(path.join(distDir, 'index.html')).catch(() => undefined))?.mtimeMs;
const generated = (await newestChange(path.join(webDir, 'generated', 'api-schema.d.ts'))) > 0;
if (builtAt !== undefined && generated && !process.argv.includes('--force')) {
  const inputs = ['src', 'scripts', 'tsconfig.json', 'package.json', '../server/dist', '../core/dist'];
  const changed = await Promise.all(
    [...inputs.map((p) => path.join(webDir, p)), path.join(webDir, '../../package-lock.json')].map(
      newestChange,
    ),
  );
  if (Math.max(...changed) < builtAt) process.exit(0);
}

// Loaded only for a build: the server's code, the bundler and the generator take a second to load.
const esbuild = await import('esbuild');
const { default: openapiTS, astToString } = await import('openapi-typescript');
const { writeOpenApi } = await import('./openapi.mjs');
const openapiFile = await writeOpenApi();
const ast = await openapiTS(JSON.parse(await readFile(openapiFile, 'utf8')));
await writeFile(
  path.join(webDir, 'generated', 'api-schema.d.ts'),
  `// Generated from the server's OpenAPI document by scripts/build.mjs; do not edit.\n${astToString(ast)}`,
);

execFileSync(process.execPath, [path.join(webDir, '../../node_modules/typescript/bin/tsc'), '-p', webDir], {
  stdio: 'inherit',
});

await rm(distDir, { recursive: true, force: true });
const result = await esbuild.build({
  entryPoints: { app: path.join(webDir, 'src/main.tsx') },
  bundle: true,
  minify: true,
  format: 'esm',
  target: ['chrome110', 'firefox110', 'safari16'],
  jsx: 'automatic',
  jsxImportSource: 'preact',
  outdir: path.join(distDir, 'assets'),
  entryNames: '[name]-[hash]',
  metafile: true,
  legalComments: 'none',
  logLevel: 'warning',
});
const outputs = Object.keys(result.metafile.outputs).map((file) => path.basename(file));
const script = outputs.find((name) => name.endsWith('.js'));
const style = outputs.find((name) => name.endsWith('.css'));
if (script === undefined || style === undefined) throw new Error(`esbuild produced ${outputs.join(', ')}`);
const html = await readFile(path.join(webDir, 'src/index.html'), 'utf8');
await writeFile(
  path.join(distDir, 'index.html'),
  html.replace('%SCRIPT%', `/assets/${script}`).replace('%STYLE%', `/assets/${style}`),
);

async function compressAll(dir) {
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const file = path.join(dir, entry.name);
    if (entry.isDirectory()) {
      await compressAll(file);
      continue;
    }
    const bytes = await readFile(file);
    await writeFile(
      `${file}.br`,
      brotliCompressSync(bytes, { params: { [constants.BROTLI_PARAM_QUALITY]: 11 } }),
    );
    await writeFile(`${file}.gz`, gzipSync(bytes, { level: 9 }));
  }
}
await compressAll(distDir);
await mkdir(distDir, { recursive: true });
