/**
 * `npm run bench`: oauth-sidecar against the limit (direct), the floor of its
 * architecture (bare undici forwarder), the design card's original choice
 * (bare http-proxy forwarder) and nginx, all forwarding plain HTTP to the
 * same local HTTPS upstream that insists on a valid Bearer token.
 *
 * Contenders run interleaved and repeated (A B C…, then B C A…), each as its
 * own process pinned away from the load generator where the machine allows;
 * the report gives medians, per-round ratios to the bare undici forwarder and
 * to direct, peak RSS, CPU per request and the token requests, and checks the
 * project's targets. Results: bench/results/latest.json and latest.md.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { GET_PATH, UPLOAD_PATH, type ServersStats } from './servers/protocol.js';
import { helpText, parse, type Flags } from './lib/args.js';
import { ROOT, makeRunner, tsxRunner, variantRunner, type Runner } from './lib/build.js';
import {
  CONTENDER_LABELS,
  CONTENDER_NAMES,
  contenderSpec,
  fetchText,
  SHIPPED_NODE_FLAGS,
  metricValue,
  nginxAvailable,
  nginxVersion,
  startContender,
  type ContenderName,
  type ContenderSpec,
  type RunningContender,
} from './lib/contenders.js';
import { startEnvironment, type Environment } from './lib/environment.js';
import { createLoadGenerator, wrkAvailable, type LoadGenerator } from './lib/loadgen.js';
import { machineLine } from './lib/machine.js';
import { ForeignCpuMeter, PeakTracker, commandVersion, cpuLayout, cpuTimeMs, waitForQuiet } from './lib/proc.js';
import { fmt, markdown, noise, quieterAttempt, remeasureNote, stallNote, summarize, tokenBounds, verdicts, type RoundRecord, type TargetVerdict, type TokenFigures } from './lib/report.js';
import { probeStalls } from './lib/stall.js';
import { histogramPercentile, max, median, mergeHistogram, refreshWindowMs, rotate, tokenGapsOk } from './lib/stats.js';
import type { RoundFigures } from './lib/types.js';
import { reachingUpstream, unreachedProblem, type UpstreamCounts } from './lib/upstream-counts.js';

const FLAGS: Flags = {
  rounds: { type: 'string', default: '5', description: 'interleaved rounds (each contender once per phase per round)' },
  duration: { type: 'string', default: '5', description: 'seconds of each GET run (64 connections, and again at 1 connection)' },
  'get-slices': {
    type: 'string',
    default: '5',
    description: 'the 64-connection run of each contender in this many slices (whole seconds), contenders alternating slice by slice, each after the pool prewarm',
  },
  'latency-slices': {
    type: 'string',
    default: '5',
    description: 'the 1-connection run of each contender in this many slices (whole seconds), contenders alternating slice by slice (wrk only)',
  },
  warmup: { type: 'string', default: '2', description: 'seconds of GET load (plus one upload) per contender before measuring' },
  prewarm: {
    type: 'string',
    default: '1',
    description: 'seconds per slice of unmeasured GET load before each throughput run, repeated until a slice opens no new upstream connection (pools idle out while the others run)',
  },
  connections: { type: 'string', default: '64', description: 'connections of the throughput run' },
  'upload-mib': { type: 'string', default: '256', description: 'size of one upload, MiB (large enough that connection start-up and GC timing do not dominate)' },
  uploads: { type: 'string', default: '2', description: 'uploads per contender per round (sequential)' },
  contenders: { type: 'string', default: CONTENDER_NAMES.join(','), description: 'which contenders (nginx is skipped when not installed)' },
  'token-lifetime': { type: 'string', default: '60', description: 'expires_in of the bench token server, seconds (short, so the run sees refreshes)' },
  tool: { type: 'string', default: 'wrk', description: 'GET load generator: wrk (falls back to autocannon when not installed) or autocannon' },
  runner: { type: 'string', default: 'dist', description: 'dist: compile with tsc into a temp dir and run plain JS; tsx: run the sources through tsx' },
  'quiet-threshold': {
    type: 'string',
    default: '25',
    description:
      'other processes using more than this % of a CPU make the machine "busy"; an upload run (and a GET run that is not sliced) with twice that is measured again once',
  },
  'quiet-wait': { type: 'string', default: '15', description: 'seconds to wait (at most) for a quiet machine before each measurement; 0 disables' },
  variant: {
    type: 'string',
    default: '',
    description: 'also run the sidecar of other source trees, interleaved: LABEL=DIR[,LABEL=DIR…] (e.g. a patched copy) — A/B a fix the same way',
  },
  'variant-node-args': {
    type: 'string',
    default: '',
    description: 'node options per sidecar contender: ID=OPTIONS[;ID=OPTIONS…], ID "sidecar" or a variant label (e.g. "fix=--max-semi-space-size=4")',
  },
  'sidecar-args': { type: 'string', default: '', description: 'extra oauth-sidecar flags, space-separated, joined with = (e.g. --sidecar-args="--log-level warn")' },
  'no-pin': { type: 'boolean', description: 'do not pin processes to CPUs with taskset' },
  out: { type: 'string', default: 'bench/results', description: 'directory for latest.json and latest.md' },
  'no-write': { type: 'boolean', description: 'print the results only' },
  keep: { type: 'boolean', description: 'keep the scratch directory (logs, keys, nginx.conf)' },
  strict: { type: 'boolean', description: 'exit 1 when oauth-sidecar misses a target, or one cannot be judged (a baseline failed)' },
};

const SUMMARY = 'oauth-sidecar benchmark: throughput, latency, upload speed, RSS and token requests against direct, bare undici, bare http-proxy and nginx.';
const MiB = 1024 * 1024;
/** Seconds of the CPU stall probe per round (see lib/stall.ts). */
const STALL_PROBE_S = 2;

