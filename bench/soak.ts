/**
 * `npm run soak`: a bounded run of mixed traffic through oauth-sidecar (its
 * real CLI, default logging, metrics on) with token lifetimes short enough to
 * refresh many times and a credential rotation (new client id and secret;
 * the old ones revoked) in the middle.
 *
 * Pass criteria: zero failed requests; RSS and open file descriptors flat
 * from the first to the last interval (printed as a series); token requests
 * equal to the number of token lifetimes (refresh periods) elapsed, one more
 * for the rotation, each token refreshed within its window (75 ± 5 % of its
 * lifetime), and never an expired token at the upstream. Results:
 * bench/results/soak-latest.json and soak-latest.md.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import type { ClientSecret } from './servers/protocol.js';
import type { SoakJob, SoakProgress } from './tools/soak-client.js';
import { helpText, parse, type Flags } from './lib/args.js';
import { ROOT, makeRunner, tsxRunner, type Runner } from './lib/build.js';
import { checkCgroupDir, readCgroupMemory, type CgroupMemory } from './lib/cgroup.js';
import { contenderSpec, fetchText, metricValue, SHIPPED_NODE_FLAGS, startContender, writeServiceKey, type RunningContender } from './lib/contenders.js';
import { startEnvironment, type Environment } from './lib/environment.js';
import { machineLine } from './lib/machine.js';
import { Child, ForeignCpuMeter, cleanEnv, cpuLayout, cpuTimeMs, memoryOf, openFds } from './lib/proc.js';
import { fmt } from './lib/report.js';
import { LogWatch, series, type Row, type Sample } from './lib/soak-report.js';
import { expectedTokenRequests, flatness, lateRefreshes, refreshWindowMs, slope, tokenGapsOk, type FlatnessVerdict } from './lib/stats.js';

const FLAGS: Flags = {
  duration: { type: 'string', default: '600', description: 'seconds of traffic (the run also ends at --max-requests)' },
  'max-requests': { type: 'string', default: '2000000', description: 'request budget' },
  concurrency: { type: 'string', default: '16', description: 'concurrent senders (keep-alive connections)' },
  rate: { type: 'string', default: '0', description: 'requests/s over all senders; 0 = as fast as the sidecar answers' },
  'token-lifetime': { type: 'string', default: '20', description: 'expires_in of issued tokens, seconds (refreshed at 75 ± 5 %)' },
  'rotate-at': { type: 'string', default: '0.5', description: 'credential rotation at this fraction of the duration or of the request budget, whichever comes first' },
  interval: { type: 'string', default: 'auto', description: 'seconds per row of the printed series (auto: 60, or duration/12 but at least 5 for runs under 10 min)' },
  runner: { type: 'string', default: 'dist', description: 'dist (compiled with tsc) or tsx' },
  'no-pin': { type: 'boolean', description: 'do not pin processes to CPUs with taskset' },
  out: { type: 'string', default: 'bench/results', description: 'directory for soak-latest.json and soak-latest.md' },
  'no-write': { type: 'boolean', description: 'print the results only' },
  keep: { type: 'boolean', description: 'keep the scratch directory (keys, certificates)' },
  cgroup: {
    type: 'string',
    default: '',
    description: 'start the sidecar inside this cgroup directory, made and memory-limited beforehand (as root); the report adds its limit, peak charge and OOM kills',
  },
};

const SUMMARY = 'oauth-sidecar soak: mixed traffic, short token lifetimes, a credential rotation; zero failures, flat RSS and handles, one token request per lifetime.';
/** Allowed growth from the baseline window (the first after warm-up) to the last one. */
const RSS_TOLERANCE = { relative: 0.05, absolute: 8e6 };
/** Sockets come and go with `Connection: close` senders; a leak grows without bound. */
const FD_TOLERANCE = { relative: 0, absolute: 4 };

