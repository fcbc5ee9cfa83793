import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import Negotiator from 'negotiator';
import { DomainError } from '../errors/index.js';

/**
 * The console's Content-Security-Policy: scripts, styles and connections from this origin only, no inline
 * script, no framing. A device name holding markup is rendered as text by the UI; this is the second line.
 */
export const CONSOLE_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "font-src 'self'",
  "connect-src 'self'",
  "manifest-src 'self'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ');

const CONTENT_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.json': 'application/json',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
};

interface StaticFile {
  contentType: string;
  /** Content-hashed names (assets/) never change; index.html must be revalidated. */
  immutable: boolean;
  identity: Buffer;
  br?: Buffer;
  gzip?: Buffer;
}

/** Where the web workspace's build lands in this repository (packages/web/dist), seen from server/dist/console. */
export function defaultConsoleDir(): string {
  return path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../web/dist');
}

async function listFiles(root: string, dir = ''): Promise<string[]> {
  const entries = await readdir(path.join(root, dir), { withFileTypes: true });
  const files: string[] = [];
  for (const entry of entries) {
    const relative = path.posix.join(dir, entry.name);
    if (entry.isDirectory()) files.push(...(await listFiles(root, relative)));
    else if (entry.isFile()) files.push(relative);
  }
  return files;
}

/** Reads the built console into memory: it is small (a few hundred KB), and it is fixed for a server's life. */
export async function loadConsoleFiles(root: string): Promise<Map<string, StaticFile>> {
  const files = new Map<string, StaticFile>();
  const names = await listFiles(root);
  for (const name of names) {
    if (name.endsWith('.br') || name.endsWith('.gz')) continue;
    const contentType = CONTENT_TYPES[path.extname(name)];
    if (contentType === undefined) continue;
    const file: StaticFile = {
      contentType,
      immutable: name.startsWith('assets/'),
      identity: await readFile(path.join(root, name)),
    };
    if (names.includes(`${name}.br`)) file.br = await readFile(path.join(root, `${name}.br`));
    if (names.includes(`${name}.gz`)) file.gzip = await readFile(path.join(root, `${name}.gz`));
    files.set(`/${name}`, file);
  }
  return files;
}

/** negotiator 1.x's `encoding`, with the server's preference among equals (its @types still describe 0.6). */
interface EncodingNegotiator {
  encoding(available: readonly string[], options: { preferred: readonly string[] }): string | undefined;
}

/**
 * The encoding to send `file` in: the client's most preferred of those we have (Accept-Encoding with its q-values,
 * so `br;q=0` refuses br), br before gzip before identity among equals. Without the header, or when the client
 * refuses everything we have, identity.
 */
function encodingFor(request: FastifyRequest, file: StaticFile): 'br' | 'gzip' | 'identity' {
  const available = [...(file.br ? ['br'] : []), ...(file.gzip ? ['gzip'] : []), 'identity'];
  const negotiator = new Negotiator(request) as unknown as EncodingNegotiator;
  const chosen = negotiator.encoding(available, { preferred: available });
  return chosen === 'br' || chosen === 'gzip' ? chosen : 'identity';
}

function send(request: FastifyRequest, reply: FastifyReply, file: StaticFile) {
  const encoding = encodingFor(request, file);
  reply
    .header('content-type', file.contentType)
    .header('cache-control', file.immutable ? 'public, max-age=31536000, immutable' : 'no-cache')
    .header('vary', 'accept-encoding')
    .header('content-security-policy', CONSOLE_CSP)
    .header('x-content-type-options', 'nosniff')
    .header('x-frame-options', 'DENY')
    .header('referrer-policy', 'no-referrer')
    .header('cross-origin-opener-policy', 'same-origin');
  // Pre-compressed at build time, so serving costs no CPU.
  if (encoding === 'br') return reply.header('content-encoding', 'br').send(file.br);
  if (encoding === 'gzip') return reply.header('content-encoding', 'gzip').send(file.gzip);
  return reply.send(file.identity);
}

/**
 * Serves the built console at / (index.html) and /assets/* from memory. Hand-written rather than
 * @fastify/static because every route here must declare its auth requirement (http/auth-hooks.ts), which
 * that plugin's routes cannot; the console is a handful of fixed files, so little is lost.
 */
export const consoleStaticRoutes: FastifyPluginAsync<{ dir: string }> = async (app, { dir }) => {
  if (!existsSync(path.join(dir, 'index.html'))) {
    app.log.warn({ dir }, 'the fleet console is not built (no index.html); run `npm run build` to serve it');
    return;
  }
  const files = await loadConsoleFiles(dir);
  const index = files.get('/index.html');
  if (index === undefined) throw new Error(`the fleet console in ${dir} has no index.html`);
  for (const url of ['/', '/index.html']) {
    app.route({
      method: ['GET', 'HEAD'],
      url,
      config: { auth: 'public' },
      schema: { hide: true },
      handler: async (request, reply) => send(request, reply, index),
    });
  }
  app.route({
    method: ['GET', 'HEAD'],
    url: '/assets/*',
    config: { auth: 'public' },
    schema: { hide: true },
    handler: async (request, reply) => {
      const file = files.get(request.url.split('?')[0] ?? '');
      if (file === undefined) {
        throw new DomainError('NotFound', `${request.url} is not a file of the console`);
      }
      return send(request, reply, file);
    },
  });
};