function say(line: string): void {
  process.stdout.write(`${line}\n`);
}

/** Dispose `runner` in main's finally (its build directory is also removed on exit, Ctrl-C included: `build.ts`). */
function keepUntilExit(runners: Runner[], runner: Runner): void {
  runners.push(runner);
}

async function main(): Promise<number> {
  const args = parse(process.argv.slice(2), FLAGS);
  if (args.help) {
    process.stdout.write(helpText('npm run bench --', SUMMARY, FLAGS));
    return 0;
  }
  const rounds = Math.floor(args.number('rounds', 1));
  const durationS = Math.floor(args.number('duration', 1));
  const warmupS = Math.floor(args.number('warmup', 0));
  const prewarmS = Math.floor(args.number('prewarm', 0));
  const connections = Math.floor(args.number('connections', 1));
  const uploadMiB = Math.floor(args.number('upload-mib', 1));
  const uploads = Math.floor(args.number('uploads', 1));
  const tokenLifetimeS = Math.floor(args.number('token-lifetime', 10));
  const quiet: Quiet = { thresholdPct: args.number('quiet-threshold', 1), maxWaitS: args.number('quiet-wait', 0) };
  const notes: string[] = [];

  // Optional tools: say what is missing and what happens instead.
  let kinds = args.list('contenders') as ContenderName[];
  for (const name of kinds) if (!CONTENDER_NAMES.includes(name)) throw new Error(`unknown contender "${name}" (known: ${CONTENDER_NAMES.join(', ')})`);
  if (kinds.includes('nginx') && !nginxAvailable()) {
    kinds = kinds.filter((c) => c !== 'nginx');
    const note = 'nginx is not installed (not on PATH, nor in /usr/sbin or /usr/local/sbin): skipped (Debian: apt-get install nginx-light)';
    say(`bench: ${note}`);
    notes.push(note);
  }
  if (kinds.length === 0) throw new Error('no contender left to run (--contenders)');
  const tool = args.string('tool');
  if (tool !== 'wrk' && tool !== 'autocannon') throw new Error(`--tool must be wrk or autocannon, not "${tool}"`);
  const runnerName = args.string('runner');
  if (runnerName !== 'dist' && runnerName !== 'tsx') throw new Error(`--runner must be dist or tsx, not "${runnerName}"`);
  const preferWrk = tool === 'wrk';
  if (preferWrk && !wrkAvailable()) {
    const note = 'wrk is not installed: using autocannon for GET load (Debian: apt-get install wrk); autocannon in one process may limit the fastest contenders';
    say(`bench: ${note}`);
    notes.push(note);
  }
  const layout = cpuLayout(!args.boolean('no-pin'));
  if (layout.proxy === undefined) notes.push(`processes ${layout.description}`);

  let env: Environment | undefined;
  const running = new Map<string, RunningContender>();
  // Every build directory, for the finally below (and registered for the exit hook: Ctrl-C skips the finally).
  const runners: Runner[] = [];
  try {
    let runner: Runner;
    try {
      runner = makeRunner(runnerName, (l) => say(`bench: ${l}`));
    } catch (err) {
      say(`bench: ${(err as Error).message}\nbench: falling back to running the sources through tsx`);
      notes.push('tsc build failed: contenders ran through tsx');
      runner = tsxRunner();
    }
    keepUntilExit(runners, runner);
    const secret = (): string => `bench$${randomBytes(12).toString('base64url')}=`;
    const specs: ContenderSpec[] = kinds.map((kind) => ({ ...contenderSpec(kind), ...(kind === 'sidecar' && { client: { id: 'sb-bench!b1|it-rt-bench!b1', secret: secret() } }) }));
    // Variants: the sidecar of another source tree (a patched copy, another checkout), interleaved like the rest.
    for (const [i, variant] of args.list('variant').entries()) {
      const eq = variant.indexOf('=');
      if (eq <= 0) throw new Error(`--variant takes LABEL=DIR, not "${variant}"`);
      const label = variant.slice(0, eq);
      const variantRunnerForTree = variantRunner(variant.slice(eq + 1), (l) => say(`bench: ${l}`));
      keepUntilExit(runners, variantRunnerForTree);
      specs.push({ id: `sidecar@${label}`, kind: 'sidecar', label: `${CONTENDER_LABELS.sidecar} [${label}]`, runner: variantRunnerForTree, client: { id: `sb-bench-${i + 2}!b1|it-rt-bench!b1`, secret: secret() } });
    }
    for (const entry of args.string('variant-node-args').split(';').filter((e) => e.trim())) {
      const eq = entry.indexOf('=');
      const id = entry.slice(0, eq).trim();
      const spec = specs.find((c) => c.id === id || c.id === `sidecar@${id}`);
      if (eq <= 0 || !spec) throw new Error(`--variant-node-args: "${entry}" names no sidecar contender`);
      spec.nodeArgs = entry.slice(eq + 1).trim().split(/\s+/).filter(Boolean);
      spec.label += ` (node ${spec.nodeArgs.join(' ')})`;
    }
    const ids = specs.map((c) => c.id);
    const loadgen = createLoadGenerator({ runner, cpu: layout.loadgen, prefer: preferWrk ? 'wrk' : 'autocannon' });
    say(`bench: ${layout.description}; load generator ${loadgen.tool}; contenders ${ids.join(', ')}`);
    // Whole-second slices (wrk's -d); one slice = one run as before. Latency histograms to merge come from wrk only.
    const getSlices = slicesOf(durationS, args.number('get-slices', 1));
    const latencySlices = loadgen.tool === 'wrk' ? slicesOf(durationS, args.number('latency-slices', 1)) : { count: 1, seconds: durationS };
    if (getSlices.count > 1) {
      notes.push(
        `64-connection runs: ${getSlices.count} slices of ${getSlices.seconds} s per contender and round, the contenders alternating slice by slice, ` +
          "each slice after the pool prewarm (direct: one run); req/s = all answered requests (non-2xx ones not counted) over all slices' time",
      );
    }
    if (latencySlices.count > 1) {
      notes.push(
        `1-connection runs: ${latencySlices.count} slices of ${latencySlices.seconds} s per contender and round, the contenders alternating slice by slice; ` +
          'p50/p99 of the merged histograms',
      );
    }
    // Per contender: warm-up, then per round the measured seconds, a prewarm per GET slice and ~4 s of waits and
    // uploads; per round: the stall probe and one quiet-wait per slice pass.
    const plannedS =
      specs.length * (warmupS + 1 + rounds * (2 * durationS + prewarmS * getSlices.count + 4)) + rounds * (STALL_PROBE_S + getSlices.count + latencySlices.count);
    say(`bench: about ${Math.ceil(plannedS / 60)} min on a quiet machine`);

    const clients = specs.flatMap((c) => (c.client ? [c.client] : []));
    env = await startEnvironment({ runner, cpu: layout.servers, tokenLifetimeS, clients, keep: args.boolean('keep') });
    const environment = env;
    const sidecarArgs = args.string('sidecar-args').split(' ').filter(Boolean);
    const startedAt = new Map<string, number>();
    for (const spec of specs) {
      startedAt.set(spec.id, Date.now());
      running.set(spec.id, await startContender(spec, { env, runner, cpu: layout.proxy, client: { id: '', secret: '' }, sidecarArgs }));
      say(`bench: started ${spec.label}`);
    }

    if (warmupS > 0) {
      say('bench: warming up');
      for (const c of running.values()) {
        await loadgen.get(c.target, GET_PATH, connections, warmupS);
        await loadgen.upload(c.target, UPLOAD_PATH, uploadMiB * MiB, 1);
        c.truncateLog();
      }
    }

    const upstream: UpstreamCounts = {
      connections: async () => (await environment.stats()).upstream.connections,
      authorised: async () => {
        const { staticToken, issuedToken } = (await environment.stats()).upstream;
        return staticToken + issuedToken;
      },
    };
    const records: RoundRecord[] = [];
    for (let r = 0; r < rounds; r++) {
      const order = rotate(ids, r);
      const record: RoundRecord = { round: r + 1, order, figures: {} };
      for (const id of order) record.figures[id] = { problems: [], foreignCpuPct: {} };
      records.push(record);
      const label = `${r + 1}/${rounds}`;
      const each = async (phase: Phase, run: (c: RunningContender) => Promise<PhaseResult>): Promise<void> => {
        for (const id of order) {
          const c = running.get(id)!;
          await measure(phase, c, record.figures[id]!, quiet, label, () => run(c));
        }
      };
      const round: SlicedRound = { loadgen, order, running, record, quiet, label, upstream };
      if (getSlices.count > 1) await getInSlices(round, getSlices, connections, prewarmS);
      else await each('get', (c) => measureGet(loadgen, c, connections, durationS, prewarmS, upstream));
      record.stall = await probeStalls(runner, layout.proxy, STALL_PROBE_S);
      if (latencySlices.count > 1) await latencyInSlices(round, latencySlices);
      else await each('latency', (c) => measureLatency(loadgen, c, durationS, upstream));
      await each('upload', (c) => measureUpload(loadgen, c, uploadMiB * MiB, uploads));
    }
    const endedAt = Date.now();

    const stats = await env.stats();
    const tokens: Record<string, TokenFigures> = {};
    for (const spec of specs) {
      const c = running.get(spec.id);
      if (spec.kind !== 'sidecar' || !c || !spec.client) continue;
      const metricsText = c.adminUrl ? await fetchText(`${c.adminUrl}/metrics`) : undefined;
      tokens[spec.id] = tokenFigures(stats, spec.client.id, tokenLifetimeS, startedAt.get(spec.id)!, endedAt, metricsText);
    }

    for (const spec of specs) {
      const status = await running.get(spec.id)?.stop();
      if (spec.kind === 'sidecar' && status && (status.code !== 0 || status.killed)) notes.push(`${spec.label} did not exit cleanly on SIGTERM (exit ${status.code ?? status.signal})`);
    }
    running.clear();

    const summary = summarize(records, ids);
    const busy = noise(records);
    notes.push(
      `other processes on the machine used a median ${fmt(busy.medianPct, 0)}% (max ${fmt(busy.maxPct, 0)}%) of one CPU during the ${busy.runs} measurements ` +
        `(${remeasureNote(quiet.thresholdPct, { get: getSlices.count > 1, latency: latencySlices.count > 1 })})`,
    );
    const stallLine = stallNote(records, STALL_PROBE_S);
    if (stallLine) notes.push(stallLine);
    if (sidecarArgs.length > 0) notes.push(`oauth-sidecar ran with extra flags: ${sidecarArgs.join(' ')}`);
    const targets: Record<string, TargetVerdict[]> = {};
    for (const spec of specs) if (spec.kind === 'sidecar') targets[spec.id] = verdicts(summary, spec.id, tokens[spec.id], loadgen.tool);
    const machine = `${machineLine()} (shared VM: compare ratios, not absolute numbers)`;
    const date = new Date().toISOString();
    const table = markdown(summary, specs, targets, tokens, {
      machine,
      date,
      tool: toolLine(loadgen),
      layout: layout.description,
      rounds,
      getS: getSlices.count > 1 ? getSlices.count * getSlices.seconds : durationS,
      latencyS: latencySlices.count > 1 ? latencySlices.count * latencySlices.seconds : durationS,
      connections,
      uploadMiB,
      uploadsPerRound: uploads,
      runner: `${runner.kind === 'dist' ? 'compiled JavaScript (tsc → node' : 'TypeScript through tsx (node'} ${SHIPPED_NODE_FLAGS.join(' ')} cli.js, as the image starts it)`,
      notes,
    });
    say('');
    say(table);

    if (!args.boolean('no-write')) {
      const out = resolve(ROOT, args.string('out'));
      mkdirSync(out, { recursive: true });
      const json = {
        schema: 1,
        date,
        machine,
        node: process.version,
        tools: { loadgen: toolLine(loadgen), nginx: kinds.includes('nginx') ? nginxVersion() : undefined },
        layout: layout.description,
        runner: runner.kind,
        options: { rounds, durationS, warmupS, prewarmS, connections, uploadMiB, uploads, tokenLifetimeS, contenders: ids, sidecarArgs },
        summary,
        noise: busy,
        targets,
        tokens,
        rounds: records,
        notes,
      };
      writeFileSync(resolve(out, 'latest.json'), `${JSON.stringify(json, null, 2)}\n`);
      writeFileSync(resolve(out, 'latest.md'), table);
      say(`bench: results written to ${out}/latest.json and latest.md`);
    }
    // A miss, or a target that could not be judged (a failed run, no figure, a failing baseline).
    return args.boolean('strict') && Object.values(targets).some((list) => list.some((t) => t.pass === false || (t.pass === undefined && !t.exempt))) ? 1 : 0;
  } finally {
    for (const c of running.values()) await c.stop();
    await env?.close();
    for (const r of runners) r.dispose();
  }
}