function cgroupNote(c: CgroupMemory & { dir: string }): string {
  const mib = (bytes: number | undefined): string => (bytes === undefined ? '–' : `${fmt(bytes / 1048576, 1)} MiB`);
  return (
    `sidecar run in cgroup ${c.dir}: memory limit ${c.limitBytes === undefined ? 'none' : mib(c.limitBytes)}, peak charge ${mib(c.peakBytes)}, ` +
    `${c.oomKills ?? '–'} OOM kills (the peak covers what the sidecar allocated and the page cache it read in; pages of node already cached elsewhere stay charged there)`
  );
}

function say(line: string): void {
  process.stdout.write(`${line}\n`);
}

async function main(): Promise<number> {
  const args = parse(process.argv.slice(2), FLAGS);
  if (args.help) {
    process.stdout.write(helpText('npm run soak --', SUMMARY, FLAGS));
    return 0;
  }
  const durationS = args.number('duration', 10);
  const maxRequests = Math.floor(args.number('max-requests', 1));
  const concurrency = Math.floor(args.number('concurrency', 1));
  const rate = args.number('rate', 0);
  const lifetimeS = Math.floor(args.number('token-lifetime', 5));
  const rotateAt = args.number('rotate-at', 0);
  if (rotateAt > 1) throw new Error(`--rotate-at must be a fraction from 0 (no rotation) to 1, not ${rotateAt}`);
  const runnerName = args.string('runner');
  if (runnerName !== 'dist' && runnerName !== 'tsx') throw new Error(`--runner must be dist or tsx, not "${runnerName}"`);
  const intervalText = args.string('interval');
  const intervalS = intervalText === 'auto' ? (durationS >= 600 ? 60 : Math.max(5, Math.round(durationS / 12))) : args.number('interval', 1);

  const cgroupDir = args.string('cgroup') || undefined;
  if (cgroupDir) checkCgroupDir(cgroupDir);
  const layout = cpuLayout(!args.boolean('no-pin'));
  let runner: Runner;
  try {
    runner = makeRunner(runnerName, (l) => say(`soak: ${l}`));
  } catch (err) {
    say(`soak: ${(err as Error).message}\nsoak: falling back to running the sources through tsx`);
    runner = tsxRunner();
  }
  const first: ClientSecret = { id: 'sb-soak-1!b1|it-rt-soak!b1', secret: `one$${randomBytes(12).toString('base64url')}=` };
  const second: ClientSecret = { id: 'sb-soak-2!b2|it-rt-soak!b1', secret: `two$${randomBytes(12).toString('base64url')}=` };
  say(`soak: ${durationS} s or ${maxRequests.toLocaleString('en-US')} requests, ${concurrency} senders, token lifetime ${lifetimeS} s, rotation at ${rotateAt > 0 ? `${Math.round(rotateAt * durationS)} s or ${Math.round(rotateAt * maxRequests).toLocaleString('en-US')} requests, whichever comes first` : 'none'}; ${layout.description}`);

  let env: Environment | undefined;
  let sidecar: RunningContender | undefined;
  let client: Child | undefined;
  try {
    env = await startEnvironment({ runner, cpu: layout.servers, tokenLifetimeS: lifetimeS, clients: [first], keep: args.boolean('keep') });
    const sidecarStart = Date.now();
    // The sidecar's log comes through a pipe, scanned as it comes: nothing on the scratch disk, no line lost.
    const logs = new LogWatch();
    sidecar = await startContender(contenderSpec('sidecar'), { env, runner, cpu: layout.proxy, client: first, cgroupDir, onSidecarLog: (chunk) => logs.feed(chunk) });
    const pid = sidecar.pid!;
    say(`soak: oauth-sidecar pid ${pid} listening on ${sidecar.target.base}`);

    const job: SoakJob = { base: sidecar.target.base, concurrency, durationS, maxRequests, rate, seed: 20_251_122 };
    client = new Child('soak-client', process.execPath, [...runner.args('bench/tools/soak-client.ts'), JSON.stringify(job)], { cpu: layout.loadgen, env: cleanEnv() });
    const trafficStart = Date.now();
    const meter = new ForeignCpuMeter();

    const samples: Sample[] = [];
    let rotation: { requestedAt: number; appliedAt?: number; revokedAt?: number; error?: string } | undefined;
    let lastScrape = 0;
    const hardDeadline = trafficStart + durationS * 1000 + 120_000;

    while (client.running && Date.now() < hardDeadline) {
      await delay(1000);
      const t = (Date.now() - trafficStart) / 1000;
      const memory = memoryOf(pid);
      samples.push({ t, rss: memory?.rss ?? Number.NaN, fds: openFds(pid) ?? Number.NaN, cpuMs: cpuTimeMs(pid) ?? Number.NaN });
      // Scrape like Prometheus would, every 10 s.
      if (sidecar.adminUrl && Date.now() - lastScrape >= 10_000) {
        lastScrape = Date.now();
        await fetchText(`${sidecar.adminUrl}/metrics`);
      }
      // At that fraction of the duration or of the request budget, whichever the run reaches first.
      const sent = lastProgress(client.stdout, 'progress');
      const sentSoFar = (sent?.ok ?? 0) + (sent?.failed ?? 0);
      if (!rotation && rotateAt > 0 && (t >= rotateAt * durationS || sentSoFar >= rotateAt * maxRequests)) {
        rotation = { requestedAt: Date.now() };
        say(`soak: ${t.toFixed(0)} s: rotating credentials (${first.id} → ${second.id})`);
        // Like a new service key: the token server knows both for a while, the file is swapped atomically, then the old one is revoked.
        await env.setClients([first, second]);
        const tmp = join(sidecar.keyFile!, '..', '.service-key.json.tmp');
        writeServiceKey(tmp, second, env);
        renameSync(tmp, sidecar.keyFile!);
      }
      if (rotation && rotation.appliedAt === undefined) {
        if (logs.seen('credentials rotated')) {
          rotation.appliedAt = Date.now();
          await env.setClients([second]);
          rotation.revokedAt = Date.now();
          say(`soak: rotation applied after ${((rotation.appliedAt - rotation.requestedAt) / 1000).toFixed(1)} s; old client revoked`);
        } else if (Date.now() - rotation.requestedAt > 90_000) {
          rotation.error = 'the sidecar did not log "credentials rotated" within 90 s';
          rotation.appliedAt = Number.NaN;
        }
      }
      if (samples.length % intervalS === 0) printProgress(samples, client.stdout);
    }
    if (client.running) {
      await client.stop(2_000);
      say('soak: the traffic generator overran its deadline and was stopped');
    }
    const clientExit = await client.exited();
    const trafficEnd = Date.now();
    const foreignPct = meter.stop();
    const done = lastProgress(client.stdout, 'done') ?? lastProgress(client.stdout, 'progress');
    const progressLines = allProgress(client.stdout);

    const metricsText = sidecar.adminUrl ? await fetchText(`${sidecar.adminUrl}/metrics`) : undefined;
    const stats = await env.stats();
    const exit = await sidecar.stop();
    sidecar = undefined;
    const cgroup = cgroupDir ? { dir: cgroupDir, ...readCgroupMemory(cgroupDir) } : undefined;

    // Tokens.
    const tokenRequests = stats.token.requests.filter((r) => r.at >= sidecarStart);
    const okTokenTimes = tokenRequests.filter((r) => r.status === 200).map((r) => r.at);
    const rotationFetch = tokenRequests.find((r) => r.clientId === second.id && r.status === 200)?.at;
    const window = refreshWindowMs(lifetimeS * 1000);
    const firstFetch = okTokenTimes[0] ?? sidecarStart;
    const segments = rotationFetch ? [rotationFetch - firstFetch, trafficEnd - rotationFetch] : [trafficEnd - firstFetch];
    const expected = expectedTokenRequests(segments, window);
    const resets = rotationFetch ? [rotationFetch] : [];
    const gapsOk = tokenGapsOk(okTokenTimes, window.earliestMs, resets);
    const late = lateRefreshes(okTokenTimes, window.latestMs, resets);
    const refused = tokenRequests.filter((r) => r.status !== 200);
    const lifetimesElapsed = segments.reduce((n, ms) => n + ms / window.middleMs, 0);
    const secs = (ms: number) => fmt(ms / 1000, 0);

    // Series.
    const rows = series(samples, progressLines, intervalS, okTokenTimes.map((t) => (t - trafficStart) / 1000));
    // "From the first to the last minute": the largest value in a window at the start and in the last window. For
    // RSS the start is the first window after warm-up (the heap grows to its working size in the first one).
    const windowS = Math.min(60, elapsedTrafficS(samples) / 2);
    const rssBaseline = elapsedTrafficS(samples) >= 3 * windowS ? 1 : 0;
    const rssVerdict = flatness(windowMaxima(samples, windowS, (s) => s.rss, rssBaseline), RSS_TOLERANCE);
    const fdVerdict = flatness(windowMaxima(samples, windowS, (s) => s.fds), FD_TOLERANCE);
    const firstRssWindow = windowMaxima(samples, windowS, (s) => s.rss)[0];
    const rssTrend = slope(rows.slice(1).map((row) => [row.t / 60, row.rssLastMB] as const));
    const failed = done?.failed ?? Number.NaN;
    const ok = done?.ok ?? 0;
    const authorised = stats.upstream.staticToken + stats.upstream.issuedToken;
    const elapsedS = (trafficEnd - trafficStart) / 1000;
    // A run cut short (the generator died or overran) would shrink every other expectation to fit.
    const budgetReached = ok + (Number.isFinite(failed) ? failed : 0) >= maxRequests;
    const completed = done?.type === 'done' && clientExit.code === 0 && (budgetReached || elapsedS >= durationS - 1);

    const verdicts: Array<{ what: string; value: string; pass: boolean }> = [
      {
        what: 'the run completed (its duration or request budget reached, the traffic generator exited 0)',
        value: `${budgetReached ? 'request budget' : `${fmt(elapsedS, 0)} of ${durationS} s`}; generator exit ${clientExit.code ?? clientExit.signal}${done?.type === 'done' ? '' : ', no final count'}`,
        pass: completed,
      },
      {
        // An answer the upstream never saw (with a valid token) was not forwarded: it passes the client's checks, not this.
        what: 'zero failed requests, every one answered ok seen by the upstream with a valid token',
        value: `${ok.toLocaleString('en-US')} ok, ${failed} failed; the upstream took ${authorised.toLocaleString('en-US')} with a valid token`,
        pass: failed === 0 && ok > 0 && authorised >= ok,
      },
      {
        what: `RSS flat (max of the ${rssBaseline ? 'second' : 'first'} vs the last ${fmt(windowS, 0)} s; growth allowed: 5 %, at least 8 MB)`,
        value:
          `${flatText(rssVerdict, 'MB', 1e6)}${rssBaseline && firstRssWindow !== undefined ? `; the first ${fmt(windowS, 0)} s (warm-up) peaked at ${fmt(firstRssWindow / 1e6, 1)} MB` : ''}` +
          // Shown, not judged: the old generation moves a row's end by ~10 MB between its collections.
          (rssTrend === undefined ? '' : `; trend of the rows' end RSS after the first: ${rssTrend >= 0 ? '+' : ''}${fmt(rssTrend, 2)} MB/min`),
        pass: rssVerdict?.flat ?? false,
      },
      { what: `open file descriptors flat (max of the first vs the last ${fmt(windowS, 0)} s)`, value: flatText(fdVerdict, '', 1), pass: fdVerdict?.flat ?? false },
      {
        what: 'token requests = refresh periods elapsed (one per token, at 75 ± 5 % of its lifetime; +1 for the rotation)',
        value:
          `${okTokenTimes.length} (expected ${expected.min === expected.max ? expected.min : `${expected.min}–${expected.max}`}: ${fmt(lifetimesElapsed, 1)} refresh periods of ${secs(window.middleMs)} s on average (each ${secs(window.earliestMs)}–${secs(window.latestMs)} s) in ${segments.length} segment(s)); ` +
          `${gapsOk ? 'never' : 'SOME'} two within ${secs(window.earliestMs)} s; ${late === 0 ? 'none' : late} later than ${secs(window.latestMs)} s; ${refused.length} refused; ${stats.upstream.rejectedExpired} expired tokens at the upstream`,
        pass:
          okTokenTimes.length >= expected.min && okTokenTimes.length <= expected.max && gapsOk && late === 0 && refused.length === 0 && stats.upstream.rejectedExpired === 0,
      },
      {
        what: 'credential rotation applied, old client revoked, no request failed',
        value: rotation
          ? (rotation.error ??
            (rotation.appliedAt === undefined
              ? 'requested, but not applied before the run ended'
              : `applied ${fmt((rotation.appliedAt - rotation.requestedAt) / 1000, 1)} s after the key file changed`))
          : rotateAt > 0
            ? 'no rotation: the run ended before it'
            : 'no rotation (--rotate-at 0)',
        pass: rotation
          ? rotation.error === undefined && rotationFetch !== undefined && Number.isFinite(rotation.appliedAt) && rotation.revokedAt !== undefined
          : rotateAt === 0,
      },
      { what: 'clean shutdown on SIGTERM (exit 0)', value: `exit ${exit?.code ?? exit?.signal}${exit?.killed ? ' (killed)' : ''}`, pass: exit?.code === 0 && !exit.killed },
    ];

    const md = soakMarkdown({
      machine: machineLine(),
      date: new Date().toISOString(),
      config: `${fmt(elapsedS, 0)} s, ${concurrency} senders${rate > 0 ? ` at ${rate} req/s` : ' (as fast as answered)'}, token lifetime ${lifetimeS} s, rotation ${rotation ? `at ${fmt((rotation.requestedAt - trafficStart) / 1000, 0)} s` : 'none'}; ${layout.description}; sidecar run as ${runner.kind === 'dist' ? 'compiled JavaScript' : 'TypeScript through tsx'} with node ${SHIPPED_NODE_FLAGS.join(' ')} (as the image starts it)`,
      totals: `${(ok + (Number.isFinite(failed) ? failed : 0)).toLocaleString('en-US')} requests (${fmt((ok + (failed || 0)) / elapsedS, 0)} req/s); mix: ${Object.entries(done?.byKind ?? {}).map(([k, n]) => `${k} ${n.toLocaleString('en-US')}`).join(', ')}`,
      rows,
      verdicts,
      notes: [
        `other processes on the machine used ${fmt(foreignPct, 0)}% of one CPU on average during the run`,
        `sidecar log: ${logs.counts.warn} warn, ${logs.counts.error} error, ${logs.counts.fatal} fatal lines${logs.samples.length ? ` — first: ${logs.samples.slice(0, 3).join(' | ')}` : ''}`,
        `sidecar metrics at the end: ${metricValue(metricsText ?? '', 'oauth_sidecar_requests_total')?.toLocaleString('en-US') ?? '–'} requests, ` +
          `${metricValue(metricsText ?? '', 'oauth_sidecar_token_fetches_total', 'outcome="success"') ?? '–'} token fetches, ` +
          `${metricValue(metricsText ?? '', 'oauth_sidecar_upstream_401_retries_total') ?? 0} upstream-401 retries, ` +
          `${metricValue(metricsText ?? '', 'oauth_sidecar_credential_reloads_total', 'outcome="applied"') ?? 0} credential reloads applied`,
        ...(done?.failures.length ? [`first failures: ${done.failures.slice(0, 5).join(' | ')}`] : []),
        ...(cgroup ? [cgroupNote(cgroup)] : []),
      ],
    });
    say('');
    say(md);
    if (!args.boolean('no-write')) {
      const out = resolve(ROOT, args.string('out'));
      mkdirSync(out, { recursive: true });
      const json = {
        schema: 1,
        date: new Date().toISOString(),
        machine: machineLine(),
        layout: layout.description,
        runner: runner.kind,
        options: { durationS, maxRequests, concurrency, rate, lifetimeS, rotateAt, intervalS },
        totals: { ok, failed, elapsedS, byKind: done?.byKind, failures: done?.failures },
        rows,
        tokens: {
          requests: tokenRequests.map((r) => ({ t: (r.at - trafficStart) / 1000, clientId: r.clientId, status: r.status })),
          expected,
          window,
          gapsOk,
          late,
          upstreamRejectedExpired: stats.upstream.rejectedExpired,
          upstreamRejectedUnknown: stats.upstream.rejectedUnknown,
        },
        rotation,
        verdicts,
        logs: logs.counts,
        foreignCpuPct: foreignPct,
        cgroup,
      };
      writeFileSync(resolve(out, 'soak-latest.json'), `${JSON.stringify(json, null, 2)}\n`);
      writeFileSync(resolve(out, 'soak-latest.md'), md);
      say(`soak: results written to ${out}/soak-latest.json and soak-latest.md`);
    }
    return verdicts.every((v) => v.pass) ? 0 : 1;
  } finally {
    if (client?.running) await client.stop(1_000);
    if (sidecar) await sidecar.stop();
    await env?.close();
    runner.dispose();
  }
}

