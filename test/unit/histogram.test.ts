import { Histogram, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { FastHistogram } from '../../src/histogram.js';

const BUCKETS = [0.001, 0.01, 0.1, 1];

describe('FastHistogram', () => {
  it('writes exactly what prom-client’s Histogram writes for the same observations', async () => {
    const ours = new Registry();
    const theirs = new Registry();
    const fast = new FastHistogram({ name: 'x_seconds', help: 'Some latency.', buckets: BUCKETS, registers: [ours] });
    const reference = new Histogram({ name: 'x_seconds', help: 'Some latency.', labelNames: ['route', 'status_class'], buckets: BUCKETS, registers: [theirs] });
    const a = fast.series({ route: 'a', status_class: '2xx' });
    const b = fast.series({ route: 'b', status_class: '5xx' });
    // On a bound, just above it, above every bound, and zero.
    const observations: Array<[typeof a, string, string, number]> = [
      [a, 'a', '2xx', 0.001],
      [a, 'a', '2xx', 0.0011],
      [a, 'a', '2xx', 0],
      [b, 'b', '5xx', 0.5],
      [b, 'b', '5xx', 7],
      [a, 'a', '2xx', 1],
    ];
    for (const [series, route, status_class, value] of observations) {
      fast.observe(series, value);
      reference.observe({ route, status_class }, value);
    }
    const text = await ours.metrics();
    expect(text).toBe(await theirs.metrics());
    expect(text).toContain('x_seconds_bucket{le="0.001",route="a",status_class="2xx"} 2');
    expect(text).toContain('x_seconds_bucket{le="+Inf",route="b",status_class="5xx"} 2');
    expect(text).toContain('x_seconds_count{route="a",status_class="2xx"} 4');
    // The JSON form too, but for prom-client's exemplar slots (null: exemplars are off).
    const values = async (r: Registry) => (await r.getMetricsAsJSON())[0]!.values.map(({ labels, value, metricName }: { labels: object; value: number; metricName?: string }) => ({ labels, value, metricName }));
    expect(await values(ours)).toEqual(await values(theirs));
  });

  it('is reset with its registry, and its series keep counting afterwards', async () => {
    const registry = new Registry();
    const fast = new FastHistogram({ name: 'y_seconds', help: 'h', buckets: BUCKETS, registers: [registry] });
    const s = fast.series({ route: 'a' });
    fast.observe(s, 0.05);
    registry.resetMetrics();
    expect(await registry.metrics()).toContain('y_seconds_count{route="a"} 0');
    fast.observe(s, 0.05);
    expect(await registry.metrics()).toContain('y_seconds_bucket{le="0.1",route="a"} 1');
  });

  it('refuses buckets that are not ascending', () => {
    expect(() => new FastHistogram({ name: 'z', help: 'h', buckets: [1, 1], registers: [] })).toThrow(/ascending/);
  });
});