type Phase = 'get' | 'latency' | 'upload';

interface PhaseResult {
  figures: Partial<Omit<RoundFigures, 'problems' | 'foreignCpuPct' | 'failed'>>;
  problems: string[];
  /** Failed answers (or 1 for a run that failed as a whole): see `RoundFigures.failed`. */
  failed: number;
  line: string;
}

interface Quiet {
  thresholdPct: number;
  maxWaitS: number;
}

/**
 * One measurement of one contender: wait (bounded) for the machine to be
 * quiet, measure, and if other processes took more than twice the quiet
 * threshold during it, measure once more and keep the quieter of the two.
 */
async function measure(phase: Phase, c: RunningContender, f: RoundFigures, quiet: Quiet, label: string, run: () => Promise<PhaseResult>): Promise<void> {
  const attempts: Array<PhaseResult & { foreign: number }> = [];
  for (let attempt = 1; attempt <= 2; attempt++) {
    if (quiet.maxWaitS > 0) await waitForQuiet(quiet.thresholdPct, quiet.maxWaitS * 1000);
    const meter = new ForeignCpuMeter();
    const result = await run();
    const foreign = meter.stop();
    c.truncateLog();
    attempts.push({ ...result, foreign });
    const noisy = foreign > 2 * quiet.thresholdPct;
    say(`round ${label}  ${phaseLabel(phase)} ${c.id.padEnd(12)} ${result.line}${foreign >= 1 ? `  [other processes: ${Math.round(foreign)}% CPU${noisy && attempt === 1 ? ', measuring again' : ''}]` : ''}`);
    await delay(200);
    if (!noisy) break;
  }
  // The quieter attempt's figures, but the peak RSS of both: memory the process took counts, noisy or not.
  const best = quieterAttempt(attempts);
  Object.assign(f, best.figures);
  // Failures count whichever attempt met them: a noisy attempt's failed answers are not measured away.
  f.problems.push(...new Set(attempts.flatMap((a) => a.problems)));
  addFailed(f, phase, attempts.reduce((sum, a) => sum + a.failed, 0));
  f.foreignCpuPct[phase] = best.foreign;
}

