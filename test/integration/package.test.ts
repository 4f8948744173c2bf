/**
 * The production install serves requests: what the container image ships (dist/ from `tsc`, a clean
 * `npm ci --omit=dev`, package.json; see Dockerfile) is assembled in a temporary directory outside the
 * repository, started with the image's environment, and must forward a request with a Bearer token from a
 * real OAuth 2.0 server to a real HTTPS upstream. A runtime import of a devDependency, or a dependency
 * missing from "dependencies", fails here and nowhere else.
 *
 * `npm ci` reads the npm cache (--prefer-offline); after the repository's own `npm ci` every production
 * package is in it, so the registry is contacted only when the cache lacks a package.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { setPriority, tmpdir } from 'node:os';
import { join, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cleanEnv, collect, waitForLog, type CliResult } from '../helpers/cli.js';
import { startOAuthServer, type OAuthServer } from '../helpers/oauth-server.js';
import { createPki, type Pki } from '../helpers/pki.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CLIENT_ID = 'sb-package!b1|it-rt-acme!b196';
const SECRET = 'package$Secret=value!|%+:';
const INSTALL_TIMEOUT_MS = 120_000;

interface Lock {
  packages: Record<string, { dev?: boolean; optional?: boolean; devOptional?: boolean }>;
}
interface Pkg {
  version: string;
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
}

let pki: Pki;
let oauth: OAuthServer;
let upstream: Upstream;
let tmp: string;
/** The image's /app: package.json, package-lock.json, dist/, node_modules/. */
let app: string;
let keyPath: string;
let caPath: string;
let imageEnv: Record<string, string>;
let healthcheck: string[];
const children = new Set<ChildProcessWithoutNullStreams>();
const timings: Record<string, number> = {};

beforeAll(async () => {
  const started = performance.now();
  const dockerfile = await readFile(join(ROOT, 'Dockerfile'), 'utf8');
  ({ env: imageEnv, healthcheck } = imageSettings(dockerfile));

  tmp = await mkdtemp(join(tmpdir(), 'oauth-sidecar-package-'));
  app = join(tmp, 'app');
  await mkdir(app);
  await Promise.all(['package.json', 'package-lock.json'].map((f) => copyFile(join(ROOT, f), join(app, f))));

  // Build (as the image's build stage does) and install (as its prod-deps stage does).
  let t = performance.now();
  const tsc = await run(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json', '--outDir', join(app, 'dist')], {
    cwd: ROOT,
    background: true,
  });
  timings['tsc'] = performance.now() - t;
  expect(tsc.code, `tsc failed:\n${tsc.stdout}${tsc.stderr}`).toBe(0);

  t = performance.now();
  const npm = await run('npm', ['ci', '--omit=dev', '--ignore-scripts', '--no-audit', '--no-fund', '--prefer-offline'], {
    cwd: app,
    env: withoutNodeOptions(process.env),
    background: true,
  });
  timings['npm ci --omit=dev'] = performance.now() - t;
  expect(npm.code, `npm ci failed:\n${npm.stdout}${npm.stderr}`).toBe(0);

  pki = await createPki();
  oauth = await startOAuthServer(pki, { clients: [{ clientId: CLIENT_ID, secret: SECRET, authMethod: 'client_secret_basic' }] });
  upstream = await startUpstream(pki, { verify: (token) => oauth.verify(token) });
  await mkdir(join(tmp, 'secrets'));
  keyPath = join(tmp, 'secrets', 'key.json');
  caPath = join(tmp, 'secrets', 'ca.pem');
  await writeFile(keyPath, JSON.stringify({ oauth: { clientid: CLIENT_ID, clientsecret: SECRET, tokenurl: oauth.tokenUrl, url: upstream.url } }));
  await writeFile(caPath, pki.ca);
  timings['setup total'] = performance.now() - started;
}, INSTALL_TIMEOUT_MS);

afterAll(async () => {
  for (const child of children) child.kill('SIGKILL');
  await Promise.all([upstream?.close(), oauth?.close()]);
  if (tmp) await rm(tmp, { recursive: true, force: true });
  const line = Object.entries(timings).map(([k, ms]) => `${k} ${(ms / 1000).toFixed(1)} s`).join(', ');
  console.info(`production install: ${line}`);
});

