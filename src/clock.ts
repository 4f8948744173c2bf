/**
 * The clock a token's lifetime is counted on.
 *
 * A token's lifetime is a duration from the moment it was issued (RFC 6749 §5.1 `expires_in`), so it is
 * counted on a clock that only moves forward with time. The wall clock does not: an NTP step back (a VM's
 * clock corrected after a resume, a host without time sync until the daemon starts) would stretch a cached
 * token past its real expiry, and every sender would meet the upstream's 401 until the token server is asked
 * again. The monotonic clock alone stops while the machine sleeps (a laptop's suspend) and while a VM is
 * paused (Docker Desktop, WSL2, a stopped QEMU guest: there CLOCK_BOOTTIME stops too, and only the wall clock,
 * stepped on resume, shows the gap), and a token that expired meanwhile would be handed out.
 *
 * So this clock follows the monotonic clock, and takes a forward jump of the wall clock beyond it (more than
 * `JUMP_MS` between two readings) as time gone by. That errs one way only: a step forward ends tokens early,
 * which costs a token request, never a token used late. One case is left: a step back and a sleep between the
 * same two readings count only their difference; the upstream's 401 then retires the token.
 *
 * Its values are epoch milliseconds, the wall clock when it was made plus the time counted since; `wallTimeOf`
 * turns one into the wall clock's time for showing it as a date.
 */

/** A forward jump of the wall clock against the monotonic one larger than this is taken as time gone by. */
export const JUMP_MS = 1_000;

export type Clock = () => number;

/** A clock as above, from a wall clock and a monotonic one (injected in tests). */
export function steadyClock(wall: Clock = () => Date.now(), monotonic: Clock = () => performance.now()): Clock {
  const origin = wall();
  const monotonicOrigin = monotonic();
  let lastWall = origin;
  let lastMonotonic = monotonicOrigin;
  /** Forward jumps of the wall clock so far, beyond what the monotonic clock counted. */
  let jumped = 0;
  return () => {
    const w = wall();
    const m = Math.max(lastMonotonic, monotonic());
    const ahead = w - lastWall - (m - lastMonotonic);
    if (ahead > JUMP_MS) jumped += ahead;
    lastWall = w;
    lastMonotonic = m;
    // From the origins, not summed step by step: no rounding piles up on a number as large as an epoch.
    return origin + (m - monotonicOrigin) + jumped;
  };
}

/** The process's clock for token lifetimes (the token client's and the token cache's default). */
export const tokenClock: Clock = steadyClock();

/** A time on `clock` as the wall clock's time, for showing it as a date (log lines, `check`). */
export function wallTimeOf(time: number, clock: Clock = tokenClock, wall: Clock = Date.now): number {
  return wall() + (time - clock());
}