function addFailed(f: RoundFigures, phase: Phase, count: number): void {
  if (count > 0) f.failed = { ...f.failed, [phase]: (f.failed?.[phase] ?? 0) + count };
}

function phaseLabel(phase: Phase): string {
  return { get: 'GET ×N  ', latency: 'GET ×1  ', upload: 'upload  ' }[phase];
}

/** One measured 64-connection run of one contender (after the pool prewarm), as raw sums; the peak RSS includes the prewarm. */
interface GetSample {
  requests: number;
  seconds: number;
  /** CPU time of the proxy process during the run (undefined for direct). */
  cpuMs: number | undefined;
  peakBytes: number | undefined;
  non2xx: number;
  errors: number;
  /** Answered (2xx) requests the upstream did not see with a valid token (see `reachingUpstream`). */
  unreached: number;
}

async function getSample(
  loadgen: LoadGenerator,
  c: RunningContender,
  connections: number,
  seconds: number,
  prewarmS: number,
  upstream: UpstreamCounts,
): Promise<GetSample> {
  // The peak RSS covers the prewarm too: re-opening the upstream pool (TLS handshakes, buffers) is part of serving
  // GET load, and its spike would otherwise go uncounted (each tracker resets the kernel's high-water mark).
  const peak = c.pid === undefined ? undefined : new PeakTracker(c.pid);
  try {
    // Pools to the upstream idle out while the others run: re-establish them, unmeasured (but for the peak RSS), in
    // slices of `prewarmS` until a slice opens no new upstream connection (at most 10 slices). Direct opens fresh ones by design.
    if (prewarmS > 0) {
      for (let slice = 0; slice < 10; slice++) {
        const before = await upstream.connections();
        await loadgen.get(c.target, GET_PATH, connections, prewarmS).catch(() => undefined);
        if (c.kind === 'direct' || (await upstream.connections()) === before) break;
      }
    }
    let cpuBefore: number | undefined;
    let cpuAfter: number | undefined;
    const result = await reachingUpstream(upstream, async () => {
      cpuBefore = c.pid === undefined ? undefined : cpuTimeMs(c.pid);
      const ran = await loadgen.get(c.target, GET_PATH, connections, seconds);
      cpuAfter = c.pid === undefined ? undefined : cpuTimeMs(c.pid);
      return ran;
    });
    return {
      unreached: result.unreached,
      requests: result.requests,
      seconds: result.durationS,
      cpuMs: cpuBefore !== undefined && cpuAfter !== undefined ? cpuAfter - cpuBefore : undefined,
      peakBytes: peak?.stop(),
      non2xx: result.non2xx,
      errors: result.errors,
    };
  } catch (err) {
    peak?.stop();
    throw err;
  }
}

