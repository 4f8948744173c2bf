/**
 * How many sender connections the sidecar serves at once (`--max-connections`).
 *
 * Why: each sender connection can hold a request, an upstream connection and
 * buffers; a sender that leaks connections (or a flood from an allowed
 * address) would otherwise grow them until the process runs out of file
 * descriptors, and every sender's requests would fail with it. A connection
 * accepted while the limit is already reached is not dropped silently: its
 * first request is answered 503 `TOO_MANY_CONNECTIONS` with `Retry-After` and
 * the connection is closed (`proxy.ts`), so the sender learns why. Connections
 * within the limit are never affected.
 */
import type { Socket } from 'node:net';

/** 1024 senders at once: far above what a sidecar's legacy senders open, far below any descriptor limit node runs with. */
export const DEFAULT_MAX_CONNECTIONS = 1024;

export class ConnectionLimit {
  /** Most connections served at once; 0: no limit. */
  readonly max: number;
  #open = 0;
  #refused = 0;
  /** The last connection accepted was over the limit. */
  #over = false;
  readonly #onReached: (open: number) => void;

  /** `onReached` is told when a connection is accepted over the limit and the one before was within it (the sidecar logs it). */
  constructor(max: number, onReached: (open: number) => void = () => undefined) {
    this.max = max;
    this.#onReached = onReached;
  }

  /**
   * Count a new connection until it closes: true when it is within the limit, false when it is over (its
   * requests are to be refused).
   */
  accept(socket: Socket): boolean {
    this.#open++;
    socket.once('close', () => this.#open--);
    const within = this.max === 0 || this.#open <= this.max;
    if (!within) {
      this.#refused++;
      if (!this.#over) this.#onReached(this.#open);
    }
    this.#over = !within;
    return within;
  }

  /** Sender connections open now (within the limit or not). */
  get open(): number {
    return this.#open;
  }

  /** Connections accepted over the limit so far. */
  get refused(): number {
    return this.#refused;
  }
}
