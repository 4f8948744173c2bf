import { describe, expect, it } from 'vitest';
import { PeakTracker } from '../../bench/lib/proc.js';
import { LogWatch, series, type Sample } from '../../bench/lib/soak-report.js';
import type { SoakProgress } from '../../bench/tools/soak-client.js';

/** A 508-s run: one sample and one cumulative progress line per second, 100 requests a second, RSS rising by 1 MB a minute. */
function run(seconds: number): { samples: Sample[]; progress: SoakProgress[] } {
  const samples: Sample[] = [];
  const progress: SoakProgress[] = [];
  for (let t = 1; t <= seconds; t++) {
    samples.push({ t, rss: 100e6 + Math.floor(t / 60) * 1e6, fds: 50, cpuMs: t * 500 });
    progress.push({ type: 'progress', t, ok: t * 100, failed: t === seconds ? 1 : 0, byKind: {}, failures: [] });
  }
  return { samples, progress };
}

describe('soak series', () => {
  it('covers every second once: a last sliver shorter than half an interval joins the row before it', () => {
    const { samples, progress } = run(508);
    const rows = series(samples, progress, 60, [0.5, 45, 500]);
    expect(rows.map((r) => r.t)).toEqual([60, 120, 180, 240, 300, 360, 420, 508]);
    expect(rows.reduce((sum, r) => sum + r.requests, 0)).toBe(508 * 100 + 1);
    expect(rows.at(-1)).toMatchObject({ failed: 1, tokenRequests: 3 });
    // (from, to] windows: the sample at 120 s (RSS of minute 2) is in the row ending at 120 only.
    expect(rows[0]?.rssMaxMB).toBe(101);
    expect(rows[1]?.rssMaxMB).toBe(102);
  });

  it('keeps a last interval of at least half an interval as a row of its own', () => {
    const { samples, progress } = run(150);
    expect(series(samples, progress, 60, []).map((r) => r.t)).toEqual([60, 120, 150]);
  });
});

describe('LogWatch', () => {
  it('counts warn/error/fatal lines across chunk boundaries, once each, and finds messages', () => {
    const lines = [
      '{"level":"info","msg":"request"}',
      '{"level":"warn","msg":"token refresh failed"}',
      '{"level":"info","msg":"credentials rotated"}',
      '{"level":"error","msg":"upstream unreachable"}',
    ];
    const text = `${lines.join('\n')}\n`;
    const watch = new LogWatch();
    for (let i = 0; i < text.length; i += 7) watch.feed(text.slice(i, i + 7));
    expect(watch.counts).toEqual({ warn: 1, error: 1, fatal: 0 });
    expect(watch.samples).toEqual(['warn: token refresh failed', 'error: upstream unreachable']);
    expect(watch.seen('credentials rotated')).toBe(true);
    expect(watch.seen('never logged')).toBe(false);
  });
});

describe('PeakTracker', () => {
  it('has no peak for a process it could never read, not 0 bytes', () => {
    expect(new PeakTracker(2 ** 22 + 12_345).stop()).toBeUndefined();
    expect(new PeakTracker(process.pid).stop()).toBeGreaterThan(10e6);
  });
});
