import { afterEach, describe, expect, it, vi } from 'vitest';
import { JUMP_MS, steadyClock, tokenClock, wallTimeOf } from '../../src/clock.js';
import type { AccessToken } from '../../src/token-client.js';
import { TokenProvider, type TokenSource } from '../../src/token-provider.js';

const START = 1_700_000_000_000;

/** A wall clock with whole milliseconds and a monotonic one with fractions, both moved by the test. */
function clocks() {
  const c = { wall: START, mono: 5_000.25 };
  const clock = steadyClock(
    () => Math.floor(c.wall),
    () => c.mono,
  );
  const pass = (ms: number) => {
    c.wall += ms;
    c.mono += ms;
  };
  /** Asleep (or a paused VM): the monotonic clock stands still, the wall clock goes on. */
  const sleep = (ms: number) => {
    c.wall += ms;
  };
  return { c, clock, pass, sleep };
}

describe('steadyClock', () => {
  it('starts at the wall clock and follows the monotonic one, without gaining on whole-millisecond wall readings', () => {
    const { c, clock, pass } = clocks();
    expect(clock()).toBe(c.wall);
    for (let i = 0; i < 10_000; i++) {
      pass(0.3);
      clock();
    }
    expect(clock()).toBeCloseTo(START + 3_000, 6);
  });

  it('does not go back with a wall clock stepped back, and keeps counting from there', () => {
    const { c, clock, pass } = clocks();
    pass(10_000);
    c.wall -= 3_600_000; // NTP steps the clock back an hour
    expect(clock()).toBe(START + 10_000);
    pass(60_000);
    expect(clock()).toBe(START + 70_000);
  });

  it('counts the time the machine slept or the VM was paused, seen as a forward jump of the wall clock', () => {
    const { clock, pass, sleep } = clocks();
    clock();
    sleep(2 * 3_600_000);
    expect(clock()).toBe(START + 7_200_000);
    pass(1_000);
    expect(clock()).toBe(START + 7_201_000);
  });

  it('takes a forward jump beyond the tolerance as time gone by (a step forward ends tokens early, never late)', () => {
    const { c, clock, pass } = clocks();
    clock();
    pass(1_000);
    c.wall += JUMP_MS; // within the tolerance: slewing or reading jitter
    expect(clock()).toBe(START + 1_000);
    c.wall += JUMP_MS + 1;
    expect(clock()).toBe(START + 1_000 + JUMP_MS + 1);
  });

  it('a step back, then a sleep after a reading, counts the sleep whole', () => {
    const { c, clock, pass, sleep } = clocks();
    clock();
    pass(600_000);
    c.wall -= 40 * 60_000; // stepped back 40 min
    clock(); // a request in between
    sleep(55 * 60_000); // asleep 55 min
    expect(clock()).toBe(START + 600_000 + 55 * 60_000);
  });

  it('shows a time as the wall clock’s', () => {
    const { c, clock, pass } = clocks();
    pass(5_000);
    c.wall -= 3_600_000;
    const now = clock();
    expect(wallTimeOf(now + 60_000, clock, () => c.wall)).toBe(c.wall + 60_000);
  });

});

describe('the token cache on a steady clock', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  /** A source whose tokens live `lifetimeMs` on `clock`, as the token client issues them. */
  function source(clock: () => number, lifetimeMs: number): TokenSource & { calls: number } {
    return {
      cacheKey: 'key-1',
      calls: 0,
      async fetchToken(): Promise<AccessToken> {
        this.calls++;
        const issuedAt = clock();
        return { value: `token-${this.calls}`, issuedAt, expiresAt: issuedAt + lifetimeMs, scopes: [], lifetimeSource: 'expires_in' };
      },
    };
  }

  it('a token lives its lifetime of monotonic time, whatever the wall clock does meanwhile', async () => {
    const { c, clock, pass } = clocks();
    const provider = new TokenProvider({ now: clock });
    const s = source(clock, 600_000);
    await provider.getToken(s);
    pass(300_000);
    c.wall -= 3_600_000; // stepped back an hour
    pass(299_000);
    expect(provider.expiresInMs(s)).toBe(1_000);
    pass(1_000);
    expect(provider.expiresInMs(s)).toBeUndefined();
    expect((await provider.getToken(s)).value).toBe('token-2');
  });

  it('a token that expired while the machine slept is not handed out after it wakes', async () => {
    const { clock, sleep } = clocks();
    const provider = new TokenProvider({ now: clock });
    const s = source(clock, 600_000);
    await provider.getToken(s);
    sleep(3_600_000);
    expect(provider.cachedToken(s)).toBeUndefined();
    expect((await provider.getToken(s)).value).toBe('token-2');
  });

  it('by default: a wall clock stepped back an hour does not keep a token alive past its lifetime', async () => {
    // Only Date is faked: the monotonic clock runs on as it does, so the token's lifetime is a few ms here.
    vi.useFakeTimers({ toFake: ['Date'], now: Date.now() });
    const provider = new TokenProvider();
    const s = source(tokenClock, 5);
    const first = await provider.getToken(s);
    vi.setSystemTime(Date.now() - 3_600_000);
    const end = performance.now() + 10;
    while (performance.now() < end) {
      // the token's 5 ms pass on the monotonic clock
    }
    expect(provider.cachedToken(s)).toBeUndefined();
    expect((await provider.getToken(s)).value).not.toBe(first.value);
  });
});
