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
 *
 * The limit only works below the process's open-file limit: past that, node's accept fails with EMFILE and
 * libuv closes new connections unanswered (the admin port's too, so probes fail), while the ones accepted
 * cannot connect upstream. The sidecar therefore serves no more connections at once than its descriptors
 * can carry (`connectionsWithin`), and says so at start.
 */
import { readFileSync } from 'node:fs';
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

/**
 * Descriptors kept for everything but served connections and routes: the admin port's connections (at most 64),
 * listening sockets, credential files read and watched, node's own (about 25 at idle), and connections accepted
 * beyond the limit while they are answered and closed (about 150 at once).
 */
export const FD_RESERVE = 256;

/**
 * The most sender connections served at once that `openFiles` descriptors carry, each with its answer (at least
 * 1). A served connection holds its own socket and an upstream connection, which its route's pool keeps for a
 * while once idle (30 s): connections served one after another on different routes leave one idle in each route's
 * pool. So each counts once for itself and once per route, and each route keeps its token server connection.
 */
export function connectionsWithin(openFiles: number, routes: number): number {
  return Math.max(1, Math.floor((openFiles - FD_RESERVE - routes) / (1 + routes)));
}

/**
 * The process's open-file limit: the soft RLIMIT_NOFILE, which node raises to the hard one at start. Undefined
 * where it cannot be read (no `/proc`: macOS) or is unlimited.
 */
export function openFileLimit(read: () => string = () => readFileSync('/proc/self/limits', 'latin1')): number | undefined {
  let limits: string;
  try {
    limits = read();
  } catch {
    return undefined;
  }
  // "Max open files            1048576              1048576              files"
  const soft = /^Max open files +(\S+)/m.exec(limits)?.[1];
  return soft !== undefined && /^\d+$/.test(soft) ? Number(soft) : undefined;
}