function allProgress(stdout: string): SoakProgress[] {
  return stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as SoakProgress);
}

function lastProgress(stdout: string, type: SoakProgress['type']): SoakProgress | undefined {
  return allProgress(stdout)
    .filter((p) => p.type === type)
    .at(-1);
}

function printProgress(samples: readonly Sample[], stdout: string): void {
  const s = samples.at(-1);
  const p = lastProgress(stdout, 'progress');
  if (!s || !p) return;
  say(`soak: ${s.t.toFixed(0).padStart(4)} s  ${p.ok.toLocaleString('en-US').padStart(10)} ok  ${p.failed} failed  RSS ${(s.rss / 1e6).toFixed(1)} MB  fds ${s.fds}`);
}

function elapsedTrafficS(samples: readonly Sample[]): number {
  return samples.at(-1)?.t ?? 0;
}

/** [max over the `index`th window of `windowS` seconds from the start, max over the last `windowS` seconds] of a sampled value. */
function windowMaxima(samples: readonly Sample[], windowS: number, pick: (s: Sample) => number, index = 0): number[] {
  const end = elapsedTrafficS(samples);
  const first = samples.filter((s) => s.t > index * windowS && s.t <= (index + 1) * windowS).map(pick).filter(Number.isFinite);
  const last = samples.filter((s) => s.t >= end - windowS).map(pick).filter(Number.isFinite);
  return first.length && last.length ? [Math.max(...first), Math.max(...last)] : [];
}

