// A bare node:http server answering each request with its own body: the REST floor the benchmarks measure the
// agent's REST door against. Run in a process of its own; it serves until SIGTERM.
import { createServer } from 'node:http';

/**
 * Serves on the Unix socket `socketPath`, and writes `readyLine` to stdout once listening. Each request is
 * answered with `answer(body)` (by default its own body).
 */
export function serveHttpEcho(socketPath, readyLine, answer = (body) => body) {
  const server = createServer((req, res) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => {
      const body = answer(Buffer.concat(chunks));
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length });
      res.end(body);
    });
  });
  server.listen(socketPath, () => process.stdout.write(`${readyLine}\n`));
  process.once('SIGTERM', () => process.exit(0));
}
