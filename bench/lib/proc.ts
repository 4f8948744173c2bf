/**
 * Child processes for the benchmark: spawned (optionally pinned with
 * `taskset`), watched through their output, measured through `/proc`, and
 * always stopped — every wait has a deadline, and whatever is still running
 * when the harness exits is killed by pid. Temp directories registered with
 * `registerTempDir` are removed on exit too, Ctrl-C included.
 */
import { spawn, spawnSync, type ChildProcess, type StdioOptions } from 'node:child_process';
import { closeSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';

/** Every child started by this process, for the exit hook. */
const children = new Set<ChildProcess>();
/** Temp directories of this run (builds, scratch with keys and logs), for the exit hook. */
const tempDirs = new Set<string>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // 'exit' runs on a normal end, after an uncaught error and after process.exit() (the signal handlers below),
  // where no `finally` of the harness runs; only synchronous work counts here.
  process.once('exit', () => {
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    removeTempDirs();
  });
  // SIGHUP too: a closed terminal or ssh session would otherwise end node without the exit hook, leaving the
  // contenders running and the temp directories (which hold the test PKI's keys and client secrets) behind.
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(signal, () => {
      process.stderr.write(`\n${signal} received: stopping child processes and removing temp directories\n`);
      process.exit(130);
    });
  }
}

/**
 * Remove `path` (recursively) when this process exits, however it exits: also on Ctrl-C and after an early
 * error. Removing it earlier (a runner's `dispose`, an environment's `close`) does no harm.
 */
export function registerTempDir(path: string): void {
  installExitHook();
  tempDirs.add(path);
}

/** Remove every registered temp directory now (synchronously); a failure is reported, not thrown. */
export function removeTempDirs(): void {
  for (const dir of tempDirs) {
    try {
      // Retries: a child killed a moment ago may still be writing into it (ENOTEMPTY).
      rmSync(dir, { recursive: true, force: true, maxRetries: 3, retryDelay: 50 });
      tempDirs.delete(dir);
    } catch (err) {
      process.stderr.write(`bench: could not remove ${dir}: ${(err as Error).message}\n`);
    }
  }
}

/** True when `command` can be run (found on PATH). */
export function commandExists(command: string, versionArgs: readonly string[] = ['--version']): boolean {
  const result = spawnSync(command, versionArgs, { stdio: 'ignore', timeout: 5_000 });
  return !(result.error && (result.error as NodeJS.ErrnoException).code === 'ENOENT');
}

/** First line a command prints (stdout or stderr) for its version flag, trimmed; `undefined` if not runnable. */
export function commandVersion(command: string, args: readonly string[]): string | undefined {
  const result = spawnSync(command, args, { encoding: 'utf8', timeout: 5_000 });
  if (result.error) return undefined;
  const text = `${result.stdout ?? ''}\n${result.stderr ?? ''}`.trim();
  return text.split('\n')[0]?.trim();
}

/** The CPUs this process may run on (`Cpus_allowed_list` of /proc/self/status). */
export function allowedCpus(): number[] {
  try {
    const status = readFileSync('/proc/self/status', 'utf8');
    const list = /^Cpus_allowed_list:\s*(.+)$/m.exec(status)?.[1];
    if (list) return parseCpuList(list);
  } catch {
    /* not Linux */
  }
  return [];
}

/** `0-2,4` → [0, 1, 2, 4] */
export function parseCpuList(list: string): number[] {
  const cpus: number[] = [];
  for (const part of list.trim().split(',')) {
    const [from, to] = part.split('-').map((s) => Number(s.trim()));
    if (from === undefined || !Number.isInteger(from)) continue;
    const end = to !== undefined && Number.isInteger(to) ? to : from;
    for (let c = from; c <= end; c++) cpus.push(c);
  }
  return cpus;
}

/** Where the load generator, the upstream/token servers and the proxy under test run. */
export interface CpuLayout {
  loadgen: number | undefined;
  servers: number | undefined;
  proxy: number | undefined;
  /** Human-readable summary for the report. */
  description: string;
}

