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
  /** Failed answers over all rounds, per phase (see `RoundFigures.failed`). */
  failed: { get: number; latency: number; upload: number };
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
      failed: {
        get: sum(rounds.map((r) => r.figures[name]?.failed?.get ?? 0)),
        latency: sum(rounds.map((r) => r.figures[name]?.failed?.latency ?? 0)),
        upload: sum(rounds.map((r) => r.figures[name]?.failed?.upload ?? 0)),
      },
    };
  }
  return summary;
}

function sum(values: readonly number[]): number {
  return values.reduce((total, v) => total + v, 0);
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
  /** The mean refresh period (`REFRESH_AHEAD` of the lifetime). */
  refreshIntervalS: number;
  /** The earliest and the latest refresh point a token may draw (`REFRESH_JITTER`). */
  refreshWindowS: readonly [number, number];
  /** Token requests the sidecar's client made (times relative to the sidecar's start, s). */
  requests: number;
  requestTimesS: number[];
  /** Successful fetches according to the sidecar's own metrics. */
  metricsFetches: number | undefined;
  /** From the first token request to the end of the measurements, s. */
  elapsedS: number;
  /** Whole refresh periods elapsed in `elapsedS`, of the shortest a token may draw. */
  refreshPeriods: number;
  /** The most requests one per refresh period allows: the first plus one per whole period. */
  allowedMax: number;
  /** The fewest allowed: 1 (see `tokenBounds` for why not more). */
  allowedMin: number;
  gapsOk: boolean;
  /** Requests with an expired token issued to this contender's client (a refresh came too late). */
  upstreamRejectedExpired: number;
  /** Requests without an accepted token, all contenders. */
  upstreamRejectedUnknown: number;
}

/**
 * Token requests allowed over `elapsedMs` from the first one: see `TokenFigures`. `earliestMs`: the earliest refresh
 * point a token may draw, so the most requests are one per shortest period.
 */
export function tokenBounds(elapsedMs: number, earliestMs: number): { refreshPeriods: number; allowedMin: number; allowedMax: number } {
  if (!(earliestMs > 0)) throw new RangeError('interval must be positive');
  const refreshPeriods = Math.floor(Math.max(0, elapsedMs) / earliestMs);
  // No stricter floor: the sidecar refreshes when a request finds its token past the refresh point, not on a
  // timer, so while other contenders are measured it fetches later, or not at all if it idles past a lifetime.
  // That tokens were renewed in time shows at the upstream instead: no request with an expired token.
  return { refreshPeriods, allowedMin: 1, allowedMax: 1 + refreshPeriods };
}

export interface TargetVerdict {
  id: string;
  description: string;
  value: string;
  /** Undefined: not judged (no figure, a failing baseline, or `exempt`). */
  pass: boolean | undefined;
  /** Not judged by design (the p99 measured with autocannon): `--strict` lets it pass. */
  exempt?: true;
}

/** The project's promises for oauth-sidecar (README "Benchmark"), for the sidecar contender `id`; never loosened here. */
/**
 * `latencyTool`: the load generator of the 1-connection runs. autocannon's own client work dominates a p99 at one
 * connection (1.5–3.2 ms for every Node contender where wrk measured 0.4–0.5 ms on the same machine), so the p99
 * target is judged only with wrk.
 */
