/**
 * How many sender connections the sidecar serves at once (`--max-connections`).
 *
 * Why: each sender connection can hold a request, an upstream connection and
 * buffers; a sender that leaks connections (or a flood from an allowed
 * address) would otherwise grow them without bound, and with them the
 * upstream connections and memory every sender shares. A connection accepted
 * while the limit is already reached is not dropped silently: its first
 * request is answered 503 `TOO_MANY_CONNECTIONS` with `Retry-After` and the
 * connection is closed (`proxy.ts`), so the sender learns why. Connections
 * within the limit are never affected, and only they take places: a refused
 * one lingering until it is answered does not keep a new sender out.
 */
import type { Socket } from 'node:net';

export class ConnectionLimit {
  /** Most connections served at once; 0: no limit. */
  readonly max: number;
  /** Connections within the limit, open now. */
  #served = 0;
  /** Connections accepted beyond the limit, open now. */
  #over = 0;
  /** Connections that gave their place back (`release`) and are still open. */
  #leaving = 0;
  /** Served connections still holding their place. */
  readonly #holding = new WeakSet<Socket>();
  #refused = 0;
  readonly #onRefused: (open: number) => void;

  /** `onRefused` is told of each connection accepted beyond the limit, with the number open (the sidecar logs it, rate-limited). */
  constructor(max: number, onRefused: (open: number) => void = () => undefined) {
    this.max = max;
    this.#onRefused = onRefused;
  }

  /**
   * Count a new connection until it closes: true when it is within the limit, false when it is beyond it
   * (its requests are to be refused).
   */
  accept(socket: Socket): boolean {
    if (this.max === 0 || this.#served < this.max) {
      this.#served++;
      this.#holding.add(socket);
      socket.once('close', () => {
        if (this.#holding.delete(socket)) this.#served--;
        else this.#leaving--;
      });
      return true;
    }
    this.#over++;
    this.#refused++;
    socket.once('close', () => this.#over--);
    this.#onRefused(this.open);
    return false;
  }

  /**
   * A served connection that will take no more requests (it closes after its answer, and only reads what its
   * sender still sends until then) gives its place to a new one; it still counts as open.
   */
  release(socket: Socket): void {
    if (!this.#holding.delete(socket)) return; // beyond the limit, or released already
    this.#served--;
    this.#leaving++;
  }

  /** Sender connections open now (within the limit or not). */
  get open(): number {
    return this.#served + this.#over + this.#leaving;
  }

  /** Connections accepted beyond the limit so far. */
  get refused(): number {
    return this.#refused;
  }
}