/**
 * With 3+ CPUs each role gets its own; with 2 the proxy gets one to itself and
 * the load generator shares the other with the upstream (the environment);
 * with 1, or without `taskset`, nothing is pinned.
 */
export function cpuLayout(pin: boolean): CpuLayout {
  const cpus = allowedCpus();
  const taskset = commandExists('taskset', ['--version']);
  if (!pin) return { loadgen: undefined, servers: undefined, proxy: undefined, description: 'not pinned (--no-pin)' };
  if (!taskset) return { loadgen: undefined, servers: undefined, proxy: undefined, description: 'not pinned (taskset not installed)' };
  if (cpus.length >= 3) {
    const [a, b, c] = cpus as [number, number, number];
    return { loadgen: a, servers: b, proxy: c, description: `load generator on CPU ${a}, upstream + token server on CPU ${b}, proxy on CPU ${c}` };
  }
  if (cpus.length === 2) {
    const [a, b] = cpus as [number, number];
    return { loadgen: a, servers: a, proxy: b, description: `load generator + upstream + token server on CPU ${a}, proxy alone on CPU ${b}` };
  }
  return { loadgen: undefined, servers: undefined, proxy: undefined, description: 'not pinned (one CPU)' };
}

export interface StartOptions {
  /** Pin to this CPU with taskset. */
  cpu?: number | undefined;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Write stdout to this file instead of a pipe (cheap for chatty processes, e.g. access logs). */
  stdoutFile?: string;
  /** Instead: every chunk of stdout, as it comes (a pipe, so nothing is written to disk and nothing is lost). */
  onStdout?: (chunk: string) => void;
  /** Open an IPC channel (Node children only). */
  ipc?: boolean;
}

