/** A raw-socket HTTP/1.1 client for requests no well-behaved client would send (smuggling shapes, slow or broken heads). */
import { connect, type Socket } from 'node:net';

export interface RawAnswer {
  /** Everything the server sent, latin1-decoded (byte for byte). */
  text: string;
  /** Status code of the first response line, or undefined when none arrived. */
  status: number | undefined;
  /** Lower-cased header fields of the first response (last value wins). */
  headers: Record<string, string>;
  /** Body of the first response (by Content-Length when given, else the rest). */
  body: string;
  /** How the exchange ended: the server closed, reset, or the wait ran out. */
  ended: 'closed' | 'reset' | 'timeout';
  /** Milliseconds from connect to the end. */
  elapsedMs: number;
}

export interface RawOptions {
  /** Give up (and destroy the socket) after this many ms; default 5000. */
  timeoutMs?: number;
  /** Resolve as soon as one complete response has arrived instead of waiting for the close. */
  untilResponse?: boolean;
}

/**
 * Send `bytes` (a latin1 string or a Buffer) on a fresh connection and collect
 * the answer until the server closes the connection (or one full response, with
 * `untilResponse`). Never rejects: a reset is reported in `ended`.
 */
export function rawRequest(port: number, bytes: string | Buffer, options: RawOptions = {}): Promise<RawAnswer> {
  const timeoutMs = options.timeoutMs ?? 5_000;
  return new Promise((resolve) => {
    const started = performance.now();
    const chunks: Buffer[] = [];
    let settled = false;
    const socket = connect(port, '127.0.0.1', () => socket.write(typeof bytes === 'string' ? Buffer.from(bytes, 'latin1') : bytes));
    const finish = (ended: RawAnswer['ended']): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(parseAnswer(Buffer.concat(chunks).toString('latin1'), ended, performance.now() - started));
    };
    const timer = setTimeout(() => finish('timeout'), timeoutMs);
    socket.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      if (options.untilResponse && completeResponse(Buffer.concat(chunks).toString('latin1'))) finish('closed');
    });
    socket.on('end', () => finish('closed'));
    socket.on('close', () => finish('closed'));
    socket.on('error', (err: NodeJS.ErrnoException) => finish(err.code === 'ECONNRESET' ? 'reset' : 'closed'));
  });
}

/**
 * Open a connection and send `bytes`, leaving it open: the caller decides what
 * comes next (more bytes, a destroy). `closed` resolves when the server ends it.
 */
export function rawOpen(port: number, bytes: string | Buffer): Promise<{ socket: Socket; received(): string; closed: Promise<'closed' | 'reset'> }> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const socket = connect(port, '127.0.0.1');
    const closed = new Promise<'closed' | 'reset'>((done) => {
      let how: 'closed' | 'reset' = 'closed';
      socket.on('error', (err: NodeJS.ErrnoException) => {
        if (err.code === 'ECONNRESET') how = 'reset';
      });
      socket.on('close', () => done(how));
    });
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.once('error', reject);
    socket.once('connect', () => {
      socket.off('error', reject);
      socket.write(typeof bytes === 'string' ? Buffer.from(bytes, 'latin1') : bytes, () =>
        resolve({ socket, received: () => Buffer.concat(chunks).toString('latin1'), closed }),
      );
    });
  });
}

/** Split a raw answer into the first response's status, headers and body. */
export function parseAnswer(text: string, ended: RawAnswer['ended'], elapsedMs: number): RawAnswer {
  const headEnd = text.indexOf('\r\n\r\n');
  const head = headEnd === -1 ? text : text.slice(0, headEnd);
  const [statusLine = '', ...fields] = head.split('\r\n');
  const match = /^HTTP\/1\.[01] (\d{3})/.exec(statusLine);
  const headers: Record<string, string> = {};
  for (const field of fields) {
    const colon = field.indexOf(':');
    if (colon > 0) headers[field.slice(0, colon).trim().toLowerCase()] = field.slice(colon + 1).trim();
  }
  let body = headEnd === -1 ? '' : text.slice(headEnd + 4);
  const length = headers['content-length'];
  if (length !== undefined && /^\d+$/.test(length)) body = body.slice(0, Number(length));
  return { text, status: match ? Number(match[1]) : undefined, headers, body, ended, elapsedMs };
}

/** True once `text` holds at least one complete response with a Content-Length body. */
function completeResponse(text: string): boolean {
  const headEnd = text.indexOf('\r\n\r\n');
  if (headEnd === -1) return false;
  const length = /\r\ncontent-length: *(\d+)/i.exec(text.slice(0, headEnd))?.[1];
  return length !== undefined && text.length - headEnd - 4 >= Number(length);
}
