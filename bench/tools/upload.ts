/**
 * Upload load generator (a child process, pinned like the other load
 * generators): sends `count` POSTs of `bytes` each, one after the other on a
 * keep-alive connection, with `Content-Length`, written in 256 KiB chunks
 * with backpressure, and checks that the upstream counted every byte.
 *
 * Usage: node upload.js '<json UploadJob>'  →  prints one JSON line (UploadResult).
 */
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';

export interface UploadJob {
  url: string;
  caFile?: string;
  headers: Record<string, string>;
  bytes: number;
  count: number;
  /** Give up on one upload after this long. */
  timeoutMs: number;
}

export interface UploadResult {
  uploads: Array<{ bytes: number; ms: number; status: number; counted: number | undefined }>;
  error?: string;
}

const CHUNK = Buffer.alloc(256 * 1024, 0x62);

async function uploadOnce(job: UploadJob, agent: HttpAgent | HttpsAgent): Promise<UploadResult['uploads'][number]> {
  const url = new URL(job.url);
  const send = url.protocol === 'https:' ? httpsRequest : httpRequest;
  const started = performance.now();
  const req = send(url, {
    method: 'POST',
    agent,
    headers: { ...job.headers, 'content-type': 'application/octet-stream', 'content-length': String(job.bytes) },
    timeout: job.timeoutMs,
  });
  req.once('timeout', () => req.destroy(new Error(`upload timed out after ${job.timeoutMs} ms`)));
  const response = once(req, 'response') as Promise<[IncomingMessage]>;
  let left = job.bytes;
  while (left > 0) {
    const n = Math.min(left, CHUNK.length);
    left -= n;
    if (!req.write(n === CHUNK.length ? CHUNK : CHUNK.subarray(0, n))) await once(req, 'drain');
  }
  req.end();
  const [res] = await response;
  let text = '';
  res.setEncoding('utf8');
  for await (const chunk of res) text += chunk as string;
  const ms = performance.now() - started;
  let counted: number | undefined;
  try {
    counted = (JSON.parse(text) as { bytes?: number }).bytes;
  } catch {
    counted = undefined;
  }
  return { bytes: job.bytes, ms, status: res.statusCode ?? 0, counted };
}

async function main(): Promise<void> {
  const job = JSON.parse(process.argv[2] ?? '{}') as UploadJob;
  const ca = job.caFile ? readFileSync(job.caFile, 'utf8') : undefined;
  const agent = job.url.startsWith('https:') ? new HttpsAgent({ keepAlive: true, maxSockets: 1, ca }) : new HttpAgent({ keepAlive: true, maxSockets: 1 });
  const result: UploadResult = { uploads: [] };
  try {
    for (let i = 0; i < job.count; i++) result.uploads.push(await uploadOnce(job, agent));
  } catch (err) {
    result.error = err instanceof Error ? err.message : String(err);
  } finally {
    agent.destroy();
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

void main();
