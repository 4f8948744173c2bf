/**
 * The soak's report pieces that need no processes: the per-interval series printed from the 1-s samples, and
 * the scan of the sidecar's log for warnings and errors.
 */
import type { SoakProgress } from '../tools/soak-client.js';

/** One 1-s reading of the sidecar process. */
export interface Sample {
  t: number;
  rss: number;
  fds: number;
  cpuMs: number;
}

export interface Row {
  /** End of the interval, s since traffic started. */
  t: number;
  requests: number;
  failed: number;
  rps: number;
  rssMaxMB: number;
  rssLastMB: number;
  fdsMax: number;
  fdsLast: number;
  cpuPct: number;
  tokenRequests: number;
}

/** Per-interval rows from 1 s samples and the client's 1 s progress lines. */
export function series(samples: readonly Sample[], progress: readonly SoakProgress[], intervalS: number, tokenTimesS: readonly number[]): Row[] {
  const rows: Row[] = [];
  const end = Math.max(samples.at(-1)?.t ?? 0, progress.at(-1)?.t ?? 0);
  const countAt = (t: number): { ok: number; failed: number } => {
    let best: SoakProgress | undefined;
    for (const p of progress) if (p.t <= t + 0.5) best = p;
    return { ok: best?.ok ?? 0, failed: best?.failed ?? 0 };
  };
  // Interval ends; a last sliver shorter than half an interval joins the interval before it, so that every
  // second of the run is in one row, and in one only (windows (from, to], as the verdict's).
  const ends: number[] = [];
  for (let t = intervalS; t < end; t += intervalS) ends.push(t);
  if (ends.length > 0 && end - ends.at(-1)! < intervalS / 2) ends.pop();
  ends.push(end);
  let prevCpu = samples[0]?.cpuMs ?? 0;
  let from = 0;
  for (const to of ends) {
    const inside = samples.filter((s) => s.t > from && s.t <= to);
    const a = countAt(from);
    const b = countAt(to);
    const start = from;
    from = to;
    if (inside.length === 0) continue;
    const last = inside.at(-1)!;
    rows.push({
      t: Math.round(to),
      requests: b.ok + b.failed - (a.ok + a.failed),
      failed: b.failed - a.failed,
      rps: (b.ok + b.failed - (a.ok + a.failed)) / Math.max(1e-3, to - start),
      rssMaxMB: Math.max(...inside.map((s) => s.rss)) / 1e6,
      rssLastMB: last.rss / 1e6,
      fdsMax: Math.max(...inside.map((s) => s.fds)),
      fdsLast: last.fds,
      cpuPct: ((last.cpuMs - prevCpu) / 1000 / Math.max(1e-3, to - start)) * 100,
      tokenRequests: tokenTimesS.filter((t) => t <= to).length,
    });
    prevCpu = last.cpuMs;
  }
  return rows;
}

/**
 * Reads the sidecar's log as it comes (through a pipe: a file truncated under a writer loses what was written
 * between the read and the truncation): counts warn/error/fatal lines, remembers the first few, finds a message.
 */
export class LogWatch {
  readonly counts = { warn: 0, error: 0, fatal: 0 };
  readonly samples: string[] = [];
  #partial = '';
  readonly #found = new Set<string>();

  /** The next chunk of the log; a line cut between chunks is read once whole. */
  feed(chunk: string): void {
    const text = this.#partial + chunk;
    const end = text.lastIndexOf('\n') + 1;
    this.#partial = text.slice(end);
    for (const line of text.slice(0, end).split('\n')) {
      if (!line) continue;
      const level = /"level":"(\w+)"/.exec(line)?.[1];
      const msg = /"msg":"([^"]*)"/.exec(line)?.[1];
      if (msg) this.#found.add(msg);
      if (level === 'warn' || level === 'error' || level === 'fatal') {
        this.counts[level]++;
        if (this.samples.length < 10) this.samples.push(`${level}: ${msg ?? line.slice(0, 160)}`);
      }
    }
  }

  seen(message: string): boolean {
    return this.#found.has(message);
  }
}
