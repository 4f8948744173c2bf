/**
 * From per-round figures to the summary (medians, per-round ratios), the
 * target verdicts and the markdown table. Pure functions over plain data.
 */
import type { ContenderSpec } from './contenders.js';
import { SLOW_FACTOR, type StallFigures } from './stall.js';
import { max, median, ratio, round, spread } from './stats.js';
import type { RoundFigures } from './types.js';

export interface RoundRecord {
  round: number;
  /** Contender ids in the order they ran. */
  order: string[];
  figures: Record<string, RoundFigures>;
  /** The proxy CPU's stalls, probed before the round's 1-connection runs. */
  stall?: StallFigures | undefined;
}

export interface ContenderSummary {
  rps?: number | undefined;
  p50Us?: number | undefined;
  p99Us?: number | undefined;
  /** wrk's coordinated-omission-corrected p99 (median over rounds). */
  p99CorrectedUs?: number | undefined;
  /** p50 minus direct's p50 in the same round (median over rounds). */
  addedP50Us?: number | undefined;
  addedP99Us?: number | undefined;
  uploadMBps?: number | undefined;
  /** Peak over all rounds. */
  peakRssGetMB?: number | undefined;
  peakRssUploadMB?: number | undefined;
  cpuUsPerRequest?: number | undefined;
  uploadCpuMsPerGB?: number | undefined;
  /** Median over rounds of the per-round ratio (same round = same machine weather). */
  vsUndici: { rps?: number | undefined; addedP50?: number | undefined; uploadMBps?: number | undefined };
  vsDirect: { rps?: number | undefined; p50?: number | undefined; uploadMBps?: number | undefined };
  /** (max − min) / median of the rounds' values: how noisy the figure was. */
  spread: { rps?: number | undefined; p50Us?: number | undefined; uploadMBps?: number | undefined };
  problems: string[];
}

/** By contender id; the baselines are the ids `undici` and `direct`. */
export type Summary = Record<string, ContenderSummary>;

const MB = 1_000_000;

export function summarize(rounds: readonly RoundRecord[], contenders: readonly string[]): Summary {
  const summary: Summary = {};
  const values = (name: string, pick: (f: RoundFigures, r: RoundRecord) => number | undefined): number[] =>
    rounds.flatMap((r) => {
      const f = r.figures[name];
      const v = f ? pick(f, r) : undefined;
      return v === undefined ? [] : [v];
    });
  const added = (f: RoundFigures, r: RoundRecord, key: 'p50Us' | 'p99Us'): number | undefined => {
    const direct = r.figures.direct?.[key];
    const own = f[key];
    return own === undefined || direct === undefined ? undefined : own - direct;
  };
  const perRoundRatio = (name: string, base: string, pick: (f: RoundFigures, r: RoundRecord) => number | undefined): number | undefined =>
    median(
      rounds.flatMap((r) => {
        const own = r.figures[name];
        const other = r.figures[base];
        const q = own && other ? ratio(pick(own, r), pick(other, r)) : undefined;
        return q === undefined ? [] : [q];
      }),
    );

  for (const name of contenders) {
    const rps = values(name, (f) => f.rps);
    const p50 = values(name, (f) => f.p50Us);
    const upload = values(name, (f) => f.uploadMBps);
    summary[name] = {
      rps: median(rps),
      p50Us: median(p50),
      p99Us: median(values(name, (f) => f.p99Us)),
      p99CorrectedUs: median(values(name, (f) => f.p99CorrectedUs)),
      addedP50Us: median(values(name, (f, r) => added(f, r, 'p50Us'))),
      addedP99Us: median(values(name, (f, r) => added(f, r, 'p99Us'))),
      uploadMBps: median(upload),
      peakRssGetMB: divide(max(values(name, (f) => f.peakRssGetBytes)), MB),
      peakRssUploadMB: divide(max(values(name, (f) => f.peakRssUploadBytes)), MB),
      cpuUsPerRequest: median(values(name, (f) => f.cpuUsPerRequest)),
      uploadCpuMsPerGB: median(values(name, (f) => f.uploadCpuMsPerGB)),
      vsUndici: {
        rps: perRoundRatio(name, 'undici', (f) => f.rps),
        addedP50: perRoundRatio(name, 'undici', (f, r) => added(f, r, 'p50Us')),
        uploadMBps: perRoundRatio(name, 'undici', (f) => f.uploadMBps),
      },
      vsDirect: {
        rps: perRoundRatio(name, 'direct', (f) => f.rps),
        p50: perRoundRatio(name, 'direct', (f) => f.p50Us),
        uploadMBps: perRoundRatio(name, 'direct', (f) => f.uploadMBps),
      },
      spread: { rps: spread(rps), p50Us: spread(p50), uploadMBps: spread(upload) },
      problems: [...new Set(rounds.flatMap((r) => r.figures[name]?.problems ?? []))],
    };
  }
  return summary;
}

