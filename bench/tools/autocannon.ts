/**
 * GET load generator used when wrk is not installed: autocannon in its own
 * (pinned) process. Latencies are taken from autocannon's per-response
 * events with microsecond resolution (its own histogram rounds to whole
 * milliseconds, which is useless for sub-millisecond hops).
 *
 * Usage: node autocannon.js '<json AutocannonJob>'  →  prints one JSON line (LoadResult).
 */
import { readFileSync } from 'node:fs';
import autocannon from 'autocannon';
import { percentile } from '../lib/stats.js';
import type { LoadResult } from '../lib/types.js';

export interface AutocannonJob {
  url: string;
  connections: number;
  durationS: number;
  headers: Record<string, string>;
  caFile?: string;
}

interface AutocannonResult {
  requests: { total: number };
  non2xx: number;
  errors: number;
  timeouts: number;
  duration: number;
}

interface AutocannonInstance {
  on(event: 'response', listener: (client: unknown, statusCode: number, bytes: number, responseTimeMs: number) => void): void;
  on(event: 'done', listener: (result: AutocannonResult) => void): void;
}

type AutocannonFn = (options: Record<string, unknown>) => AutocannonInstance;

const job = JSON.parse(process.argv[2] ?? '{}') as AutocannonJob;
const latencies: number[] = [];
const instance = (autocannon as unknown as AutocannonFn)({
  url: job.url,
  connections: job.connections,
  duration: job.durationS,
  headers: job.headers,
  ...(job.caFile && { tlsOptions: { ca: readFileSync(job.caFile, 'utf8') } }),
});
instance.on('response', (_client, _status, _bytes, ms) => {
  if (latencies.length < 5_000_000) latencies.push(ms * 1000);
});
instance.on('done', (r) => {
  const durationS = r.duration || job.durationS;
  const result: LoadResult = {
    tool: 'autocannon',
    connections: job.connections,
    durationS,
    requests: r.requests.total,
    requestsPerS: r.requests.total / durationS,
    non2xx: r.non2xx,
    errors: r.errors, // timeouts included: autocannon counts each in `errors` too
    latencyUs: {
      p50: percentile(latencies, 50) ?? Number.NaN,
      p90: percentile(latencies, 90) ?? Number.NaN,
      p99: percentile(latencies, 99) ?? Number.NaN,
      max: percentile(latencies, 100) ?? Number.NaN,
    },
  };
  process.stdout.write(`${JSON.stringify(result)}\n`);
});
