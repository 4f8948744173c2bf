/**
 * At most one log line per condition and interval, for conditions every request meets during an outage (an
 * upstream refusing every token, a CSRF fetch failing): the first line at once, the ones held back counted into
 * the next that is let through. Each request's own access line still says what happened to it.
 */
export class LogPace {
  readonly #last = new Map<string, { at: number; skipped: number }>();

  /** `keys` must be bounded (route names, not anything a sender chooses). */
  constructor(
    private readonly intervalMs: number,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** Undefined while the last line for `key` is younger than the interval; else how many were held back since it. */
  take(key: string): { skipped: number } | undefined {
    const now = this.now();
    const last = this.#last.get(key);
    if (last !== undefined && now - last.at < this.intervalMs) {
      last.skipped++;
      return undefined;
    }
    this.#last.set(key, { at: now, skipped: 0 });
    return { skipped: last?.skipped ?? 0 };
  }
}