function flatText(v: FlatnessVerdict | undefined, unit: string, scale: number): string {
  if (!v) return 'n/a (fewer than two intervals)';
  const u = unit ? ` ${unit}` : '';
  return `${fmt(v.first / scale, scale === 1 ? 0 : 1)} → ${fmt(v.last / scale, scale === 1 ? 0 : 1)}${u} (${v.delta >= 0 ? '+' : ''}${fmt(v.delta / scale, scale === 1 ? 0 : 1)}${u})`;
}

function soakMarkdown(r: {
  machine: string;
  date: string;
  config: string;
  totals: string;
  rows: readonly Row[];
  verdicts: ReadonlyArray<{ what: string; value: string; pass: boolean }>;
  notes: readonly string[];
}): string {
  const lines = [`Machine: ${r.machine}`, `Run: ${r.date}; ${r.config}.`, `Traffic: ${r.totals}.`, ''];
  lines.push('| t (s) | requests | failed | req/s | RSS max MB | RSS end MB | fds max | fds end | sidecar CPU % | token requests (cumulative) |');
  lines.push('|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|');
  for (const row of r.rows) {
    lines.push(
      `| ${row.t} | ${row.requests.toLocaleString('en-US')} | ${row.failed} | ${fmt(row.rps, 0)} | ${fmt(row.rssMaxMB, 1)} | ${fmt(row.rssLastMB, 1)} | ${row.fdsMax} | ${row.fdsLast} | ${fmt(row.cpuPct, 0)} | ${row.tokenRequests} |`,
    );
  }
  lines.push('', '| criterion | measured | verdict |', '|---|---|---|');
  for (const v of r.verdicts) lines.push(`| ${v.what} | ${v.value} | ${v.pass ? 'met' : '**missed**'} |`);
  lines.push('');
  for (const note of r.notes) lines.push(`- ${note}`);
  return `${lines.join('\n')}\n`;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`soak: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  },
);
