/**
 * The soak's traffic (a child process, pinned like the other load
 * generators): `concurrency` senders on keep-alive connections issuing a
 * seeded random mix of small GETs, GETs that close their connection, small
 * and medium POSTs, downloads and the odd large upload, until the duration or
 * the request budget is used up. Every answer is checked (status 200 and the
 * exact body length / byte count); anything else is a failure.
 *
 * Usage: node soak-client.js '<json SoakJob>'. Prints one JSON line per second
 * (`progress`) and a final `done` line.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { Pool } from 'undici';
import { DOWNLOAD_PATH, GET_BODY, GET_PATH, UPLOAD_PATH } from '../servers/protocol.js';

export interface SoakJob {
  /** `http://127.0.0.1:<port>` of the sidecar. */
  base: string;
  concurrency: number;
  durationS: number;
  maxRequests: number;
  /** Requests per second over all senders; 0 = as fast as answers come. */
  rate: number;
  seed: number;
}

export interface SoakProgress {
  type: 'progress' | 'done';
  /** Seconds since the start. */
  t: number;
  ok: number;
  failed: number;
  byKind: Record<string, number>;
  /** The first failures, for the report. */
  failures: string[];
}

interface Kind {
  name: string;
  weight: number;
  method: 'GET' | 'POST';
  path: string;
  /** Request body size (POST). */
  upload?: number;
  /** Expected response body length (GET). */
  expect?: number;
  /** Ask for the connection to be closed after the answer (legacy senders without keep-alive). */
  close?: boolean;
}

const KiB = 1024;
const MiB = 1024 * KiB;
/** The mix, by share of requests. */
export const MIX: readonly Kind[] = [
  { name: 'get', weight: 78, method: 'GET', path: GET_PATH, expect: Buffer.byteLength(GET_BODY) },
  { name: 'get-close', weight: 2, method: 'GET', path: GET_PATH, expect: Buffer.byteLength(GET_BODY), close: true },
  { name: 'post-4k', weight: 12, method: 'POST', path: UPLOAD_PATH, upload: 4 * KiB },
  { name: 'post-256k', weight: 5, method: 'POST', path: UPLOAD_PATH, upload: 256 * KiB },
  { name: 'download-256k', weight: 2.9, method: 'GET', path: `${DOWNLOAD_PATH}?bytes=${256 * KiB}`, expect: 256 * KiB },
  { name: 'upload-8m', weight: 0.1, method: 'POST', path: UPLOAD_PATH, upload: 8 * MiB },
];
const MAX_FAILURE_MESSAGES = 20;

/** mulberry32: small, seeded, good enough to pick request kinds reproducibly. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function picker(seed: number): () => Kind {
  const next = random(seed);
  const total = MIX.reduce((sum, k) => sum + k.weight, 0);
  return () => {
    let x = next() * total;
    for (const kind of MIX) {
      x -= kind.weight;
      if (x < 0) return kind;
    }
    return MIX[0]!;
  };
}

async function main(): Promise<void> {
  const job = JSON.parse(process.argv[2] ?? '{}') as SoakJob;
  const pool = new Pool(job.base, { connections: job.concurrency, pipelining: 1, keepAliveTimeout: 30_000 });
  const bodies = new Map<number, Buffer>();
  for (const kind of MIX) if (kind.upload) bodies.set(kind.upload, Buffer.alloc(kind.upload, 0x63));
  const started = performance.now();
  const deadline = started + job.durationS * 1000;
  const progress: SoakProgress = { type: 'progress', t: 0, ok: 0, failed: 0, byKind: {}, failures: [] };
  let issued = 0;

  const fail = (kind: Kind, message: string): void => {
    progress.failed++;
    if (progress.failures.length < MAX_FAILURE_MESSAGES) progress.failures.push(`${((performance.now() - started) / 1000).toFixed(1)} s ${kind.name}: ${message}`);
  };

  const one = async (kind: Kind): Promise<void> => {
    const body = kind.upload ? bodies.get(kind.upload) : undefined;
    try {
      const res = await pool.request({
        path: kind.path,
        method: kind.method,
        ...(body && { body, headers: { 'content-type': 'application/octet-stream' } }),
        ...(kind.close && { reset: true }),
        headersTimeout: 30_000,
        bodyTimeout: 30_000,
      });
      let length = 0;
      let text = '';
      for await (const chunk of res.body) {
        length += (chunk as Buffer).length;
        if (body && text.length < 256) text += (chunk as Buffer).toString('utf8');
      }
      if (res.statusCode !== 200) return fail(kind, `status ${res.statusCode} ${text.slice(0, 200)}`);
      if (kind.expect !== undefined && length !== kind.expect) return fail(kind, `body of ${length} bytes, expected ${kind.expect}`);
      if (body && text !== `{"bytes":${body.length}}`) return fail(kind, `upstream counted ${text.slice(0, 80)}, sent ${body.length}`);
      progress.ok++;
      progress.byKind[kind.name] = (progress.byKind[kind.name] ?? 0) + 1;
    } catch (err) {
      fail(kind, (err as Error).message);
    }
  };

  const sender = async (index: number): Promise<void> => {
    const pick = picker(job.seed + index);
    while (performance.now() < deadline && issued < job.maxRequests) {
      const n = issued++;
      if (job.rate > 0) {
        const slot = started + (n * 1000) / job.rate;
        const wait = slot - performance.now();
        if (wait > 0) await sleep(wait);
      }
      await one(pick());
    }
  };

  const report = (type: SoakProgress['type']): void => {
    progress.type = type;
    progress.t = (performance.now() - started) / 1000;
    process.stdout.write(`${JSON.stringify(progress)}\n`);
  };
  const ticker = setInterval(() => report('progress'), 1000);
  await Promise.all(Array.from({ length: job.concurrency }, (_, i) => sender(i)));
  clearInterval(ticker);
  report('done');
  await pool.close();
}

void main();
