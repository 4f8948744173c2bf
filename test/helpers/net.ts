/** Small networking utilities for test servers: listen on 127.0.0.1, track sockets, close for real. */
import { createHash, type Hash } from 'node:crypto';
import { createServer, type Server, type Socket } from 'node:net';
import { Transform, type TransformCallback } from 'node:stream';

export const LOOPBACK = '127.0.0.1';

/** Listen on `host:port` (default 127.0.0.1, an ephemeral port) and resolve the bound port. */
export function listen(server: Server, port = 0, host = LOOPBACK): Promise<number> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error): void => reject(err);
    server.once('error', onError);
    server.listen(port, host, () => {
      server.off('error', onError);
      const address = server.address();
      if (address === null || typeof address === 'string') {
        reject(new Error(`unexpected server address ${String(address)}`));
        return;
      }
      resolve(address.port);
    });
  });
}

/**
 * Remembers every TCP connection a server accepts, so that `close` can end
 * keep-alive and half-finished (TLS handshake) connections instead of waiting.
 */
export class SocketTracker {
  readonly #sockets = new Set<Socket>();

  constructor(server: Server) {
    server.on('connection', (socket: Socket) => {
      this.#sockets.add(socket);
      socket.once('close', () => this.#sockets.delete(socket));
    });
  }

  get size(): number {
    return this.#sockets.size;
  }

  destroyAll(): void {
    for (const socket of this.#sockets) socket.destroy();
    this.#sockets.clear();
  }
}

/** Stop listening and destroy every open connection; resolves once the server is closed. */
/** A loopback port nothing listens on (just given up by a listener of its own): connections to it are refused. */
export async function closedPort(): Promise<number> {
  const server = createServer();
  const port = await listen(server);
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

export function closeServer(server: Server, sockets: SocketTracker): Promise<void> {
  return new Promise((resolve, reject) => {
    if (!server.listening) {
      sockets.destroyAll();
      resolve();
      return;
    }
    server.close((err) => (err ? reject(err) : resolve()));
    sockets.destroyAll();
  });
}

export function sha256Hex(data: string | Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/** A pass-through stream that counts and hashes (SHA-256) what flows through it, without buffering. */
export class DigestStream extends Transform {
  readonly #hash: Hash = createHash('sha256');
  #length = 0;
  #digest: string | undefined;

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.#hash.update(chunk);
    this.#length += chunk.length;
    callback(null, chunk);
  }

  override _flush(callback: TransformCallback): void {
    this.#digest = this.#hash.digest('hex');
    callback();
  }

  /** Bytes seen so far. */
  get length(): number {
    return this.#length;
  }

  /** Hex SHA-256 of everything seen; `undefined` until the input has ended. */
  get sha256(): string | undefined {
    return this.#digest;
  }
}

/**
 * A point a server handler waits at, to hold a request in flight: `arrived()` marks that it got there
 * (`arrival` resolves), and it goes on once `release()` is called (`released` resolves).
 */
export function gate(): { arrival: Promise<void>; arrived: () => void; released: Promise<void>; release: () => void } {
  let arrived!: () => void;
  const arrival = new Promise<void>((resolve) => (arrived = resolve));
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  return { arrival, arrived, released, release };
}
