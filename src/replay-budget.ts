/**
 * The memory all kept request-body copies may hold together. Each request keeps at most
 * `--max-replay-body` bytes of its body for a resend (after a 401 or a CSRF 403); without a bound over all
 * requests, a few hundred concurrent uploads would hold hundreds of MB. A copy that does not fit is
 * dropped: that request is streamed as before and cannot be sent again, as one over the per-request limit.
 */
import { DEFAULT_REPLAY_MEMORY_BYTES } from './config.js';

export class ReplayBudget {
  readonly limit: number;
  #used = 0;

  constructor(limit: number = DEFAULT_REPLAY_MEMORY_BYTES) {
    this.limit = limit;
  }

  /** Reserve `bytes` for a copy; false (nothing reserved) when they would exceed the limit. */
  take(bytes: number): boolean {
    if (this.#used + bytes > this.limit) return false;
    this.#used += bytes;
    return true;
  }

  /** Return bytes a copy held (dropped, or its request is over). */
  give(bytes: number): void {
    this.#used = Math.max(0, this.#used - bytes);
  }

  /** Bytes held by copies now. */
  get used(): number {
    return this.#used;
  }
}
