/**
 * The contenders: how each is started (as its own process, pinned to the
 * proxy CPU), where load goes, and how it is stopped.
 *
 * - direct: the load generator talks HTTPS to the upstream itself (no proxy; not an upper bound on two CPUs, where
 *   the load generator and the upstream share one and a proxy has the other);
 * - undici: bare undici forwarder with a static header (the architecture's floor);
 * - http-proxy: bare http-proxy forwarder with a keep-alive agent;
 * - sidecar: oauth-sidecar through its real CLI, real token, default logging, metrics on;
 * - nginx: one process, keep-alive to the upstream, when installed.
 */
import { truncateSync, writeFileSync, mkdirSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { GET_PATH } from '../servers/protocol.js';
import type { Runner } from './build.js';
import { inCgroup } from './cgroup.js';
import type { Environment } from './environment.js';
import type { Target } from './loadgen.js';
import { Child, cleanEnv, commandExists, commandVersion, freePort } from './proc.js';

export const CONTENDER_NAMES = ['direct', 'undici', 'http-proxy', 'sidecar', 'nginx'] as const;
export type ContenderName = (typeof CONTENDER_NAMES)[number];

export const CONTENDER_LABELS: Readonly<Record<ContenderName, string>> = {
  direct: 'direct (load generator → HTTPS upstream)',
  undici: 'bare undici forwarder',
  'http-proxy': 'bare http-proxy forwarder',
  sidecar: 'oauth-sidecar',
  nginx: 'nginx (1 worker)',
};

/** One contender of a run: a kind, and for sidecar variants the source tree it was built from. */
export interface ContenderSpec {
  /** Unique in the run: the kind, or `sidecar@<label>` for a variant. */
  id: string;
  kind: ContenderName;
  /** For the table. */
  label: string;
  /** Runs this contender's programs (a variant's own build); the run's runner otherwise. */
  runner?: Runner;
  /** Credentials of this sidecar's service key (each sidecar its own client, so token requests can be told apart). */
  client?: { id: string; secret: string };
  /** Node options for this contender only (added to the run's). */
  nodeArgs?: string[];
}

export function contenderSpec(kind: ContenderName): ContenderSpec {
  return { id: kind, kind, label: CONTENDER_LABELS[kind] };
}

export interface RunningContender {
  readonly id: string;
  readonly kind: ContenderName;
  readonly target: Target;
  /** The proxy process; undefined for direct. */
  readonly pid: number | undefined;
  /** Where the process writes its logs (sidecar, nginx), if anywhere. */
  readonly logFile: string | undefined;
  /** `http://127.0.0.1:<port>` of the sidecar's admin listener. */
  readonly adminUrl: string | undefined;
  /** The sidecar's service key file (rewritten to rotate credentials). */
  readonly keyFile?: string | undefined;
  /** Drop accumulated log output (keeps the scratch disk small on long runs). */
  truncateLog(): void;
  /** Stop the process; the exit status (sidecar: 0 after a graceful drain). */
  stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null; killed: boolean } | undefined>;
}

export interface StartContext {
  env: Environment;
  runner: Runner;
  cpu: number | undefined;
  /** Credentials of the sidecar's service key. */
  client: { id: string; secret: string };
  /** Extra node options for the Node contenders (e.g. `--cpu-prof`). */
  nodeArgs?: readonly string[];
  /** Extra oauth-sidecar flags (e.g. `--log-level warn`), after the harness's own. */
  sidecarArgs?: readonly string[];
  /** Start the sidecar inside this cgroup (see lib/cgroup.ts). */
  cgroupDir?: string | undefined;
  /** The sidecar's log, chunk by chunk through a pipe, instead of a file (the soak scans it for warnings). */
  onSidecarLog?: ((chunk: string) => void) | undefined;
}

const START_TIMEOUT_MS = 30_000;

/**
 * nginx on PATH, else where Debian and source builds put it: a non-root user's PATH on Debian lacks /usr/sbin,
 * where apt-get installs it.
 */
const NGINX_PLACES = ['nginx', '/usr/sbin/nginx', '/usr/local/sbin/nginx', '/usr/local/nginx/sbin/nginx'];
let nginxFound: string | null | undefined;

/** The nginx command to run, or undefined when none is installed. */
export function nginxCommand(): string | undefined {
  if (nginxFound === undefined) nginxFound = NGINX_PLACES.find((command) => commandExists(command, ['-v'])) ?? null;
  return nginxFound ?? undefined;
}

export function nginxAvailable(): boolean {
  return nginxCommand() !== undefined;
}

export function nginxVersion(): string | undefined {
  const command = nginxCommand();
  return command === undefined ? undefined : commandVersion(command, ['-v']);
}

