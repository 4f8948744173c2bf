import { describe, expect, it } from 'vitest';
import { SidecarError } from '../../src/errors.js';
import type { AccessToken } from '../../src/token-client.js';
import { REJECTION_INTERVAL_MS, TokenProvider, tokenCacheSize, type TokenEvent, type TokenSource } from '../../src/token-provider.js';

/** A token source driven by the test: each fetch waits until the test settles it. */
class FakeSource implements TokenSource {
  readonly cacheKey: string = 'key-1';
  calls = 0;
  /** Set by a test: a fetch is waiting out the token server's Retry-After within itself. */
  waitingOnServer = false;
  pending: Array<{ resolve: (t: AccessToken) => void; reject: (e: unknown) => void }> = [];
  constructor(private readonly clock: { now: number }) {}

  fetchToken(): Promise<AccessToken> {
    this.calls++;
    return new Promise((resolve, reject) => this.pending.push({ resolve, reject }));
  }

  /** Settle the oldest pending fetch with a token living `lifetimeMs`. */
  async issue(lifetimeMs = 100_000): Promise<AccessToken> {
    const next = this.pending.shift();
    if (!next) throw new Error('no pending fetch');
    const token: AccessToken = {
      value: `token-${this.calls}`,
      issuedAt: this.clock.now,
      expiresAt: this.clock.now + lifetimeMs,
      scopes: [],
      lifetimeSource: 'expires_in',
    };
    next.resolve(token);
    await flush();
    return token;
  }

  async fail(error: unknown): Promise<void> {
    const next = this.pending.shift();
    if (!next) throw new Error('no pending fetch');
    next.reject(error);
    await flush();
  }
}

const flush = () => new Promise((resolve) => setImmediate(resolve));

/** A token fetched on a cold cache and cached: lifetime 100 s, so its refresh is due after 75 s. */
async function warm(provider: TokenProvider, source: FakeSource): Promise<AccessToken> {
  const first = provider.getToken(source);
  await flush();
  const token = await source.issue(100_000);
  await first;
  return token;
}

/** `random` 0.5 by default: each token's refresh point in the middle of its window, at 75 % of its lifetime. */
function setup(options: { backoff?: { minMs: number; maxMs: number }; random?: () => number } = {}) {
  const clock = { now: 1_000_000 };
  const events: TokenEvent[] = [];
  const provider = new TokenProvider({ now: () => clock.now, onEvent: (e) => events.push(e), random: () => 0.5, ...options });
  const source = new FakeSource(clock);
  return { clock, events, provider, source };
}

