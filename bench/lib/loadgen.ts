/**
 * Load generators, each run as its own (pinned) child process: wrk when it is
 * installed (Debian package `wrk`), else autocannon; uploads with the bench's
 * own Node uploader (neither wrk nor autocannon streams a 64 MiB body well).
 */
import { resolve } from 'node:path';
import type { UploadJob, UploadResult } from '../tools/upload.js';
import type { AutocannonJob } from '../tools/autocannon.js';
import { ROOT, type Runner } from './build.js';
import { Child, cleanEnv, commandExists } from './proc.js';
import type { LoadResult } from './types.js';

/** Where to send load: a URL plus what the sender adds (direct needs the Bearer itself). */
export interface Target {
  /** `http://127.0.0.1:<port>` or `https://…` (direct), no path. */
  base: string;
  headers: Record<string, string>;
  /** CA to trust for https targets (the uploader verifies; wrk does not). */
  caFile?: string | undefined;
}

export interface GetOptions {
  /** Also return the latency histograms (wrk only), for merging several runs. */
  histogram?: boolean;
}

export interface LoadGenerator {
  readonly tool: 'wrk' | 'autocannon';
  get(target: Target, path: string, connections: number, durationS: number, options?: GetOptions): Promise<LoadResult>;
  upload(target: Target, path: string, bytes: number, count: number): Promise<UploadResult>;
}

export function wrkAvailable(): boolean {
  return commandExists('wrk', ['-v']);
}

export function createLoadGenerator(options: { runner: Runner; cpu: number | undefined; prefer: 'wrk' | 'autocannon' }): LoadGenerator {
  const useWrk = options.prefer === 'wrk' && wrkAvailable();
  const upload = (target: Target, path: string, bytes: number, count: number): Promise<UploadResult> =>
    runUpload(options.runner, options.cpu, { url: target.base + path, headers: target.headers, caFile: target.caFile, bytes, count, timeoutMs: 120_000 });
  if (useWrk) {
    return { tool: 'wrk', get: (target, path, c, d, o) => runWrk(options.cpu, target, path, c, d, o?.histogram === true), upload };
  }
  return { tool: 'autocannon', get: (target, path, c, d) => runAutocannon(options.runner, options.cpu, target, path, c, d), upload };
}

async function runWrk(cpu: number | undefined, target: Target, path: string, connections: number, durationS: number, histogram: boolean): Promise<LoadResult> {
  const headerArgs = Object.entries(target.headers).flatMap(([k, v]) => ['-H', `${k}: ${v}`]);
  const args = ['-t1', `-c${connections}`, `-d${durationS}s`, '--timeout', '5s', '-s', resolve(ROOT, 'bench/tools/wrk-report.lua'), ...headerArgs, target.base + path];
  const child = new Child('wrk', 'wrk', args, { cpu, env: cleanEnv({ BENCH_CONNECTIONS: String(connections), BENCH_HISTOGRAM: histogram ? '1' : '0' }) });
  const line = await finish(child, durationS * 1000 + 30_000, (out) => /^BENCH_JSON (.+)$/m.exec(out)?.[1]);
  const raw = JSON.parse(line) as {
    requests: number;
    duration_us: number;
    errors: { connect: number; read: number; write: number; status: number; timeout: number };
    latency: { p50: number; p90: number; p99: number; max: number };
    per_request_count: number;
    corrected: { p50: number; p99: number };
    histogram?: Array<[number, number]>;
    corrected_histogram?: Array<[number, number]>;
  };
  // The script rebuilds the requests' own histogram from wrk's corrected one (0: it could not, and `latency` is
  // wrk's); every recorded request must be in it.
  const perRequest = raw.per_request_count > 0;
  if (perRequest && raw.per_request_count !== raw.requests - raw.errors.timeout) {
    throw new Error(`wrk: the per-request latency histogram has ${raw.per_request_count} requests, wrk recorded ${raw.requests - raw.errors.timeout}`);
  }
  const seconds = raw.duration_us / 1e6;
  return {
    tool: 'wrk',
    connections,
    durationS: seconds,
    requests: raw.requests,
    requestsPerS: raw.requests / seconds,
    non2xx: raw.errors.status,
    errors: raw.errors.connect + raw.errors.read + raw.errors.write + raw.errors.timeout,
    latencyUs: raw.latency,
    ...(perRequest && { correctedLatencyUs: raw.corrected }),
    ...(raw.histogram && raw.corrected_histogram && { histogramUs: raw.histogram, correctedHistogramUs: raw.corrected_histogram }),
  };
}

async function runAutocannon(runner: Runner, cpu: number | undefined, target: Target, path: string, connections: number, durationS: number): Promise<LoadResult> {
  const job: AutocannonJob = { url: target.base + path, connections, durationS, headers: target.headers, ...(target.caFile && { caFile: target.caFile }) };
  const child = new Child('autocannon', process.execPath, [...runner.args('bench/tools/autocannon.ts'), JSON.stringify(job)], { cpu, env: cleanEnv() });
  const line = await finish(child, durationS * 1000 + 30_000, (out) => /^(\{.*\})$/m.exec(out)?.[1]);
  return JSON.parse(line) as LoadResult;
}

async function runUpload(runner: Runner, cpu: number | undefined, job: UploadJob): Promise<UploadResult> {
  const child = new Child('uploader', process.execPath, [...runner.args('bench/tools/upload.ts'), JSON.stringify(job)], { cpu, env: cleanEnv() });
  const line = await finish(child, job.count * job.timeoutMs + 10_000, (out) => /^(\{.*\})$/m.exec(out)?.[1]);
  return JSON.parse(line) as UploadResult;
}

/** Wait for the child to exit (killing it after `timeoutMs`) and extract its result line. */
async function finish(child: Child, timeoutMs: number, match: (stdout: string) => string | undefined): Promise<string> {
  const timer = setTimeout(() => void child.stop(1_000), timeoutMs);
  const status = await child.exited();
  clearTimeout(timer);
  const found = match(child.stdout);
  if (found === undefined) {
    throw new Error(`${child.name} produced no result (exit ${status.code ?? status.signal}): ${child.stderr.trim().slice(-1000) || child.stdout.trim().slice(-1000)}`);
  }
  return found;
}
