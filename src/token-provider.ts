/**
 * Token cache: single-flight, refresh-ahead, invalidate-once.
 *
 * Built on lru-cache's `fetch()`, which coalesces concurrent fetches of a key
 * (any number of callers on a cold cache cause exactly one token request) and,
 * with `allowStale`, hands out the still-valid token while it refreshes in the
 * background. The cache TTL of an entry is its *refresh point* (75 % of the
 * lifetime, ± 5 % drawn per token), not its expiry; a token is never handed
 * out within a safety margin of its real expiry. Failed fetches back off per
 * key, so an outage of the token server is not hammered, and a still-valid
 * token keeps serving.
 *
 * Keys come from `TokenClient.cacheKey` (token URL, client id, parameters,
 * certificate fingerprint — never the secret).
 */
import { LRUCache } from 'lru-cache';
import { tokenClock, type Clock } from './clock.js';
import { SidecarError, isTransientTokenError } from './errors.js';
import type { AccessToken } from './token-client.js';

/** What the provider needs of a token client. */
export interface TokenSource {
  readonly cacheKey: string;
  fetchToken(): Promise<AccessToken>;
  /** A fetch is waiting out the token server's `Retry-After` within itself (see `TokenClient.waitingOnServer`). */
  readonly waitingOnServer?: boolean;
}

/** Token traffic, for logs and metrics. Cache hits are only counted (`stats.hits`): they happen on every request. */
export type TokenEvent =
  /** `clock-jump`: the token before it arrived unusable only because the token clock jumped forward meanwhile. */
  | { type: 'fetch'; key: string; reason: 'cold' | 'refresh-ahead' | 'invalidated' | 'expired' | 'rotated' | 'clock-jump' }
  | { type: 'fetched'; key: string; token: AccessToken; durationMs: number }
  /** `retryInMs` is undefined for a rotation's validation fetch: the credential watcher offers the change again. */
  | { type: 'fetch-failed'; key: string; error: unknown; durationMs: number; retryInMs: number | undefined };

/**
 * Tokens to keep for `routes` routes: one per route's key, and as many again for the keys rotations replace
 * (dropped as they go unused), never fewer than 64.
 */
export function tokenCacheSize(routes: number): number {
  return Math.max(64, 2 * routes);
}

/** Where in its lifetime a token is refreshed in the background: the middle of its window. */
export const REFRESH_AHEAD = 0.75;

/**
 * Each token's refresh point is drawn from `REFRESH_AHEAD` ± this fraction of its lifetime. Tokens fetched
 * together (the sidecars of one rollout, the routes' keys at an outage's end) then come due apart, and drift
 * further apart with each refresh, instead of asking the token server in one burst every lifetime (XSUAA admits
 * ~60 token requests a second per subaccount). Each token is still fetched once per refresh.
 */
export const REFRESH_JITTER = 0.05;

export interface TokenProviderOptions {
  /**
   * Distinct tokens kept, least recently used dropped first; bounds memory. Never fewer than the routes' keys:
   * round-robin over more keys than this would drop each token before its next use (a token request per
   * request). See `tokenCacheSize`.
   */
  max?: number;
  /** Fraction of the lifetime after which a token is refreshed in the background (`REFRESH_AHEAD`). */
  refreshAhead?: number;
  /** Fraction of the lifetime the refresh point is moved by, at random per token, either way (`REFRESH_JITTER`). */
  refreshJitter?: number;
  /** Uniform in [0, 1): draws each token's refresh point (`Math.random`); injected in tests. */
  random?: () => number;
  /** Upper bound of the expiry safety margin (the margin is 10 % of the lifetime, at most this). */
  maxSafetyMarginMs?: number;
  /** Backoff after a failed fetch: doubles from min to max. */
  backoff?: { minMs: number; maxMs: number };
  /** The clock the tokens' `issuedAt`/`expiresAt` are on (`clock.ts`'s `tokenClock` by default); injected in tests. */
  now?: Clock;
  /** A clock that never jumps (`performance.now` by default): how long a fetch really took. Injected in tests. */
  monotonic?: Clock;
  onEvent?: (event: TokenEvent) => void;
}

export interface TokenStats {
  hits: number;
  fetches: number;
  failures: number;
}

