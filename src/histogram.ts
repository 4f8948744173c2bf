/**
 * A Prometheus histogram with fixed label names, observed on the hot path
 * without a label hash.
 *
 * prom-client's `Histogram.observe` validates and hashes its label object on
 * every call, which was about 2 µs of each proxied request in the benchmark.
 * Here a caller keeps the {@link HistogramSeries} of its label values (one per
 * route × method × status class, looked up in nested maps) and an observation
 * is a bucket search and three additions. The histogram registers itself with a
 * prom-client `Registry` as a metric (the registry only calls `get()`), so
 * `/metrics` output is exactly what prom-client's own histogram writes:
 * cumulative `_bucket` series with `le`, then `_sum` and `_count`
 * (https://prometheus.io/docs/concepts/metric_types/#histogram).
 */
import type { Metric, Registry } from 'prom-client';

export interface HistogramSeries {
  readonly labels: Readonly<Record<string, string>>;
  /** Observations per bucket (not cumulative); the last slot counts those above every bound. */
  readonly counts: Float64Array;
  sum: number;
  count: number;
}

export interface HistogramOptions {
  name: string;
  help: string;
  /** Upper bounds, ascending. */
  buckets: readonly number[];
  registers: readonly Registry[];
}

export class FastHistogram {
  readonly name: string;
  readonly help: string;
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  readonly #bounds: Float64Array;
  readonly #series: HistogramSeries[] = [];

  constructor(options: HistogramOptions) {
    this.name = options.name;
    this.help = options.help;
    this.#bounds = Float64Array.from(options.buckets);
    for (let i = 1; i < this.#bounds.length; i++) {
      if (!(this.#bounds[i]! > this.#bounds[i - 1]!)) throw new Error(`histogram ${options.name}: buckets must be ascending`);
    }
    // The registry stores any object with a name and `get()`; prom-client's types only name its own classes.
    for (const registry of options.registers) registry.registerMetric(this as unknown as Metric);
  }

  /** A new series for these label values; the caller keeps it (creating one per observation would defeat the point). */
  series(labels: Readonly<Record<string, string>>): HistogramSeries {
    const series = { labels: { ...labels }, counts: new Float64Array(this.#bounds.length + 1), sum: 0, count: 0 };
    this.#series.push(series);
    return series;
  }

  observe(series: HistogramSeries, value: number): void {
    const bounds = this.#bounds;
    let i = 0;
    while (i < bounds.length && value > bounds[i]!) i++;
    series.counts[i]!++;
    series.sum += value;
    series.count++;
  }

  /** For `Registry.resetMetrics()`: every series back to zero (callers keep their series). */
  reset(): void {
    for (const s of this.#series) {
      s.counts.fill(0);
      s.sum = 0;
      s.count = 0;
    }
  }

  /** The metric as prom-client's registry reads it. */
  async get(): Promise<{ name: string; help: string; type: string; aggregator: string; values: Array<{ metricName: string; labels: Record<string, string | number>; value: number }> }> {
    const values = [];
    const bucket = `${this.name}_bucket`;
    for (const s of this.#series) {
      let cumulative = 0;
      for (let i = 0; i < this.#bounds.length; i++) {
        cumulative += s.counts[i]!;
        values.push({ metricName: bucket, labels: { le: this.#bounds[i]!, ...s.labels }, value: cumulative });
      }
      values.push({ metricName: bucket, labels: { le: '+Inf', ...s.labels }, value: s.count });
      values.push({ metricName: `${this.name}_sum`, labels: { ...s.labels }, value: s.sum });
      values.push({ metricName: `${this.name}_count`, labels: { ...s.labels }, value: s.count });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }
}
