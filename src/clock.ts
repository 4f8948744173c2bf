/**
 * The clock a token's lifetime is counted on.
 *
 * A token's lifetime is a duration from the moment it was issued (RFC 6749 §5.1 `expires_in`), so it is
 * counted on a clock that only moves forward with time. The wall clock does not: an NTP step back (a VM's
 * clock corrected after a resume, a host without time sync until the daemon starts) would stretch a cached
 * token past its real expiry, and every sender would meet the upstream's 401 until the token server is asked
 * again; a step forward would end it early. The monotonic clock alone stops while the machine sleeps (a
 * laptop's suspend), and a token that expired meanwhile would be handed out.
 *
 * So this clock is the monotonic clock plus the time the machine has slept. On Linux that time is measured:
 * `/proc/uptime` counts CLOCK_BOOTTIME, which runs on during a suspend, and the monotonic clock does not. It is
 * read when the wall clock has moved more than `JUMP_MS` apart from the monotonic clock between two readings
 * (a suspend moves it ahead; a step moves it too, and is then found to be no sleep), and once a second of
 * monotonic time besides, never on every reading. Where it cannot be read, a forward jump of the wall clock is
 * taken as sleep: a step forward then ends tokens early (one more token request), never late.
 *
 * Its values are epoch milliseconds, the wall clock when it was made plus the time counted since; `wallTimeOf`
 * turns one into the wall clock's time for showing it as a date.
 */
import { readFileSync } from 'node:fs';

/** A wall clock moving this much more or less than the monotonic one between two readings is looked into. */
export const JUMP_MS = 1_000;
/** Monotonic time after which the slept time is read again even without a jump of the wall clock. */
const SLEEP_CHECK_MS = 1_000;

export type Clock = () => number;

/**
 * Milliseconds the machine has slept since boot (CLOCK_BOOTTIME − CLOCK_MONOTONIC, to /proc/uptime's 10 ms), or
 * undefined where that cannot be read (not Linux).
 */
export function sleptMs(): number | undefined {
  try {
    const uptimeS = Number(readFileSync('/proc/uptime', 'latin1').split(' ', 1)[0]);
    const monotonicMs = Number(process.hrtime.bigint()) / 1e6;
    return Number.isFinite(uptimeS) ? uptimeS * 1000 - monotonicMs : undefined;
  } catch {
    return undefined;
  }
}

/** A clock as above, from a wall clock, a monotonic one and the slept time (each injected in tests). */
export function steadyClock(
  wall: Clock = () => Date.now(),
  monotonic: Clock = () => performance.now(),
  slept: () => number | undefined = sleptMs,
): Clock {
  const origin = wall();
  const monotonicOrigin = monotonic();
  const sleptOrigin = slept();
  let lastWall = origin;
  let lastMonotonic = monotonicOrigin;
  let checkedAt = monotonicOrigin;
  /** Time slept since the origin, as far as known (never less than before: the clock never goes back). */
  let asleep = 0;
  return () => {
    const w = wall();
    const m = Math.max(lastMonotonic, monotonic());
    const apart = w - lastWall - (m - lastMonotonic);
    lastWall = w;
    lastMonotonic = m;
    if (sleptOrigin === undefined) {
      if (apart > JUMP_MS) asleep += apart;
    } else if (Math.abs(apart) > JUMP_MS || m - checkedAt >= SLEEP_CHECK_MS) {
      checkedAt = m;
      const now = slept();
      if (now !== undefined) asleep = Math.max(asleep, now - sleptOrigin);
    }
    // From the origins, not summed step by step: no rounding piles up on a number as large as an epoch.
    return origin + (m - monotonicOrigin) + asleep;
  };
}

/** The process's clock for token lifetimes (the token client's and the token cache's default). */
export const tokenClock: Clock = steadyClock();

/** A time on `clock` as the wall clock's time, for showing it as a date (log lines, `check`). */
export function wallTimeOf(time: number, clock: Clock = tokenClock, wall: Clock = Date.now): number {
  return wall() + (time - clock());
}
