import { describe, expect, it } from 'vitest';
import { markdown, quieterAttempt, remeasureNote, stallNote, stalls, summarize, tokenBounds, verdicts, type RoundRecord, type TokenFigures } from '../../bench/lib/report.js';
import { stallFigures } from '../../bench/lib/stall.js';
import type { RoundFigures } from '../../bench/lib/types.js';

function figures(f: Partial<RoundFigures>): RoundFigures {
  return { problems: [], foreignCpuPct: {}, ...f };
}

/** Two rounds where the sidecar does 0.9× undici in one and 0.8× in the other. */
const rounds: RoundRecord[] = [
  {
    round: 1,
    order: ['direct', 'undici', 'http-proxy', 'sidecar'],
    figures: {
      direct: figures({ rps: 20_000, p50Us: 30, p99Us: 80, uploadMBps: 500 }),
      undici: figures({ rps: 10_000, p50Us: 130, p99Us: 600, uploadMBps: 400, peakRssGetBytes: 90e6, peakRssUploadBytes: 100e6, cpuUsPerRequest: 80 }),
      'http-proxy': figures({ rps: 6_000, p50Us: 150, p99Us: 500, uploadMBps: 450 }),
      sidecar: figures({ rps: 9_000, p50Us: 150, p99Us: 900, uploadMBps: 460, peakRssGetBytes: 95e6, peakRssUploadBytes: 110e6, cpuUsPerRequest: 90 }),
    },
  },
  {
    round: 2,
    order: ['undici', 'http-proxy', 'sidecar', 'direct'],
    figures: {
      direct: figures({ rps: 10_000, p50Us: 50, p99Us: 90, uploadMBps: 400 }),
      undici: figures({ rps: 5_000, p50Us: 150, p99Us: 700, uploadMBps: 300, peakRssGetBytes: 92e6, peakRssUploadBytes: 101e6 }),
      'http-proxy': figures({ rps: 3_000, p50Us: 170, p99Us: 500, uploadMBps: 350 }),
      sidecar: figures({ rps: 4_000, p50Us: 200, p99Us: 1_200, uploadMBps: 360, peakRssGetBytes: 99e6, peakRssUploadBytes: 125e6, problems: ['1 non-2xx answers under GET load'] }),
    },
  },
];
const ids = ['direct', 'undici', 'http-proxy', 'sidecar'];

/** A 60-s token refreshed every 45 s on average (each at 42–48 s), three requests in 100 s from the first. */
const tokens: TokenFigures = {
  lifetimeS: 60,
  refreshIntervalS: 45,
  refreshWindowS: [42, 48],
  requests: 3,
  requestTimesS: [0.5, 46, 92],
  metricsFetches: 3,
  elapsedS: 100,
  ...tokenBounds(100_000, 42_000),
  gapsOk: true,
  upstreamRejectedExpired: 0,
  upstreamRejectedUnknown: 0,
};

/** The rounds without one contender's figures (left out of the run). */
function without(id: string): RoundRecord[] {
  return rounds.map((r) => ({ ...r, order: r.order.filter((x) => x !== id), figures: Object.fromEntries(Object.entries(r.figures).filter(([x]) => x !== id)) }));
}