export async function startContender(spec: ContenderSpec, shared: StartContext): Promise<RunningContender> {
  const ctx: StartContext = {
    ...shared,
    runner: spec.runner ?? shared.runner,
    client: spec.client ?? shared.client,
    nodeArgs: [...(shared.nodeArgs ?? []), ...(spec.nodeArgs ?? [])],
  };
  const name = spec.kind;
  let running: Omit<RunningContender, 'id'>;
  switch (name) {
    case 'direct':
      running = {
        kind: name,
        target: { base: ctx.env.upstreamUrl, headers: { authorization: `Bearer ${ctx.env.staticToken}` }, caFile: ctx.env.caFile },
        pid: undefined,
        logFile: undefined,
        adminUrl: undefined,
        truncateLog: () => undefined,
        stop: async () => undefined,
      };
      break;
    case 'undici':
      running = await startForwarder(name, 'bench/contenders/undici-forwarder.ts', ctx);
      break;
    case 'http-proxy':
      running = await startForwarder(name, 'bench/contenders/http-proxy-forwarder.ts', ctx);
      break;
    case 'sidecar':
      running = await startSidecar(ctx);
      break;
    case 'nginx':
      running = await startNginx(ctx);
      break;
  }
  const started: RunningContender = { ...running, id: spec.id };
  await checkAnswers(started);
  return started;
}

async function startForwarder(name: ContenderName, program: string, ctx: StartContext): Promise<Omit<RunningContender, 'id'>> {
  const child = new Child(name, process.execPath, [...(ctx.nodeArgs ?? []), ...ctx.runner.args(program), ctx.env.upstreamUrl, ctx.env.caFile, ctx.env.staticToken], {
    cpu: ctx.cpu,
    env: cleanEnv(),
  });
  return stopOnFailure(child, async () => {
    const port = await child.waitForStdout((out) => {
      const m = /\{"listening":(\d+)\}/.exec(out);
      return m ? Number(m[1]) : undefined;
    }, START_TIMEOUT_MS);
    return processContender(name, child, `http://127.0.0.1:${port}`, undefined, undefined);
  });
}

/**
 * Run the start-up checks of `child`; if they fail (timeout, early exit), stop the child before passing the
 * error on: a child left running keeps the harness's event loop alive through its pipes, so it would never exit.
 */
async function stopOnFailure<T>(child: Child, started: () => Promise<T>): Promise<T> {
  try {
    return await started();
  } catch (err) {
    await child.stop(1_000);
    throw err;
  }
}

/**
 * The node options the container image starts oauth-sidecar with (its `NODE_OPTIONS`), so the bench
 * measures it as shipped. On an unconstrained host they are node's own defaults; under a container
 * memory limit they are not (see the Dockerfile). A unit test keeps the two equal.
 */
export const SHIPPED_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=16'];

/** oauth-sidecar through its CLI with a service key for the bench token server; logs (JSON, level info) go to a file. */
async function startSidecar(ctx: StartContext): Promise<Omit<RunningContender, 'id'>> {
  // The key gets a directory of its own, like a mounted secret: the sidecar watches that directory.
  // Ports chosen up front (not read from the startup log line), so any --log-level works.
  const [port, adminPort] = [await freePort(), await freePort()];
  const keyDir = join(ctx.env.dir, `sidecar-${port}-key`);
  mkdirSync(keyDir, { recursive: true, mode: 0o700 });
  const keyFile = join(keyDir, 'service-key.json');
  writeServiceKey(keyFile, ctx.client, ctx.env);
  const logFile = ctx.onSidecarLog ? undefined : join(ctx.env.dir, `sidecar-${port}.log`);
  const args = [
    ...SHIPPED_NODE_FLAGS,
    ...(ctx.nodeArgs ?? []),
    ...ctx.runner.args('src/cli.ts'),
    'serve',
    '--service-key', keyFile,
    '--ca', ctx.env.caFile,
    '--listen', `127.0.0.1:${port}`,
    '--admin-listen', `127.0.0.1:${adminPort}`,
    '--shutdown-delay', '0',
    '--shutdown-grace', '2000',
    ...(ctx.sidecarArgs ?? []),
  ];
  const [command, argv] = ctx.cgroupDir ? inCgroup(ctx.cgroupDir, process.execPath, args) : [process.execPath, args];
  const child = new Child('sidecar', command, argv, { cpu: ctx.cpu, env: cleanEnv(), ...(logFile ? { stdoutFile: logFile } : { onStdout: ctx.onSidecarLog }) });
  const admin = `http://127.0.0.1:${adminPort}`;
  // Started once the admin listener answers; warm once the first token is in (the cache is warmed at start).
  return stopOnFailure(child, async () => {
    const deadline = Date.now() + START_TIMEOUT_MS;
    for (;;) {
      if (!child.running) throw new Error(`oauth-sidecar exited at start: ${child.stderr.trim().slice(-2000)}`);
      const metrics = await fetchText(`${admin}/metrics`);
      if (metrics !== undefined && (metricValue(metrics, 'oauth_sidecar_token_fetches_total', 'outcome="success"') ?? 0) >= 1) break;
      if (Date.now() > deadline) throw new Error('oauth-sidecar did not become ready (admin listener + first token) in time');
      await delay(50);
    }
    return { ...processContender('sidecar', child, `http://127.0.0.1:${port}`, logFile, admin), keyFile };
  });
}