function divide(value: number | undefined, by: number): number | undefined {
  return value === undefined ? undefined : value / by;
}

/** How busy the rest of the machine was during the measurements (median and max % of one CPU). */
export function noise(rounds: readonly RoundRecord[]): { medianPct: number | undefined; maxPct: number | undefined; runs: number } {
  const values = rounds.flatMap((r) => Object.values(r.figures).flatMap((f) => (f ? Object.values(f.foreignCpuPct).filter((v): v is number => v !== undefined) : [])));
  return { medianPct: median(values), maxPct: max(values), runs: values.length };
}

/** The proxy CPU's stalls over the rounds: medians of the share and slowdown, the worst piece of all. */
export function stalls(rounds: readonly RoundRecord[]): {
  slowSharePct: number | undefined;
  slowdown: number | undefined;
  worst: number | undefined;
  /** The fastest and slowest round's median piece, µs: how much the CPU's own speed moved between rounds. */
  pieceUs: { min: number | undefined; max: number | undefined };
  probes: number;
} {
  const probes = rounds.flatMap((r) => (r.stall ? [r.stall] : []));
  const pieces = probes.map((p) => p.medianUs);
  return {
    slowSharePct: median(probes.map((p) => p.slowShare * 100)),
    slowdown: median(probes.map((p) => p.slowdown)),
    worst: max(probes.map((p) => p.worst)),
    pieceUs: { min: pieces.length > 0 ? Math.min(...pieces) : undefined, max: max(pieces) },
    probes: probes.length,
  };
}

/** The stall figures as a note under the table (undefined without probes). */
export function stallNote(rounds: readonly RoundRecord[], probeS: number): string | undefined {
  const s = stalls(rounds);
  if (s.probes === 0) return undefined;
  return (
    `the proxy's CPU, probed for ${probeS} s before each round's 1-connection runs (a fixed piece of work, repeated), ran ${SLOW_FACTOR}× slower than usual or worse ` +
    `for a median ${fmt(s.slowSharePct, 1)}% of the time, slowed a median ${fmt(s.slowdown, 1)}× (at worst ${fmt(s.worst, 0)}×): the host's stalls, which every process in the VM shares; ` +
    'a request that meets one takes that many times longer, whichever proxy it goes through. ' +
    `Outside the stalls, the probe's piece took ${fmt(s.pieceUs.min, 0)}–${fmt(s.pieceUs.max, 0)} µs from round to round: the CPU's own speed moved that much`
  );
}

export interface TokenFigures {
  lifetimeS: number;
  refreshIntervalS: number;
  /** Token requests the sidecar's client made (times relative to the sidecar's start, s). */
  requests: number;
  requestTimesS: number[];
  /** Successful fetches according to the sidecar's own metrics. */
  metricsFetches: number | undefined;
  /** The most requests one-per-lifetime allows for the time the sidecar ran. */
  allowedMax: number;
  gapsOk: boolean;
  /** Requests with an expired issued token (a refresh came too late). */
  upstreamRejectedExpired: number;
  /** Requests without an accepted token, all contenders. */
  upstreamRejectedUnknown: number;
}

export interface TargetVerdict {
  id: string;
  description: string;
  value: string;
  pass: boolean | undefined;
}