describe('TokenProvider', () => {
  it('coalesces 200 concurrent callers on a cold cache into one fetch', async () => {
    const { provider, source } = setup();
    const callers = Array.from({ length: 200 }, () => provider.getToken(source));
    await flush();
    expect(source.calls).toBe(1);
    const token = await source.issue();
    const results = await Promise.all(callers);
    expect(new Set(results.map((t) => t.value))).toEqual(new Set([token.value]));
    expect(provider.stats.fetches).toBe(1);
  });

  it('serves from the cache until the refresh point, then refreshes in the background', async () => {
    const { clock, provider, source, events } = setup();
    const first = provider.getToken(source);
    await flush();
    const token = await source.issue(100_000);
    expect(await first).toBe(token);

    clock.now += 74_000; // before 75 % of the lifetime
    expect(await provider.getToken(source)).toBe(token);
    expect(source.calls).toBe(1);

    clock.now += 2_000; // past the refresh point, far from expiry: old token served, refresh started
    expect(await provider.getToken(source)).toBe(token);
    expect(source.calls).toBe(2);
    expect(events.some((e) => e.type === 'fetch' && e.reason === 'refresh-ahead')).toBe(true);
    const fresh = await source.issue(100_000);
    expect(await provider.getToken(source)).toBe(fresh);
    expect(source.calls).toBe(2);
  });

  it("draws each token's refresh point from 75 ± 5 % of its lifetime, once, as the token is stored", async () => {
    for (const [random, dueAt] of [
      [0, 70_000],
      [0.25, 72_500],
      [0.999_999, 79_999],
    ] as const) {
      let draws = 0;
      const { clock, provider, source } = setup({ random: () => (draws++, random) });
      const token = await warm(provider, source);
      // Within a millisecond or two of it (whole milliseconds, and due once past it).
      clock.now += dueAt - 2;
      expect(provider.cachedToken(source)).toBe(token);
      clock.now += 3;
      expect(provider.cachedToken(source)).toBeUndefined();
      expect(draws).toBe(1);
    }
  });

  it('tokens fetched together come due apart, and each is still fetched once per refresh', async () => {
    const draws = [0.1, 0.9, 0.9, 0.1];
    const { clock, provider } = setup({ random: () => draws.shift()! });
    const a = new FakeSource(clock);
    const b = Object.assign(new FakeSource(clock), { cacheKey: 'key-2' });
    await warm(provider, a);
    await warm(provider, b);
    // a is due at 71 s, b at 79 s of their lifetimes.
    clock.now += 71_001;
    await provider.getToken(a);
    await provider.getToken(b);
    expect([a.calls, b.calls]).toEqual([2, 1]);
    await a.issue(100_000); // a's next refresh point: 79 s after this
    clock.now += 8_000;
    await provider.getToken(a);
    await provider.getToken(b);
    expect([a.calls, b.calls]).toEqual([2, 2]);
    await b.issue(100_000); // b's next: 71 s after this
    clock.now += 70_998;
    await provider.getToken(a);
    await provider.getToken(b);
    expect([a.calls, b.calls]).toEqual([2, 2]);
    clock.now += 3;
    await provider.getToken(b);
    expect(b.calls).toBe(3);
  });

  it('with the default random source, a token is never due before 70 % of its lifetime and always by 80 %', async () => {
    for (let i = 0; i < 50; i++) {
      const clock = { now: 1_000_000 };
      const provider = new TokenProvider({ now: () => clock.now });
      const source = new FakeSource(clock);
      const token = await warm(provider, source);
      clock.now += 69_999;
      expect(provider.cachedToken(source)).toBe(token);
      clock.now += 10_001;
      expect(provider.cachedToken(source)).toBeUndefined();
    }
  });

  it('a token that arrives unusable only because the token clock jumped during its request is fetched again at once, not failed', async () => {
    // As the token client does: the token's issue time is read as the request goes out.
    const clock = { now: 1_000_000, monotonic: 0 };
    const events: TokenEvent[] = [];
    const provider = new TokenProvider({ now: () => clock.now, monotonic: () => clock.monotonic, onEvent: (e) => events.push(e), random: () => 0.5 });
    const answers: Array<() => void> = [];
    let calls = 0;
    const source: TokenSource = {
      cacheKey: 'key-jump',
      fetchToken: () => {
        const issuedAt = clock.now;
        const value = `token-${++calls}`;
        return new Promise((resolve) => answers.push(() => resolve({ value, issuedAt, expiresAt: issuedAt + 3_600_000, scopes: [], lifetimeSource: 'expires_in' })));
      },
    };
    const waiting = provider.getToken(source);
    await flush();
    // The VM is paused for two hours mid-request: the wall clock is stepped on resume, the monotonic one counted 1.5 s.
    clock.now += 7_200_000 + 1_500;
    clock.monotonic += 1_500;
    answers.shift()!();
    await flush();
    expect(calls).toBe(2);
    answers.shift()!();
    expect((await waiting).value).toBe('token-2');
    expect(events.filter((e) => e.type === 'fetch').map((e) => e.type === 'fetch' && e.reason)).toEqual(['cold', 'clock-jump']);
    expect(events.some((e) => e.type === 'fetch-failed')).toBe(false);
    expect(provider.stats).toMatchObject({ fetches: 2, failures: 0 });

    // A rotation's validation too.
    const validated = provider.refresh(source);
    await flush();
    clock.now += 7_200_000;
    clock.monotonic += 100;
    answers.shift()!();
    await flush();
    answers.shift()!();
    expect((await validated).value).toBe('token-4');

    // A lifetime too short for the request as the monotonic clock counted it stays a failed fetch: asked once.
    const slow = provider.refresh({ ...source, cacheKey: 'key-slow', fetchToken: () => new Promise((resolve) => answers.push(() => resolve({ value: 'short', issuedAt: clock.now - 10_000, expiresAt: clock.now - 10_000 + 5_000, scopes: [], lifetimeSource: 'expires_in' }))) });
    await flush();
    clock.monotonic += 10_000;
    answers.shift()!();
    await expect(slow).rejects.toMatchObject({ code: 'TOKEN_RESPONSE_INVALID' });
    expect(answers).toHaveLength(0);
  });

  it('never hands out a token within the safety margin of its expiry', async () => {
    const { clock, provider, source } = setup();
    const old = await warm(provider, source);
    clock.now += 95_000; // margin is 10 % of the lifetime: 10 s
    const waiting = provider.getToken(source);
    await flush();
    expect(source.calls).toBe(2);
    const fresh = await source.issue(100_000);
    const got = await waiting;
    expect(got).toBe(fresh);
    expect(got).not.toBe(old);
  });

  it('keeps serving a valid token while the token server fails, and backs off', async () => {
    const { clock, provider, source } = setup({ backoff: { minMs: 5_000, maxMs: 20_000 } });
    const token = await warm(provider, source);
    clock.now += 80_000; // refresh due
    expect(await provider.getToken(source)).toBe(token);
    await source.fail(new SidecarError('TOKEN_UNREACHABLE', 'down'));
    // Within the backoff: the valid token is served and the server is not asked.
    clock.now += 1_000;
    expect(await provider.getToken(source)).toBe(token);
    await flush();
    expect(source.calls).toBe(2);
    // After the backoff: one new attempt.
    clock.now += 5_000;
    expect(await provider.getToken(source)).toBe(token);
    await flush();
    expect(source.calls).toBe(3);
    await source.issue();
  });

  it("counts the token server's Retry-After down for senders, and asks again only once it has passed", async () => {
    const { clock, provider, source } = setup({ backoff: { minMs: 1_000, maxMs: 5_000 } });
    const first = expect(provider.getToken(source)).rejects.toMatchObject({ code: 'TOKEN_RATE_LIMITED', retryAfter: 120 });
    await flush();
    await source.fail(new SidecarError('TOKEN_RATE_LIMITED', 'token server answered 429', { retryAfter: 120 }));
    await first;

    clock.now += 60_000;
    await expect(provider.getToken(source)).rejects.toMatchObject({ code: 'TOKEN_RATE_LIMITED', retryAfter: 60 });
    clock.now += 59_500;
    await expect(provider.getToken(source)).rejects.toMatchObject({ retryAfter: 1 });
    expect(source.calls).toBe(1);

    clock.now += 500; // the server's wait is over: one new attempt
    const again = provider.getToken(source);
    await flush();
    expect(source.calls).toBe(2);
    const token = await source.issue();
    expect(await again).toBe(token);
  });

  it('keeps a rejected token that has not expired when the refresh after the rejection fails (any flow may answer 401), and tries again after the backoff', async () => {
    const { clock, provider, source } = setup({ backoff: { minMs: 1_000, maxMs: 5_000 } });
    const first = provider.getToken(source);
    await flush();
    const rejected = await source.issue();
    expect(await first).toBe(rejected);

    const refresh = provider.refreshAfterRejection(source, rejected);
    await flush();
    await source.fail(new SidecarError('TOKEN_SERVER_ERROR', 'token server failed (500)'));
    // The request that saw the 401 is sent again with the token it had: its sender gets the upstream's answer.
    expect(await refresh).toBe(rejected);
    // Within the backoff: the same token for everyone, no token request, rather than a 503.
    expect(await provider.getToken(source)).toBe(rejected);
    expect(provider.cachedToken(source)).toBe(rejected);
    expect(source.calls).toBe(2);
    // After it: the next request asks again, and gets a new token.
    clock.now += 1_001;
    const again = provider.getToken(source);
    await flush();
    expect(source.calls).toBe(3);
    const fresh = await source.issue();
    await again;
    expect(provider.cachedToken(source)).toBe(fresh);
  });

  it('a rejected token whose refresh failed is not kept once it is inside its safety margin', async () => {
    const { clock, provider, source } = setup({ backoff: { minMs: 1_000, maxMs: 5_000 } });
    const first = provider.getToken(source);
    await flush();
    const rejected = await source.issue();
    await first;
    clock.now = rejected.expiresAt - 1; // inside the margin: not usable whatever the upstream said
    const refresh = expect(provider.refreshAfterRejection(source, rejected)).rejects.toMatchObject({ code: 'TOKEN_SERVER_ERROR' });
    await flush();
    await source.fail(new SidecarError('TOKEN_SERVER_ERROR', 'token server failed (500)'));
    await refresh;
    await expect(provider.getToken(source)).rejects.toMatchObject({ code: 'TOKEN_SERVER_ERROR' });
  });

  it('an upstream that rejects every token causes at most one token request per key and REJECTION_INTERVAL_MS', async () => {
    const { clock, provider, source } = setup();
    const first = provider.getToken(source);
    await flush();
    const a = await source.issue();
    await first;
    expect(provider.retryAfterRejection(source, a)).toBe(true);
    const refreshed = provider.refreshAfterRejection(source, a);
    await flush();
    // Another request answered 401 with a meanwhile: it retries with the token under way.
    expect(provider.retryAfterRejection(source, a)).toBe(true);
    const b = await source.issue();
    expect(await refreshed).toBe(b);
    // b is rejected too, right away: not worth another token request yet.
    expect(provider.retryAfterRejection(source, b)).toBe(false);
    expect(await provider.refreshAfterRejection(source, b)).toBe(b);
    // A request that still carried a (the first rejected token) is sent again with b: that costs no fetch.
    expect(provider.retryAfterRejection(source, a)).toBe(true);
    expect(source.calls).toBe(2);
    // Once the interval has passed, the next rejection may refresh again.
    clock.now += REJECTION_INTERVAL_MS;
    expect(provider.retryAfterRejection(source, b)).toBe(true);
    const later = provider.refreshAfterRejection(source, b);
    await flush();
    expect(source.calls).toBe(3);
    const c = await source.issue();
    expect(await later).toBe(c);
  });

  it('fails fast with Retry-After during backoff when no usable token exists', async () => {
    const { clock, provider, source } = setup({ backoff: { minMs: 4_000, maxMs: 20_000 } });
    // The failure that starts the backoff says how long it lasts, as those during it do (not a fixed guess).
    const first = expect(provider.getToken(source)).rejects.toMatchObject({ code: 'TOKEN_SERVER_ERROR', retryAfter: 4 });
    await flush();
    await source.fail(new SidecarError('TOKEN_SERVER_ERROR', 'token server failed (500)'));
    await first;

    clock.now += 1_000;
    const fast = provider.getToken(source);
    await expect(fast).rejects.toMatchObject({ code: 'TOKEN_SERVER_ERROR', retryAfter: 3 });
    expect(source.calls).toBe(1);

    clock.now += 3_000; // backoff over: recovery
    const again = provider.getToken(source);
    await flush();
    expect(source.calls).toBe(2);
    const token = await source.issue();
    expect(await again).toBe(token);
  });

  it('during backoff a final failure (credentials rejected) is re-thrown as it came, without Retry-After (a 502, not a 503)', async () => {
    const { clock, provider, source } = setup({ backoff: { minMs: 4_000, maxMs: 20_000 } });
    const first = expect(provider.getToken(source)).rejects.toMatchObject({ code: 'TOKEN_REJECTED', retryAfter: undefined });
    await flush();
    await source.fail(new SidecarError('TOKEN_REJECTED', 'token server rejected the client credentials (401)'));
    await first;
    clock.now += 1_000;
    await expect(provider.getToken(source)).rejects.toMatchObject({ code: 'TOKEN_REJECTED', retryAfter: undefined });
    expect(source.calls).toBe(1);
  });

  it('a token inside its safety margin when it arrived is a failed fetch (TOKEN_RESPONSE_INVALID), backed off like any other', async () => {
    const { clock, events, provider, source } = setup({ backoff: { minMs: 4_000, maxMs: 20_000 } });
    const result = provider.getToken(source).then(
      (token) => token,
      (error: unknown) => error,
    );
    await flush();
    await source.issue(0);
    expect(await result).toMatchObject({ code: 'TOKEN_RESPONSE_INVALID', message: expect.stringContaining('within its expiry margin when it arrived') });
    expect(events.map((e) => e.type)).toEqual(['fetch', 'fetch-failed']);
    expect(provider.stats.failures).toBe(1);
    // Not fetched again for every sender: the backoff holds.
    clock.now += 1_000;
    await expect(provider.getToken(source)).rejects.toMatchObject({ code: 'TOKEN_RESPONSE_INVALID' });
    expect(source.calls).toBe(1);
  });

  it('refreshes once after an upstream rejection, however many requests saw it', async () => {
    const { provider, source, events } = setup();
    const first = provider.getToken(source);
    await flush();
    const rejected = await source.issue();
    await first;

    const retries = Array.from({ length: 50 }, () => provider.refreshAfterRejection(source, rejected));
    await flush();
    expect(source.calls).toBe(2);
    const fresh = await source.issue();
    for (const t of await Promise.all(retries)) expect(t).toBe(fresh);
    // A late 401 for the old token does not refresh again.
    expect(await provider.refreshAfterRejection(source, rejected)).toBe(fresh);
    expect(source.calls).toBe(2);
    expect(events.filter((e) => e.type === 'fetch' && e.reason === 'invalidated')).toHaveLength(1);
  });

  it("a 401 on another route with the same key does not retire the token either while the fetch under way waits out the server's Retry-After", async () => {
    const { clock, provider, source } = setup();
    const other = new FakeSource(clock); // a second route's client for the same credentials: one cache key
    const token = await warm(provider, source);
    clock.now += 80_000; // the background refresh runs on the first route's client, and sleeps a Retry-After
    expect(await provider.getToken(source)).toBe(token);
    source.waitingOnServer = true;
    expect(provider.retryAfterRejection(other, token)).toBe(false);
    expect(await provider.refreshAfterRejection(other, token)).toBe(token);
    expect(await provider.getToken(other)).toBe(token);
    expect(source.calls + other.calls).toBe(2);
    source.waitingOnServer = false;
    const fresh = await source.issue();
    expect(await provider.getToken(other)).toBe(fresh);
  });

  it("a rotation's validation that meets the token server's Retry-After does not ask it again before the wait ends", async () => {
    const { clock, provider } = setup();
    const rotated = new (class extends FakeSource {
      override readonly cacheKey = 'key-2';
    })(clock);
    const first = provider.refresh(rotated);
    await flush();
    const refused = expect(first).rejects.toMatchObject({ code: 'TOKEN_RATE_LIMITED' });
    await rotated.fail(new SidecarError('TOKEN_RATE_LIMITED', 'token server answered 429', { retryAfter: 20 }));
    await refused;
    // The credential watcher offers the change again 5 s later: refused at once, with the wait left, the server not asked.
    clock.now += 5_000;
    await expect(provider.refresh(rotated)).rejects.toMatchObject({ code: 'TOKEN_RATE_LIMITED', retryAfter: 15 });
    expect(rotated.calls).toBe(1);
    // Once the wait is over, it is asked again.
    clock.now += 15_000;
    const again = provider.refresh(rotated);
    await flush();
    expect(rotated.calls).toBe(2);
    const token = await rotated.issue();
    expect(await again).toBe(token);
  });

  it("an upstream 401 while a fetch waits out the token server's Retry-After within itself does not retire the token: senders are not held for that wait", async () => {
    const { clock, provider, source, events } = setup();
    const token = await warm(provider, source);
    clock.now += 80_000; // past the refresh point: the background refresh starts, meets a 429 and sleeps its Retry-After
    expect(await provider.getToken(source)).toBe(token);
    expect(source.calls).toBe(2);
    source.waitingOnServer = true;

    expect(provider.retryAfterRejection(source, token)).toBe(false);
    expect(await provider.refreshAfterRejection(source, token)).toBe(token);
    // Every other sender is served at once with the token, not made to wait for the sleeping fetch.
    expect(await provider.getToken(source)).toBe(token);
    expect(provider.peek(source)).toBe(token);
    expect(events.filter((e) => e.type === 'fetch' && e.reason === 'invalidated')).toHaveLength(0);
    expect(source.calls).toBe(2);

    // The wait over, the fetch brings a new token; a 401 may retire tokens again.
    source.waitingOnServer = false;
    const fresh = await source.issue();
    expect(await provider.getToken(source)).toBe(fresh);
    expect(provider.retryAfterRejection(source, fresh)).toBe(true);
  });

  it("an upstream 401 inside the token server's Retry-After window does not ask it early, and the token serves on until the wait ends", async () => {
    const { clock, provider, source, events } = setup({ backoff: { minMs: 1_000, maxMs: 5_000 } });
    const rejected = await warm(provider, source);
    clock.now += 80_000; // past the refresh point: the background refresh meets a 429
    expect(await provider.getToken(source)).toBe(rejected);
    await source.fail(new SidecarError('TOKEN_RATE_LIMITED', 'token server answered 429', { retryAfter: 12 }));

    clock.now += 5_000; // the upstream rejects the token, 5 s into the server's 12 s: no resend (no new token can come)
    expect(provider.retryAfterRejection(source, rejected)).toBe(false);
    // A request that had already decided to resend gets the token it had, not 503 for every sender.
    expect(await provider.refreshAfterRejection(source, rejected)).toBe(rejected);
    expect(await provider.getToken(source)).toBe(rejected);
    expect(provider.cachedToken(source)).toBe(rejected);
    expect(source.calls).toBe(2); // not asked
    expect(events.filter((e) => e.type === 'fetch' && e.reason === 'invalidated')).toHaveLength(0);

    clock.now += 7_000; // the server's wait is over: one new attempt, and a 401 may retire the token again
    expect(provider.retryAfterRejection(source, rejected)).toBe(true);
    const again = provider.refreshAfterRejection(source, rejected);
    await flush();
    expect(source.calls).toBe(3);
    const fresh = await source.issue();
    expect(await again).toBe(fresh);
  });

  it('an event hook that throws never turns a good fetch into a failure, nor changes a failure', async () => {
    const clock = { now: 1_000_000 };
    const seen: string[] = [];
    const provider = new TokenProvider({
      now: () => clock.now,
      backoff: { minMs: 1_000, maxMs: 1_000 },
      onEvent: (e) => {
        seen.push(e.type);
        throw new RangeError('Invalid time value');
      },
    });
    const source = new FakeSource(clock);
    const first = provider.getToken(source);
    await flush();
    const token = await source.issue();
    expect(await first).toBe(token);
    expect(provider.cachedToken(source)).toBe(token);
    expect(provider.stats).toMatchObject({ fetches: 1, failures: 0 });

    const rotated = new FakeSource(clock);
    const validation = provider.refresh(rotated);
    await flush();
    const renewed = await rotated.issue();
    expect(await validation).toBe(renewed);

    clock.now += 200_000; // every token expired: the next fetch fails with its own error
    const failing = expect(provider.getToken(source)).rejects.toMatchObject({ code: 'TOKEN_SERVER_ERROR' });
    await flush();
    await source.fail(new SidecarError('TOKEN_SERVER_ERROR', 'token server failed (500)'));
    await failing;
    expect(seen).toEqual(['fetch', 'fetched', 'fetch', 'fetched', 'fetch', 'fetch-failed']);
  });

  it('peek returns only usable tokens and counts hits', async () => {
    const { clock, provider, source } = setup();
    expect(provider.peek(source)).toBeUndefined();
    const first = provider.getToken(source);
    await flush();
    const token = await source.issue(10_000);
    await first;
    expect(provider.peek(source)).toBe(token);
    await provider.getToken(source);
    expect(provider.stats.hits).toBe(2);
    clock.now += 9_500;
    expect(provider.peek(source)).toBeUndefined();
    // The expiry metric's view: the token until it has expired, inside its safety margin too.
    expect(provider.expiresInMs(source)).toBe(500);
    clock.now += 500;
    expect(provider.expiresInMs(source)).toBeUndefined();
  });

  describe('refresh (new credentials under the same cache key, e.g. a rotated secret)', () => {
    /** A cached token past its refresh point, with the background refresh (old credentials) still pending. */
    async function refreshUnderWay(options: Parameters<typeof setup>[0] = {}) {
      const ctx = setup(options);
      const old = await warm(ctx.provider, ctx.source);
      ctx.clock.now += 80_000;
      expect(await ctx.provider.getToken(ctx.source)).toBe(old);
      expect(ctx.source.pending).toHaveLength(1);
      const rotated = new FakeSource(ctx.clock);
      return { ...ctx, old, rotated };
    }

    it('validates with the new credentials, not by joining a fetch under way with the old ones', async () => {
      const { provider, source, rotated, old } = await refreshUnderWay();
      const validation = provider.refresh(rotated);
      await flush();
      expect(rotated.calls).toBe(1);
      // The old secret's fetch succeeding must not pass the new secret off as valid.
      const renewed = await source.issue(100_000);
      expect(renewed).not.toBe(old);
      const rejected = expect(validation).rejects.toMatchObject({ code: 'TOKEN_REJECTED' });
      await rotated.fail(new SidecarError('TOKEN_REJECTED', 'The token server rejected the client credentials (HTTP 401).'));
      await rejected;
      // The old credentials keep serving what their own refresh brought.
      expect(provider.cachedToken(source)).toBe(renewed);
    });

    it('caches the new token; the old fetch still answers its callers but does not overwrite it', async () => {
      const { clock, provider, source, rotated } = await refreshUnderWay();
      clock.now += 16_000; // the old token is now past its safety margin: callers wait for the fetch under way
      const waiting = provider.getToken(source);
      const validation = provider.refresh(rotated);
      await flush();
      const fresh = await rotated.issue(100_000);
      expect(await validation).toBe(fresh);
      expect(provider.cachedToken(rotated)).toBe(fresh);
      const late = await source.issue(100_000);
      expect(await waiting).toBe(late);
      expect(provider.cachedToken(rotated)).toBe(fresh);
    });

    it('a fetch with the old credentials that fails after the new ones were validated: its callers get the new token, no backoff', async () => {
      const { clock, provider, source, rotated } = await refreshUnderWay({ backoff: { minMs: 300_000, maxMs: 300_000 } });
      clock.now += 16_000; // past the old token's safety margin: callers wait for the old credentials' fetch
      const waiting = provider.getToken(source);
      const validation = provider.refresh(rotated);
      await flush();
      const fresh = await rotated.issue(100_000);
      expect(await validation).toBe(fresh);
      await source.fail(new SidecarError('TOKEN_REJECTED', 'the old secret was revoked'));
      expect(await waiting).toBe(fresh);
      expect(await provider.getToken(rotated)).toBe(fresh);
      expect(provider.stats.failures).toBe(0);
    });

    it('a failed validation does not make the old credentials back off', async () => {
      const { clock, provider, source, rotated } = await refreshUnderWay({ backoff: { minMs: 300_000, maxMs: 300_000 } });
      await source.issue(100_000);
      const validation = provider.refresh(rotated);
      await flush();
      const rejected = expect(validation).rejects.toMatchObject({ code: 'TOKEN_REJECTED' });
      await rotated.fail(new SidecarError('TOKEN_REJECTED', 'rejected'));
      await rejected;
      clock.now += 200_000; // every token expired, well within a backoff: the old credentials fetch at once
      const next = provider.getToken(source);
      await flush();
      expect(source.pending).toHaveLength(1);
      const token = await source.issue(100_000);
      expect(await next).toBe(token);
    });
  });
});