/**
 * The GET figures of one or more samples of one contender: answered requests (non-2xx ones not counted) over total
 * time, CPU per answered request, peak RSS.
 */
function getFigures(samples: readonly GetSample[]): PhaseResult {
  const non2xx = samples.reduce((sum, x) => sum + x.non2xx, 0);
  const requests = samples.reduce((sum, x) => sum + x.requests, 0) - non2xx;
  const seconds = samples.reduce((sum, x) => sum + x.seconds, 0);
  const rps = seconds > 0 ? requests / seconds : undefined;
  const cpuMs = samples.every((x) => x.cpuMs !== undefined) ? samples.reduce((sum, x) => sum + x.cpuMs!, 0) : undefined;
  const cpuUsPerRequest = cpuMs !== undefined && requests > 0 ? (cpuMs * 1000) / requests : undefined;
  const peakBytes = max(samples.flatMap((x) => (x.peakBytes === undefined ? [] : [x.peakBytes])));
  const errors = samples.reduce((sum, x) => sum + x.errors, 0);
  const unreached = samples.reduce((sum, x) => sum + x.unreached, 0);
  const problems: string[] = [];
  if (non2xx > 0) problems.push(`${non2xx} non-2xx answers under GET load`);
  if (errors > 0) problems.push(`${errors} socket errors/timeouts under GET load`);
  if (unreached > 0) problems.push(unreachedProblem(unreached, 'under GET load'));
  return {
    figures: { ...(rps !== undefined && { rps }), cpuUsPerRequest, peakRssGetBytes: peakBytes },
    problems,
    failed: non2xx + errors + unreached,
    line: `${rps === undefined ? '–' : Math.round(rps).toLocaleString('en-US').padStart(8)} req/s` +
      (cpuUsPerRequest !== undefined ? `  ${cpuUsPerRequest.toFixed(1)} µs CPU/req` : '') +
      (peakBytes !== undefined ? `  peak RSS ${(peakBytes / 1e6).toFixed(1)} MB` : ''),
  };
}

