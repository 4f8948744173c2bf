/** Result shapes shared by the load generators, the harness and the report. */

/** One fixed-duration GET run (wrk or autocannon). */
export interface LoadResult {
  tool: 'wrk' | 'autocannon';
  connections: number;
  durationS: number;
  requests: number;
  requestsPerS: number;
  /** Answers that were not 2xx/3xx. */
  non2xx: number;
  /** Connect/read/write errors and timeouts. */
  errors: number;
  /** Latency percentiles of the requests themselves, in microseconds. */
  latencyUs: { p50: number; p90: number; p99: number; max: number };
  /**
   * wrk only: its own percentiles, "corrected" for coordinated omission (phantom samples for the requests an
   * open-loop sender would have sent during each slow one; see tools/wrk-report.lua). Absent when the
   * requests' own histogram could not be rebuilt: `latencyUs` is then wrk's corrected one.
   */
  correctedLatencyUs?: { p50: number; p99: number };
  /** wrk only, when asked: the requests' own latency histogram, `[µs, count]` pairs, and wrk's corrected one. */
  histogramUs?: Array<[number, number]>;
  correctedHistogramUs?: Array<[number, number]>;
}

/** Figures of one contender in one round. */
export interface RoundFigures {
  rps?: number;
  p50Us?: number;
  p99Us?: number;
  /** wrk's coordinated-omission-corrected p99 at 1 connection (wrk only). */
  p99CorrectedUs?: number;
  uploadMBps?: number;
  peakRssGetBytes?: number;
  peakRssUploadBytes?: number;
  /** CPU time (user + system) of the proxy process per GET request at 64 connections. */
  cpuUsPerRequest?: number;
  /** CPU time of the proxy process per uploaded GB (10^9 bytes), ms: upload efficiency, independent of the load generator's speed. */
  uploadCpuMsPerGB?: number;
  /** CPU other processes on the machine used during each measurement, % of one CPU (noisy-neighbour indicator). */
  foreignCpuPct: { get?: number; latency?: number; upload?: number };
  /** Problems that make a figure suspect (errors, non-2xx answers, short uploads). */
  problems: string[];
  /**
   * Answers that failed, per phase: non-2xx answers and socket errors or timeouts under GET load and at one
   * connection, uploads not answered 200 with every byte counted. A contender with any has its targets missed.
   */
  failed?: { get?: number; latency?: number; upload?: number };
}
