// Builds the console: OpenAPI document → typed client schema (openapi-typescript) → type check → esbuild bundle
// with content-hashed names → index.html → brotli and gzip copies the server sends as they are.
import { execFileSync } from 'node:child_process';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { brotliCompressSync, constants, gzipSync } from 'node:zlib';
import * as esbuild from 'esbuild';
import openapiTS, { astToString } from 'openapi-typescript';
import { writeOpenApi } from './openapi.mjs';

const webDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const distDir = path.join(webDir, 'dist');

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
