import { afterEach, describe, expect, it, vi } from 'vitest';
import { JUMP_MS, sleptMs, steadyClock, tokenClock, wallTimeOf } from '../../src/clock.js';
import type { AccessToken } from '../../src/token-client.js';
import { TokenProvider, type TokenSource } from '../../src/token-provider.js';

const START = 1_700_000_000_000;

/**
 * A wall clock with whole milliseconds, a monotonic one with fractions and the time slept (undefined: not
 * measurable, as off Linux), all moved by the test; `reads` counts the readings of the slept time.
 */
function clocks(measured = true) {
  const c = { wall: START, mono: 5_000.25, slept: 300_000, reads: 0 };
  const clock = steadyClock(
    () => Math.floor(c.wall),
    () => c.mono,
    () => {
      c.reads++;
      return measured ? c.slept : undefined;
    },
  );
  const pass = (ms: number) => {
    c.wall += ms;
    c.mono += ms;
  };
  const sleep = (ms: number) => {
    c.wall += ms;
    c.slept += ms;
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

  for (const measured of [true, false]) {
    it(`does not go back with a wall clock stepped back, and keeps counting from there (sleep ${measured ? 'measured' : 'not measurable'})`, () => {
      const { c, clock, pass } = clocks(measured);
      pass(10_000);
      c.wall -= 3_600_000; // NTP steps the clock back an hour
      expect(clock()).toBe(START + 10_000);
      pass(60_000);
      expect(clock()).toBe(START + 70_000);
    });

    it(`counts the time the machine slept (sleep ${measured ? 'measured' : 'not measurable'})`, () => {
      const { clock, pass, sleep } = clocks(measured);
      clock();
      sleep(2 * 3_600_000);
      expect(clock()).toBe(START + 7_200_000);
      pass(1_000);
      expect(clock()).toBe(START + 7_201_000);
    });
  }

  it('where the time slept is measured, a step forward is no sleep, and a flapping wall clock counts nothing twice', () => {
    const { c, clock, pass } = clocks();
    clock();
    c.wall += 3_600_000; // stepped forward an hour
    expect(clock()).toBe(START);
    for (let i = 0; i < 10; i++) {
      c.wall -= 5_000;
      pass(100);
      clock();
      c.wall += 5_000;
      pass(100);
      clock();
    }
    expect(clock()).toBe(START + 2_000);
  });

  it('where the time slept is measured, a step back and a sleep between two readings still count the sleep whole', () => {
    const { c, clock, pass, sleep } = clocks();
    clock();
    pass(600_000);
    clock();
    c.wall -= 40 * 60_000; // stepped back 40 min …
    sleep(55 * 60_000); // … then asleep 55 min, with no reading in between
    expect(clock()).toBe(START + 600_000 + 55 * 60_000);
  });

  it('where it cannot be measured, a forward jump of the wall clock beyond the tolerance is taken as sleep', () => {
    const { c, clock, pass } = clocks(false);
    clock();
    pass(1_000);
    c.wall += JUMP_MS; // within the tolerance: slewing or reading jitter
    expect(clock()).toBe(START + 1_000);
    c.wall += JUMP_MS + 1;
    expect(clock()).toBe(START + 1_000 + JUMP_MS + 1);
  });

  it('reads the time slept once a second of monotonic time, and at a jump of the wall clock, not at every reading', () => {
    const { c, clock, pass } = clocks();
    const before = c.reads;
    for (let i = 0; i < 1_000; i++) {
      pass(1);
      clock();
    }
    expect(c.reads - before).toBe(1);
    c.wall += 2 * JUMP_MS;
    clock();
    expect(c.reads - before).toBe(2);
  });

  it('shows a time as the wall clock’s', () => {
    const { c, clock, pass } = clocks();
    pass(5_000);
    c.wall -= 3_600_000;
    const now = clock();
    expect(wallTimeOf(now + 60_000, clock, () => c.wall)).toBe(c.wall + 60_000);
  });

  it('measures the time slept on Linux (CLOCK_BOOTTIME against CLOCK_MONOTONIC)', () => {
    const slept = sleptMs();
    if (process.platform !== 'linux') return expect(slept).toBeUndefined();
    expect(slept).toBeGreaterThan(-50); // /proc/uptime has hundredths of a second
    expect(Math.abs(sleptMs()! - slept!)).toBeLessThan(50);
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

  it('by default: a wall clock stepped forward an hour does not end a cached token where the time slept is measured', async () => {
    vi.useFakeTimers({ toFake: ['Date'], now: Date.now() });
    const provider = new TokenProvider();
    const s = source(tokenClock, 600_000);
    await provider.getToken(s);
    vi.setSystemTime(Date.now() + 3_600_000);
    // Off Linux the jump is taken as sleep: the token ends early (one more token request), never late.
    expect(provider.cachedToken(s)?.value).toBe(sleptMs() === undefined ? undefined : 'token-1');
  });
});