export function verdicts(s: Summary, id: string, tokens: TokenFigures | undefined, latencyTool: 'wrk' | 'autocannon' = 'wrk'): TargetVerdict[] {
  const side = s[id];
  const undici = s.undici;
  const hp = s['http-proxy'];
  const out: TargetVerdict[] = [];
  const verdict = (id: string, description: string, value: string, pass: boolean | undefined): void => {
    out.push({ id, description, value, pass });
  };
  if (!side) return out;
  /**
   * A figure earned with failed answers is no figure: the target is missed, whatever it says (a proxy answering
   * 503 fast would look fast, and small). A failing baseline leaves its ratios unjudged.
   */
  type Phase = keyof ContenderSummary['failed'];
  const judged = (value: string, pass: boolean | undefined, phase: Phase, baselines: ReadonlyArray<ContenderSummary | undefined> = []): [string, boolean | undefined] => {
    if (side.failed[phase] > 0) return [`${value}; ${side.failed[phase]} failed answer(s)`, false];
    const baselineFailed = sum(baselines.map((b) => b?.failed[phase] ?? 0));
    if (baselineFailed > 0) return [`${value}; not judged: the baseline had ${baselineFailed} failed answer(s)`, undefined];
    return [value, pass];
  };

  const rpsRatio = side.vsUndici.rps;
  verdict('throughput', 'GET req/s ≥ 0.9 × bare undici forwarder', ...judged(rpsRatio === undefined ? 'n/a' : `${fmt(rpsRatio, 3)}×`, rpsRatio === undefined ? undefined : rpsRatio >= 0.9, 'get', [undici]));

  const addedRatio = side.vsUndici.addedP50;
  verdict(
    'latency-p50',
    'added p50 over direct ≤ 1.2 × bare undici forwarder’s',
    ...judged(
      addedRatio === undefined ? 'n/a' : `${fmt(side.addedP50Us, 0)} µs vs ${fmt(undici?.addedP50Us, 0)} µs (${fmt(addedRatio, 3)}×)`,
      addedRatio === undefined ? undefined : addedRatio <= 1.2,
      'latency',
      // Both ratios' terms: the added p50 is each one's p50 over direct's.
      [undici, s.direct],
    ),
  );
  const corrected = side.p99CorrectedUs === undefined ? '' : ` (wrk's coordinated-omission-corrected p99: ${fmt(side.p99CorrectedUs, 0)} µs)`;
  if (latencyTool !== 'wrk') {
    const measured = side.p99Us === undefined ? '' : `${fmt(side.p99Us, 0)} µs with autocannon, `;
    out.push({ id: 'latency-p99', description: 'p99 at 1 connection < 1 ms', value: `${measured}not judged: autocannon's own client work dominates a p99 at one connection (install wrk)`, pass: undefined, exempt: true });
  } else {
    verdict('latency-p99', 'p99 at 1 connection < 1 ms', ...judged(side.p99Us === undefined ? 'n/a' : `${fmt(side.p99Us, 0)} µs${corrected}`, side.p99Us === undefined ? undefined : side.p99Us < 1000, 'latency'));
  }

  // The better of the bare forwarders that have a figure (one may be left out of the run, or all its uploads failed).
  const forwarders = [
    { name: 'http-proxy', mbps: hp?.uploadMBps },
    { name: 'undici', mbps: undici?.uploadMBps },
  ].filter((x): x is { name: string; mbps: number } => x.mbps !== undefined && Number.isFinite(x.mbps));
  const better = forwarders.reduce<{ name: string; mbps: number } | undefined>((best, x) => (best === undefined || x.mbps > best.mbps ? x : best), undefined);
  verdict(
    'upload',
    'upload MB/s ≥ the better bare Node forwarder',
    ...judged(
      side.uploadMBps === undefined || better === undefined ? 'n/a' : `${fmt(side.uploadMBps, 0)} vs ${fmt(better.mbps, 0)} MB/s (${better.name})`,
      side.uploadMBps === undefined || better === undefined ? undefined : side.uploadMBps >= better.mbps,
      'upload',
      // Both: which one is the better cannot be known when either failed an upload.
      [hp, undici],
    ),
  );
  verdict(
    'rss-get',
    'peak RSS under GET load ≤ 100 MB',
    ...judged(side.peakRssGetMB === undefined ? 'n/a' : `${fmt(side.peakRssGetMB, 1)} MB`, side.peakRssGetMB === undefined ? undefined : side.peakRssGetMB <= 100, 'get'),
  );
  verdict(
    'rss-upload',
    'peak RSS during uploads ≤ 120 MB',
    ...judged(side.peakRssUploadMB === undefined ? 'n/a' : `${fmt(side.peakRssUploadMB, 1)} MB`, side.peakRssUploadMB === undefined ? undefined : side.peakRssUploadMB <= 120, 'upload'),
  );
  if (tokens) {
    const t = tokens;
    const ok = t.gapsOk && t.requests >= 1 && t.requests >= t.allowedMin && t.requests <= t.allowedMax && t.upstreamRejectedExpired === 0;
    const refreshPct = t.lifetimeS > 0 ? (t.refreshIntervalS / t.lifetimeS) * 100 : undefined;
    verdict(
      'tokens',
      `one token request per token lifetime (one per refresh, at ${fmt(refreshPct, 0)} ± 5 % of it, none early)`,
      `${t.requests} request(s) in ${fmt(t.elapsedS, 0)} s from the first: ${fmt(t.elapsedS / t.refreshIntervalS, 1)} refresh periods of ${fmt(t.refreshIntervalS, 0)} s on average ` +
        `(${t.refreshPeriods} whole of the shortest, ${fmt(t.refreshWindowS[0], 0)} s), ${fmt(t.elapsedS / t.lifetimeS, 1)} token lifetimes of ${t.lifetimeS} s; ${t.allowedMin}–${t.allowedMax} allowed; ` +
        `${t.gapsOk ? 'no' : 'SOME'} early refreshes; ${t.upstreamRejectedExpired} expired-token rejections`,
      ok,
    );
  }
  return out;
}

