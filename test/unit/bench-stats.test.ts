import { describe, expect, it } from 'vitest';
import {
  expectedTokenRequests,
  flatness,
  slope,
  histogramPercentile,
  max,
  median,
  mergeHistogram,
  percentile,
  ratio,
  lateRefreshes,
  refreshWindowMs,
  rotate,
  round,
  spread,
  tokenGapsOk,
} from '../../bench/lib/stats.js';

describe('bench statistics', () => {
  it('median of odd and even counts, ignoring non-finite values', () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    expect(median([5, Number.NaN, 1])).toBe(3);
    expect(median([])).toBeUndefined();
  });

  it('max ignores non-finite values', () => {
    expect(max([1, 7, Number.NaN, 3])).toBe(7);
    expect(max([])).toBeUndefined();
  });

  it('ratio needs a positive denominator', () => {
    expect(ratio(9, 10)).toBe(0.9);
    expect(ratio(1, 0)).toBeUndefined();
    expect(ratio(undefined, 2)).toBeUndefined();
    expect(ratio(2, undefined)).toBeUndefined();
  });

  it('nearest-rank percentiles', () => {
    const samples = [4, 1, 3, 2];
    expect(percentile(samples, 50)).toBe(2);
    expect(percentile(samples, 75)).toBe(3);
    expect(percentile(samples, 100)).toBe(4);
    expect(percentile(Array.from({ length: 1000 }, (_, i) => i + 1), 99)).toBe(990);
    expect(percentile([], 50)).toBeUndefined();
    expect(() => percentile([1], 0)).toThrow(RangeError);
  });

  it('spread is the range relative to the median', () => {
    expect(spread([90, 100, 110])).toBeCloseTo(0.2);
    expect(spread([1])).toBeUndefined();
  });

  it("refresh window follows the token cache's constants: 75 ± 5 % of the lifetime, never inside the margin (10 %, at most 60 s)", () => {
    const window = refreshWindowMs(20_000);
    expect(window.earliestMs).toBeCloseTo(14_000);
    expect(window.middleMs).toBe(15_000);
    expect(window.latestMs).toBeCloseTo(16_000);
    expect(refreshWindowMs(3_600_000).middleMs).toBe(2_700_000);
    // The margin wins when the window reaches into it.
    expect(refreshWindowMs(100_000, 0.9, 0.05)).toMatchObject({ middleMs: 90_000, latestMs: 90_000 });
    expect(refreshWindowMs(100_000, 0.9, 0.05).earliestMs).toBeCloseTo(85_000);
  });

  it('expected token requests per segment, as a range near boundaries', () => {
    // 60 s of traffic with a 15 s interval: the first request, then at 15, 30, 45 (60 is the boundary).
    const fixed = { earliestMs: 15_000, middleMs: 15_000, latestMs: 15_000 };
    expect(expectedTokenRequests([59_000], fixed, 500)).toEqual({ min: 4, max: 4 });
    expect(expectedTokenRequests([60_000], fixed, 500)).toEqual({ min: 4, max: 5 });
    // A rotation in the middle starts a second segment with its own first request.
    expect(expectedTokenRequests([31_000, 29_000], fixed, 500)).toEqual({ min: 3 + 2, max: 3 + 2 });
    // Refreshes drawn from 14–16 s: at least one per 16 s, at most one per 14 s.
    expect(expectedTokenRequests([100_000], { earliestMs: 14_000, middleMs: 15_000, latestMs: 16_000 }, 500)).toEqual({ min: 1 + 6, max: 1 + 7 });
    expect(() => expectedTokenRequests([1], { earliestMs: 0, middleMs: 0, latestMs: 0 })).toThrow(RangeError);
  });

  it('token gaps: no two requests within one refresh interval, except right after a reset', () => {
    expect(tokenGapsOk([0, 15_000, 30_100], 15_000)).toBe(true);
    expect(tokenGapsOk([0, 15_000, 20_000], 15_000)).toBe(false);
    expect(tokenGapsOk([0, 15_000, 20_000], 15_000, [19_990])).toBe(true);
    expect(tokenGapsOk([], 15_000)).toBe(true);
  });

  it('late refreshes: gaps past the latest refresh point, except across a reset', () => {
    expect(lateRefreshes([0, 14_000, 30_200], 16_000)).toBe(0);
    // 16.4 s of a 20-s lifetime: 82 %, past the 80 % the window ends at.
    expect(lateRefreshes([0, 14_000, 30_400], 16_000)).toBe(1);
    expect(lateRefreshes([0, 14_000, 30_400], 16_000, [20_000])).toBe(0);
    expect(lateRefreshes([], 16_000)).toBe(0);
  });

  it('slope is the least-squares trend (MB per minute of a leak), undefined without two distinct x', () => {
    expect(slope([[0, 140], [1, 141], [2, 142], [3, 143]])).toBeCloseTo(1);
    // A leak of 1 MB/min under a ±4 MB swing (alternating, which leans against the trend here) still shows.
    expect(slope([[0, 144], [1, 137], [2, 146], [3, 139], [4, 148], [5, 141], [6, 150], [7, 143]])).toBeCloseTo(0.619, 3);
    expect(slope([[0, 150], [1, 150]])).toBe(0);
    expect(slope([[1, 150]])).toBeUndefined();
    expect(slope([[1, 150], [1, 160]])).toBeUndefined();
  });

  it('flatness compares the first and last window with a relative or absolute allowance', () => {
    expect(flatness([100, 120, 105], { relative: 0.1, absolute: 0 })?.flat).toBe(true);
    expect(flatness([100, 100, 111], { relative: 0.1, absolute: 0 })?.flat).toBe(false);
    expect(flatness([20, 23], { relative: 0, absolute: 4 })).toMatchObject({ flat: true, delta: 3 });
    expect(flatness([1], { relative: 0.1, absolute: 0 })).toBeUndefined();
  });

  it('rotate gives each contender a turn at the front', () => {
    expect(rotate(['a', 'b', 'c'], 0)).toEqual(['a', 'b', 'c']);
    expect(rotate(['a', 'b', 'c'], 1)).toEqual(['b', 'c', 'a']);
    expect(rotate(['a', 'b', 'c'], 5)).toEqual(['c', 'a', 'b']);
    expect(rotate([], 3)).toEqual([]);
  });

  it('round keeps undefined for missing values', () => {
    expect(round(1.23456, 2)).toBe(1.23);
    expect(round(undefined)).toBeUndefined();
    expect(round(Number.NaN)).toBeUndefined();
  });

  it('merges histograms and takes the same nearest-rank percentile as of the samples they count', () => {
    const h = new Map<number, number>();
    mergeHistogram(h, [[100, 3], [200, 1]]);
    mergeHistogram(h, [[100, 1], [900, 1], [150, 4]]);
    expect([...h].sort((a, b) => a[0] - b[0])).toEqual([[100, 4], [150, 4], [200, 1], [900, 1]]);
    const samples = [...h].flatMap(([v, c]) => Array<number>(c).fill(v));
    for (const p of [1, 40, 50, 80, 90, 99, 100]) expect(histogramPercentile(h, p)).toBe(percentile(samples, p));
    expect(histogramPercentile(new Map(), 50)).toBeUndefined();
    expect(() => histogramPercentile(h, 0)).toThrow(RangeError);
  });
});
