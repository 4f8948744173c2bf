import { afterEach, describe, expect, it, vi } from 'vitest';
import { JUMP_MS, steadyClock, tokenClock } from '../../src/clock.js';
import type { AccessToken } from '../../src/token-client.js';
import { TokenProvider, type TokenSource } from '../../src/token-provider.js';

/** A wall clock with whole milliseconds and a monotonic one with fractions, both moved by the test. */
function clocks(start = 1_700_000_000_000) {
  const c = { wall: start, mono: 5_000.25 };
  const clock = steadyClock(
    () => Math.floor(c.wall),
    () => c.mono,
  );
  const pass = (ms: number) => {
    c.wall += ms;
    c.mono += ms;
  };
  return { c, clock, pass };
}

describe('steadyClock', () => {
  it('starts at the wall clock and follows the monotonic one, without gaining on whole-millisecond wall readings', () => {
    const { c, clock, pass } = clocks();
    expect(clock()).toBe(c.wall);
    for (let i = 0; i < 10_000; i++) {
      pass(0.3);
      clock();
    }
    expect(clock()).toBeCloseTo(1_700_000_000_000 + 3_000, 6);
  });

  it('does not go back with a wall clock stepped back, and keeps counting from there', () => {
    const { c, clock, pass } = clocks();
    const start = clock();
    pass(10_000);
    c.wall -= 3_600_000; // NTP steps the clock back an hour
    expect(clock()).toBe(start + 10_000);
    pass(60_000);
    expect(clock()).toBe(start + 70_000);
  });

  it('takes a forward jump of the wall clock beyond the monotonic one: a suspend, or a step forward', () => {
    const { c, clock, pass } = clocks();
    const start = clock();
    c.wall += 2 * 3_600_000; // asleep for two hours: the monotonic clock stood still
    expect(clock()).toBe(start + 7_200_000);
    pass(1_000);
    c.wall += JUMP_MS; // within the tolerance: slewing or reading jitter, not counted
    expect(clock()).toBe(start + 7_201_000);
    c.wall += JUMP_MS + 1;
    expect(clock()).toBe(start + 7_201_000 + JUMP_MS + 1);
  });
});

describe('the token cache on the default clock', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  /** A source whose tokens live `lifetimeMs` on the token clock, as the token client issues them. */
  function source(lifetimeMs: number): TokenSource & { calls: number } {
    return {
      cacheKey: 'key-1',
      calls: 0,
      async fetchToken(): Promise<AccessToken> {
        this.calls++;
        const issuedAt = tokenClock();
        return { value: `token-${this.calls}`, issuedAt, expiresAt: issuedAt + lifetimeMs, scopes: [], lifetimeSource: 'expires_in' };
      },
    };
  }

  it('a wall clock stepped back does not stretch a cached token past its lifetime', async () => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'], now: Date.now() });
    const provider = new TokenProvider();
    const s = source(600_000);
    expect((await provider.getToken(s)).value).toBe('token-1');
    vi.setSystemTime(Date.now() - 3_600_000); // the wall clock an hour back
    vi.advanceTimersByTime(600_000); // the token's ten minutes pass
    expect(provider.cachedToken(s)).toBeUndefined();
    expect((await provider.getToken(s)).value).toBe('token-2');
  });

  it('a token that expired while the machine slept is not handed out after it wakes', async () => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'], now: Date.now() });
    const provider = new TokenProvider();
    const s = source(600_000);
    await provider.getToken(s);
    vi.setSystemTime(Date.now() + 3_600_000); // an hour asleep: the monotonic clock stood still
    expect(provider.cachedToken(s)).toBeUndefined();
    expect((await provider.getToken(s)).value).toBe('token-2');
  });
});