export function writeServiceKey(path: string, client: { id: string; secret: string }, env: Environment): void {
  const key = { oauth: { clientid: client.id, clientsecret: client.secret, tokenurl: env.tokenUrl, url: env.upstreamUrl, createdate: new Date().toISOString() } };
  writeFileSync(path, `${JSON.stringify(key, null, 2)}\n`, { mode: 0o600 });
}

/** nginx as one process (master_process off), keep-alive pool to the upstream, request bodies streamed. */
async function startNginx(ctx: StartContext): Promise<Omit<RunningContender, 'id'>> {
  const dir = join(ctx.env.dir, 'nginx');
  mkdirSync(dir, { recursive: true });
  const port = await freePort();
  const upstream = new URL(ctx.env.upstreamUrl);
  const conf = `
daemon off;
master_process off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log ${dir}/access.log;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy_temp;
  fastcgi_temp_path ${dir}/fastcgi_temp;
  uwsgi_temp_path ${dir}/uwsgi_temp;
  scgi_temp_path ${dir}/scgi_temp;
  client_max_body_size 0;
  keepalive_requests 1000000;
  upstream bench_upstream {
    server 127.0.0.1:${upstream.port};
    keepalive 128;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass https://bench_upstream;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host ${upstream.host};
      proxy_set_header Authorization "Bearer ${ctx.env.staticToken}";
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate ${ctx.env.caFile};
      proxy_ssl_name localhost;
      proxy_ssl_session_reuse on;
      proxy_request_buffering off;
    }
  }
}
`;
  const confFile = join(dir, 'nginx.conf');
  writeFileSync(confFile, conf);
  const child = new Child('nginx', nginxCommand() ?? 'nginx', ['-e', join(dir, 'error.log'), '-p', dir, '-c', confFile], { cpu: ctx.cpu, env: cleanEnv() });
  const base = `http://127.0.0.1:${port}`;
  return stopOnFailure(child, async () => {
    const deadline = Date.now() + START_TIMEOUT_MS;
    for (;;) {
      if (!child.running) throw new Error(`nginx exited: ${child.stderr.trim()}`);
      if ((await probe(base + GET_PATH)) !== undefined) break;
      if (Date.now() > deadline) throw new Error('nginx did not start listening in time');
      await delay(50);
    }
    return processContender('nginx', child, base, join(dir, 'access.log'), undefined);
  });
}

function processContender(kind: ContenderName, child: Child, base: string, logFile: string | undefined, adminUrl: string | undefined): Omit<RunningContender, 'id'> {
  return {
    kind,
    target: { base, headers: {} },
    pid: child.pid,
    logFile,
    adminUrl,
    truncateLog: () => {
      if (logFile) {
        try {
          truncateSync(logFile, 0);
        } catch {
          /* not there yet */
        }
      }
    },
    stop: () => child.stop(5_000),
  };
}

/** Every contender must answer the GET route with 200 — proof that the Bearer check passes through it. */
async function checkAnswers(contender: RunningContender): Promise<void> {
  if (contender.kind === 'direct') return; // https; the load run itself reports non-2xx answers
  const status = await probe(contender.target.base + GET_PATH);
  if (status !== 200) {
    await contender.stop();
    throw new Error(`${contender.id}: GET ${GET_PATH} answered ${status ?? 'nothing'}, expected 200`);
  }
}

/** Status of one plain-HTTP GET, or undefined on a connection error (2 s bound). */
export function probe(url: string): Promise<number | undefined> {
  return new Promise((resolve) => {
    const req = request(url, { method: 'GET', timeout: 2_000, agent: false }, (res) => {
      res.resume();
      res.once('end', () => resolve(res.statusCode));
      res.once('error', () => resolve(undefined));
    });
    req.once('timeout', () => req.destroy());
    req.once('error', () => resolve(undefined));
    req.end();
  });
}

/** GET a text resource (the sidecar's /metrics) with a 5 s bound. */
export function fetchText(url: string): Promise<string | undefined> {
  return new Promise((resolve) => {
    const req = request(url, { method: 'GET', timeout: 5_000, agent: false }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      res.once('end', () => resolve(res.statusCode === 200 ? text : undefined));
      res.once('error', () => resolve(undefined));
    });
    req.once('timeout', () => req.destroy());
    req.once('error', () => resolve(undefined));
    req.end();
  });
}

/** Sum of a Prometheus counter's samples whose labels contain `labelFilter` (e.g. `outcome="success"`). */
export function metricValue(text: string, name: string, labelFilter = ''): number | undefined {
  let total: number | undefined;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    if (!(rest.startsWith('{') || rest.startsWith(' '))) continue;
    if (labelFilter && !rest.includes(labelFilter)) continue;
    const value = Number(line.slice(line.lastIndexOf(' ') + 1));
    if (Number.isFinite(value)) total = (total ?? 0) + value;
  }
  return total;
}
