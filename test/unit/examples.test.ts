/**
 * The shipped deployment examples (Dockerfile, .dockerignore, config/**) agree with the code: every
 * variable and flag they name exists, the configuration they describe parses, and the fields that make a
 * deployment work or safe (ports, probes, mounts, security context, non-root user) are set and consistent
 * across the files. No container engine is needed: the files are parsed as text/YAML.
 */
import { readFileSync } from 'node:fs';
import { dirname, posix } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { SHIPPED_NODE_FLAGS } from '../../bench/lib/contenders.js';
import { FLAGS, parseConfig, type Config, type Env } from '../../src/config.js';
import { ConfigError } from '../../src/errors.js';
import { exposureProblems, parseBasicAuthFile } from '../../src/inbound-control.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const read = (path: string): string => readFileSync(`${ROOT}/${path}`, 'utf8');

const PKG = JSON.parse(read('package.json')) as { version: string; license: string; bin: Record<string, string> };
const EXAMPLES = {
  routes: 'config/routes.example.yaml',
  kubernetes: 'config/kubernetes/deployment.yaml',
  compose: 'config/docker/compose.yaml',
  users: 'config/docker/users.example',
} as const;
const ALL_FILES = ['Dockerfile', '.dockerignore', ...Object.values(EXAMPLES)];

/** Every environment variable the sidecar reads under the SIDECAR_ prefix. */
const KNOWN_ENV = new Set([...Object.values(FLAGS).flatMap((f) => (f.env ? [f.env] : [])), 'SIDECAR_SERVICE_KEY_JSON']);
/** Flags of other tools (docker, docker compose, npm) that the examples' comments mention, and the node options the image sets. */
const TOOL_FLAGS = new Set(['rm', 'build', 'build-arg', 'omit', 'stop-timeout', ...SHIPPED_NODE_FLAGS.map((f) => f.slice(2).replace(/=.*/, ''))]);

// ---------------------------------------------------------------------------------------------------
// Parsing helpers

type Json = Record<string, unknown>;

/** Every document of a YAML file, failing on any parse error or warning. */
function yamlDocs(path: string, version: '1.1' | '1.2' = '1.2'): unknown[] {
  const docs = parseAllDocuments(read(path), { version });
  if (!Array.isArray(docs)) throw new Error(`${path}: no YAML documents`);
  for (const doc of docs) {
    expect(doc.errors.map((e) => e.message), `${path}: YAML errors`).toEqual([]);
    expect(doc.warnings.map((e) => e.message), `${path}: YAML warnings`).toEqual([]);
  }
  return docs.map((d) => d.toJS() as unknown).filter((d) => d !== null);
}

function yamlDoc(path: string): Json {
  const docs = yamlDocs(path);
  expect(docs).toHaveLength(1);
  return docs[0] as Json;
}

interface Instruction {
  keyword: string;
  args: string;
}

/** Dockerfile instructions, with line continuations joined and comment lines dropped (as Docker does). */
function dockerfile(text: string): Instruction[] {
  const out: Instruction[] = [];
  let pending = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line.startsWith('#') || (line === '' && pending === '')) continue;
    if (line.endsWith('\\')) {
      pending += `${line.slice(0, -1)} `;
      continue;
    }
    const full = (pending + line).trim();
    pending = '';
    if (full === '') continue;
    const [keyword = '', ...rest] = full.split(/\s+/);
    out.push({ keyword: keyword.toUpperCase(), args: rest.join(' ') });
  }
  return out;
}

/** `K=V K2="V 2"` pairs of ENV, LABEL and ARG. */
function pairs(args: string): Record<string, string> {
  const result: Record<string, string> = {};
  for (const m of args.matchAll(/([\w.-]+)=("(?:[^"\\]|\\.)*"|\S+)/g)) {
    const value = m[2]!;
    result[m[1]!] = value.startsWith('"') ? (JSON.parse(value) as string) : value;
  }
  return result;
}

interface Stage {
  from: string;
  name: string | undefined;
  instructions: Instruction[];
}