/**
 * Which measurements were taken again when other processes used more than twice `thresholdPct` of a CPU:
 * the unsliced ones (uploads always; a GET phase only when it ran in one piece). Sliced phases keep every slice.
 */
export function remeasureNote(thresholdPct: number, sliced: { get: boolean; latency: boolean }): string {
  const again = [...(sliced.get ? [] : ['64-connection GET']), ...(sliced.latency ? [] : ['1-connection GET']), 'upload'];
  const kept = [...(sliced.get ? ['64-connection GET'] : []), ...(sliced.latency ? ['1-connection GET'] : [])];
  return (
    `${again.join(', ')} runs above ${fmt(2 * thresholdPct, 0)}% were measured again once and the quieter kept` +
    (kept.length > 0 ? `; the sliced ${kept.join(' and ')} runs were not measured again (every slice kept)` : '')
  );
}

/**
 * Of one to two attempts at a measurement, the quieter's figures (least CPU taken by other processes), with
 * the peak RSS of all attempts: a noisy neighbour slows the proxy but does not make its memory less real.
 */
export function quieterAttempt(
  attempts: ReadonlyArray<{ figures: Partial<Omit<RoundFigures, 'problems' | 'foreignCpuPct'>>; foreign: number }>,
): { index: number; foreign: number; figures: Partial<Omit<RoundFigures, 'problems' | 'foreignCpuPct'>> } {
  if (attempts.length === 0) throw new RangeError('no attempts');
  let index = 0;
  for (const [i, a] of attempts.entries()) if (a.foreign < attempts[index]!.foreign) index = i;
  const figures = { ...attempts[index]!.figures };
  for (const key of ['peakRssGetBytes', 'peakRssUploadBytes'] as const) {
    const peak = max(attempts.flatMap((a) => (a.figures[key] === undefined ? [] : [a.figures[key]])));
    if (peak !== undefined) figures[key] = peak;
  }
  return { index, foreign: attempts[index]!.foreign, figures };
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
  /** Measured seconds per contender and round: at 64 connections and at 1 (slices of whole seconds may not add up to `--duration`). */
  getS: number;
  latencyS: number;
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
  lines.push(`Run: ${ctx.date}; ${ctx.rounds} interleaved round${ctx.rounds === 1 ? '' : 's'}; GET ${ctx.getS} s at ${ctx.connections} connections and ${ctx.latencyS} s at 1 connection (${ctx.tool}); ` +
    `${ctx.uploadsPerRound} × ${ctx.uploadMiB} MiB POST per round; ${ctx.layout}; sidecar run as ${ctx.runner}. Medians over rounds; ratios are medians of per-round ratios; RSS is the peak over all rounds (under GET load including each pool prewarm)` +
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
      `Token requests by ${c.label} during the run: **${t.requests}** (token lifetime ${t.lifetimeS} s, each due for refresh at ${fmt(t.refreshWindowS[0], 0)}–${fmt(t.refreshWindowS[1], 0)} s and fetched with the next request after that; ` +
        `at ${t.requestTimesS.map((x) => `${fmt(x, 1)} s`).join(', ')}; its metrics count ${t.metricsFetches ?? '–'}); ` +
        `upstream rejections: ${t.upstreamRejectedExpired} with its expired tokens; ${t.upstreamRejectedUnknown} without an accepted token (all contenders).`,
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