describe('bench report', () => {
  it('summarises medians, per-round ratios and peaks', () => {
    const s = summarize(rounds, ids);
    expect(s['sidecar']?.rps).toBe(6_500);
    // Per-round ratios 0.9 and 0.8, not the ratio of medians (6500 / 7500).
    expect(s['sidecar']?.vsUndici.rps).toBeCloseTo(0.85);
    // Added latency: 150 − 30 = 120 and 200 − 50 = 150, against undici's 100 and 100.
    expect(s['sidecar']?.addedP50Us).toBe(135);
    expect(s['sidecar']?.vsUndici.addedP50).toBeCloseTo(1.35);
    expect(s['sidecar']?.peakRssUploadMB).toBe(125);
    expect(s['sidecar']?.problems).toEqual(['1 non-2xx answers under GET load']);
    expect(s['direct']?.vsDirect.rps).toBe(1);
  });

  it('checks the targets without loosening them', () => {
    const v = Object.fromEntries(verdicts(summarize(rounds, ids), 'sidecar', tokens).map((t) => [t.id, t.pass]));
    expect(v).toEqual({
      throughput: false, // 0.85× < 0.9×
      'latency-p50': false, // 1.35× > 1.2×
      'latency-p99': false, // median 1050 µs
      upload: true, // 410 ≥ max(350, 400)
      'rss-get': true, // 99 MB
      'rss-upload': false, // 125 MB
      tokens: true,
    });
    expect(verdicts(summarize(rounds, ids), 'sidecar', { ...tokens, upstreamRejectedExpired: 1 }).find((t) => t.id === 'tokens')?.pass).toBe(false);
    expect(verdicts(summarize(rounds, ids), 'missing', tokens)).toEqual([]);
  });

  it('misses every target of a phase in which the sidecar had failed answers, and does not judge ratios to a failing baseline', () => {
    const failing = (id: string, failed: RoundFigures['failed']) => rounds.map((r) => ({ ...r, figures: { ...r.figures, [id]: { ...r.figures[id]!, failed } } }));
    // Good-looking figures: 1.0× undici's rps, its latency, small.
    const fast = rounds.map((r) => ({ ...r, figures: { ...r.figures, sidecar: { ...r.figures.undici!, problems: [] } } }));
    const judge = (rs: RoundRecord[]) => Object.fromEntries(verdicts(summarize(rs, ids), 'sidecar', undefined).map((t) => [t.id, t]));
    expect(Object.values(judge(fast)).map((t) => t.pass)).toEqual([true, true, true, false, true, true]);
    const get = judge(fast.map((r, i) => (i === 0 ? { ...r, figures: { ...r.figures, sidecar: { ...r.figures.sidecar!, failed: { get: 320 } } } } : r)));
    expect(get['throughput']).toMatchObject({ pass: false, value: '1.000×; 320 failed answer(s)' });
    expect(get['rss-get']?.pass).toBe(false);
    expect(get['latency-p50']?.pass).toBe(true); // another phase
    const latency = judge(fast.map((r) => ({ ...r, figures: { ...r.figures, sidecar: { ...r.figures.sidecar!, failed: { latency: 1 } } } })));
    expect([latency['latency-p50']?.pass, latency['latency-p99']?.pass, latency['throughput']?.pass]).toEqual([false, false, true]);
    const upload = judge(fast.map((r) => ({ ...r, figures: { ...r.figures, sidecar: { ...r.figures.sidecar!, failed: { upload: 2 } } } })));
    expect([upload['upload']?.pass, upload['rss-upload']?.pass]).toEqual([false, false]);
    // The baseline failed: its ratio says nothing, either way.
    const baseline = Object.fromEntries(verdicts(summarize(failing('undici', { get: 5 }), ids), 'sidecar', undefined).map((t) => [t.id, t]));
    expect(baseline['throughput']).toMatchObject({ pass: undefined, value: '0.850×; not judged: the baseline had 10 failed answer(s)' });
    // The added p50 is measured over direct's too; the upload is judged against the better forwarder.
    const direct = Object.fromEntries(verdicts(summarize(failing('direct', { latency: 1 }), ids), 'sidecar', undefined).map((t) => [t.id, t]));
    expect(direct['latency-p50']?.pass).toBeUndefined();
    const hp = Object.fromEntries(verdicts(summarize(failing('http-proxy', { upload: 1 }), ids), 'sidecar', undefined).map((t) => [t.id, t]));
    expect(hp['upload']).toMatchObject({ pass: undefined, value: '410 vs 400 MB/s (http-proxy); not judged: the baseline had 2 failed answer(s)' });
  });

  it('does not judge the p99 from autocannon, whose own client work dominates it at one connection', () => {
    const p99 = verdicts(summarize(rounds, ids), 'sidecar', tokens, 'autocannon').find((t) => t.id === 'latency-p99')!;
    expect(p99.pass).toBeUndefined();
    expect(p99.exempt).toBe(true); // --strict lets it pass
    expect(p99.value).toMatch(/^1,050 µs with autocannon, not judged: .*install wrk/);
  });

  it('judges uploads against the bare forwarder that has a figure when the other has none', () => {
    // http-proxy left out of the run: undici's 350 (median of 400, 300) is the one to beat.
    const noHp = verdicts(summarize(without('http-proxy'), ids), 'sidecar', undefined).find((t) => t.id === 'upload')!;
    expect(noHp).toMatchObject({ pass: true, value: '410 vs 350 MB/s (undici)' });
    // Every http-proxy upload failed (no figure in any round): likewise.
    const failed = rounds.map((r) => ({ ...r, figures: { ...r.figures, 'http-proxy': figures({ rps: 6_000 }) } }));
    expect(verdicts(summarize(failed, ids), 'sidecar', undefined).find((t) => t.id === 'upload')).toMatchObject({ pass: true, value: '410 vs 350 MB/s (undici)' });
    // …but not when its uploads failed: which forwarder is the better cannot be known, so it is not judged.
    const broke = rounds.map((r) => ({ ...r, figures: { ...r.figures, 'http-proxy': figures({ rps: 6_000, failed: { upload: 2 } }) } }));
    expect(verdicts(summarize(broke, ids), 'sidecar', undefined).find((t) => t.id === 'upload')).toMatchObject({
      pass: undefined,
      value: '410 vs 350 MB/s (undici); not judged: the baseline had 4 failed answer(s)',
    });
    // undici left out: http-proxy's 400 is the one, and 410 beats it.
    expect(verdicts(summarize(without('undici'), ids), 'sidecar', undefined).find((t) => t.id === 'upload')).toMatchObject({ pass: true, value: '410 vs 400 MB/s (http-proxy)' });
    // Neither: nothing to compare with.
    expect(verdicts(summarize(without('undici').map((r) => ({ ...r, figures: { ...r.figures, 'http-proxy': figures({}) } })), ids), 'sidecar', undefined).find((t) => t.id === 'upload')).toMatchObject({
      pass: undefined,
      value: 'n/a',
    });
  });

  it('counts token requests per refresh period and says so; a late refresh shows as an expired token upstream', () => {
    // Periods of the shortest a token may draw (42 s of a 60-s lifetime): the most requests allowed.
    expect(tokenBounds(100_000, 42_000)).toEqual({ refreshPeriods: 2, allowedMin: 1, allowedMax: 3 });
    expect(tokenBounds(600_000, 42_000)).toEqual({ refreshPeriods: 14, allowedMin: 1, allowedMax: 15 });
    expect(tokenBounds(10_000, 42_000)).toEqual({ refreshPeriods: 0, allowedMin: 1, allowedMax: 1 });
    const s = summarize(rounds, ids);
    const judge = (t: TokenFigures) => verdicts(s, 'sidecar', t).find((v) => v.id === 'tokens')!;
    const t = judge(tokens);
    expect(t.description).toBe('one token request per token lifetime (one per refresh, at 75 ± 5 % of it, none early)');
    expect(t.value).toBe(
      '3 request(s) in 100 s from the first: 2.2 refresh periods of 45 s on average (2 whole of the shortest, 42 s), 1.7 token lifetimes of 60 s; 1–3 allowed; no early refreshes; 0 expired-token rejections',
    );
    // Ten minutes, 14 whole refresh periods of the shortest. Fewer requests are fine (a sidecar idle while others are measured
    // refreshes later), but not tokens that expired on the way: a sidecar that stopped refreshing misses.
    const long = { ...tokens, elapsedS: 600, ...tokenBounds(600_000, 42_000) };
    expect(judge({ ...long, requests: 9 }).pass).toBe(true);
    expect(judge({ ...long, requests: 1, upstreamRejectedExpired: 40 }).pass).toBe(false);
    expect(judge({ ...long, requests: 12 }).pass).toBe(true);
    expect(judge({ ...long, requests: 15 }).pass).toBe(true);
    expect(judge({ ...long, requests: 16 }).pass).toBe(false);
    expect(judge({ ...long, requests: 14, gapsOk: false }).pass).toBe(false);
  });

  it('says which runs are measured again on a busy machine', () => {
    expect(remeasureNote(25, { get: true, latency: true })).toBe(
      'upload runs above 50% were measured again once and the quieter kept; the sliced 64-connection GET and 1-connection GET runs were not measured again (every slice kept)',
    );
    expect(remeasureNote(25, { get: false, latency: false })).toBe('64-connection GET, 1-connection GET, upload runs above 50% were measured again once and the quieter kept');
    expect(remeasureNote(10, { get: true, latency: false })).toBe(
      '1-connection GET, upload runs above 20% were measured again once and the quieter kept; the sliced 64-connection GET runs were not measured again (every slice kept)',
    );
  });

  it("keeps the quieter attempt's figures but the peak RSS of every attempt", () => {
    const noisy = { figures: { uploadMBps: 300, peakRssUploadBytes: 130e6 }, foreign: 80 };
    const quiet = { figures: { uploadMBps: 400, peakRssUploadBytes: 110e6 }, foreign: 5 };
    expect(quieterAttempt([noisy, quiet])).toEqual({ index: 1, foreign: 5, figures: { uploadMBps: 400, peakRssUploadBytes: 130e6 } });
    expect(quieterAttempt([{ figures: { rps: 9_000, peakRssGetBytes: 90e6 }, foreign: 1 }])).toEqual({ index: 0, foreign: 1, figures: { rps: 9_000, peakRssGetBytes: 90e6 } });
    expect(quieterAttempt([{ figures: { rps: 1 }, foreign: 60 }, { figures: { rps: 2 }, foreign: 60 }]).index).toBe(0);
  });

  it('renders a table row per contender and a verdict table', () => {
    const s = summarize(rounds, ids);
    const specs = ids.map((id) => ({ id, kind: id as 'direct', label: id }));
    const text = markdown(s, specs, { sidecar: verdicts(s, 'sidecar', undefined) }, {}, {
      machine: 'test machine',
      date: '2026-01-01',
      tool: 'wrk',
      layout: 'not pinned',
      rounds: 2,
      getS: 6,
      latencyS: 5,
      connections: 64,
      uploadMiB: 64,
      uploadsPerRound: 2,
      runner: 'dist',
      notes: ['a note'],
    });
    expect(text).toContain('| sidecar ⚠ | 6,500 | 0.85× |');
    expect(text).toContain('| GET req/s ≥ 0.9 × bare undici forwarder | 0.850× | **missed** |');
    expect(text).toContain('- a note');
    // The seconds measured, which slices of whole seconds may make differ from --duration.
    expect(text).toContain('GET 6 s at 64 connections and 5 s at 1 connection (wrk)');
  });

  it('reads the stall probe: the share of time in pieces 4× the median or slower, and their slowdown', () => {
    // 96 pieces of 50 µs and 4 stalled ones (100 µs: under 4×; 250, 500, 600 µs), over 10 ms.
    const pieces = [...Array<number>(96).fill(50), 100, 250, 500, 600];
    const f = stallFigures(pieces, 10_000)!;
    expect(f.medianUs).toBe(50);
    expect(f.slowShare).toBeCloseTo((250 + 500 + 600) / 10_000);
    expect(f.slowdown).toBe(10); // median of 250, 500, 600 = 500 µs
    expect(f.worst).toBe(12);
    expect(stallFigures(Array<number>(10).fill(50), 1_000)).toMatchObject({ slowShare: 0, slowdown: 1, worst: 1 });
    expect(stallFigures([], 1_000)).toBeUndefined();
  });

  it("judges p99 on the requests' own latencies and shows wrk's corrected p99 beside them", () => {
    const withCorrected: RoundRecord[] = rounds.map((r) => ({
      ...r,
      figures: { ...r.figures, sidecar: { ...r.figures.sidecar!, p99Us: 400, p99CorrectedUs: r.round === 1 ? 1_500 : 1_700 } },
    }));
    const s = summarize(withCorrected, ids);
    expect(s.sidecar?.p99CorrectedUs).toBe(1_600);
    const p99 = verdicts(s, 'sidecar', undefined).find((t) => t.id === 'latency-p99')!;
    expect(p99).toMatchObject({ pass: true, value: "400 µs (wrk's coordinated-omission-corrected p99: 1,600 µs)" });
    const specs = ids.map((id) => ({ id, kind: id as 'direct', label: id }));
    const text = markdown(s, specs, {}, {}, { machine: 'm', date: 'd', tool: 'wrk', layout: 'l', rounds: 2, getS: 5, latencyS: 5, connections: 64, uploadMiB: 64, uploadsPerRound: 2, runner: 'dist', notes: [] });
    expect(text).toContain('| 175 | 400 | 1,600 |'); // p50, p99, wrk-corrected p99
    expect(text).toContain('| 140 | 650 | – |'); // undici: no corrected figure recorded
    expect(text).toContain("latency percentiles are the requests' own");
    expect(markdown(s, specs, {}, {}, { machine: 'm', date: 'd', tool: 'autocannon 8', layout: 'l', rounds: 2, getS: 5, latencyS: 5, connections: 64, uploadMiB: 64, uploadsPerRound: 2, runner: 'dist', notes: [] })).not.toContain('coordinated-omission');
  });

  it('summarizes the stall probes of the rounds into a note, and says nothing without them', () => {
    const probed: RoundRecord[] = [
      { ...rounds[0]!, stall: { medianUs: 50, slowShare: 0.02, slowdown: 8, worst: 12 } },
      { ...rounds[1]!, stall: { medianUs: 52, slowShare: 0.04, slowdown: 10, worst: 20 } },
      { ...rounds[1]!, round: 3, stall: undefined },
    ];
    expect(stalls(probed)).toEqual({ slowSharePct: 3, slowdown: 9, worst: 20, pieceUs: { min: 50, max: 52 }, probes: 2 });
    const note = stallNote(probed, 2)!;
    expect(note).toContain('for a median 3.0% of the time, slowed a median 9.0× (at worst 20×)');
    expect(note).toContain('the probe\'s piece took 50–52 µs from round to round');
    expect(stallNote(rounds, 2)).toBeUndefined();
  });
});