function stages(instructions: Instruction[]): { globalArgs: Record<string, string>; stages: Stage[] } {
  const globalArgs: Record<string, string> = {};
  const result: Stage[] = [];
  for (const ins of instructions) {
    if (ins.keyword === 'FROM') {
      const [image = '', as, name] = ins.args.split(/\s+/);
      const resolved = image.replace(/\$\{(\w+)\}|\$(\w+)/g, (_, a: string | undefined, b: string | undefined) => globalArgs[(a ?? b)!] ?? '');
      result.push({ from: resolved, name: as?.toUpperCase() === 'AS' ? name : undefined, instructions: [] });
    } else if (result.length === 0) {
      if (ins.keyword === 'ARG') Object.assign(globalArgs, pairs(ins.args));
    } else {
      result.at(-1)!.instructions.push(ins);
    }
  }
  return { globalArgs, stages: result };
}

/** The exec-form (JSON array) argument of ENTRYPOINT, CMD or HEALTHCHECK … CMD. */
function execForm(args: string): string[] {
  const json = args.slice(args.indexOf('['));
  const parsed = JSON.parse(json) as unknown;
  expect(Array.isArray(parsed) && parsed.every((s) => typeof s === 'string'), `exec form expected: ${args}`).toBe(true);
  return parsed as string[];
}

function portOf(listen: string | undefined): number {
  if (listen === undefined) throw new Error('listen address not set');
  return Number(listen.slice(listen.lastIndexOf(':') + 1));
}

function runConfig(argv: string[], env: Env, files: Record<string, string> = {}): Readonly<Config> {
  const result = parseConfig(argv, env, (path) => {
    const text = files[path];
    if (text === undefined) throw Object.assign(new Error(`no such file: ${path}`), { code: 'ENOENT' });
    return text;
  });
  if (result.kind !== 'run') throw new Error(`expected a runnable config, got ${result.kind}`);
  return result.config;
}

/** The image reference without its tag: `registry/name`. */
function repository(image: string): string {
  return image.replace(/:[^:/]+$/, '');
}

// ---------------------------------------------------------------------------------------------------
// The files, parsed once

const DOCKERFILE = dockerfile(read('Dockerfile'));
const { globalArgs: GLOBAL_ARGS, stages: STAGES } = stages(DOCKERFILE);
const RUNTIME = STAGES.at(-1)!;
const runtimeAll = (keyword: string) => RUNTIME.instructions.filter((i) => i.keyword === keyword);
const runtimeOne = (keyword: string): Instruction => {
  const found = runtimeAll(keyword);
  expect(found, `runtime stage: exactly one ${keyword}`).toHaveLength(1);
  return found[0]!;
};
const IMAGE_ENV: Record<string, string> = Object.assign({}, ...runtimeAll('ENV').map((i) => pairs(i.args)));
const IMAGE_USER = runtimeOne('USER').args;
const ENTRYPOINT = execForm(runtimeOne('ENTRYPOINT').args);
const NODE_BIN = ENTRYPOINT[0]!;

const K8S = yamlDocs(EXAMPLES.kubernetes) as Json[];
const kind = (k: string): Json => {
  const found = K8S.filter((d) => d['kind'] === k);
  expect(found, `one ${k} in ${EXAMPLES.kubernetes}`).toHaveLength(1);
  return found[0]!;
};

interface K8sContainer {
  name: string;
  image: string;
  restartPolicy?: string;
  args?: string[];
  env?: Array<{ name: string; value?: string; valueFrom?: unknown }>;
  envFrom?: unknown[];
  ports?: Array<{ name?: string; containerPort: number }>;
  startupProbe?: { httpGet?: { path: string; port: string | number } };
  livenessProbe?: { httpGet?: { path: string; port: string | number } };
  readinessProbe?: { httpGet?: { path: string; port: string | number }; timeoutSeconds?: number };
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  securityContext?: Json;
  volumeMounts?: Array<{ name: string; mountPath: string; readOnly?: boolean; subPath?: string; subPathExpr?: string }>;
}
interface PodSpec {
  terminationGracePeriodSeconds?: number;
  securityContext?: Json;
  initContainers?: K8sContainer[];
  containers: K8sContainer[];
  volumes?: Array<{ name: string; secret?: { secretName: string } }>;
}

const DEPLOYMENT = kind('Deployment');
const POD = (DEPLOYMENT['spec'] as { template: { spec: PodSpec } }).template.spec;
const SIDECAR = (POD.initContainers ?? []).find((c) => c.name === 'oauth-sidecar')!;
const containerEnv = (c: K8sContainer): Record<string, string> =>
  Object.fromEntries((c.env ?? []).filter((e) => e.value !== undefined).map((e) => [e.name, e.value!]));