interface Failure {
  count: number;
  until: number;
  /** End of the wait the token server asked for (`Retry-After`), or 0: an upstream 401 does not shorten it. */
  serverUntil: number;
  error: unknown;
}

export const DEFAULT_BACKOFF = { minMs: 1_000, maxMs: 30_000 } as const;

/**
 * At most one token request per key and this interval because the upstream rejected a token. An upstream
 * that rejects every token (an API-plan key on the runtime host, a key of another subaccount) would
 * otherwise turn every proxied request into a token request, and XSUAA limits them per subaccount.
 */
export const REJECTION_INTERVAL_MS = 30_000;

export class TokenProvider {
  readonly stats: TokenStats = { hits: 0, fetches: 0, failures: 0 };
  readonly #cache: LRUCache<string, AccessToken, TokenSource>;
  readonly #failures = new Map<string, Failure>();
  /** The source each key's fetch under way runs on: another route's client, when two routes share the key. */
  readonly #fetching = new Map<string, TokenSource>();
  /** Tokens the upstream rejected: never handed out again. */
  readonly #revoked = new WeakSet<AccessToken>();
  /** When a rejection last caused a token request, per key. */
  readonly #rejectedAt = new Map<string, number>();
  readonly #refreshAhead: number;
  readonly #refreshJitter: number;
  readonly #random: () => number;
  readonly #maxMarginMs: number;
  readonly #backoff: { minMs: number; maxMs: number };
  readonly #now: Clock;
  readonly #monotonic: Clock;
  readonly #onEvent: (event: TokenEvent) => void;