describe('TokenProvider: expiry under Retry-After, backoff and 401 refreshes', () => {
  it("never hands out an expired token, though the token server's Retry-After kept it in the cache past its expiry", async () => {
    const { clock, provider, source } = setup();
    const token = await warm(provider, source); // lifetime 100 s: refresh due at 75 s, safety margin from 90 s
    clock.now += 80_000;
    expect(await provider.getToken(source)).toBe(token); // refresh in the background…
    await source.fail(new SidecarError('TOKEN_RATE_LIMITED', 'token server answered 429', { retryAfter: 300 }));
    clock.now += 5_000;
    expect(await provider.getToken(source)).toBe(token); // still usable: kept for the wait the server asked for
    clock.now += 65_000; // 150 s: expired 50 s ago, the server's wait still running
    expect(provider.cachedToken(source)).toBeUndefined(); // the hot path of every proxied request
    await expect(provider.getToken(source)).rejects.toMatchObject({ code: 'TOKEN_RATE_LIMITED' });
    expect(source.calls).toBe(2);
  });

  it('an upstream 401 refreshes at once, even while a failed refresh-ahead backs off', async () => {
    const { clock, provider, source } = setup({ backoff: { minMs: 5_000, maxMs: 20_000 } });
    const token = await warm(provider, source);
    clock.now += 80_000; // refresh due
    expect(await provider.getToken(source)).toBe(token);
    await source.fail(new SidecarError('TOKEN_UNREACHABLE', 'down')); // backoff until +5 s
    clock.now += 1_000;
    const retried = provider.refreshAfterRejection(source, token);
    await flush();
    expect(source.calls).toBe(3);
    const fresh = await source.issue();
    expect(await retried).toBe(fresh);
  });

  it("rounds a backoff's Retry-After up: senders are never told to come back before the next attempt", async () => {
    const { clock, provider, source } = setup({ backoff: { minMs: 2_500, maxMs: 20_000 } });
    const first = expect(provider.getToken(source)).rejects.toMatchObject({ code: 'TOKEN_SERVER_ERROR', retryAfter: 3 });
    await flush();
    await source.fail(new SidecarError('TOKEN_SERVER_ERROR', 'token server failed (500)'));
    await first;
    clock.now += 1_000; // 1.5 s left
    await expect(provider.getToken(source)).rejects.toMatchObject({ retryAfter: 2 });
  });

  it("a rotation's new token gets a 401 refresh of its own, however recent the old token's was", async () => {
    const { provider, source } = setup();
    const a = await warm(provider, source);
    const refreshed = provider.refreshAfterRejection(source, a);
    await flush();
    const b = await source.issue();
    expect(await refreshed).toBe(b);
    const validation = provider.refresh(source); // new credentials under the same key (only the url changed)
    await flush();
    const c = await source.issue();
    expect(await validation).toBe(c);
    expect(provider.retryAfterRejection(source, c)).toBe(true);
  });

  it('a success resets the backoff: the next failure backs off from the minimum again', async () => {
    const { clock, provider, source } = setup({ backoff: { minMs: 1_000, maxMs: 30_000 } });
    const first = expect(provider.getToken(source)).rejects.toMatchObject({ retryAfter: 1 });
    await flush();
    await source.fail(new SidecarError('TOKEN_SERVER_ERROR', 'token server failed (500)'));
    await first;
    clock.now += 1_000;
    const second = provider.getToken(source);
    await flush();
    const token = await source.issue(100_000);
    expect(await second).toBe(token);
    clock.now += 80_000; // refresh due
    expect(await provider.getToken(source)).toBe(token);
    await source.fail(new SidecarError('TOKEN_SERVER_ERROR', 'token server failed (500)'));
    clock.now += 1_000; // the minimum backoff has passed: asked again
    expect(await provider.getToken(source)).toBe(token);
    await flush();
    expect(source.calls).toBe(4);
  });

  it('keeps two tokens per route (one for the key a rotation replaces), never fewer than 64', () => {
    expect(tokenCacheSize(0)).toBe(64);
    expect(tokenCacheSize(100)).toBe(200);
  });

  it('shows no expiry for a token the upstream rejected, while its replacement is fetched', async () => {
    const { provider, source } = setup();
    const a = await warm(provider, source);
    expect(provider.expiresInMs(source)).toBe(100_000);
    const refreshed = provider.refreshAfterRejection(source, a);
    await flush();
    expect(provider.expiresInMs(source)).toBeUndefined();
    await source.issue();
    await refreshed;
    expect(provider.expiresInMs(source)).toBe(100_000);
  });
});