/** A started child with line-oriented access to its output. */
export class Child {
  readonly process: ChildProcess;
  readonly name: string;
  #stdout = '';
  #stderr = '';
  readonly #exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(name: string, command: string, args: readonly string[], options: StartOptions = {}) {
    installExitHook();
    this.name = name;
    const [cmd, argv] = options.cpu === undefined ? [command, [...args]] : ['taskset', ['-c', String(options.cpu), command, ...args]];
    let stdoutFd: number | undefined;
    if (options.stdoutFile) stdoutFd = openSync(options.stdoutFile, 'a');
    const stdio: StdioOptions = [
      'ignore',
      stdoutFd ?? 'pipe',
      'pipe',
      ...(options.ipc ? (['ipc'] as const) : []),
    ];
    this.process = spawn(cmd, argv, { cwd: options.cwd, env: options.env ?? process.env, stdio });
    if (stdoutFd !== undefined) closeSync(stdoutFd);
    children.add(this.process);
    const onStdout = options.onStdout;
    this.process.stdout?.setEncoding('utf8').on('data', (s: string) => {
      this.#stdout = keepTail(this.#stdout + s);
      onStdout?.(s);
    });
    this.process.stderr?.setEncoding('utf8').on('data', (s: string) => (this.#stderr = keepTail(this.#stderr + s)));
    this.#exited = new Promise((resolve) => {
      this.process.once('error', (err) => {
        this.#stderr += `\n${err.message}`;
        resolve({ code: -1, signal: null });
      });
      // Exited once the process is gone and its piped output fully read. (Not the 'close' event: with an IPC
      // channel that the parent disconnected, Node 20 never emits it.)
      const streams = [this.process.stdout, this.process.stderr].filter((s): s is NonNullable<typeof s> => s !== null);
      const drained = Promise.all(streams.map((s) => new Promise<void>((done) => (s.closed ? done() : s.once('close', () => done())))));
      this.process.once('exit', (code, signal) => {
        children.delete(this.process);
        void drained.then(() => resolve({ code, signal }));
      });
    });
  }

  get pid(): number {
    const pid = this.process.pid;
    if (pid === undefined) throw new Error(`${this.name} did not start: ${this.#stderr.trim()}`);
    return pid;
  }

  get running(): boolean {
    return this.process.exitCode === null && this.process.signalCode === null;
  }

  get stdout(): string {
    return this.#stdout;
  }

  get stderr(): string {
    return this.#stderr;
  }

  /** Resolves with the process's exit status. */
  exited(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    return this.#exited;
  }

  /** Wait (at most `timeoutMs`) until `match` finds something in stdout. */
  async waitForStdout<T>(match: (stdout: string) => T | undefined, timeoutMs: number): Promise<T> {
    return this.#poll(() => match(this.#stdout), timeoutMs, 'output');
  }

  /** Wait (at most `timeoutMs`) until `match` finds something in a file the child writes. */
  async waitForFile<T>(path: string, match: (text: string) => T | undefined, timeoutMs: number): Promise<T> {
    return this.#poll(() => {
      try {
        return match(readFileSync(path, 'utf8'));
      } catch {
        return undefined;
      }
    }, timeoutMs, path);
  }

  async #poll<T>(check: () => T | undefined, timeoutMs: number, what: string): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = check();
      if (found !== undefined) return found;
      if (!this.running) throw new Error(`${this.name} exited before the expected ${what} appeared:\n${this.#stderr.trim().slice(-2000)}`);
      if (Date.now() > deadline) throw new Error(`${this.name}: timed out after ${timeoutMs} ms waiting for ${what}`);
      await delay(25);
    }
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves with the exit status. */
  async stop(graceMs = 5_000): Promise<{ code: number | null; signal: NodeJS.Signals | null; killed: boolean }> {
    if (!this.running) return { ...(await this.#exited), killed: false };
    this.process.kill('SIGTERM');
    const timer = new AbortController();
    const outcome = await Promise.race([
      this.#exited.then((s) => ({ ...s, killed: false })),
      delay(graceMs, undefined, { signal: timer.signal }).then(
        () => undefined,
        () => undefined,
      ),
    ]);
    timer.abort();
    if (outcome) return outcome;
    this.process.kill('SIGKILL');
    return { ...(await this.#exited), killed: true };
  }
}

function keepTail(text: string): string {
  return text.length > 1_000_000 ? text.slice(-500_000) : text;
}

/** Resident set size now and its peak ("high water mark"), in bytes, from /proc/<pid>/status. */
export function memoryOf(pid: number): { rss: number; peak: number } | undefined {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const rss = /^VmRSS:\s+(\d+) kB$/m.exec(status)?.[1];
    const hwm = /^VmHWM:\s+(\d+) kB$/m.exec(status)?.[1];
    if (rss === undefined || hwm === undefined) return undefined;
    return { rss: Number(rss) * 1024, peak: Number(hwm) * 1024 };
  } catch {
    return undefined;
  }
}

let clockTicks: number | undefined;

/** CPU time (user + system) a process has used so far, in ms, from /proc/<pid>/stat. */
export function cpuTimeMs(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name (which may contain spaces) start at the state, field 3.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const utime = Number(fields[11]);
    const stime = Number(fields[12]);
    clockTicks ??= Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout?.trim()) || 100;
    return ((utime + stime) * 1000) / clockTicks;
  } catch {
    return undefined;
  }
}

/** Reset the peak RSS of a process (Linux ≥ 4.0: write 5 to clear_refs); false when not allowed. */
export function resetPeak(pid: number): boolean {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

/** Open file descriptors of a process (sockets, files, watches). */
export function openFds(pid: number): number | undefined {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return undefined;
  }
}

/**
 * Follows a process's peak RSS over a phase: resets the kernel's high-water
 * mark when allowed and also samples VmRSS every `intervalMs`, so the answer
 * is right either way.
 */
export class PeakTracker {
  readonly #pid: number;
  readonly #kernelPeak: boolean;
  #sampled = 0;
  readonly #timer: NodeJS.Timeout;

  constructor(pid: number, intervalMs = 100) {
    this.#pid = pid;
    this.#kernelPeak = resetPeak(pid);
    this.#sample();
    this.#timer = setInterval(() => this.#sample(), intervalMs);
  }

  #sample(): void {
    const m = memoryOf(this.#pid);
    if (m) this.#sampled = Math.max(this.#sampled, m.rss);
  }

