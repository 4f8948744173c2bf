/**
 * Pure arithmetic for the benchmark and the soak: medians over rounds, ratios
 * between contenders, percentiles of latency samples, token-refresh
 * expectations and the "is this series flat" verdict. No I/O, unit-tested in
 * `test/unit/bench-stats.test.ts`.
 */
import { REFRESH_AHEAD, REFRESH_JITTER } from '../../src/token-provider.js';

/** Median of the finite values; `undefined` when there are none. */
export function median(values: readonly number[]): number | undefined {
  const sorted = values.filter(Number.isFinite).sort((a, b) => a - b);
  const n = sorted.length;
  if (n === 0) return undefined;
  const mid = n >> 1;
  return n % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** Largest finite value; `undefined` when there is none. */
export function max(values: readonly number[]): number | undefined {
  const finite = values.filter(Number.isFinite);
  return finite.length === 0 ? undefined : Math.max(...finite);
}

/** `a / b`, or `undefined` when either is missing or `b` is not positive. */
export function ratio(a: number | undefined, b: number | undefined): number | undefined {
  if (a === undefined || b === undefined || !Number.isFinite(a) || !Number.isFinite(b) || b <= 0) return undefined;
  return a / b;
}

/**
 * Nearest-rank percentile (0 < p ≤ 100) of unsorted samples; `undefined` for
 * no samples. p50 of [1, 2, 3, 4] is 2, p100 the maximum.
 */
export function percentile(samples: readonly number[], p: number): number | undefined {
  if (samples.length === 0) return undefined;
  if (!(p > 0 && p <= 100)) throw new RangeError(`percentile must be in (0, 100], got ${p}`);
  const sorted = [...samples].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
}

/** Add `[value, count]` pairs to a histogram (value → count). */
export function mergeHistogram(into: Map<number, number>, entries: ReadonlyArray<readonly [number, number]>): void {
  for (const [value, count] of entries) into.set(value, (into.get(value) ?? 0) + count);
}

/** Nearest-rank percentile of a histogram (value → count), as `percentile` of the samples it counts. */
export function histogramPercentile(histogram: ReadonlyMap<number, number>, p: number): number | undefined {
  if (!(p > 0 && p <= 100)) throw new RangeError(`percentile must be in (0, 100], got ${p}`);
  const values = [...histogram.keys()].sort((a, b) => a - b);
  const total = values.reduce((sum, v) => sum + histogram.get(v)!, 0);
  if (total === 0) return undefined;
  const rank = Math.max(1, Math.ceil((p / 100) * total));
  let seen = 0;
  for (const v of values) {
    seen += histogram.get(v)!;
    if (seen >= rank) return v;
  }
  return values.at(-1);
}

/** (max − min) / median: how much the rounds disagree; `undefined` below two values. */
export function spread(values: readonly number[]): number | undefined {
  const finite = values.filter(Number.isFinite);
  if (finite.length < 2) return undefined;
  const m = median(finite);
  if (m === undefined || m === 0) return undefined;
  return (Math.max(...finite) - Math.min(...finite)) / Math.abs(m);
}

/** When a token is refreshed, from its issue: drawn per token between the earliest and the latest point. */
export interface RefreshWindow {
  earliestMs: number;
  /** The window's middle (`REFRESH_AHEAD`): the mean refresh period. */
  middleMs: number;
  latestMs: number;
}

/**
 * When the sidecar's token cache refreshes a token of `lifetimeMs`: at `REFRESH_AHEAD` ± `REFRESH_JITTER` of the
 * lifetime, drawn per token, but never later than the safety margin before expiry (10 % of the lifetime, at most
 * 60 s). The defaults are `TokenProvider`'s own constants.
 */
export function refreshWindowMs(lifetimeMs: number, refreshAhead = REFRESH_AHEAD, jitter = REFRESH_JITTER, maxMarginMs = 60_000): RefreshWindow {
  const latestPossible = lifetimeMs - Math.min(maxMarginMs, lifetimeMs * 0.1);
  const at = (fraction: number) => Math.min(lifetimeMs * fraction, latestPossible);
  return { earliestMs: at(refreshAhead - jitter), middleMs: at(refreshAhead), latestMs: at(refreshAhead + jitter) };
}

/**
 * Token requests a cache with one-request-per-lifetime behaviour makes while serving continuously: one at the
 * start of each segment (start, credential rotation) plus one per refresh elapsed within it — at most one per
 * earliest, at least one per latest refresh point of the window. A segment ending within `slackMs` of a boundary
 * may or may not have made that request yet, so the answer is a range.
 */
export function expectedTokenRequests(segmentsMs: readonly number[], window: RefreshWindow, slackMs = 1_000): { min: number; max: number } {
  if (!(window.earliestMs > 0)) throw new RangeError('interval must be positive');
  let min = 0;
  let maxCount = 0;
  for (const length of segmentsMs) {
    const low = Math.floor(Math.max(0, length - slackMs) / window.latestMs);
    const high = Math.floor((length + slackMs) / window.earliestMs);
    min += 1 + low;
    maxCount += 1 + high;
  }
  return { min, max: maxCount };
}

/**
 * True when consecutive token requests are never closer than the earliest refresh point `earliestMs` (minus
 * `slackMs`): no token was fetched twice within a lifetime. `resets` are instants (e.g. a credential rotation)
 * after which one early request is expected.
 */
export function tokenGapsOk(requestTimesMs: readonly number[], earliestMs: number, resets: readonly number[] = [], slackMs = 250): boolean {
  return gaps(requestTimesMs, resets, slackMs).every((gap) => gap >= earliestMs - slackMs);
}

/**
 * Consecutive token requests further apart than the latest refresh point `latestMs` (plus `slackMs`, for the
 * request that finds the token due and the event loop's lag): a token refreshed late. Meaningful only under
 * continuous traffic (the soak), since a token is refreshed by the first request past its refresh point. The
 * slack is small against the window (250 ms of a 20-s lifetime's 14–16 s): a refresh at 82 % is late.
 */
export function lateRefreshes(requestTimesMs: readonly number[], latestMs: number, resets: readonly number[] = [], slackMs = 250): number {
  return gaps(requestTimesMs, resets, slackMs).filter((gap) => gap > latestMs + slackMs).length;
}

/** The gaps between consecutive requests, but those across a reset. */
function gaps(requestTimesMs: readonly number[], resets: readonly number[], slackMs: number): number[] {
  const times = [...requestTimesMs].sort((a, b) => a - b);
  const out: number[] = [];
  for (let i = 1; i < times.length; i++) {
    const prev = times[i - 1]!;
    const cur = times[i]!;
    if (!resets.some((r) => r > prev - slackMs && r <= cur + slackMs)) out.push(cur - prev);
  }
  return out;
}

export interface FlatnessVerdict {
  flat: boolean;
  first: number;
  last: number;
  /** last − first */
  delta: number;
  /** (last − first) / first */
  relative: number;
}

/**
 * Compares the first and the last window of a series (e.g. per-minute RSS
 * maxima): flat when the last exceeds the first by at most
 * `max(relative × first, absolute)`.
 */
export function flatness(series: readonly number[], tolerance: { relative: number; absolute: number }): FlatnessVerdict | undefined {
  if (series.length < 2) return undefined;
  const first = series[0]!;
  const last = series[series.length - 1]!;
  const delta = last - first;
  const allowed = Math.max(tolerance.relative * first, tolerance.absolute);
  return { flat: delta <= allowed, first, last, delta, relative: first === 0 ? 0 : delta / first };
}

/** Least-squares slope of y over x (undefined for fewer than 2 points or a single x). */
export function slope(points: ReadonlyArray<readonly [number, number]>): number | undefined {
  if (points.length < 2) return undefined;
  const mx = points.reduce((s, [x]) => s + x, 0) / points.length;
  const my = points.reduce((s, [, y]) => s + y, 0) / points.length;
  const sxx = points.reduce((s, [x]) => s + (x - mx) ** 2, 0);
  if (sxx === 0) return undefined;
  return points.reduce((s, [x, y]) => s + (x - mx) * (y - my), 0) / sxx;
}

/** The rotated order for round `round`: A B C, then B C A, then C A B… */
export function rotate<T>(items: readonly T[], round: number): T[] {
  if (items.length === 0) return [];
  const k = ((round % items.length) + items.length) % items.length;
  return [...items.slice(k), ...items.slice(0, k)];
}

/** Round to `digits` decimals (for tables and JSON). */
export function round(value: number | undefined, digits = 0): number | undefined {
  if (value === undefined || !Number.isFinite(value)) return undefined;
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}
