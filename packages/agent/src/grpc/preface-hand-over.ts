import type { Socket } from 'node:net';

/** The client connection preface: the 24-byte magic, then a SETTINGS frame (its 9-byte header at least). */
export const PREFACE_BYTES = 24 + 9;

/**
 * Holds a new connection until its first PREFACE_BYTES have arrived, then puts them back and calls `handOver`
 * (Node's HTTP/2 session reads what the socket has buffered); one that has not sent them within `timeoutMs` is
 * closed, never reaching grpc-js, and `onTimeout` is told. The bytes are not checked here: grpc-js refuses a
 * wrong preface itself.
 */
export function handOverAfterPreface(
  socket: Socket,
  timeoutMs: number,
  handOver: () => void,
  onTimeout: () => void,
): void {
  const chunks: Buffer[] = [];
  let received = 0;
  let closing: NodeJS.Immediate | undefined;
  // Timers run before the event loop reads its sockets: after a stall longer than timeoutMs (a long synchronous
  // run, a starved process), a preface that arrived in time is still unread when the timer fires. The close
  // waits for that read (setImmediate runs after it), so only a connection that really sent too little is closed.
  const timer = setTimeout(() => {
    closing = setImmediate(() => {
      socket.destroy();
      onTimeout();
    });
  }, timeoutMs);
  const ignoreError = () => undefined; // a peer that resets before its preface: nothing to report
  const stop = () => {
    clearTimeout(timer);
    if (closing !== undefined) clearImmediate(closing);
    socket.removeListener('readable', onReadable);
    socket.removeListener('close', stop);
    socket.removeListener('error', ignoreError);
  };
  const onReadable = () => {
    let chunk: Buffer | null;
    while ((chunk = socket.read() as Buffer | null) !== null) {
      chunks.push(chunk);
      received += chunk.length;
    }
    if (received < PREFACE_BYTES) return;
    stop();
    socket.unshift(Buffer.concat(chunks));
    handOver();
  };
  socket.on('readable', onReadable);
  socket.once('close', stop);
  socket.on('error', ignoreError);
}