/** The project's promises for oauth-sidecar (README "Benchmark"), for the sidecar contender `id`; never loosened here. */
export function verdicts(s: Summary, id: string, tokens: TokenFigures | undefined): TargetVerdict[] {
  const side = s[id];
  const undici = s.undici;
  const hp = s['http-proxy'];
  const out: TargetVerdict[] = [];
  const verdict = (id: string, description: string, value: string, pass: boolean | undefined): void => {
    out.push({ id, description, value, pass });
  };
  if (!side) return out;

  const rpsRatio = side.vsUndici.rps;
  verdict('throughput', 'GET req/s ≥ 0.9 × bare undici forwarder', rpsRatio === undefined ? 'n/a' : `${fmt(rpsRatio, 3)}×`, rpsRatio === undefined ? undefined : rpsRatio >= 0.9);

  const addedRatio = side.vsUndici.addedP50;
  verdict(
    'latency-p50',
    'added p50 over direct ≤ 1.2 × bare undici forwarder’s',
    addedRatio === undefined ? 'n/a' : `${fmt(side.addedP50Us, 0)} µs vs ${fmt(undici?.addedP50Us, 0)} µs (${fmt(addedRatio, 3)}×)`,
    addedRatio === undefined ? undefined : addedRatio <= 1.2,
  );
  const corrected = side.p99CorrectedUs === undefined ? '' : ` (wrk's coordinated-omission-corrected p99: ${fmt(side.p99CorrectedUs, 0)} µs)`;
  verdict('latency-p99', 'p99 at 1 connection < 1 ms', side.p99Us === undefined ? 'n/a' : `${fmt(side.p99Us, 0)} µs${corrected}`, side.p99Us === undefined ? undefined : side.p99Us < 1000);

  const better = Math.max(undici?.uploadMBps ?? Number.NaN, hp?.uploadMBps ?? Number.NaN);
  const bestName = (hp?.uploadMBps ?? -1) >= (undici?.uploadMBps ?? -1) ? 'http-proxy' : 'undici';
  verdict(
    'upload',
    'upload MB/s ≥ the better bare Node forwarder',
    side.uploadMBps === undefined || !Number.isFinite(better) ? 'n/a' : `${fmt(side.uploadMBps, 0)} vs ${fmt(better, 0)} MB/s (${bestName})`,
    side.uploadMBps === undefined || !Number.isFinite(better) ? undefined : side.uploadMBps >= better,
  );
  verdict('rss-get', 'peak RSS under GET load ≤ 100 MB', side.peakRssGetMB === undefined ? 'n/a' : `${fmt(side.peakRssGetMB, 1)} MB`, side.peakRssGetMB === undefined ? undefined : side.peakRssGetMB <= 100);
  verdict(
    'rss-upload',
    'peak RSS during uploads ≤ 120 MB',
    side.peakRssUploadMB === undefined ? 'n/a' : `${fmt(side.peakRssUploadMB, 1)} MB`,
    side.peakRssUploadMB === undefined ? undefined : side.peakRssUploadMB <= 120,
  );
  if (tokens) {
    const ok = tokens.gapsOk && tokens.requests >= 1 && tokens.requests <= tokens.allowedMax && tokens.upstreamRejectedExpired === 0;
    verdict(
      'tokens',
      'exactly one token request per token lifetime',
      `${tokens.requests} request(s) in the run (lifetime ${tokens.lifetimeS} s, refresh every ${fmt(tokens.refreshIntervalS, 0)} s; at most ${tokens.allowedMax} allowed; ` +
        `${tokens.gapsOk ? 'no' : 'SOME'} early refreshes; ${tokens.upstreamRejectedExpired} expired-token rejections)`,
      ok,
    );
  }
  return out;
}