async function measureGet(
  loadgen: LoadGenerator,
  c: RunningContender,
  connections: number,
  durationS: number,
  prewarmS: number,
  upstream: UpstreamCounts,
): Promise<PhaseResult> {
  try {
    return getFigures([await getSample(loadgen, c, connections, durationS, prewarmS, upstream)]);
  } catch (err) {
    return { figures: {}, problems: [`GET run failed: ${(err as Error).message}`], failed: 1, line: `FAILED ${(err as Error).message}` };
  }
}

/**
 * The 64-connection runs of one round in slices, the contenders alternating, like `latencyInSlices`; each
 * slice comes after the pool prewarm (the sidecar's pool idles out after 4 s, while the others run). Direct
 * runs once for the whole time, in the first pass: its 64 connections are TLS handshakes wrk makes at the
 * start of every run, which 1-s slices would measure five times over.
 */
async function getInSlices(
  { loadgen, order, running, record, quiet, label, upstream }: SlicedRound,
  slices: Slices,
  connections: number,
  prewarmS: number,
): Promise<void> {
  const samples = new Map(order.map((id) => [id, { taken: [] as GetSample[], failures: [] as string[] }]));
  const foreignShares = await alternate(order, running, quiet, slices.count, async (c, pass) => {
    if (c.kind === 'direct' && pass > 0) return false;
    const m = samples.get(c.id)!;
    try {
      const seconds = c.kind === 'direct' ? slices.count * slices.seconds : slices.seconds;
      m.taken.push(await getSample(loadgen, c, connections, seconds, prewarmS, upstream));
    } catch (err) {
      m.failures.push(`a GET slice failed: ${(err as Error).message}`);
    }
    return true;
  });
  for (const id of order) {
    const m = samples.get(id)!;
    const f = record.figures[id]!;
    const result = getFigures(m.taken);
    Object.assign(f, result.figures);
    f.problems.push(...result.problems, ...new Set(m.failures));
    addFailed(f, 'get', result.failed + m.failures.length);
    f.foreignCpuPct.get = median(foreignShares.get(id)!);
    const foreign = f.foreignCpuPct.get ?? 0;
    const spans = m.taken.map((x) => Math.round(x.seconds));
    say(`round ${label}  ${phaseLabel('get')} ${id.padEnd(12)} ${result.line}  (${spans.length} × ${spans[0] ?? '–'} s)${foreign >= 1 ? `  [other processes: ${Math.round(foreign)}% CPU]` : ''}`);
  }
}