describe('the production install (what the container image ships)', () => {
  it('holds every runtime dependency and no devDependency', async () => {
    const pkg = JSON.parse(await readFile(join(app, 'package.json'), 'utf8')) as Pkg;
    const lock = JSON.parse(await readFile(join(app, 'package-lock.json'), 'utf8')) as Lock;
    for (const name of [...Object.keys(pkg.devDependencies), 'vitest', 'typescript', 'tsx']) {
      expect(existsSync(join(app, 'node_modules', name)), `devDependency ${name} installed`).toBe(false);
    }
    expect(existsSync(join(app, 'node_modules', '.bin', 'tsc'))).toBe(false);
    for (const [path, entry] of Object.entries(lock.packages)) {
      if (path === '') continue;
      if (entry.dev) expect(existsSync(join(app, path)), `dev-only ${path} installed`).toBe(false);
      else if (!entry.optional && !entry.devOptional) expect(existsSync(join(app, path)), `${path} missing`).toBe(true);
    }
    // The runtime resolves its dependencies inside the install, never from the repository's node_modules.
    const requireFromDist = createRequire(join(app, 'dist', 'cli.js'));
    for (const name of Object.keys(pkg.dependencies)) {
      expect(requireFromDist.resolve(name).startsWith(join(app, 'node_modules') + sep), name).toBe(true);
    }
  });

  it('--help exits 0 and --version reads the shipped package.json', async () => {
    const help = await runCli(['--help']);
    expect(help.code, help.stderr).toBe(0);
    expect(help.stdout).toContain('--service-key');
    const version = await runCli(['--version']);
    expect(version.code, version.stderr).toBe(0);
    const pkg = JSON.parse(await readFile(join(app, 'package.json'), 'utf8')) as Pkg;
    expect(version.stdout.trim()).toBe(pkg.version);
  });

  it('with the image env alone (0.0.0.0, no inbound control) serve refuses to start: exit 2', async () => {
    const result = await runCli(['serve', '--ca', caPath], { ...imageEnv, SIDECAR_SERVICE_KEY: keyPath });
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/not a loopback address/);
  });

  it(
    'serves: a plain HTTP request reaches the upstream with a Bearer token; the image HEALTHCHECK passes; SIGTERM exits 0',
    async () => {
      const env = {
        ...imageEnv,
        SIDECAR_LISTEN: '127.0.0.1:0',
        SIDECAR_ADMIN_LISTEN: '127.0.0.1:0',
        SIDECAR_SERVICE_KEY: keyPath,
        SIDECAR_LOG_FORMAT: 'json',
        SIDECAR_SHUTDOWN_DELAY: '0',
      };
      const t = performance.now();
      const child = startCli(['serve', '--ca', caPath], env);
      const result = collect(child);
      const listening = await waitForLog(child, (l) => l['msg'] === 'oauth-sidecar listening');
      timings['start to listening'] = performance.now() - t;
      const url = `http://${listening['listen'] as string}`;
      const admin = listening['admin'] as string;

      const t2 = performance.now();
      const res = await request(`${url}/http/echo?x=1`, { method: 'POST', body: 'hello from a legacy sender', headers: { 'content-type': 'text/plain' } });
      timings['first request'] = performance.now() - t2;
      const echo = (await res.body.json()) as { method: string; url: string; headers: Record<string, string>; bodyLength: number };
      expect(res.statusCode).toBe(200);
      expect(echo).toMatchObject({ method: 'POST', url: '/http/echo?x=1', bodyLength: 'hello from a legacy sender'.length });
      expect(echo.headers['authorization']).toMatch(/^Bearer \S+$/);
      const seen = upstream.requests.at(-1)!;
      expect(seen.authorized).toBe(true);
      expect(seen.claims).toMatchObject({ client_id: CLIENT_ID });

      const ready = await request(`http://${admin}/readyz`);
      expect(ready.statusCode).toBe(200);
      await ready.body.dump();

      // The Dockerfile's HEALTHCHECK, as Docker runs it (image node → this node), with the image's
      // wildcard admin host, which the check probes on 127.0.0.1.
      const adminPort = admin.slice(admin.lastIndexOf(':') + 1);
      const healthy = await runHealthcheck(`0.0.0.0:${adminPort}`);
      expect(healthy.code, healthy.stderr).toBe(0);

      child.kill('SIGTERM');
      const exit = await result;
      expect(exit.code, exit.stderr).toBe(0);
      expect(exit.stdout).not.toContain(SECRET);
      children.delete(child);

      const unhealthy = await runHealthcheck(`0.0.0.0:${adminPort}`);
      expect(unhealthy.code).toBe(1);
    },
    INSTALL_TIMEOUT_MS,
  );
});