/** What the sidecar process sees in the pod: the image's ENV, overridden by the container's env. */
const SIDECAR_ENV = { ...IMAGE_ENV, ...containerEnv(SIDECAR ?? { name: '', image: '' }) };

interface ComposeService {
  image: string;
  build?: unknown;
  restart?: string;
  user?: string;
  read_only?: boolean;
  cap_drop?: string[];
  security_opt?: string[];
  environment?: Record<string, string>;
  volumes?: string[];
  ports?: string[];
  healthcheck?: { test: string[] };
  stop_grace_period?: string;
}
const COMPOSE = yamlDoc(EXAMPLES.compose) as { services: Record<string, ComposeService> };
const COMPOSE_SIDECAR = COMPOSE.services['oauth-sidecar']!;
const COMPOSE_ENV = { ...IMAGE_ENV, ...COMPOSE_SIDECAR.environment };
const USERS = read(EXAMPLES.users);

function durationMs(value: string): number {
  const m = /^(\d+)(ms|s|m)$/.exec(value);
  if (!m) throw new Error(`not a duration: ${value}`);
  return Number(m[1]) * { ms: 1, s: 1000, m: 60_000 }[m[2] as 'ms' | 's' | 'm'];
}

/** Shutdown delay + grace the process will use with this environment (FLAGS defaults otherwise). */
function shutdownBudgetMs(env: Record<string, string>): number {
  const delay = Number(env['SIDECAR_SHUTDOWN_DELAY'] ?? FLAGS['shutdown-delay']!.default);
  const grace = Number(env['SIDECAR_SHUTDOWN_GRACE'] ?? FLAGS['shutdown-grace']!.default);
  return delay + grace;
}

// ---------------------------------------------------------------------------------------------------

describe('every example names only variables and flags that exist', () => {
  it.each(ALL_FILES)('%s: every SIDECAR_* variable is read by the sidecar', (path) => {
    const names = [...new Set(read(path).match(/\bSIDECAR_[A-Z0-9_]+/g) ?? [])];
    expect(names.filter((n) => !KNOWN_ENV.has(n))).toEqual([]);
  });

  it.each(Object.values(EXAMPLES))('%s: every --flag is an oauth-sidecar flag', (path) => {
    const flags = [...read(path).matchAll(/(?<![\w-])--([a-z][a-z0-9-]*)/g)].map((m) => m[1]!);
    expect(flags.filter((f) => !(f in FLAGS) && !TOOL_FLAGS.has(f))).toEqual([]);
  });

  it('Dockerfile: every --flag in comments, ENTRYPOINT and CMD is an oauth-sidecar flag', () => {
    const text = read('Dockerfile');
    const comments = text.split('\n').filter((l) => l.trim().startsWith('#')).join('\n');
    const exec = [...runtimeAll('ENTRYPOINT'), ...runtimeAll('CMD')].flatMap((i) => execForm(i.args)).join(' ');
    const flags = [...`${comments}\n${exec}`.matchAll(/(?<![\w-])--([a-z][a-z0-9-]*)/g)].map((m) => m[1]!);
    expect(flags.filter((f) => !(f in FLAGS) && !TOOL_FLAGS.has(f))).toEqual([]);
  });

  it.each([EXAMPLES.routes, EXAMPLES.kubernetes, EXAMPLES.compose])(
    '%s: YAML 1.1 readers (Kubernetes) see the same values as YAML 1.2 ones',
    (path) => {
      expect(yamlDocs(path, '1.1')).toEqual(yamlDocs(path, '1.2'));
    },
  );
});