async function measureLatency(loadgen: LoadGenerator, c: RunningContender, durationS: number, upstream: UpstreamCounts): Promise<PhaseResult> {
  try {
    const result = await reachingUpstream(upstream, () => loadgen.get(c.target, GET_PATH, 1, durationS));
    const problems: string[] = [];
    if (result.non2xx > 0) problems.push(`${result.non2xx} non-2xx answers at 1 connection`);
    if (result.errors > 0) problems.push(`${result.errors} socket errors/timeouts at 1 connection`);
    if (result.unreached > 0) problems.push(unreachedProblem(result.unreached, 'at 1 connection'));
    const corrected = result.correctedLatencyUs;
    if (result.tool === 'wrk' && !corrected) problems.push("1-connection percentiles are wrk's coordinated-omission-corrected ones (the per-request histogram could not be rebuilt)");
    return {
      figures: { p50Us: result.latencyUs.p50, p99Us: result.latencyUs.p99, ...(corrected && { p99CorrectedUs: corrected.p99 }) },
      problems,
      failed: result.non2xx + result.errors + result.unreached,
      line: `p50 ${Math.round(result.latencyUs.p50)} µs  p99 ${Math.round(result.latencyUs.p99)} µs${corrected ? `  (wrk's CO-corrected p99 ${Math.round(corrected.p99)} µs)` : ''}`,
    };
  } catch (err) {
    return { figures: {}, problems: [`latency run failed: ${(err as Error).message}`], failed: 1, line: `FAILED ${(err as Error).message}` };
  }
}

/** What a sliced phase of one round works with. */
interface SlicedRound {
  loadgen: LoadGenerator;
  /** Contender ids in this round's order. */
  order: readonly string[];
  running: ReadonlyMap<string, RunningContender>;
  record: RoundRecord;
  quiet: Quiet;
  label: string;
  upstream: UpstreamCounts;
}

interface Slices {
  count: number;
  seconds: number;
}

/**
 * Run `step` for every contender in `order`, `passes` times over (A B C, A B C, …), with one wait for a
 * quiet machine per pass. Returns, per contender, other processes' CPU share during each step it ran
 * (`step` returns false when it skipped one).
 */
async function alternate(
  order: readonly string[],
  running: ReadonlyMap<string, RunningContender>,
  quiet: Quiet,
  passes: number,
  step: (c: RunningContender, pass: number) => Promise<boolean>,
): Promise<Map<string, number[]>> {
  const foreign = new Map(order.map((id) => [id, [] as number[]]));
  for (let pass = 0; pass < passes; pass++) {
    if (quiet.maxWaitS > 0) await waitForQuiet(quiet.thresholdPct, quiet.maxWaitS * 1000);
    for (const id of order) {
      const c = running.get(id)!;
      const meter = new ForeignCpuMeter();
      const ran = await step(c, pass);
      const share = meter.stop();
      if (ran) {
        foreign.get(id)!.push(share);
        c.truncateLog();
      }
    }
  }
  return foreign;
}

/** `durationS` split into about `wanted` slices of whole seconds (wrk's -d), at least one. */
function slicesOf(durationS: number, wanted: number): Slices {
  const seconds = Math.max(1, Math.floor(durationS / Math.max(1, Math.floor(wanted))));
  return { count: Math.max(1, Math.round(durationS / seconds)), seconds };
}

/**
 * The 1-connection runs of one round in slices, the contenders alternating (A B C, A B C, …), each
 * contender's histograms merged. The CPU's own speed moves within seconds on a shared VM (lib/stall.ts);
 * alternating every second lets every contender meet the same weather, where one 5-s run each did not.
 * One wait for a quiet machine per pass; every slice is kept, and other processes' share is reported.
 */
async function latencyInSlices({ loadgen, order, running, record, quiet, label, upstream }: SlicedRound, slices: Slices): Promise<void> {
  const merged = new Map(order.map((id) => [id, { own: new Map<number, number>(), corrected: new Map<number, number>(), non2xx: 0, errors: 0, unreached: 0, failedSlices: 0, failures: [] as string[] }]));
  const foreignShares = await alternate(order, running, quiet, slices.count, async (c) => {
    const m = merged.get(c.id)!;
    try {
      const result = await reachingUpstream(upstream, () => loadgen.get(c.target, GET_PATH, 1, slices.seconds, { histogram: true }));
      m.non2xx += result.non2xx;
      m.errors += result.errors;
      m.unreached += result.unreached;
      if (result.histogramUs && result.correctedHistogramUs) {
        mergeHistogram(m.own, result.histogramUs);
        mergeHistogram(m.corrected, result.correctedHistogramUs);
      } else {
        // Its requests are missing from the percentiles (wrk gives none for a range over 2 s: one request that slow
        // is reason enough): the phase counts as failed, not judged on the other slices.
        m.failedSlices += 1;
        m.failures.push('a 1-connection slice came without a per-request histogram (left out of the percentiles)');
      }
    } catch (err) {
      m.failedSlices += 1;
      m.failures.push(`a 1-connection slice failed: ${(err as Error).message}`);
    }
    return true;
  });
  for (const id of order) {
    const m = merged.get(id)!;
    const f = record.figures[id]!;
    const p50 = histogramPercentile(m.own, 50);
    const p99 = histogramPercentile(m.own, 99);
    const corrected = histogramPercentile(m.corrected, 99);
    if (p50 !== undefined && p99 !== undefined) Object.assign(f, { p50Us: p50, p99Us: p99 }, corrected !== undefined && { p99CorrectedUs: corrected });
    if (m.non2xx > 0) f.problems.push(`${m.non2xx} non-2xx answers at 1 connection`);
    if (m.errors > 0) f.problems.push(`${m.errors} socket errors/timeouts at 1 connection`);
    if (m.unreached > 0) f.problems.push(unreachedProblem(m.unreached, 'at 1 connection'));
    f.problems.push(...new Set(m.failures));
    addFailed(f, 'latency', m.non2xx + m.errors + m.unreached + m.failedSlices);
    f.foreignCpuPct.latency = median(foreignShares.get(id)!);
    const foreign = f.foreignCpuPct.latency ?? 0;
    say(
      `round ${label}  ${phaseLabel('latency')} ${id.padEnd(12)} p50 ${p50 ?? '–'} µs  p99 ${p99 ?? '–'} µs  (wrk's CO-corrected p99 ${corrected ?? '–'} µs; ` +
        `${slices.count} × ${slices.seconds} s)${foreign >= 1 ? `  [other processes: ${Math.round(foreign)}% CPU]` : ''}`,
    );
  }
}

async function measureUpload(loadgen: LoadGenerator, c: RunningContender, bytes: number, count: number): Promise<PhaseResult> {
  const peak = c.pid === undefined ? undefined : new PeakTracker(c.pid);
  const cpuBefore = c.pid === undefined ? undefined : cpuTimeMs(c.pid);
  try {
    const result = await loadgen.upload(c.target, UPLOAD_PATH, bytes, count);
    const cpuAfter = c.pid === undefined ? undefined : cpuTimeMs(c.pid);
    const peakBytes = peak?.stop();
    const problems: string[] = [];
    if (result.error) problems.push(`upload failed: ${result.error}`);
    const good = result.uploads.filter((u) => u.status === 200 && u.counted === u.bytes);
    if (good.length < result.uploads.length) problems.push(`${result.uploads.length - good.length} upload(s) not answered 200 with every byte counted`);
    const totalMs = result.uploads.reduce((sum, u) => sum + u.ms, 0);
    const totalBytes = result.uploads.reduce((sum, u) => sum + u.bytes, 0);
    const ok = good.length > 0 && good.length === result.uploads.length && !result.error;
    const uploadMBps = ok ? totalBytes / 1e6 / (totalMs / 1000) : undefined;
    const uploadCpuMsPerGB = ok && cpuBefore !== undefined && cpuAfter !== undefined ? (cpuAfter - cpuBefore) / (totalBytes / 1e9) : undefined;
    return {
      figures: { uploadMBps, uploadCpuMsPerGB, peakRssUploadBytes: peakBytes },
      problems,
      failed: result.uploads.length - good.length + (result.error ? 1 : 0),
      line:
        `${uploadMBps === undefined ? 'FAILED' : `${Math.round(uploadMBps)} MB/s`}` +
        `${uploadCpuMsPerGB !== undefined ? `  ${Math.round(uploadCpuMsPerGB)} ms CPU/GB` : ''}${peakBytes !== undefined ? `  peak RSS ${(peakBytes / 1e6).toFixed(1)} MB` : ''}`,
    };
  } catch (err) {
    peak?.stop();
    return { figures: {}, problems: [`upload run failed: ${(err as Error).message}`], failed: 1, line: `FAILED ${(err as Error).message}` };
  }
}

function tokenFigures(stats: ServersStats, clientId: string, lifetimeS: number, start: number, end: number, metricsText: string | undefined): TokenFigures {
  const times = stats.token.requests.filter((t) => t.clientId === clientId && t.at >= start).map((t) => t.at);
  const window = refreshWindowMs(lifetimeS * 1000);
  const first = times[0] ?? start;
  return {
    lifetimeS,
    refreshIntervalS: window.middleMs / 1000,
    refreshWindowS: [window.earliestMs / 1000, window.latestMs / 1000],
    requests: times.length,
    requestTimesS: times.map((t) => (t - start) / 1000),
    metricsFetches: metricsText ? metricValue(metricsText, 'oauth_sidecar_token_fetches_total', 'outcome="success"') : undefined,
    elapsedS: (end - first) / 1000,
    ...tokenBounds(end - first, window.earliestMs),
    gapsOk: tokenGapsOk(times, window.earliestMs),
    // Its own tokens' only: another sidecar of the run (a `--variant`) must not decide this one's verdict.
    upstreamRejectedExpired: stats.upstream.rejectedExpiredByClient[clientId] ?? 0,
    upstreamRejectedUnknown: stats.upstream.rejectedUnknown,
  };
}

function toolLine(loadgen: LoadGenerator): string {
  if (loadgen.tool === 'wrk') return commandVersion('wrk', ['-v'])?.replace(/\s*Copyright.*$/, '') ?? 'wrk';
  return 'autocannon 8';
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`bench: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  },
);