// ---------------------------------------------------------------------------------------------------

/** `node dist/cli.js …` in the install, as the image's ENTRYPOINT runs it (cwd /app), with a clean env. */
function startCli(args: string[], env: Record<string, string> = {}): ChildProcessWithoutNullStreams {
  const child = spawn(process.execPath, ['dist/cli.js', ...args], { cwd: app, env: withoutNodeOptions(cleanEnv(env)) });
  children.add(child);
  child.once('close', () => children.delete(child));
  return child;
}

function runCli(args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  return withTimeout(collect(startCli(args, env)), 30_000, `oauth-sidecar ${args.join(' ')}`);
}

function runHealthcheck(adminListen: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const [node, ...args] = healthcheck;
  expect(node).toBe('/nodejs/bin/node');
  return run(process.execPath, args, { cwd: app, env: withoutNodeOptions(cleanEnv({ ...imageEnv, SIDECAR_ADMIN_LISTEN: adminListen })) });
}

/** The runtime stage's ENV and the HEALTHCHECK exec form, from the Dockerfile. */
function imageSettings(dockerfile: string): { env: Record<string, string>; healthcheck: string[] } {
  const instructions = dockerfile
    .split('\n')
    .filter((l) => !l.trim().startsWith('#'))
    .join('\n')
    .replace(/\\\n/g, ' ')
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
  const runtime = instructions.slice(instructions.map((l) => /^FROM\s/i.test(l)).lastIndexOf(true));
  const env: Record<string, string> = {};
  for (const line of runtime.filter((l) => /^ENV\s/i.test(l))) {
    for (const m of line.slice(4).matchAll(/(\w+)=("(?:[^"\\]|\\.)*"|\S+)/g)) {
      env[m[1]!] = m[2]!.startsWith('"') ? (JSON.parse(m[2]!) as string) : m[2]!;
    }
  }
  const hc = runtime.find((l) => /^HEALTHCHECK\s/i.test(l));
  if (!hc) throw new Error('Dockerfile: no HEALTHCHECK in the runtime stage');
  const healthcheck = JSON.parse(hc.slice(hc.indexOf('['))) as string[];
  return { env, healthcheck };
}

/** The environment minus anything that would load code into node (tsx loaders, --require hooks). */
function withoutNodeOptions(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const { NODE_OPTIONS: _options, NODE_PATH: _path, ...rest } = env;
  return rest;
}

/**
 * Run a command to completion. `background`: at the lowest CPU priority, so that the build and install
 * (several CPU-seconds) do not slow the timing-sensitive suites running in parallel.
 */
function run(
  command: string,
  args: string[],
  options: { cwd: string; env?: NodeJS.ProcessEnv; background?: boolean },
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(command, args, { cwd: options.cwd, env: options.env ?? withoutNodeOptions(process.env), stdio: ['ignore', 'pipe', 'pipe'] });
  if (options.background && child.pid !== undefined) {
    try {
      setPriority(child.pid, 19);
    } catch {
      /* not permitted here: run at normal priority */
    }
  }
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
  return withTimeout(done, INSTALL_TIMEOUT_MS, `${command} ${args.join(' ')}`, () => child.kill('SIGKILL'));
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string, onTimeout?: () => void): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      onTimeout?.();
      reject(new Error(`${what}: no result within ${ms} ms`));
    }, ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