  /** Stop sampling; the peak RSS in bytes during the phase, or undefined if the process could never be read (gone). */
  stop(): number | undefined {
    clearInterval(this.#timer);
    this.#sample();
    const m = memoryOf(this.#pid);
    const peak = this.#kernelPeak && m ? Math.max(m.peak, this.#sampled) : this.#sampled;
    return peak > 0 ? peak : undefined;
  }
}

/** A port that was free a moment ago on 127.0.0.1 (for programs that cannot listen on port 0 and report it). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** Environment without proxy, sidecar or Node settings of the developer's shell (every contender sees the same). */
export function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!/^(SIDECAR_|HTTPS?_PROXY$|NO_PROXY$|ALL_PROXY$|VCAP_SERVICES$|SERVICE_BINDING_ROOT$|NODE_OPTIONS$|NODE_EXTRA_CA_CERTS$)/i.test(k)) env[k] = v;
  }
  return { ...env, ...extra };
}

interface ProcSample {
  ppid: number;
  cpuMs: number;
}

/** CPU time and parent of every process now (Linux), keyed by pid. */
function processTable(): Map<number, ProcSample> {
  const table = new Map<number, ProcSample>();
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return table;
  }
  clockTicks ??= Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout?.trim()) || 100;
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      table.set(Number(entry), { ppid: Number(fields[1]), cpuMs: ((Number(fields[11]) + Number(fields[12])) * 1000) / clockTicks });
    } catch {
      /* exited meanwhile */
    }
  }
  return table;
}

/** Pids of this process and all its descendants in `table`. */
function ownTree(table: Map<number, ProcSample>): Set<number> {
  const own = new Set<number>([process.pid]);
  let grew = true;
  while (grew) {
    grew = false;
    for (const [pid, p] of table) {
      if (!own.has(pid) && own.has(p.ppid)) {
        own.add(pid);
        grew = true;
      }
    }
  }
  return own;
}

/**
 * How much CPU *other* processes on the machine (and the hypervisor, as steal time) (not this harness or its
 * children) used over an interval, in percent of one CPU. Processes that
 * started and ended within the interval are missed, so this is a lower bound:
 * an indicator of a noisy neighbour, not an accounting.
 */
export class ForeignCpuMeter {
  readonly #start = processTable();
  readonly #steal = stealMs();
  readonly #startedAt = performance.now();

  /** % of one CPU taken by other processes plus hypervisor steal (time the VM's CPUs ran someone else). */
  stop(): number {
    const end = processTable();
    const own = ownTree(end);
    for (const pid of ownTree(this.#start)) own.add(pid);
    let foreignMs = 0;
    for (const [pid, p] of end) {
      if (own.has(pid)) continue;
      foreignMs += p.cpuMs - (this.#start.get(pid)?.cpuMs ?? 0);
    }
    const stolen = Math.max(0, stealMs() - this.#steal);
    const elapsed = performance.now() - this.#startedAt;
    return elapsed > 0 ? ((Math.max(0, foreignMs) + stolen) / elapsed) * 100 : 0;
  }
}

/** Hypervisor steal time of all CPUs so far, ms (/proc/stat). */
function stealMs(): number {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0] ?? '';
    const steal = Number(line.trim().split(/\s+/)[8]);
    clockTicks ??= Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout?.trim()) || 100;
    return Number.isFinite(steal) ? (steal * 1000) / clockTicks : 0;
  } catch {
    return 0;
  }
}

/**
 * Wait until other processes use less than `thresholdPct` of a CPU over a
 * one-second sample, for at most `maxWaitMs`; returns the last sample.
 */
export async function waitForQuiet(thresholdPct: number, maxWaitMs: number): Promise<{ foreignPct: number; waitedMs: number }> {
  const started = Date.now();
  for (;;) {
    const meter = new ForeignCpuMeter();
    await delay(1_000);
    const foreignPct = meter.stop();
    const waitedMs = Date.now() - started;
    if (foreignPct < thresholdPct || waitedMs >= maxWaitMs) return { foreignPct, waitedMs };
  }
}