describe('Dockerfile', () => {
  it('is multi-stage: build with all dependencies, a separate production install, a small runtime', () => {
    expect(STAGES.length).toBeGreaterThanOrEqual(2);
    const runs = (s: Stage) => s.instructions.filter((i) => i.keyword === 'RUN').map((i) => i.args);
    const build = STAGES.find((s) => runs(s).some((r) => /\bnpm run build\b/.test(r)));
    const prod = STAGES.find((s) => runs(s).some((r) => /\bnpm ci\b.*--omit=dev/.test(r)));
    expect(build, 'a stage runs npm run build').toBeDefined();
    expect(runs(build!).some((r) => /\bnpm ci\b/.test(r) && !r.includes('--omit=dev'))).toBe(true);
    expect(prod, 'a stage runs npm ci --omit=dev').toBeDefined();
    expect(prod).not.toBe(build);
    expect(RUNTIME).not.toBe(build);
    expect(RUNTIME).not.toBe(prod);
    // Build stages ship the same Node major as the runtime.
    const runtimeMajor = /nodejs(\d+)/.exec(RUNTIME.from)?.[1];
    for (const s of [build!, prod!]) expect(/^node:(\d+)/.exec(s.from)?.[1]).toBe(runtimeMajor);
    expect(Number(runtimeMajor)).toBeGreaterThanOrEqual(22);
  });

  it('runtime: distroless nodejs (no shell, no npm), numeric non-root user', () => {
    expect(RUNTIME.from).toMatch(/^gcr\.io\/distroless\/nodejs\d+-debian\d+:nonroot$/);
    expect(IMAGE_USER).toMatch(/^\d+(:\d+)?$/);
    expect(Number(IMAGE_USER.split(':')[0])).toBeGreaterThan(0);
    expect(runtimeAll('RUN'), 'no RUN in a shell-less image').toEqual([]);
  });

  it('runtime: copies only dist/, the production node_modules and package.json, no devDependency', () => {
    const copies = runtimeAll('COPY').map((i) => {
      const from = /--from=(\S+)/.exec(i.args)?.[1];
      const parts = i.args.replace(/--\S+/g, '').trim().split(/\s+/);
      return { from, src: parts.slice(0, -1), dest: parts.at(-1)! };
    });
    const stageOf = (name: string | undefined) => STAGES.find((s) => s.name === name);
    const sources = copies.flatMap((c) => c.src.map((src) => posix.basename(src)));
    expect(sources.sort()).toEqual(['dist', 'node_modules', 'package.json']);
    for (const c of copies) expect(c.from, `COPY ${c.src.join(' ')} comes from a build stage`).toBeDefined();
    const modules = copies.find((c) => c.src.some((s) => s.endsWith('node_modules')))!;
    const modulesStage = stageOf(modules.from)!;
    const install = modulesStage.instructions.filter((i) => i.keyword === 'RUN').map((i) => i.args);
    expect(install.some((r) => /\bnpm ci\b/.test(r) && r.includes('--omit=dev'))).toBe(true);
    expect(install.some((r) => /\bnpm (i|install|ci)\b(?!.*--omit=dev)/.test(r)), 'no full install in that stage').toBe(false);
  });

  it('ENTRYPOINT is the CLI under the image node, CMD serve', () => {
    expect(ENTRYPOINT).toEqual(['/nodejs/bin/node', PKG.bin['oauth-sidecar']]);
    expect(execForm(runtimeOne('CMD').args)).toEqual(['serve']);
  });

  it('NODE_OPTIONS pins the young generation, with the options the benchmark starts the sidecar with', () => {
    expect(SHIPPED_NODE_FLAGS).toEqual(['--max-semi-space-size=16']);
    expect(IMAGE_ENV['NODE_OPTIONS']).toBe(SHIPPED_NODE_FLAGS.join(' '));
  });

  it('listens on all interfaces with admin for probes; EXPOSE matches', () => {
    expect(IMAGE_ENV['SIDECAR_LISTEN']).toBe('0.0.0.0:8080');
    expect(IMAGE_ENV['SIDECAR_ADMIN_LISTEN']).toBe('0.0.0.0:9090');
    const exposed = runtimeAll('EXPOSE').flatMap((i) => i.args.split(/\s+/)).map((p) => Number(p.replace(/\/tcp$/, '')));
    expect(exposed.sort()).toEqual([portOf(IMAGE_ENV['SIDECAR_LISTEN']), portOf(IMAGE_ENV['SIDECAR_ADMIN_LISTEN'])].sort());
  });

  it('the image env alone is protected mode: a non-loopback listener without inbound control is refused', () => {
    let refused: unknown;
    try {
      runConfig(['serve'], { ...IMAGE_ENV, SIDECAR_SERVICE_KEY: '/etc/oauth-sidecar/key.json' });
    } catch (err) {
      refused = err;
    }
    expect(refused).toBeInstanceOf(ConfigError);
    expect((refused as ConfigError).problems).toEqual([
      { source: 'SIDECAR_LISTEN', field: 'listen', message: expect.stringMatching(/"0\.0\.0\.0" is not a loopback address/) },
    ]);
    const config = runConfig(['serve'], { ...IMAGE_ENV, SIDECAR_SERVICE_KEY: '/etc/oauth-sidecar/key.json', SIDECAR_ALLOW_ANY_SENDER: 'true' });
    expect(config.listen).toEqual({ host: '0.0.0.0', port: 8080 });
    expect(config.adminListen).toEqual({ host: '0.0.0.0', port: 9090 });
  });

  it('HEALTHCHECK: exec form with the image node against /healthz of the admin listener, no shell', () => {
    const hc = runtimeOne('HEALTHCHECK').args;
    expect(hc).toMatch(/\bCMD\s+\[/);
    const argv = execForm(hc.slice(hc.indexOf('CMD')));
    expect(argv[0]).toBe(NODE_BIN);
    expect(argv[1]).toBe('-e');
    expect(argv[2]).toContain('/healthz');
    expect(argv[2]).toContain('SIDECAR_ADMIN_LISTEN');
    for (const opt of ['interval', 'timeout', 'retries']) expect(hc).toMatch(new RegExp(`--${opt}=\\d+`));
  });

  it('OCI labels carry the package version and license', () => {
    const labels: Record<string, string> = Object.assign({}, ...runtimeAll('LABEL').map((i) => pairs(i.args)));
    const version = runtimeAll('ARG').map((i) => pairs(i.args)['VERSION']).find(Boolean);
    expect(version).toBe(PKG.version);
    expect(labels['org.opencontainers.image.version']).toBe('${VERSION}');
    expect(labels['org.opencontainers.image.licenses']).toBe(PKG.license);
    expect(labels['org.opencontainers.image.title']).toBe('oauth-sidecar');
    expect(labels['org.opencontainers.image.base.name']).toBe('${RUNTIME_IMAGE}');
    expect(runtimeAll('ARG').map((i) => i.args)).toContain('RUNTIME_IMAGE');
    expect(GLOBAL_ARGS['RUNTIME_IMAGE']).toBe(RUNTIME.from);
  });

  it('.dockerignore is an allowlist: only what the Dockerfile copies from the context is sent', () => {
    const patterns = read('.dockerignore').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
    expect(patterns[0]).toBe('*');
    const included = patterns.filter((p) => p.startsWith('!')).map((p) => p.slice(1).replace(/\/$/, ''));
    const contextSources = STAGES.flatMap((s) => s.instructions)
      .filter((i) => i.keyword === 'COPY' && !i.args.includes('--from='))
      .flatMap((i) => i.args.split(/\s+/).slice(0, -1))
      .map((p) => p.replace(/^\.\//, '').replace(/\/$/, ''));
    expect([...new Set(contextSources)].sort()).toEqual([...included].sort());
    for (const never of ['node_modules', 'dist', '.git', 'test', 'bench', 'coverage', 'config', 'key.json']) {
      expect(included).not.toContain(never);
    }
  });
});

describe('config/routes.example.yaml', () => {
  const PATH = '/etc/oauth-sidecar/routes.yaml';
  const text = read(EXAMPLES.routes);

  it('passes parseConfig with every route, as documented', () => {
    const config = runConfig(['serve', '--config', PATH], {}, { [PATH]: text });
    expect(config.routesSource).toBe(PATH);
    expect(config.listen).toEqual({ host: '127.0.0.1', port: 8080 });
    expect(config.adminListen).toEqual({ host: '127.0.0.1', port: 9090 });
    expect(config.inbound.basicAuthFile).toBe('/etc/oauth-sidecar/users');
    expect(config.inbound.allowCidrs.length).toBeGreaterThan(0);
    expect(config.routes.map((r) => r.name)).toEqual(['orders', 'soap', 'odata', 'test-tenant']);
    const [orders, soap, odata, test] = config.routes;
    expect(orders).toMatchObject({ prefix: '/orders', rewritePrefix: '/http/orders', csrf: 'auto', timeouts: { responseMs: 120_000 } });
    expect(soap).toMatchObject({ prefix: '/cxf', csrf: 'off', credentials: { source: { kind: 'path' } } });
    expect(odata?.credentials.clientCert).toMatchObject({ kind: 'tls-dir', dir: '/etc/tls/cpi-api' });
    expect(test).toMatchObject({ upstream: 'https://acme-test.it-cpi000-rt.cfapps.eu10-000.hana.ondemand.com', rewritePrefix: '/http' });
    expect(test?.token.params).toEqual({ token_format: 'jwt' });
    for (const route of config.routes) {
      const source = route.credentials.source;
      expect(source.kind === 'path' && source.path.startsWith('/')).toBe(true);
    }
  });

  it('in the container, the image env wins over the file’s listen addresses', () => {
    const config = runConfig(['serve'], { ...IMAGE_ENV, SIDECAR_CONFIG: PATH }, { [PATH]: text });
    expect(config.listen).toEqual({ host: '0.0.0.0', port: 8080 });
    expect(config.adminListen).toEqual({ host: '0.0.0.0', port: 9090 });
    expect(config.routes).toHaveLength(4);
  });
});

describe('config/kubernetes/deployment.yaml', () => {
  it('ServiceInstance and ServiceBinding of the SAP BTP service operator for it-rt / integration-flow', () => {
    const instance = kind('ServiceInstance') as { apiVersion: string; metadata: { name: string }; spec: Json };
    const binding = kind('ServiceBinding') as { apiVersion: string; spec: { serviceInstanceName: string; secretName: string } };
    expect(instance.apiVersion).toBe('services.cloud.sap.com/v1');
    expect(binding.apiVersion).toBe('services.cloud.sap.com/v1');
    expect(instance.spec).toMatchObject({
      serviceOfferingName: 'it-rt',
      servicePlanName: 'integration-flow',
      parameters: { roles: ['ESBMessaging.send'], 'grant-types': ['client_credentials'] },
    });
    expect(binding.spec.serviceInstanceName).toBe(instance.metadata.name);
    const volume = POD.volumes?.find((v) => v.secret?.secretName === binding.spec.secretName);
    expect(volume, 'the binding secret is a pod volume').toBeDefined();
  });

  it('oauth-sidecar is a native sidecar: an init container with restartPolicy Always', () => {
    expect(SIDECAR).toBeDefined();
    expect(SIDECAR.restartPolicy).toBe('Always');
    expect(POD.containers.some((c) => c.name === 'oauth-sidecar')).toBe(false);
    expect(SIDECAR.args ?? ['serve']).toEqual(['serve']);
  });

  it('image name consistent with the compose file; tag is the package version', () => {
    expect(repository(SIDECAR.image)).toBe(repository(COMPOSE_SIDECAR.image));
    expect(SIDECAR.image).toBe(COMPOSE_SIDECAR.image);
    expect(SIDECAR.image.endsWith(`:${PKG.version}`)).toBe(true);
  });

  it('listens on loopback for the app, admin on the pod IP; container ports 8080 and 9090', () => {
    expect(SIDECAR_ENV['SIDECAR_LISTEN']).toBe('127.0.0.1:8080');
    expect(SIDECAR_ENV['SIDECAR_ADMIN_LISTEN']).toBe('0.0.0.0:9090');
    const ports = Object.fromEntries((SIDECAR.ports ?? []).map((p) => [p.name, p.containerPort]));
    expect(ports).toEqual({ proxy: 8080, admin: 9090 });
    expect(portOf(SIDECAR_ENV['SIDECAR_LISTEN'])).toBe(ports['proxy']);
    expect(portOf(SIDECAR_ENV['SIDECAR_ADMIN_LISTEN'])).toBe(ports['admin']);
  });

  it('probes: startup and liveness on /healthz, readiness on /readyz, all on the admin port', () => {
    const adminPort = portOf(SIDECAR_ENV['SIDECAR_ADMIN_LISTEN']);
    const resolve = (port: string | number | undefined) =>
      typeof port === 'number' ? port : SIDECAR.ports?.find((p) => p.name === port)?.containerPort;
    expect(SIDECAR.startupProbe?.httpGet?.path).toBe('/healthz');
    expect(SIDECAR.livenessProbe?.httpGet?.path).toBe('/healthz');
    expect(SIDECAR.readinessProbe?.httpGet?.path).toBe('/readyz');
    for (const probe of [SIDECAR.startupProbe, SIDECAR.livenessProbe, SIDECAR.readinessProbe]) {
      expect(resolve(probe?.httpGet?.port)).toBe(adminPort);
    }
    // /readyz may wait up to 5 s for a token: a shorter probe timeout records a timeout, not the 503 and its reason.
    expect(SIDECAR.readinessProbe?.timeoutSeconds).toBeGreaterThan(5);
  });

  it('the binding secret is a read-only volume (no subPath) at the SIDECAR_SERVICE_KEY path, for the sidecar only', () => {
    const keyPath = SIDECAR_ENV['SIDECAR_SERVICE_KEY']!;
    const secretVolumes = new Set((POD.volumes ?? []).filter((v) => v.secret).map((v) => v.name));
    const mounts = (SIDECAR.volumeMounts ?? []).filter((m) => secretVolumes.has(m.name));
    expect(mounts).toHaveLength(1);
    const mount = mounts[0]!;
    expect([keyPath, dirname(keyPath)]).toContain(mount.mountPath);
    expect(mount.readOnly).toBe(true);
    for (const c of [...(POD.initContainers ?? []), ...POD.containers]) {
      for (const m of c.volumeMounts ?? []) {
        expect(m.subPath, `${c.name}: subPath mounts never update`).toBeUndefined();
        expect(m.subPathExpr).toBeUndefined();
      }
    }
    // The app never sees the credentials: no secret mount, no secret env.
    for (const app of POD.containers) {
      expect((app.volumeMounts ?? []).filter((m) => secretVolumes.has(m.name))).toEqual([]);
      expect(app.envFrom).toBeUndefined();
      expect((app.env ?? []).filter((e) => e.valueFrom !== undefined)).toEqual([]);
    }
  });

  it('the sidecar configuration it describes parses, and needs no inbound control on loopback', () => {
    const config = runConfig(SIDECAR.args ?? ['serve'], SIDECAR_ENV);
    expect(config.listen).toEqual({ host: '127.0.0.1', port: 8080 });
    expect(config.routes[0]?.credentials.source).toMatchObject({ kind: 'path', path: '/etc/secrets/cpi' });
    expect(exposureProblems(config.listen.host, {}, 'listen')).toEqual([]);
  });

  it('the legacy app calls the sidecar on loopback', () => {
    const base = `http://${SIDECAR_ENV['SIDECAR_LISTEN']}`;
    const app = POD.containers[0]!;
    expect(Object.values(containerEnv(app))).toContain(base);
  });

  it('securityContext: non-root (the image user), read-only root, no privilege escalation, no capabilities, RuntimeDefault seccomp', () => {
    for (const c of [SIDECAR, ...POD.containers]) {
      expect(c.securityContext, c.name).toMatchObject({
        runAsNonRoot: true,
        readOnlyRootFilesystem: true,
        allowPrivilegeEscalation: false,
        capabilities: { drop: ['ALL'] },
        seccompProfile: { type: 'RuntimeDefault' },
      });
    }
    expect(SIDECAR.securityContext?.['runAsUser']).toBe(Number(IMAGE_USER.split(':')[0]));
    expect(POD.securityContext).toMatchObject({ runAsNonRoot: true, seccompProfile: { type: 'RuntimeDefault' } });
  });

  it('resources: requests and limits', () => {
    for (const c of [SIDECAR, ...POD.containers]) {
      expect(c.resources?.requests, c.name).toMatchObject({ cpu: expect.any(String), memory: expect.any(String) });
      expect(c.resources?.limits?.['memory'], c.name).toEqual(expect.any(String));
    }
    expect(SIDECAR.resources?.limits?.['cpu']).toEqual(expect.any(String));
  });

  it("bounds connections and kept body copies to what its memory limit holds (measured: ~120 MiB + 0.15 MiB per uploading connection + the copies; README, Kubernetes)", () => {
    const config = runConfig(['serve'], SIDECAR_ENV);
    const limitMiB = Number(/^(\d+)Mi$/.exec(SIDECAR.resources?.limits?.['memory'] ?? '')?.[1]);
    expect(config.maxConnections).toBeGreaterThan(0); // 0 would be no limit
    const needMiB = 120 + 0.15 * config.maxConnections + config.maxReplayMemoryBytes / 2 ** 20;
    expect(needMiB).toBeLessThan(limitMiB * 0.9);
  });

  it('terminationGracePeriodSeconds exceeds the sidecar’s shutdown delay + grace', () => {
    expect((POD.terminationGracePeriodSeconds ?? 30) * 1000).toBeGreaterThan(shutdownBudgetMs(SIDECAR_ENV));
  });
});

describe('config/docker/compose.yaml', () => {
  it('runs the same image, read-only, non-root (the image user), with a restart policy', () => {
    expect(COMPOSE_SIDECAR.image).toBe(SIDECAR.image);
    expect(COMPOSE_SIDECAR.read_only).toBe(true);
    expect(COMPOSE_SIDECAR.user).toBe(IMAGE_USER);
    expect(Number(COMPOSE_SIDECAR.user?.split(':')[0])).toBeGreaterThan(0);
    expect(['always', 'unless-stopped', 'on-failure']).toContain(COMPOSE_SIDECAR.restart);
    expect(COMPOSE_SIDECAR.cap_drop).toEqual(['ALL']);
    expect(COMPOSE_SIDECAR.security_opt).toContain('no-new-privileges:true');
  });

  it('publishes 8080 and 9090 on the host loopback only', () => {
    const ports = COMPOSE_SIDECAR.ports ?? [];
    expect(ports.length).toBeGreaterThan(0);
    for (const p of ports) expect(p).toMatch(/^127\.0\.0\.1:\d+:\d+$/);
    expect(ports.map((p) => Number(p.split(':')[2])).sort()).toEqual([8080, 9090]);
    expect(ports.map((p) => Number(p.split(':')[2])).sort()).toEqual(
      [portOf(COMPOSE_ENV['SIDECAR_LISTEN']), portOf(COMPOSE_ENV['SIDECAR_ADMIN_LISTEN'])].sort(),
    );
  });

  it("mounts the service key's directory (a key replaced by rename reaches it) and the basic auth file, read-only, where the variables point", () => {
    const volumes = COMPOSE_SIDECAR.volumes ?? [];
    expect(volumes).toContain('./secrets:/etc/oauth-sidecar/secrets:ro');
    for (const v of volumes) expect(v).toMatch(/:ro$/);
    const targets = volumes.map((v) => v.split(':')[1]);
    expect(targets).toContain(dirname(COMPOSE_ENV['SIDECAR_SERVICE_KEY']!));
    expect(COMPOSE_ENV['SIDECAR_SERVICE_KEY']).toBe('/etc/oauth-sidecar/secrets/cpi-key.json'); // the file the header copies
    expect(targets).toContain(COMPOSE_ENV['SIDECAR_BASIC_AUTH_FILE']);
  });

  it('shows the corporate proxy variables commented out (an invented proxy would fail every request), and they work uncommented', () => {
    expect(COMPOSE_SIDECAR.environment?.['HTTPS_PROXY']).toBeUndefined();
    const commented = Object.fromEntries(
      [...read(EXAMPLES.compose).matchAll(/^\s*#\s*(HTTPS_PROXY|NO_PROXY): (\S+)$/gm)].map((m) => [m[1]!, m[2]!]),
    );
    expect(commented['HTTPS_PROXY']).toMatch(/^http:\/\//);
    expect(commented['NO_PROXY']).toContain('127.0.0.1');
    expect(runConfig(['serve'], { ...COMPOSE_ENV, ...commented }).network.httpsProxy).toBe(commented['HTTPS_PROXY']);
  });

  it('the configuration it describes parses, and the listener is protected by basic auth', () => {
    const config = runConfig(['serve'], COMPOSE_ENV);
    expect(config.listen).toEqual({ host: '0.0.0.0', port: 8080 });
    expect(config.inbound.basicAuthFile).toBe('/etc/oauth-sidecar/users');
    expect(config.network.httpsProxy).toBeUndefined();
    expect(config.routes[0]?.credentials.source).toMatchObject({ kind: 'path', path: '/etc/oauth-sidecar/secrets/cpi-key.json' });
    const basicAuth = parseBasicAuthFile(USERS, EXAMPLES.users);
    expect(exposureProblems(config.listen.host, { basicAuth }, 'listen')).toEqual([]);
  });

  it("no healthcheck of its own: the image's, which follows SIDECAR_ADMIN_LISTEN, applies (one here pinned port 9090)", () => {
    expect(COMPOSE_SIDECAR.healthcheck).toBeUndefined();
  });

  it('stop_grace_period exceeds the shutdown delay + grace', () => {
    expect(durationMs(COMPOSE_SIDECAR.stop_grace_period ?? '10s')).toBeGreaterThan(shutdownBudgetMs(COMPOSE_ENV));
  });
});

describe('config/docker/users.example', () => {
  it('is a valid basic auth file whose only active entry is a (fake) sha256 digest', () => {
    const verifier = parseBasicAuthFile(USERS, EXAMPLES.users);
    expect(verifier.userCount).toBe(1);
    const active = USERS.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
    for (const line of active) expect(line).toMatch(/^[^:]+:sha256:[0-9a-f]{64}$/);
    // The digest is the one the comment names, of an obviously fake password.
    expect(verifier.verify('erp-batch', new TextEncoder().encode('change-me-not-a-real-password'))).toBe(true);
  });
});