  constructor(options: TokenProviderOptions = {}) {
    this.#refreshAhead = options.refreshAhead ?? REFRESH_AHEAD;
    this.#refreshJitter = options.refreshJitter ?? REFRESH_JITTER;
    this.#random = options.random ?? Math.random;
    this.#maxMarginMs = options.maxSafetyMarginMs ?? 60_000;
    this.#backoff = options.backoff ?? DEFAULT_BACKOFF;
    this.#now = options.now ?? tokenClock;
    this.#monotonic = options.monotonic ?? (() => performance.now());
    const onEvent = options.onEvent;
    // An observer that throws (a logger choking on an odd value) must not turn a good token into a failed
    // fetch, nor a failure into another error: the event is lost, the token traffic is not.
    this.#onEvent = (event) => {
      try {
        onEvent?.(event);
      } catch {
        /* the hook's own failure is the hook's to report */
      }
    };
    const now = this.#now;
    this.#cache = new LRUCache<string, AccessToken, TokenSource>({
      max: options.max ?? tokenCacheSize(0),
      allowStale: true,
      noDeleteOnFetchRejection: true,
      ignoreFetchAbort: true,
      perf: { now },
      // Read the clock on every check: a token is due at an exact time, and tests move the clock.
      ttlResolution: 0,
      fetchMethod: (key, stale, { options: setOptions, context }) => this.#fetch(key, stale, context, setOptions),
    });
  }

  /**
   * The cached token while it is fresh (before its refresh point), without a promise: the hot path of
   * every proxied request. `undefined` when cold, due for refresh or unusable: then call `getToken`.
   */
  cachedToken(source: TokenSource): AccessToken | undefined {
    const key = source.cacheKey;
    // `has` is false for a missing, stale (past its refresh point) or still-fetching entry.
    if (!this.#cache.has(key)) return undefined;
    const token = this.#cache.peek(key);
    if (token === undefined || !this.#usable(token, this.#now())) return undefined;
    return this.#hit(token);
  }

  /** A usable token: from the cache, or fetched (once, for all concurrent callers) when cold. */
  async getToken(source: TokenSource): Promise<AccessToken> {
    const key = source.cacheKey;
    const cached = await this.#cache.fetch(key, { context: source });
    if (cached !== undefined && this.#usable(cached, this.#now())) {
      return this.#hit(cached);
    }
    // The stale value is past its safety margin, or revoked (then possibly still within its TTL, e.g. after
    // a failed refresh): wait for the fetch already started by the call above, or start one. Never hand it out.
    return this.#cache.forceFetch(key, { context: source, allowStale: false, forceRefresh: cached !== undefined });
  }

  #hit(token: AccessToken): AccessToken {
    this.stats.hits++;
    return token;
  }

  /**
   * Whether a request the upstream answered 401 with `rejected` is worth sending again: a newer token is
   * cached, or a new one may be fetched (see `REJECTION_INTERVAL_MS`). If not, the 401 goes to the sender.
   */
  retryAfterRejection(source: TokenSource, rejected: AccessToken): boolean {
    // Another request saw this rejection first: its refresh is under way (or done), so retry with what it brings.
    if (this.#revoked.has(rejected)) return true;
    const key = source.cacheKey;
    const now = this.#now();
    const current = this.#cache.peek(key, { allowStale: true });
    if (current !== undefined && current !== rejected && this.#usable(current, now)) return true;
    return !this.#serverWaiting(source, now) && this.#rejectionAllowed(key, now);
  }

  /**
   * The upstream rejected `rejected` (401): refresh once, however many requests
   * saw the same rejection, and return the token to retry with. Within
   * `REJECTION_INTERVAL_MS` of the last such refresh the token is kept.
   */
  async refreshAfterRejection(source: TokenSource, rejected: AccessToken): Promise<AccessToken> {
    const key = source.cacheKey;
    const now = this.#now();
    const current = this.#cache.peek(key, { allowStale: true });
    // Inside a wait the token server asked for (a 429 or 503 Retry-After) no new token can be had, so the token is
    // not retired: as when a refresh fails, a token that has not expired serves on (any flow may answer 401 for
    // reasons of its own) rather than one 401 failing every sender with 503 until the wait ends.
    if (current === rejected && !this.#revoked.has(rejected) && !this.#serverWaiting(source, now) && this.#rejectionAllowed(key, now)) {
      this.#revoked.add(rejected);
      this.#rejectedAt.set(key, now);
      // A rejection is news, not an outage: do not let our own backoff delay the refresh.
      this.#failures.delete(key);
      return this.#cache.forceFetch(key, { context: source, allowStale: false, forceRefresh: true });
    }
    return this.getToken(source);
  }

  #rejectionAllowed(key: string, now: number): boolean {
    const last = this.#rejectedAt.get(key);
    return last === undefined || now - last >= REJECTION_INTERVAL_MS;
  }

  /**
   * Whether the token server asked not to be asked before a time still to come (its 429 or 503 Retry-After): a
   * fetch that failed on it, or one waiting it out within itself (a short `Retry-After`, slept by the client).
   */
  #serverWaiting(source: TokenSource, now: number): boolean {
    const failure = this.#failures.get(source.cacheKey);
    if (failure !== undefined && failure.serverUntil > now) return true;
    // The fetch under way for the key, on whichever route's client started it (two routes may share a key).
    return this.#fetching.get(source.cacheKey)?.waitingOnServer === true;
  }

  /**
   * Validate new credentials (a rotation) by fetching a token with them, and cache it. The fetch is made
   * directly, never joined with one already under way for the same key: new credentials may share the old ones'
   * key (a rotation that changes only the upstream `url`), and that fetch may be using the old ones. A failure
   * changes nothing (the cached token, and the key's backoff, stay as they were) but a wait the token server asked
   * for (its 429 or 503 `Retry-After`): until it ends the key is not asked again, by a later validation either (the
   * credential watcher offers a refused change again at its next check). A fetch under way still answers its
   * callers but no longer writes to the cache (`ignoreFetchAbort`).
   */
  async refresh(source: TokenSource): Promise<AccessToken> {
    const key = source.cacheKey;
    const start = this.#now();
    const waiting = this.#failures.get(key);
    if (waiting !== undefined && waiting.serverUntil > start) throw withRetryAfter(waiting.error, waiting.serverUntil - start);
    this.stats.fetches++;
    this.#onEvent({ type: 'fetch', key, reason: 'rotated' });
    let token: AccessToken;
    try {
      token = await this.#fetchUsable(source);
    } catch (error) {
      this.stats.failures++;
      const failedAt = this.#now();
      const serverWait = serverWaitOf(error);
      if (serverWait > 0) {
        const prior = this.#failures.get(key);
        const serverUntil = failedAt + serverWait;
        this.#failures.set(key, { count: prior?.count ?? 0, until: Math.max(prior?.until ?? 0, serverUntil), serverUntil, error });
      }
      this.#onEvent({ type: 'fetch-failed', key, error, durationMs: failedAt - start, retryInMs: undefined });
      throw error;
    }
    this.#failures.delete(key);
    this.#rejectedAt.delete(key);
    this.#cache.set(key, token, { ttl: this.#ttlOf(token) });
    this.#onEvent({ type: 'fetched', key, token, durationMs: this.#now() - start });
    return token;
  }

  /** The cached token if it is usable now, without fetching (readiness, diagnostics). */
  peek(source: TokenSource): AccessToken | undefined {
    const token = this.#cache.peek(source.cacheKey, { allowStale: true });
    return token && this.#usable(token, this.#now()) ? token : undefined;
  }

  /**
   * Milliseconds until the cached token expires, also inside its safety margin (where `peek` no longer returns
   * it), or undefined when none is cached or it has expired: what the token expiry metric shows, so that it
   * counts down to the end instead of vanishing a minute early.
   */
  expiresInMs(source: TokenSource): number | undefined {
    const token = this.#cache.peek(source.cacheKey, { allowStale: true });
    if (token === undefined || this.#revoked.has(token)) return undefined;
    const left = token.expiresAt - this.#now();
    return left > 0 ? left : undefined;
  }

  /**
   * Drop a key, with its backoff and 401 record; the next call fetches anew. A rotation drops the key it replaced
   * (`sidecar.ts`), so that the cache holds only keys in use.
   */
  forget(source: TokenSource): void {
    this.#cache.delete(source.cacheKey);
    this.#failures.delete(source.cacheKey);
    this.#rejectedAt.delete(source.cacheKey);
  }

  /**
   * One token request, and at most one more at once when its token arrived unusable only because the token clock
   * jumped forward meanwhile (a VM resumed and its clock stepped, an NTP step: `clock.ts` counts such a jump as
   * time gone by, so a token issued before it looks old): on the monotonic clock the request took less than the
   * token's usable lifetime. The token server may have issued it before a pause or after; the next one is issued
   * after. A lifetime too short on its own stays a failed fetch.
   */
  async #fetchUsable(source: TokenSource): Promise<AccessToken> {
    const started = this.#monotonic();
    const token = await source.fetchToken();
    if (this.#usable(token, this.#now())) return token;
    const usableMs = token.expiresAt - this.#marginMs(token) - token.issuedAt;
    if (this.#monotonic() - started >= usableMs) return this.#usableOnArrival(token);
    this.stats.fetches++;
    this.#onEvent({ type: 'fetch', key: source.cacheKey, reason: 'clock-jump' });
    return this.#usableOnArrival(await source.fetchToken());
  }

  /**
   * A token already inside its safety margin when it arrived (a lifetime shorter than the fetch took) is a failed
   * fetch, backed off like any other: handing it out would send a token the upstream is about to reject, and
   * fetching again for every request would hammer the token server.
   */
  #usableOnArrival(token: AccessToken): AccessToken {
    if (this.#usable(token, this.#now())) return token;
    const lifetimeMs = Math.round(token.expiresAt - token.issuedAt);
    throw new SidecarError(
      'TOKEN_RESPONSE_INVALID',
      `the token server's token was already within its expiry margin when it arrived (lifetime ${lifetimeMs} ms, from ${token.lifetimeSource}) — check the token server's expires_in`,
    );
  }

  /** When the token may no longer be handed out. */
  #usable(token: AccessToken, now: number): boolean {
    return !this.#revoked.has(token) && now < token.expiresAt - this.#marginMs(token);
  }

  /** Cache TTL: until the token's refresh point, drawn once as it is stored, and never inside the safety margin. */
  #ttlOf(token: AccessToken): number {
    const lifetime = token.expiresAt - token.issuedAt;
    const fraction = this.#refreshAhead + this.#refreshJitter * (2 * this.#random() - 1);
    const refreshAt = Math.min(token.issuedAt + lifetime * fraction, token.expiresAt - this.#marginMs(token));
    return Math.max(1, Math.floor(refreshAt - this.#now()));
  }

  /** Time left before `token` enters its safety margin. */
  #ttlUntilMargin(token: AccessToken, now: number): number {
    return token.expiresAt - this.#marginMs(token) - now;
  }

  #marginMs(token: AccessToken): number {
    return Math.min(this.#maxMarginMs, (token.expiresAt - token.issuedAt) * 0.1);
  }

  async #fetch(
    key: string,
    stale: AccessToken | undefined,
    source: TokenSource,
    setOptions: LRUCache.SetOptions<string, AccessToken, TokenSource>,
  ): Promise<AccessToken> {
    const start = this.#now();
    const failure = this.#failures.get(key);
    if (failure && start < failure.until) {
      // Backing off: keep serving a usable token, or fail fast with the last error.
      if (stale && this.#usable(stale, start)) {
        setOptions.ttl = Math.max(1, failure.until - start);
        return stale;
      }
      throw withRetryAfter(failure.error, failure.until - start);
    }
    const reason = !stale
      ? 'cold'
      : this.#revoked.has(stale)
        ? 'invalidated'
        : this.#usable(stale, start)
          ? 'refresh-ahead'
          : 'expired';
    this.stats.fetches++;
    this.#onEvent({ type: 'fetch', key, reason });
    let token: AccessToken;
    this.#fetching.set(key, source);
    const done = (): void => {
      if (this.#fetching.get(key) === source) this.#fetching.delete(key);
    };
    try {
      // Not aborted by lru-cache's signal: a fetch whose entry was replaced (`refresh`) still answers its callers.
      token = await this.#fetchUsable(source).finally(done);
    } catch (error) {
      // Replaced meanwhile by a validated token (`refresh`, new credentials under this key): the old
      // credentials' failure is theirs, not the key's; its callers get the new token.
      const current = this.#cache.peek(key, { allowStale: true });
      if (current !== undefined && current !== stale && this.#usable(current, this.#now())) return current;
      const count = (failure?.count ?? 0) + 1;
      const backoff = Math.min(this.#backoff.maxMs, this.#backoff.minMs * 2 ** (count - 1));
      // A server that said when to come back (a 429 or 503 Retry-After) is not asked earlier.
      const serverWait = serverWaitOf(error);
      const delay = Math.max(backoff, serverWait);
      const failedAt = this.#now();
      this.#failures.set(key, { count, until: failedAt + delay, serverUntil: serverWait > 0 ? failedAt + serverWait : 0, error });
      this.stats.failures++;
      this.#onEvent({ type: 'fetch-failed', key, error, durationMs: failedAt - start, retryInMs: delay });
      // A 401 retired a token that has not expired, and no new one can be had: the 401 may have had nothing
      // to do with the token (any flow can answer 401), so it is handed out again until the next attempt
      // rather than failing every sender with 503. Were it really rejected, senders get the upstream's 401.
      if (stale !== undefined && this.#revoked.has(stale)) {
        this.#revoked.delete(stale);
        if (this.#usable(stale, failedAt)) {
          setOptions.ttl = Math.max(1, Math.min(delay, this.#ttlUntilMargin(stale, failedAt)));
          return stale;
        }
      }
      // Its Retry-After is the backoff just begun (a transient failure), as for those that fail fast during it.
      throw withRetryAfter(error, delay);
    }
    this.#failures.delete(key);
    setOptions.ttl = this.#ttlOf(token);
    this.#onEvent({ type: 'fetched', key, token, durationMs: this.#now() - start });
    return token;
  }
}

/** Milliseconds the token server asked to be left alone (its 429 or 503 `Retry-After`), or 0. */
function serverWaitOf(error: unknown): number {
  return error instanceof SidecarError && error.retryAfter !== undefined ? error.retryAfter * 1000 : 0;
}

/**
 * A transient failure, re-thrown during backoff, tells the sender when to come back: the time left until the
 * next attempt, which already includes the token server's own Retry-After, counting down. A final one (the
 * credentials rejected, a malformed answer: 502) is re-thrown as it came, without a `Retry-After`.
 */
function withRetryAfter(error: unknown, remainingMs: number): unknown {
  if (!(error instanceof SidecarError) || !isTransientTokenError(error)) return error;
  const seconds = Math.max(1, Math.ceil(remainingMs / 1000));
  return new SidecarError(error.code, error.message, { cause: error.cause, retryAfter: seconds });
}