export function fmt(value: number | undefined, digits: number): string {
  const r = round(value, digits);
  return r === undefined ? '–' : r.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function times(value: number | undefined): string {
  return value === undefined ? '–' : `${fmt(value, 2)}×`;
}

export interface TableContext {
  machine: string;
  date: string;
  tool: string;
  layout: string;
  rounds: number;
  durationS: number;
  connections: number;
  uploadMiB: number;
  uploadsPerRound: number;
  runner: string;
  notes: string[];
}

/** The markdown table the README shows. */
export function markdown(
  summary: Summary,
  contenders: readonly ContenderSpec[],
  targets: Readonly<Record<string, readonly TargetVerdict[]>>,
  tokens: Readonly<Record<string, TokenFigures>>,
  ctx: TableContext,
): string {
  const lines: string[] = [];
  lines.push(`Machine: ${ctx.machine}`);
  lines.push(`Run: ${ctx.date}; ${ctx.rounds} interleaved rounds; GET ${ctx.durationS} s at ${ctx.connections} connections and ${ctx.durationS} s at 1 connection (${ctx.tool}); ` +
    `${ctx.uploadsPerRound} × ${ctx.uploadMiB} MiB POST per round; ${ctx.layout}; sidecar run as ${ctx.runner}. Medians over rounds; ratios are medians of per-round ratios; RSS is the peak over all rounds` +
    (ctx.tool.startsWith('wrk') ? "; latency percentiles are the requests' own (wrk's coordinated-omission correction taken out, its corrected p99 in its own column)." : '.'));
  lines.push('');
  lines.push('| contender | GET req/s | × undici | × direct | p50 µs | p99 µs | p99 µs, wrk-corrected | added p50 µs | added × undici | upload MB/s | × undici | × direct | peak RSS GET MB | peak RSS upload MB | CPU µs/req | upload CPU ms/GB |');
  lines.push('|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|');
  for (const c of contenders) {
    const s = summary[c.id];
    if (!s) continue;
    const isDirect = c.id === 'direct';
    lines.push(
      `| ${c.label}${s.problems.length ? ' ⚠' : ''} | ${fmt(s.rps, 0)} | ${times(s.vsUndici.rps)} | ${times(s.vsDirect.rps)} | ${fmt(s.p50Us, 0)} | ${fmt(s.p99Us, 0)} | ${fmt(s.p99CorrectedUs, 0)} | ` +
        `${isDirect ? '–' : fmt(s.addedP50Us, 0)} | ${isDirect ? '–' : times(s.vsUndici.addedP50)} | ${fmt(s.uploadMBps, 0)} | ${times(s.vsUndici.uploadMBps)} | ${times(s.vsDirect.uploadMBps)} | ` +
        `${fmt(s.peakRssGetMB, 1)} | ${fmt(s.peakRssUploadMB, 1)} | ${fmt(s.cpuUsPerRequest, 1)} | ${fmt(s.uploadCpuMsPerGB, 0)} |`,
    );
  }
  for (const c of contenders) {
    const t = tokens[c.id];
    if (!t) continue;
    lines.push('');
    lines.push(
      `Token requests by ${c.label} during the run: **${t.requests}** (token lifetime ${t.lifetimeS} s, refreshed at ${fmt(t.refreshIntervalS, 0)} s; ` +
        `at ${t.requestTimesS.map((x) => `${fmt(x, 1)} s`).join(', ')}; its metrics count ${t.metricsFetches ?? '–'}); ` +
        `upstream rejections: ${t.upstreamRejectedExpired} expired, ${t.upstreamRejectedUnknown} without an accepted token (all contenders).`,
    );
  }
  const judged = contenders.filter((c) => (targets[c.id]?.length ?? 0) > 0);
  if (judged.length > 0) {
    lines.push('');
    lines.push(`| target | ${judged.map((c) => `${c.label}: measured | verdict`).join(' | ')} |`);
    lines.push(`|---|${judged.map(() => '---|---').join('|')}|`);
    const first = targets[judged[0]!.id]!;
    for (const [i, t] of first.entries()) {
      const cells = judged.map((c) => {
        const v = targets[c.id]![i];
        return v ? `${v.value} | ${v.pass === undefined ? 'n/a' : v.pass ? 'met' : '**missed**'}` : '– | –';
      });
      lines.push(`| ${t.description} | ${cells.join(' | ')} |`);
    }
  }
  const problems = contenders.flatMap((c) => (summary[c.id]?.problems ?? []).map((p) => `${c.label}: ${p}`));
  const notes = [...ctx.notes, ...problems.map((p) => `⚠ ${p}`)];
  if (notes.length > 0) {
    lines.push('');
    for (const note of notes) lines.push(`- ${note}`);
  }
  return `${lines.join('\n')}\n`;
}
