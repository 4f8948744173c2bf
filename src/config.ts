/**
 * Configuration: argv + environment (+ an optional YAML/JSON file) parsed and
 * validated once, at the edge, into a frozen typed object. Nothing else in the
 * sidecar reads `process.env`.
 *
 * Precedence: command-line flag > environment variable > config file > default.
 * Every problem is collected and reported at once (`ConfigError`, exit code 2).
 */
import { statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { isIP, isIPv6 } from 'node:net';
import { dirname, isAbsolute, resolve } from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import type { ClientCertSource, CredentialSource, CredentialSpec } from './credentials.js';
import type { OutboundNetwork } from './dispatcher.js';
import { hasDotSegment } from './dot-segment.js';
import { endpointUrl } from './endpoint-url.js';
import { ConfigError, PORT_ZERO_PROBLEM, shownAddress, shownSource, type ConfigProblem } from './errors.js';
import { exposureOf, exposureProblems, normalAddress, parseAllowlist } from './inbound-control.js';
import { parseCertificates, PemError } from './pem.js';
import { jsonPosition, readFailure, readTextFileSync, withoutBom } from './text-file.js';
import type { TokenAuthMethod, TokenRequestSettings } from './token-client.js';

export const COMMANDS = ['serve', 'token', 'check'] as const;
export type Command = (typeof COMMANDS)[number];

export const DEFAULT_LISTEN = '127.0.0.1:8080';
export const DEFAULT_ADMIN_LISTEN = '127.0.0.1:9090';
/** Kubernetes removes endpoints asynchronously: keep serving this long after SIGTERM. */
export const DEFAULT_SHUTDOWN_DELAY_MS = 5_000;
/** In-flight requests get this long to finish; below the default 30 s terminationGracePeriodSeconds. */
export const DEFAULT_SHUTDOWN_GRACE_MS = 20_000;
export const LOG_FORMATS = ['auto', 'json', 'pretty'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];
export const DEFAULT_TOKEN_TIMEOUT_MS = 10_000;
export const DEFAULT_CONNECT_TIMEOUT_MS = 5_000;
export const DEFAULT_RESPONSE_TIMEOUT_MS = 60_000;
export const DEFAULT_IDLE_TIMEOUT_MS = 60_000;
export const DEFAULT_MAX_REPLAY_BODY_BYTES = 1024 * 1024;
/** 64 MiB: 64 concurrent bodies at the default per-request limit of 1 MiB, far more small ones. */
export const DEFAULT_REPLAY_MEMORY_BYTES = 64 * 1024 * 1024;
/** 1024 senders at once: far above what a sidecar's legacy senders open, far below any descriptor limit node runs with. */
export const DEFAULT_MAX_CONNECTIONS = 1024;
/** Node timers hold at most 2^31−1 ms (~24.8 days): a longer delay fires after 1 ms or throws a RangeError. */
export const MAX_TIMER_MS = 2_147_483_647;
/** The replay copy of a request body is held in memory, per request: more than 1 GiB is a mistake. */
export const MAX_REPLAY_BODY_BYTES = 1024 * 1024 * 1024;
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export interface RouteTimeouts {
  /**
   * TCP + TLS handshake to the upstream; through HTTPS_PROXY, each of: the connection to the proxy, its answer to
   * the CONNECT, TLS through the tunnel.
   */
  connectMs: number;
  /** Until the upstream's response headers arrive. */
  responseMs: number;
  /** Longest silence between body chunks, either way. */
  idleMs: number;
}

export interface RouteConfig {
  name: string;
  /** Path prefix this route serves: starts with `/`, no trailing `/` unless it is the root `/` (`routePath`). */
  prefix: string;
  /** Upstream origin+base path; undefined means the service key's `url`. */
  upstream: string | undefined;
  /** Replaces `prefix` in the forwarded path when set; no trailing `/` unless it is the root `/` (`routePath`). */
  rewritePrefix: string | undefined;
  credentials: CredentialSpec;
  token: TokenRequestSettings;
  csrf: 'auto' | 'off';
  timeouts: RouteTimeouts;
  maxReplayBodyBytes: number;
}

export interface InboundConfig {
  basicAuthFile: string | undefined;
  /** Where `basicAuthFile` was named (`--basic-auth-file`, `SIDECAR_BASIC_AUTH_FILE`, `inbound.basicAuthFile`), for its problems. */
  basicAuthFileSetting?: string;
  allowCidrs: readonly string[];
  allowAnySender: boolean;
  /** Host names (or addresses) a loopback-only listener accepts beyond loopback addresses, `localhost` and `*.localhost` (web-page guard). */
  allowHosts: readonly string[];
}

export interface Config {
  command: Command;
  listen: { host: string; port: number };
  /** Admin listener (health, readiness, metrics); undefined when `off`. */
  adminListen: { host: string; port: number } | undefined;
  shutdownDelayMs: number;
  shutdownGraceMs: number;
  /** What all kept request-body copies (for a resend after a 401 or CSRF 403) may hold together. */
  maxReplayMemoryBytes: number;
  /** Sender connections served at once; one accepted beyond them is answered 503 and closed. 0: no limit of its own (as many as the open-file limit carries, see `sidecar.ts`). */
  maxConnections: number;
  logFormat: LogFormat;
  inbound: InboundConfig;
  network: OutboundNetwork;
  /** Paths of the `--ca` files, for messages. */
  caFiles: readonly string[];
  /** `NODE_EXTRA_CA_CERTS` as set (node's own addition to its CA store), for messages. */
  nodeExtraCaFile: string | undefined;
  tokenTimeoutMs: number;
  logLevel: LogLevel;
  /** Where the routes came from: a config file path or `flags`. */
  routesSource: string;
  routes: readonly RouteConfig[];
  /** `token`/`check` commands: which route. */
  routeName: string | undefined;
  /** `check`: the upstream path to call and the role to look for. */
  checkPath: string | undefined;
  checkRole: string | undefined;
}

export type Env = Readonly<Record<string, string | undefined>>;

/** What `cli` gets back: either a config, or a request for help/version. */
export type ParseResult = { kind: 'run'; config: Readonly<Config> } | { kind: 'help' } | { kind: 'version' };

interface FlagSpec {
  type: 'string' | 'boolean';
  multiple?: boolean;
  env?: string;
  description: string;
  default?: string;
  /** Only meaningful without --config (describes the single route): the route's key that a config file takes instead. */
  route?: string;
  /** A file or directory path: content given instead (a PEM, a key's JSON) is refused without being echoed. */
  path?: boolean;
  /** A one-letter alias (`-h`). */
  short?: string;
}

/** Every flag, its environment variable and default: the single source for parsing and `--help`. */
export const FLAGS: Readonly<Record<string, FlagSpec>> = {
  'service-key': { type: 'string', env: 'SIDECAR_SERVICE_KEY', route: 'serviceKey', path: true, description: 'service key JSON file or secret directory' },
  binding: { type: 'string', env: 'SIDECAR_BINDING', route: 'serviceKey', description: 'binding to use: an instance name or service label in VCAP_SERVICES, a binding directory name under $SERVICE_BINDING_ROOT or a --service-key directory of bindings (default: the it-rt one)' },
  'client-cert': { type: 'string', env: 'SIDECAR_CLIENT_CERT', route: 'clientCert', path: true, description: 'client certificate PEM file (External Certificate keys)' },
  'client-key': { type: 'string', env: 'SIDECAR_CLIENT_KEY', route: 'clientKey', path: true, description: 'private key PEM file of --client-cert' },
  'client-tls-dir': { type: 'string', env: 'SIDECAR_CLIENT_TLS_DIR', route: 'clientTlsDir', path: true, description: 'kubernetes.io/tls secret directory (tls.crt, tls.key)' },
  'token-auth': { type: 'string', env: 'SIDECAR_TOKEN_AUTH', route: 'tokenAuth', default: 'basic', description: 'client authentication for ClientId/Secret keys: basic | post' },
  scope: { type: 'string', env: 'SIDECAR_SCOPE', route: 'scope', description: 'scope parameter of the token request' },
  resource: { type: 'string', env: 'SIDECAR_RESOURCE', route: 'resource', description: 'resource parameter (RFC 8707)' },
  audience: { type: 'string', env: 'SIDECAR_AUDIENCE', route: 'audience', description: 'audience parameter' },
  'token-param': { type: 'string', multiple: true, env: 'SIDECAR_TOKEN_PARAMS', route: 'tokenParams', description: 'extra token parameter NAME=VALUE (repeatable; env: form-encoded a=1&b=2)' },
  upstream: { type: 'string', env: 'SIDECAR_UPSTREAM', route: 'upstream', description: "upstream URL (default: the service key's url)" },
  csrf: { type: 'string', env: 'SIDECAR_CSRF', route: 'csrf', default: 'auto', description: 'CSRF token handling: auto | off' },
  'upstream-timeout': { type: 'string', env: 'SIDECAR_UPSTREAM_TIMEOUT', route: 'timeouts.responseMs', default: String(DEFAULT_RESPONSE_TIMEOUT_MS), description: 'ms to wait for upstream response headers' },
  'max-replay-body': { type: 'string', env: 'SIDECAR_MAX_REPLAY_BODY', route: 'maxReplayBodyBytes', default: String(DEFAULT_MAX_REPLAY_BODY_BYTES), description: 'bytes of request body kept to replay after a 401/CSRF 403' },
  'max-replay-memory': { type: 'string', env: 'SIDECAR_MAX_REPLAY_MEMORY', default: String(DEFAULT_REPLAY_MEMORY_BYTES), description: 'bytes all requests\' kept body copies may hold together (a body that does not fit is not replayable)' },
  'max-connections': { type: 'string', env: 'SIDECAR_MAX_CONNECTIONS', default: String(DEFAULT_MAX_CONNECTIONS), description: 'sender connections served at once; a request on one beyond them gets 503 and its connection is closed (0: as many as the open-file limit carries)' },
  config: { type: 'string', env: 'SIDECAR_CONFIG', path: true, description: 'routes file (YAML or JSON)' },
  route: { type: 'string', description: 'token, check: the route to use (default: token the first, check all)' },
  'check-path': { type: 'string', description: 'check: upstream path to GET, after the upstream URL\'s own path (default /http/; /api/v1/ on an API host; / when the upstream URL has a path)' },
  'check-role': { type: 'string', description: 'check: role the token must carry (default ESBMessaging.send; none on an API host)' },
  listen: { type: 'string', env: 'SIDECAR_LISTEN', default: DEFAULT_LISTEN, description: 'HOST:PORT of the proxy listener' },
  'admin-listen': { type: 'string', env: 'SIDECAR_ADMIN_LISTEN', default: DEFAULT_ADMIN_LISTEN, description: 'HOST:PORT of /healthz, /readyz, /metrics, or off' },
  'shutdown-delay': { type: 'string', env: 'SIDECAR_SHUTDOWN_DELAY', default: String(DEFAULT_SHUTDOWN_DELAY_MS), description: 'ms to keep serving after SIGTERM while readiness fails' },
  'shutdown-grace': { type: 'string', env: 'SIDECAR_SHUTDOWN_GRACE', default: String(DEFAULT_SHUTDOWN_GRACE_MS), description: 'ms in-flight requests get to finish before connections are cut' },
  'basic-auth-file': { type: 'string', env: 'SIDECAR_BASIC_AUTH_FILE', path: true, description: 'inbound basic auth: file of user:password or user:sha256:<hex> lines' },
  'allow-cidr': { type: 'string', multiple: true, env: 'SIDECAR_ALLOW_CIDRS', description: 'inbound allowlist of sender addresses (repeatable; env: comma-separated)' },
  'allow-any-sender': { type: 'boolean', env: 'SIDECAR_ALLOW_ANY_SENDER', description: 'accept any sender on a non-loopback listener' },
  'allow-host': { type: 'string', multiple: true, env: 'SIDECAR_ALLOW_HOSTS', description: 'a Host name (or address) loopback-only senders may use besides loopback addresses, localhost and *.localhost (repeatable; env: comma-separated)' },
  ca: { type: 'string', multiple: true, env: 'SIDECAR_CA', path: true, description: 'extra CA certificate PEM file to trust (repeatable; env: comma-separated)' },
  'token-timeout': { type: 'string', env: 'SIDECAR_TOKEN_TIMEOUT', default: String(DEFAULT_TOKEN_TIMEOUT_MS), description: 'ms for one token request attempt' },
  'log-level': { type: 'string', env: 'SIDECAR_LOG_LEVEL', default: 'info', description: LOG_LEVELS.join(' | ') },
  'log-format': { type: 'string', env: 'SIDECAR_LOG_FORMAT', default: 'auto', description: 'json | pretty | auto (pretty on a terminal)' },
  help: { type: 'boolean', short: 'h', description: 'show this help' },
  version: { type: 'boolean', description: 'show the version' },
};

/** Flags only some commands read. */
const COMMAND_FLAGS: Readonly<Record<string, readonly Command[]>> = { route: ['token', 'check'], 'check-path': ['check'], 'check-role': ['check'] };

/** The `route` label of requests answered before a route was found (metrics); no route may take it. */
export const UNROUTED = 'none';

/** Parse argv (without node and script) and the environment into a frozen Config. */
export function parseConfig(argv: readonly string[], env: Env, readFile: (path: string, kind?: 'pem') => string = readText): ParseResult {
  const problems: ConfigProblem[] = [];
  let parsed: ReturnType<typeof parseArgs>;
  try {
    const options: ParseArgsConfig['options'] = {};
    for (const [name, spec] of Object.entries(FLAGS)) {
      options[name] = { type: spec.type, ...(spec.multiple && { multiple: true }), ...(spec.short && { short: spec.short }) };
    }
    parsed = parseArgs({ args: [...argv], options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new ConfigError([argumentProblem(err)]);
  }
  const values = parsed.values as Record<string, string | boolean | string[] | undefined>;
  if (values['help']) return { kind: 'help' };
  if (values['version']) return { kind: 'version' };

  const [commandArg, ...extra] = parsed.positionals;
  // `oauth-sidecar help` and `oauth-sidecar version`, as other tools take them.
  if (commandArg === 'help' && extra.length === 0) return { kind: 'help' };
  if (commandArg === 'version' && extra.length === 0) return { kind: 'version' };
  if (commandArg === 'demo') {
    // The demo has flags of its own (cli.ts); it is recognised only as the first argument.
    throw new ConfigError([{ source: 'command line', field: '', message: 'demo must come first, its flags after it (oauth-sidecar demo --listen 127.0.0.1:18080)' }]);
  }
  const command = (commandArg ?? 'serve') as Command;
  if (!COMMANDS.includes(command)) {
    // Positionals are not echoed: a value split off its flag by a space may be a secret. Alone, as what the
    // other problems would be depends on the command meant.
    const near = nearest(commandArg!, [...COMMANDS, 'demo']);
    const message = `unknown command${near ? ` (did you mean ${near}?)` : ''}; the commands are ${[...COMMANDS, 'demo'].join(', ')}`;
    throw new ConfigError([{ source: 'command line', field: '', message }]);
  }
  if (extra.length > 0) {
    // A command name is safe to show; any other word may be a secret's value split off its flag.
    const commands = extra.filter((word) => (COMMANDS as readonly string[]).includes(word) || word === 'demo');
    const message =
      commands.length > 0
        ? `one command at a time: ${command} is given, and ${commands.join(', ')} after it`
        : `unexpected argument after the command: ${extra.length === 1 ? 'a word' : `${extra.length} words`} not belonging to a flag (not shown; a value with spaces needs quotes)`;
    problems.push({ source: 'command line', field: '', message });
  }

  // `--service-key "$KEY"` with KEY unset: the empty value would fall back to another source, or to a default.
  // Alone, as a flag the parser cannot read is: what else is wrong depends on the value meant.
  const empty = Object.entries(values).filter(([, value]) => (Array.isArray(value) ? value : [value]).some((v) => typeof v === 'string' && v.trim() === ''));
  if (empty.length > 0) {
    const message = 'is empty (an unset shell variable?): give a value, or leave the flag out';
    throw new ConfigError(empty.map(([name]) => ({ source: 'command line', field: `--${name}`, message })));
  }
  problems.push(...misspeltVariables(env));
  const read = new Reader(values, withoutContentForPaths(values, env, problems), problems);
  // A flag another command reads would be ignored without a word (`serve --route orders` serves every route).
  for (const [name, commands] of Object.entries(COMMAND_FLAGS)) {
    if (values[name] !== undefined && COMMANDS.includes(command) && !commands.includes(command)) {
      problems.push({ source: `--${name}`, field: name, message: `is read by ${commands.join(' and ')} only, not by ${command}` });
    }
  }
  const caFiles = read.list('ca');
  // Node reads NODE_EXTRA_CA_CERTS itself, into its shared store; the copy of that store --ca is added to does
  // not hold it on node 20: with --ca, read it here, the edge, so that the dispatcher can add it again (and a
  // broken file fails now, not as "not trusted" later). Without --ca node's own store is used as it is, and the
  // file is node's business.
  const nodeExtraCaFile = env['NODE_EXTRA_CA_CERTS'] || undefined;
  const extraCaFile = caFiles.length > 0 ? nodeExtraCaFile : undefined;
  let extraCaPem: string | undefined;
  if (extraCaFile !== undefined && isSpecialFile(extraCaFile)) {
    // Node read it at start, and a pipe gives its content once: read again, it would wait and give nothing.
    const message = 'is a pipe (or device), which node read at start and cannot be read again: beside --ca, give it as a regular file, or its CAs as another --ca';
    problems.push({ source: extraCaFile, field: 'NODE_EXTRA_CA_CERTS', message });
  } else if (extraCaFile !== undefined) {
    extraCaPem = readCa(extraCaFile, 'NODE_EXTRA_CA_CERTS', readFile, problems);
  }
  const caField = read.sourceOf('ca');
  const network: OutboundNetwork = {
    ca: caFiles.map((file) => readCa(file, caField, readFile, problems)).filter((pem): pem is string => pem !== undefined),
    ...(extraCaFile !== undefined && extraCaPem !== undefined && { extraCaCerts: { file: extraCaFile, pem: extraCaPem } }),
    httpsProxy: parseHttpsProxy(env, problems),
    // As for https_proxy: an empty lower-case variable does not hide the upper-case one.
    noProxy: parseNoProxy(env),
  };

  const configFile = read.string('config');
  let file: FileConfig | undefined;
  if (configFile) file = readConfigFile(configFile, read.sourceOf('config'), readFile, problems);

  const listenText = read.string('listen') ?? file?.listen ?? DEFAULT_LISTEN;
  const listenSource = read.has('listen') ? read.sourceOf('listen') : (configFile ?? 'default');
  const listen = parseListen(listenText, 'listen', listenSource, problems);
  const adminText = read.string('admin-listen') ?? file?.adminListen ?? DEFAULT_ADMIN_LISTEN;
  const adminSource = read.has('admin-listen') ? read.sourceOf('admin-listen') : (configFile ?? 'default');
  const adminListen = adminText === 'off' ? undefined : parseListen(adminText, 'admin-listen', adminSource, problems);
  // Only two listeners that parsed: a malformed one must not add a clash of its own.
  if (listen && adminListen && sharesPort(listen, adminListen)) {
    // Else the second bind fails with EADDRINUSE, which reads as another process holding the port.
    problems.push({ source: adminSource, field: 'admin-listen', message: `takes the port of listen (${listenText.trim()}): the admin endpoints need a port of their own` });
  }
  const logFormat = read.string('log-format') ?? 'auto';
  if (!(LOG_FORMATS as readonly string[]).includes(logFormat)) {
    problems.push({ source: read.sourceOf('log-format'), field: 'log-format', message: `must be one of ${LOG_FORMATS.join(', ')}` });
  }
  const basicAuthFile = read.string('basic-auth-file') ?? file?.inbound?.basicAuthFile;
  // An empty `inbound.basicAuthFile` would pass for inbound control and turn none on (an empty flag is reported above).
  if (basicAuthFile === '' && !read.has('basic-auth-file')) {
    problems.push({ source: configFile ?? '', field: 'inbound.basicAuthFile', message: 'is empty: give the path of the user list' });
  }
  const inbound: InboundConfig = {
    basicAuthFile: basicAuthFile || undefined,
    basicAuthFileSetting: read.has('basic-auth-file') ? read.sourceOf('basic-auth-file') : 'inbound.basicAuthFile',
    allowCidrs: read.has('allow-cidr') ? read.list('allow-cidr') : (file?.inbound?.allowCidrs ?? []),
    allowAnySender: read.boolean('allow-any-sender') ?? file?.inbound?.allowAnySender ?? false,
    allowHosts: read.has('allow-host')
      ? hostNames(read.list('allow-host'), read.sourceOf('allow-host'), 'allow-host', problems)
      : hostNames(file?.inbound?.allowHosts ?? [], configFile ?? '', 'inbound.allowHosts', problems),
  };
  // Checked here, where each value's source is known, so that `check` sees them too.
  const [cidrSource, cidrField] = read.has('allow-cidr') ? [read.sourceOf('allow-cidr'), 'allow-cidr'] : [configFile ?? '', 'inbound.allowCidrs'];
  // An allowlist given empty refuses every sender: a problem, not the same as none given (`SIDECAR_ALLOW_CIDRS=,`).
  if (inbound.allowCidrs.length > 0 || file?.inbound?.allowCidrs !== undefined || read.has('allow-cidr')) {
    try {
      parseAllowlist(inbound.allowCidrs, cidrSource, cidrField);
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      problems.push(...err.problems);
    }
    if (inbound.allowAnySender) problems.push({ source: cidrSource, field: cidrField, message: 'cannot be combined with allowAnySender (allow-any-sender)' });
  }
  // The `Host` check guards loopback-only listeners (inbound-control `LoopbackHostCheck`); beside any other sender
  // rule it does not run, and a name allowed for it would be silently ignored.
  if (inbound.allowHosts.length > 0) {
    const given = (flag: string, field: string): string => (read.has(flag) ? read.sourceOf(flag) : field);
    const opener =
      inbound.allowCidrs.length > 0
        ? given('allow-cidr', 'inbound.allowCidrs')
        : inbound.allowAnySender
          ? given('allow-any-sender', 'inbound.allowAnySender')
          : inbound.basicAuthFile
            ? inbound.basicAuthFileSetting
            : undefined;
    if (opener) {
      const [source, field] = read.has('allow-host') ? [read.sourceOf('allow-host'), 'allow-host'] : [configFile ?? '', 'inbound.allowHosts'];
      problems.push({
        source,
        field,
        message: `has no effect with ${opener}: the Host check runs only when loopback senders alone are let in (no allowlist, basic auth or allow-any-sender); leave it out`,
      });
    }
  }
  // Only `serve` (and `demo`, which runs it) listens for senders. `token` and `check` must run where the
  // image's 0.0.0.0 listener has no inbound control yet; `check` reports it instead (check.ts `describeInbound`).
  if (command === 'serve' && listen) {
    problems.push(...exposureProblems(listen.host, exposureOf(inbound), listenSource, 'listen', { configFile: Boolean(configFile) }));
  }

  let routes: RouteConfig[];
  let routesSource: string;
  if (configFile) {
    // A message shows the file's path only as a problem's source would (`shownSource`): it may be a pasted secret.
    const fileShown = shownSource(configFile) === configFile ? configFile : 'the config file';
    // A route setting given beside the file would be silently ignored: say so instead, flag or variable.
    for (const name of Object.keys(FLAGS).filter((n) => FLAGS[n]?.route && read.has(n))) {
      const flag = values[name] !== undefined;
      problems.push({
        source: flag ? 'command line' : 'environment',
        field: flag ? `--${name}` : FLAGS[name]!.env!,
        // A route has no `binding` key: its serviceKey names the one binding's directory itself.
        message:
          name === 'binding'
            ? `cannot be combined with --config; point the route's serviceKey in ${fileShown} at the binding's own directory`
            : `cannot be combined with --config; set the route's ${FLAGS[name]!.route} in ${fileShown}`,
      });
    }
    if (env['SIDECAR_SERVICE_KEY_JSON']) {
      problems.push({
        source: 'environment',
        field: 'SIDECAR_SERVICE_KEY_JSON',
        message: `cannot be combined with --config; give each route its serviceKey in ${fileShown}`,
      });
    }
    // A file that could not be read has reported why; no fallback to flags, whose problems would be noise.
    routes = file?.routes ?? [];
    routesSource = configFile;
  } else {
    routes = [singleRoute(read, env, problems)];
    routesSource = 'flags';
  }
  routes = normaliseRoutePaths(routes, routesSource, problems);

  const logLevel = read.string('log-level') ?? file?.logLevel ?? 'info';
  if (!(LOG_LEVELS as readonly string[]).includes(logLevel)) {
    const [source, field] = read.has('log-level') ? [read.sourceOf('log-level'), 'log-level'] : [configFile ?? 'default', 'logLevel'];
    problems.push({ source, field, message: `must be one of ${LOG_LEVELS.join(', ')}` });
  }
  const routeName = read.string('route');
  // Without routes (an unreadable file) there is nothing to look the name up in; refused for this command
  // (`serve --route`), it is not looked up either: one mistake, one message.
  const routeRefused = problems.some((p) => p.field === 'route');
  if (routeName !== undefined && !routeRefused && routes.length > 0 && !routes.some((r) => r.name === routeName)) {
    problems.push({ source: '--route', field: 'route', message: `no route named "${routeName}" (routes: ${routes.map((r) => r.name).join(', ')})` });
  }
  const tokenTimeoutMs = read.integer('token-timeout', ms(1)) ?? DEFAULT_TOKEN_TIMEOUT_MS;
  const checkPath = read.string('check-path');
  if (checkPath !== undefined && !checkPath.startsWith('/')) {
    problems.push({ source: '--check-path', field: 'check-path', message: 'must start with /' });
  } else if (checkPath !== undefined && !/^[\x21-\x7e]*$/.test(checkPath.replace(/#/g, ' '))) {
    // A request target has no spaces, controls, non-ASCII or fragment (RFC 9112 §3.2): they are percent-encoded.
    problems.push({ source: '--check-path', field: 'check-path', message: 'must be printable ASCII without spaces or # (percent-encode the rest, e.g. %20)' });
  }
  const shutdownDelayMs = read.integer('shutdown-delay', ms(0)) ?? DEFAULT_SHUTDOWN_DELAY_MS;
  const shutdownGraceMs = read.integer('shutdown-grace', ms(0)) ?? DEFAULT_SHUTDOWN_GRACE_MS;
  const maxReplayMemoryBytes = read.integer('max-replay-memory', REPLAY_MEMORY_BYTES) ?? DEFAULT_REPLAY_MEMORY_BYTES;
  const maxConnections = read.integer('max-connections', CONNECTIONS) ?? DEFAULT_MAX_CONNECTIONS;

  // (A listener that did not parse was reported.)
  if (problems.length > 0 || !listen) throw new ConfigError(problems);
  return {
    kind: 'run',
    config: deepFreeze({
      command,
      listen,
      adminListen,
      shutdownDelayMs,
      shutdownGraceMs,
      maxReplayMemoryBytes,
      maxConnections,
      logFormat: logFormat as LogFormat,
      inbound,
      network,
      caFiles,
      nodeExtraCaFile,
      tokenTimeoutMs,
      logLevel: logLevel as LogLevel,
      routesSource,
      routes,
      routeName,
      checkPath,
      checkRole: read.string('check-role'),
    }),
  };
}

/**
 * Why a route path could never work, or undefined: a request target is printable ASCII without spaces (RFC 9112
 * §3.2; senders percent-encode the rest, so `/ä` would never match), and a dot segment would be refused in a
 * request and leave the route upstream.
 */
function unusablePath(value: string, how: string): string | undefined {
  if (!/^[\x21-\x7e]*$/.test(value)) return `must be printable ASCII without spaces: it ${how}, so percent-encode the rest (e.g. %20, %C3%A4)`;
  if (hasDotSegment(value)) return 'must not hold a . or .. segment';
  return undefined;
}

/** The route a single-route invocation (flags and env only) describes. */
function singleRoute(read: Reader, env: Env, problems: ConfigProblem[]): RouteConfig {
  const binding = read.string('binding');
  const upstream = validUrl(read.string('upstream'), read.sourceOf('upstream'), 'upstream', problems);
  return {
    name: 'default',
    prefix: '/',
    upstream,
    rewritePrefix: undefined,
    credentials: {
      source: credentialSource(read, env, binding, problems),
      ...(upstream === undefined ? { needsUrl: true } : {}),
      ...optional(
        'clientCert',
        clientCertSource(
          { cert: read.string('client-cert'), key: read.string('client-key'), dir: read.string('client-tls-dir') },
          FLAG_CERT_NAMES,
          (name) => read.sourceOf(name),
          problems,
          { cert: read.sourceOf('client-cert'), key: read.sourceOf('client-key'), dir: read.sourceOf('client-tls-dir') },
        ),
      ),
    },
    token: {
      auth: tokenAuth(read.string('token-auth') ?? 'basic', read.sourceOf('token-auth'), 'token-auth', problems),
      scope: read.string('scope'),
      resource: read.string('resource'),
      audience: read.string('audience'),
      params: tokenParams(read, problems),
    },
    csrf: csrfMode(read.string('csrf') ?? 'auto', read.sourceOf('csrf'), 'csrf', problems),
    timeouts: {
      connectMs: DEFAULT_CONNECT_TIMEOUT_MS,
      responseMs: read.integer('upstream-timeout', ms(1)) ?? DEFAULT_RESPONSE_TIMEOUT_MS,
      idleMs: DEFAULT_IDLE_TIMEOUT_MS,
    },
    maxReplayBodyBytes: read.integer('max-replay-body', BODY_BYTES) ?? DEFAULT_MAX_REPLAY_BODY_BYTES,
  };
}

/** Where the service key comes from, in order: flag, SIDECAR_SERVICE_KEY, SIDECAR_SERVICE_KEY_JSON, servicebinding.io, VCAP_SERVICES, VCAP_SERVICES_FILE_PATH. */
function credentialSource(read: Reader, env: Env, binding: string | undefined, problems: ConfigProblem[]): CredentialSource {
  const path = read.string('service-key');
  if (path) return { kind: 'path', path, from: read.sourceOf('service-key'), ...optional('binding', binding) };
  const json = env['SIDECAR_SERVICE_KEY_JSON'];
  if (json) {
    if (binding !== undefined) {
      const message = 'picks one of several bindings (below --service-key DIR, SERVICE_BINDING_ROOT or in VCAP_SERVICES): SIDECAR_SERVICE_KEY_JSON is one key, so leave it out';
      problems.push({ source: read.sourceOf('binding'), field: 'binding', message });
    }
    return { kind: 'inline', json, label: 'SIDECAR_SERVICE_KEY_JSON' };
  }
  const root = env['SERVICE_BINDING_ROOT'];
  if (root) return { kind: 'binding-root', root, ...optional('binding', binding) };
  const vcap = env['VCAP_SERVICES'];
  if (vcap) return { kind: 'vcap', json: vcap, ...optional('binding', binding) };
  const vcapFile = env['VCAP_SERVICES_FILE_PATH'];
  if (vcapFile) {
    if (isContent(vcapFile)) {
      const message = 'holds JSON, not a path: the bindings\' JSON itself belongs in VCAP_SERVICES; the value is not shown';
      problems.push({ source: 'VCAP_SERVICES_FILE_PATH', field: 'VCAP_SERVICES_FILE_PATH', message });
    }
    return { kind: 'vcap-file', path: vcapFile, ...optional('binding', binding) };
  }
  problems.push({
    source: 'command line',
    field: '--service-key',
    message:
      'no service key: pass --service-key FILE|DIR, or set SIDECAR_SERVICE_KEY, SIDECAR_SERVICE_KEY_JSON, SERVICE_BINDING_ROOT, VCAP_SERVICES or VCAP_SERVICES_FILE_PATH',
  });
  return { kind: 'path', path: '' };
}

/** What the three client-certificate settings are called where they were given: flags, or a route's keys. */
interface CertNames {
  cert: string;
  key: string;
  dir: string;
}

const FLAG_CERT_NAMES: CertNames = { cert: 'client-cert', key: 'client-key', dir: 'client-tls-dir' };

/**
 * `names`: the settings as problems name them; `shown`: as a problem about a file itself will (`--client-cert` or
 * `SIDECAR_CLIENT_CERT` for a flag's `client-cert`; a route's keys are both).
 */
function clientCertSource(
  given: { cert: string | undefined; key: string | undefined; dir: string | undefined },
  names: CertNames,
  sourceOf: (name: string) => string,
  problems: ConfigProblem[],
  shown: CertNames = names,
): ClientCertSource | undefined {
  const { cert: certFile, key: keyFile, dir: tlsDir } = given;
  if (tlsDir && (certFile || keyFile)) {
    problems.push({ source: sourceOf(names.dir), field: names.dir, message: `use either a TLS secret directory or ${names.cert}/${names.key}, not both` });
  }
  if (tlsDir) return { kind: 'tls-dir', dir: tlsDir, names: shown };
  if (certFile && keyFile) return { kind: 'files', certFile, keyFile, names: shown };
  if (certFile || keyFile) {
    const [has, lacks] = certFile ? [names.cert, names.key] : [names.key, names.cert];
    problems.push({ source: sourceOf(has), field: lacks, message: `is missing: ${has} needs it (a client certificate and its key go together)` });
  }
  return undefined;
}

function tokenAuth(value: string, source: string, field: string, problems: ConfigProblem[]): TokenAuthMethod {
  if (value === 'basic' || value === 'post') return value;
  problems.push({ source, field, message: `must be basic or post${shownWord(value)}` });
  return 'basic';
}

function csrfMode(value: string, source: string, field: string, problems: ConfigProblem[]): 'auto' | 'off' {
  if (value === 'auto' || value === 'off') return value;
  problems.push({ source, field, message: `must be auto or off${shownWord(value)}` });
  return 'auto';
}

/**
 * node's parseArgs errors in this command's words: the flag as the field, what is wrong with it, and the
 * flag probably meant (parseArgs names only the flag, never its value).
 */
function argumentProblem(err: unknown): ConfigProblem {
  const text = (err as Error).message;
  const problem = (field: string, message: string): ConfigProblem => ({ source: 'command line', field, message });
  // "Unknown option '--x'…", "Option '--x <value>' argument missing", "Option '-h, --help' does not take…"
  const flag = /^(?:Unknown option|Option) '(?:-\w, )?(-{1,2}[^' ]+)/.exec(text)?.[1];
  if (flag === undefined) return problem('', text);
  if (text.startsWith('Unknown option')) {
    const near = nearest(flag.replace(/^--?/, ''), Object.keys(FLAGS));
    return problem(flag, `unknown flag${near ? ` (did you mean --${near}?)` : ''}; oauth-sidecar --help lists them`);
  }
  if (text.includes('argument missing')) return problem(flag, `needs a value: ${flag} VALUE`);
  if (text.includes('ambiguous')) return problem(flag, `needs a value, and the next argument starts with "-": a value that does, goes as ${flag}=VALUE`);
  if (text.includes('does not take an argument')) return problem(flag, 'takes no value');
  return problem('', text);
}

/**
 * `SIDECAR_…` variables a typo away from one the sidecar reads (`SIDECAR_ALLOW_CIDR` for `SIDECAR_ALLOW_CIDRS`):
 * ignored, they would leave a setting at its default without a word, an allowlist among them. Others are left
 * alone: Kubernetes gives every container `SIDECAR_SERVICE_HOST`, `SIDECAR_PORT`… for a Service named `sidecar`.
 */
function misspeltVariables(env: Env): ConfigProblem[] {
  const prefix = 'SIDECAR_';
  // A typo is measured on the name's own part: `SIDECAR_IP` is no misspelt `SIDECAR_CA`.
  const known = [...Object.values(FLAGS).flatMap((spec) => (spec.env ? [spec.env] : [])), 'SIDECAR_SERVICE_KEY_JSON'].map((k) => k.slice(prefix.length));
  const problems: ConfigProblem[] = [];
  for (const name of Object.keys(env)) {
    if (!name.startsWith(prefix) || known.includes(name.slice(prefix.length)) || SERVICE_LINK.test(name)) continue;
    const near = nearest(name.slice(prefix.length), known);
    if (near !== undefined) problems.push({ source: 'environment', field: name, message: `is not a variable the sidecar reads: did you mean ${prefix}${near}?` });
  }
  return problems;
}

/** Kubernetes' service links (`<SERVICE>_SERVICE_HOST`, `…_PORT_8080_TCP_ADDR`) and Docker's links (`…_NAME`, `…_ENV_…`). */
const SERVICE_LINK = /_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)(_\w+)?)?|NAME|ENV_\w+)$/;

/** The candidate within two edits of `word` (one for a short word: a typo), if exactly one is nearest. */
function nearest(word: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = 3;
  let tie = false;
  for (const candidate of candidates) {
    const d = editDistance(word, candidate);
    if (d < bestDistance) [best, bestDistance, tie] = [candidate, d, false];
    else if (d === bestDistance) tie = true;
  }
  return tie || bestDistance > (word.length <= 5 ? 1 : 2) ? undefined : best;
}

/** Levenshtein distance (insertions, deletions, substitutions). */
function editDistance(a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const next = [i];
    for (let j = 1; j <= b.length; j++) next[j] = Math.min(row[j]! + 1, next[j - 1]! + 1, row[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    row = next;
  }
  return row[b.length]!;
}

/** `, not "x"` for a short plain word (a misspelt choice); nothing for anything that might be a pasted secret. */
function shownWord(value: string): string {
  return /^[A-Za-z0-9_-]{1,20}$/.test(value) ? `, not "${value}"` : '';
}

function tokenParams(read: Reader, problems: ConfigProblem[]): Record<string, string> {
  const params: Record<string, string> = {};
  const fromFlags = read.flagList('token-param');
  // Flags are NAME=VALUE as given; the variable is form-encoded (a=1&b=2), each pair decoded on its own.
  const raw = fromFlags ?? (read.envValue('token-param') ?? '').split('&').filter(Boolean);
  for (const text of raw) {
    const [name, value] = splitParam(text, fromFlags === undefined);
    if (!name) problems.push({ source: read.sourceOf('token-param'), field: 'token-param', message: notNameValue(text) });
    else if (RESERVED_PARAMS.has(name)) problems.push({ source: read.sourceOf('token-param'), field: 'token-param', message: `${name} is set by the sidecar` });
    else if (OWN_SETTING_PARAMS.has(name) && read.string(name) && read.string(name) !== value) {
      // Which would win is no choice to leave to the order the request is built in.
      problems.push({ source: read.sourceOf('token-param'), field: 'token-param', message: `${name} is set by ${read.sourceOf(name)} to another value: give it once` });
    } else params[name] = value;
  }
  return params;
}

const RESERVED_PARAMS = new Set(['grant_type', 'client_id', 'client_secret']);
/** Token request parameters with a setting of their own (`--scope`, a route's `scope`…). */
const OWN_SETTING_PARAMS = new Set(['scope', 'resource', 'audience']);

/** `NAME=VALUE` as given on a flag, or form-decoded from the variable; no name without a `=` after one. */
function splitParam(text: string, formEncoded: boolean): [string, string] {
  const at = text.indexOf('=');
  if (at < 1) return ['', ''];
  if (!formEncoded) return [text.slice(0, at), text.slice(at + 1)];
  return [...new URLSearchParams(text)][0] ?? ['', ''];
}

/** Names what came before a likely separator (`client_assertion:…`), never the rest: that may be the secret. */
function notNameValue(text: string): string {
  const name = /^([A-Za-z0-9_.-]+)[:\s]/.exec(text)?.[1];
  return name ? `"${name}…" is not NAME=VALUE` : 'is not NAME=VALUE';
}

/** Host names as a Host header carries them: lower case, no port; an IPv6 address, bare or bracketed, in its shortest form. */
function hostNames(names: readonly string[], source: string, field: string, problems: ConfigProblem[]): string[] {
  return names.flatMap((name, i) => {
    const host = name.trim().toLowerCase();
    const address = host.replace(/^\[(.*)\]$/, '$1');
    if (isIPv6(address) && !address.includes('%')) return [normalAddress(address)];
    if (/^[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?$/.test(host)) return [host];
    problems.push({ source, field: `${field}[${i}]`, message: 'must be a host name or address without port or scheme (e.g. erp-sidecar, 10.1.2.3 or fd00::2)' });
    return [];
  });
}

/** HOST:PORT, or undefined (reported) when it is none. */
function parseListen(text: string, field: string, source: string, problems: ConfigProblem[]): { host: string; port: number } | undefined {
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(text.trim());
  const host = match?.[1] ?? match?.[2];
  const port = match ? Number(match[3]) : NaN;
  if (!host || !(port >= 0 && port <= 65535) || (match?.[1] && isIP(match[1]) !== 6)) {
    problems.push({ source, field, message: `${shownAddress(text)} is not HOST:PORT (e.g. 127.0.0.1:8080, [::1]:8080, 0.0.0.0:8080)` });
    return undefined;
  }
  return { host, port };
}

/**
 * The address a listen host binds. `localhost` is 127.0.0.1: node binds a name's first address only, and where the
 * resolver puts `::1` first (glibc with both in /etc/hosts: Debian, Docker, the kubelet's) legacy senders calling
 * `127.0.0.1` would be refused. IPv6 loopback is `[::1]`, said as such.
 */
export function bindHost(host: string): string {
  return host.toLowerCase() === 'localhost' ? '127.0.0.1' : host;
}

/**
 * Whether two listeners would take the same port: the same host, or a wildcard covering the other (`::` both
 * families; `0.0.0.0` an IPv4 address — a name may resolve to IPv6, and is left to the bind).
 */
function sharesPort(a: { host: string; port: number }, b: { host: string; port: number }): boolean {
  if (a.port === 0 || a.port !== b.port) return false;
  const [x, y] = [bindHost(a.host), bindHost(b.host)];
  const covers = (wild: string, other: string) => wild === '::' || (wild === '0.0.0.0' && isIP(other) === 4);
  return x === y || covers(x, y) || covers(y, x);
}

function validUrl(value: string | undefined, source: string, field: string, problems: ConfigProblem[]): string | undefined {
  if (value === undefined) return undefined;
  const { url, problem } = endpointUrl(value, 'upstream');
  if (url === undefined) {
    problems.push({ source, field, message: problem });
    return undefined;
  }
  return url.origin + url.pathname.replace(/\/+$/, '');
}

/**
 * The routes with `prefix` and `rewritePrefix` as `routePath` has them, checking that no prefix or name is
 * used twice: `/a` and `/a/` serve the same paths (the longer would shadow the other), so they count as one.
 */
function normaliseRoutePaths(routes: readonly RouteConfig[], source: string, problems: ConfigProblem[]): RouteConfig[] {
  const seenPrefix = new Map<string, { at: number; prefix: string }>();
  const seenName = new Set<string>();
  routes.forEach((route, i) => {
    const key = routePath(route.prefix);
    const first = seenPrefix.get(key);
    if (first) {
      const same = first.prefix === route.prefix ? '' : ` (routes[${first.at}] has ${first.prefix}; a trailing / makes no difference)`;
      problems.push({ source, field: `routes[${i}].prefix`, message: `prefix ${route.prefix} is used twice${same}` });
    } else {
      seenPrefix.set(key, { at: i, prefix: route.prefix });
    }
    if (seenName.has(route.name)) problems.push({ source, field: `routes[${i}].name`, message: `name ${route.name} is used twice` });
    // The metrics' label for requests answered before a route was found: a route of that name would share it.
    if (route.name === UNROUTED) problems.push({ source, field: `routes[${i}].name`, message: `"${UNROUTED}" is kept for requests that match no route` });
    seenName.add(route.name);
  });
  return routes.map((route) => ({
    ...route,
    prefix: routePath(route.prefix),
    rewritePrefix: route.rewritePrefix === undefined ? undefined : routePath(route.rewritePrefix),
  }));
}

/**
 * A route path without trailing slashes, the root `/` aside: prefix `/orders/` serves `/orders` too, and a
 * trailing `/` on the sender's path (`/orders/`) is the sender's to keep, not the route's to add or drop.
 */
export function routePath(path: string): string {
  return path.replace(/\/+$/, '') || '/';
}

/**
 * `https_proxy` / `HTTPS_PROXY` (lower-case wins, as curl and undici have it) as the URL undici needs. `host:port`
 * alone means an http:// proxy, as curl takes it; anything else that is no http:// or https:// URL is a problem
 * here, named by its variable, not a failure when the first pool is made. The value is never quoted: it may carry
 * the proxy's credentials.
 */
function parseHttpsProxy(env: Readonly<Record<string, string | undefined>>, problems: ConfigProblem[]): string | undefined {
  const name = env['https_proxy'] ? 'https_proxy' : env['HTTPS_PROXY'] ? 'HTTPS_PROXY' : undefined;
  if (name === undefined) return undefined;
  const raw = env[name]!.trim();
  const schemeless = !/^[a-z][a-z0-9+.-]*:\/\//i.test(raw);
  const text = schemeless ? `http://${raw}` : raw;
  let url: URL | undefined;
  try {
    url = new URL(text);
  } catch {
    url = undefined;
  }
  if (url !== undefined && url.protocol !== 'http:' && url.protocol !== 'https:') {
    problems.push({ source: 'environment', field: name, message: `a ${url.protocol.slice(0, -1)}:// proxy is not supported: give http://host:port or https://host:port` });
    return undefined;
  }
  // Without a scheme, a port too: curl would take 1080 for none, a URL 80; say which rather than guess.
  if (url === undefined || !url.hostname || (schemeless && url.port === '' && !/:80\/?$/.test(raw))) {
    problems.push({ source: 'environment', field: name, message: 'is not a proxy address: give http://host:port, https://host:port or host:port' });
    return undefined;
  }
  // undici refuses these when the first pool is made: said here, by the variable, not as an "unexpected failure".
  const problem =
    url.pathname !== '/' || url.search !== '' || url.hash !== ''
      ? 'has a path, query or fragment (a PAC file is no proxy): give http://host:port or https://host:port'
      : !decodes(url.username) || !decodes(url.password)
        ? 'has a % in its user or password that starts no escape: write a literal % as %25'
        : url.port === '0'
          ? PORT_ZERO_PROBLEM
          : undefined;
  if (problem !== undefined) {
    problems.push({ source: 'environment', field: name, message: problem });
    return undefined;
  }
  return text;
}

function decodes(text: string): boolean {
  try {
    decodeURIComponent(text);
    return true;
  } catch {
    return false;
  }
}

/**
 * `no_proxy` / `NO_PROXY` (lower-case wins unless empty) for undici, which compares an entry with a URL's host as
 * text and reads `::1` as host `:` and port 1: an IPv6 address, written bare (as curl, Go and Docker take it) or
 * in brackets, with a port or not, is given as a URL writes it (`[::1]`, shortest form).
 */
function parseNoProxy(env: Readonly<Record<string, string | undefined>>): string | undefined {
  const value = env['no_proxy'] || env['NO_PROXY'];
  if (!value) return undefined;
  return value
    .split(/[,\s]/)
    .filter((entry) => entry !== '')
    .map((entry) => {
      const [address, port] = isIPv6(entry) ? [entry, undefined] : (/^\[([^\]]+)\](?::(\d+))?$/.exec(entry)?.slice(1) ?? []);
      // With a zone id (`fe80::1%eth0`, which isIPv6 takes) it is no URL host and can match none: left as given.
      if (address === undefined || !isIPv6(address) || address.includes('%')) return entry;
      return `[${normalAddress(address)}]${port === undefined ? '' : `:${port}`}`;
    })
    .join(',');
}

/** A FIFO (`<(cat ca.pem)`), socket or device: what cannot be read twice. A path that cannot be stat'ed is not. */
function isSpecialFile(path: string): boolean {
  try {
    const info = statSync(path);
    return !info.isFile() && !info.isDirectory();
  } catch {
    return false; // reported by the read
  }
}

/** A CA file whose every certificate must parse; `field` is where it was named (`--ca`, `SIDECAR_CA`, `NODE_EXTRA_CA_CERTS`). */
function readCa(file: string, field: string, readFile: (path: string, kind?: 'pem') => string, problems: ConfigProblem[]): string | undefined {
  if (file === CONTENT_GIVEN) return undefined;
  // Node starts with a warning only for a broken NODE_EXTRA_CA_CERTS; say what to do about it.
  const fix = field === 'NODE_EXTRA_CA_CERTS' ? ': fix the file or unset the variable' : '';
  let text: string;
  try {
    text = readFile(file, 'pem');
  } catch (err) {
    problems.push({ source: file, field, message: `${readFailure(err, 'CA file')}${fix}` });
    return undefined;
  }
  // Node's TLS stack skips what it cannot parse without a word: a broken anchor must fail here instead, and what
  // is handed on is the certificates as parsed (a JSON-escaped or indented PEM, which OpenSSL would not read
  // and so not trust, made plain; a private key beside them left out).
  try {
    return parseCertificates(text)
      .map((certificate) => certificate.toString())
      .join('');
  } catch (err) {
    if (!(err instanceof PemError)) throw err;
    problems.push({ source: file, field, message: `is not a PEM CA certificate file (${err.message})${fix}` });
    return undefined;
  }
}

// ---------------------------------------------------------------------------
// Config file

interface FileConfig {
  listen?: string;
  adminListen?: string;
  logLevel?: string;
  inbound?: Partial<InboundConfig>;
  routes: RouteConfig[];
}

const TOP_KEYS = new Set(['listen', 'adminListen', 'logLevel', 'inbound', 'routes']);
const INBOUND_KEYS = new Set(['basicAuthFile', 'allowCidrs', 'allowAnySender', 'allowHosts']);
const ROUTE_KEYS = new Set([
  'name', 'prefix', 'upstream', 'rewritePrefix', 'serviceKey', 'clientCert', 'clientKey', 'clientTlsDir',
  'tokenAuth', 'scope', 'resource', 'audience', 'tokenParams', 'csrf', 'timeouts', 'maxReplayBodyBytes',
]);
const TIMEOUT_KEYS = new Set(['connectMs', 'responseMs', 'idleMs']);

/**
 * The YAML parser, loaded on first use: most sidecars run on a service key and
 * flags alone, and it is 72 modules and ~0.8 MB of V8 heap they never need.
 */
function parseYaml(text: string, path: string, from: string, problems: ConfigProblem[]): unknown {
  const yaml = createRequire(import.meta.url)('yaml') as typeof import('yaml');
  // Never printed by the parser: its warnings quote the file's lines, and the file may hold secrets.
  const parsed = yaml.parseAllDocuments(text, { logLevel: 'silent' });
  const docs = Array.isArray(parsed) ? parsed : [];
  for (const d of docs) if (d.errors.length > 0) throw d.errors[0];
  // `---` between two documents: the second would be dropped without a word (a trailing empty one is harmless).
  const empty = (d: (typeof docs)[number]): boolean => d.contents === null || (yaml.isScalar(d.contents) && d.contents.value === null);
  const [doc = yaml.parseDocument(''), ...more] = docs.filter((d, i) => i === 0 || !empty(d));
  if (more.length > 0) {
    const line = more[0]!.range ? lineAt(text, more[0]!.range[0]) : undefined;
    problems.push({ source: path, field: from, message: `holds ${more.length + 1} YAML documents (the second from line ${line}); only one is supported: join them` });
  }
  // e.g. an unknown tag (`!secret …`), which the parser would drop, keeping the value as plain text.
  for (const warning of doc.warnings) {
    const line = warning.linePos?.[0]?.line;
    problems.push({ source: path, field: from, message: `YAML ${warning.code}${line ? ` at line ${line}` : ''}: not supported here (a tag such as !secret is not resolved)` });
  }
  try {
    return doc.toJS();
  } catch (err) {
    // The parser's guard against alias bombs (`maxAliasCount`, 100 by default): also met by a long file that
    // reuses one anchor in every route, which deserves better than "is not valid YAML".
    if (err instanceof ReferenceError && /^Excessive alias count/.test(err.message)) {
      throw Object.assign(new Error('aliases'), { code: 'EXCESSIVE_ALIASES' });
    }
    // `*name` without `&name` before it (a typo): the parser's message ends with the name, which is not shown.
    if (err instanceof ReferenceError && /^Unresolved alias/.test(err.message)) {
      throw Object.assign(new Error('alias'), { code: 'UNRESOLVED_ALIAS' });
    }
    throw err;
  }
}

/**
 * The line of a key given twice in one object of JSON `text`, or undefined. Read by the YAML parser, of which JSON is
 * a subset and which, unlike `JSON.parse`, reports duplicates; anything else it finds (JSON indented with tabs, which
 * YAML refuses) is no answer either way.
 */
function duplicateKeyLine(text: string): number | undefined {
  const yaml = createRequire(import.meta.url)('yaml') as typeof import('yaml');
  const doc = yaml.parseDocument(text, { logLevel: 'silent', uniqueKeys: true });
  return doc.errors.find((e) => e.code === 'DUPLICATE_KEY')?.linePos?.[0]?.line;
}

/** The 1-based line of `offset` in `text`. */
function lineAt(text: string, offset: number): number {
  let line = 1;
  for (let i = 0; i < offset && i < text.length; i++) if (text.charCodeAt(i) === 0x0a) line++;
  return line;
}

/** `from`: where the file was named (`--config`, `SIDECAR_CONFIG`). */
function readConfigFile(path: string, from: string, readFile: (p: string) => string, problems: ConfigProblem[]): FileConfig | undefined {
  if (path === CONTENT_GIVEN) return undefined;
  let text: string;
  try {
    text = readFile(path);
  } catch (err) {
    problems.push({ source: path, field: from, message: readFailure(err, 'config file') });
    return undefined;
  }
  let doc: unknown;
  text = withoutBom(text);
  try {
    doc = path.endsWith('.json') ? (text.trim() === '' ? null : JSON.parse(text)) : parseYaml(text, path, from, problems);
  } catch (err) {
    const { linePos, code } = err as { linePos?: Array<{ line: number }>; code?: unknown };
    if (code === 'EXCESSIVE_ALIASES' || code === 'UNRESOLVED_ALIAS') {
      const message =
        code === 'EXCESSIVE_ALIASES'
          ? 'uses YAML aliases (*name) more often than the parser allows (100 expansions, a guard against alias bombs): write the values out'
          : 'uses a YAML alias (*name) with no anchor (&name) of that name before it';
      problems.push({ source: path, field: from, message });
      return undefined;
    }
    // Position only: the file may hold secrets, so its content is never echoed.
    // The yaml package's own message quotes the line; its code (DUPLICATE_KEY, BAD_INDENT…) says why without it.
    const why = typeof code === 'string' && /^[A-Z_]+$/.test(code) ? `: ${code}` : '';
    const line = linePos?.[0]?.line;
    const where = path.endsWith('.json') ? jsonPosition(text, err) : line ? ` (line ${line}${why})` : '';
    // A bracketed IPv6 address unquoted is a YAML list: said with the fix (the line is looked at, not shown).
    const hint =
      line !== undefined && /^\s*(?:listen|adminListen)\s*:\s*\[/.test(text.split(/\r?\n/)[line - 1] ?? '')
        ? ': quote an IPv6 address (listen: "[::1]:8080"), as a bare [ starts a YAML list'
        : '';
    problems.push({ source: path, field: from, message: `is not valid ${path.endsWith('.json') ? 'JSON' : 'YAML'}${where}${hint}` });
    return undefined;
  }
  if (path.endsWith('.json')) {
    const line = duplicateKeyLine(text);
    if (line !== undefined) {
      problems.push({ source: path, field: from, message: `holds a key twice (line ${line}): JSON keeps the last one without a word, so give it once` });
      return undefined;
    }
  }
  // Empty (a ConfigMap key rendered empty, only comments, `null`) or not a mapping: the file's own problem, named
  // by where its path was given.
  if (doc === null || doc === undefined) {
    problems.push({ source: path, field: from, message: 'is empty: it needs routes (see config/routes.example.yaml)' });
    return undefined;
  }
  if (typeof doc !== 'object' || Array.isArray(doc)) {
    problems.push({ source: path, field: from, message: 'must be a mapping (listen, inbound, routes, …), not a list or a single value' });
    return undefined;
  }
  const f = new FileReader(path, problems);
  if (!f.object(doc, '', TOP_KEYS)) return undefined;
  const top = doc as Record<string, unknown>;
  const inboundRaw = top['inbound'];
  let inbound: Partial<InboundConfig> | undefined;
  if (inboundRaw !== undefined && f.object(inboundRaw, 'inbound', INBOUND_KEYS)) {
    const o = inboundRaw as Record<string, unknown>;
    inbound = {
      ...optional('basicAuthFile', f.pathValue(o, 'basicAuthFile', 'inbound')),
      ...optional('allowCidrs', f.stringList(o, 'allowCidrs', 'inbound')),
      ...optional('allowAnySender', f.boolean(o, 'allowAnySender', 'inbound')),
      ...optional('allowHosts', f.stringList(o, 'allowHosts', 'inbound')),
    };
  }
  const routesRaw = top['routes'];
  const routes: RouteConfig[] = [];
  if (!Array.isArray(routesRaw) || routesRaw.length === 0) {
    problems.push({ source: path, field: 'routes', message: 'must be a non-empty list of routes' });
  } else {
    routesRaw.forEach((raw, i) => {
      const route = fileRoute(raw, `routes[${i}]`, f, problems, path);
      if (route) routes.push(route);
    });
  }
  return {
    ...optional('listen', f.string(top, 'listen', '')),
    ...optional('adminListen', f.string(top, 'adminListen', '')),
    ...optional('logLevel', f.string(top, 'logLevel', '')),
    ...optional('inbound', inbound),
    routes,
  };
}

function fileRoute(raw: unknown, at: string, f: FileReader, problems: ConfigProblem[], path: string): RouteConfig | undefined {
  if (!f.object(raw, at, ROUTE_KEYS)) return undefined;
  const o = raw as Record<string, unknown>;
  const prefix = f.string(o, 'prefix', at);
  // Given but not a string: `string` said so, and "is required" would contradict it.
  const given = (key: string) => o[key] !== undefined && o[key] !== null;
  if (prefix === undefined) {
    if (!given('prefix')) problems.push({ source: path, field: `${at}.prefix`, message: 'is required and must start with /' });
  } else if (!prefix.startsWith('/')) {
    problems.push({ source: path, field: `${at}.prefix`, message: 'must start with /' });
  } else if (/[?#]/.test(prefix)) {
    problems.push({ source: path, field: `${at}.prefix`, message: 'must be a path: routes match the path without its query, so a ? or # could never match' });
  } else {
    const why = unusablePath(prefix, 'matches the path as senders send it');
    if (why) problems.push({ source: path, field: `${at}.prefix`, message: why });
  }
  const serviceKey = f.pathValue(o, 'serviceKey', at);
  const upstream = validUrl(f.string(o, 'upstream', at), path, `${at}.upstream`, problems);
  if (!serviceKey && (serviceKey === '' || !given('serviceKey'))) {
    problems.push({ source: path, field: `${at}.serviceKey`, message: 'is required (a service key file or secret directory)' });
  }
  const rewritePrefix = f.string(o, 'rewritePrefix', at);
  if (rewritePrefix !== undefined && (!rewritePrefix.startsWith('/') || /[?#]/.test(rewritePrefix))) {
    problems.push({ source: path, field: `${at}.rewritePrefix`, message: 'must be a path starting with / (no ? or #)' });
  } else if (rewritePrefix !== undefined) {
    const why = unusablePath(rewritePrefix, 'goes into the request target as it is');
    if (why) problems.push({ source: path, field: `${at}.rewritePrefix`, message: why });
  }
  const timeoutsRaw = o['timeouts'];
  const timeouts: RouteTimeouts = { connectMs: DEFAULT_CONNECT_TIMEOUT_MS, responseMs: DEFAULT_RESPONSE_TIMEOUT_MS, idleMs: DEFAULT_IDLE_TIMEOUT_MS };
  if (timeoutsRaw !== undefined && f.object(timeoutsRaw, `${at}.timeouts`, TIMEOUT_KEYS)) {
    const t = timeoutsRaw as Record<string, unknown>;
    for (const key of TIMEOUT_KEYS) {
      const v = f.integer(t, key, `${at}.timeouts`, ms(1));
      if (v !== undefined) timeouts[key as keyof RouteTimeouts] = v;
    }
  }
  const paramsRaw = o['tokenParams'];
  const params: Record<string, string> = {};
  if (paramsRaw !== undefined && f.object(paramsRaw, `${at}.tokenParams`, undefined)) {
    for (const [k, v] of Object.entries(paramsRaw as Record<string, unknown>)) {
      if (typeof v !== 'string') problems.push({ source: path, field: `${at}.tokenParams.${k}`, message: 'must be a string' });
      else if (RESERVED_PARAMS.has(k)) problems.push({ source: path, field: `${at}.tokenParams.${k}`, message: 'is set by the sidecar' });
      else if (OWN_SETTING_PARAMS.has(k) && typeof o[k] === 'string' && o[k] !== '' && o[k] !== v) {
        problems.push({ source: path, field: `${at}.tokenParams.${k}`, message: `is set by ${at}.${k} to another value: give it once` });
      } else params[k] = v;
    }
  }
  const name = f.string(o, 'name', at);
  if (name !== undefined && name.trim() === '') {
    problems.push({ source: path, field: `${at}.name`, message: 'is empty: a name labels the route in logs and metrics, and --route picks it' });
  }
  return {
    // Without a usable name of its own, a route is named by its prefix, or by its place when that is empty too.
    name: (name?.trim() ? name : undefined) ?? (prefix || at),
    prefix: prefix ?? '/',
    upstream,
    rewritePrefix,
    credentials: {
      source: { kind: 'path', path: serviceKey ?? '', from: `${at}.serviceKey` },
      ...(upstream === undefined ? { needsUrl: true } : {}),
      pairSettings: `${at}.clientCert/${at}.clientKey (or ${at}.clientTlsDir, a kubernetes.io/tls secret directory) in the config file`,
      ...optional(
        'clientCert',
        clientCertSource(
          { cert: f.pathValue(o, 'clientCert', at), key: f.pathValue(o, 'clientKey', at), dir: f.pathValue(o, 'clientTlsDir', at) },
          { cert: `${at}.clientCert`, key: `${at}.clientKey`, dir: `${at}.clientTlsDir` },
          () => path,
          problems,
        ),
      ),
    },
    token: {
      auth: tokenAuth(f.string(o, 'tokenAuth', at) ?? 'basic', path, `${at}.tokenAuth`, problems),
      scope: f.string(o, 'scope', at),
      resource: f.string(o, 'resource', at),
      audience: f.string(o, 'audience', at),
      params,
    },
    csrf: csrfMode(f.string(o, 'csrf', at) ?? 'auto', path, `${at}.csrf`, problems),
    timeouts,
    maxReplayBodyBytes: f.integer(o, 'maxReplayBodyBytes', at, BODY_BYTES) ?? DEFAULT_MAX_REPLAY_BODY_BYTES,
  };
}

/**
 * What a relative path in the config file at `path` is relative to: the file's directory, or the working directory
 * for a file that is a pipe (`--config <(envsubst < routes.yaml)` reads `/dev/fd/63`, whose directory means nothing).
 */
function relativeBase(path: string): string {
  const dir = resolve(dirname(path));
  return dir === '/dev' || dir === '/dev/fd' || /^\/proc\/(self|\d+)\/fd$/.test(dir) ? process.cwd() : dir;
}

/** Typed field access on a parsed file, recording problems with their paths. */
class FileReader {
  constructor(
    private readonly path: string,
    private readonly problems: ConfigProblem[],
  ) {}

  object(value: unknown, at: string, keys: ReadonlySet<string> | undefined): boolean {
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      this.problems.push({ source: this.path, field: at, message: 'must be a mapping' });
      return false;
    }
    if (keys) {
      for (const key of Object.keys(value)) {
        if (!keys.has(key)) {
          this.problems.push({ source: this.path, field: at ? `${at}.${key}` : key, message: `unknown key (known: ${[...keys].join(', ')})` });
        }
      }
    }
    return true;
  }

  string(o: Record<string, unknown>, key: string, at: string): string | undefined {
    const v = o[key];
    if (v === undefined || v === null) return undefined;
    if (typeof v === 'string') return v;
    this.problems.push({ source: this.path, field: at ? `${at}.${key}` : key, message: 'must be a string' });
    return undefined;
  }

  /**
   * A file or directory named in the config file; a relative one is relative to the config file's directory.
   * Content in its place (a PEM, JSON) is refused without being shown.
   */
  pathValue(o: Record<string, unknown>, key: string, at: string): string | undefined {
    const v = this.string(o, key, at);
    if (v === undefined || v === '') return v; // empty: reported where the value is checked
    if (!isContent(v)) return isAbsolute(v) ? v : resolve(relativeBase(this.path), v);
    this.problems.push({ source: this.path, field: at ? `${at}.${key}` : key, message: 'holds file content (PEM or JSON), not a path: write it to a file and give its path; the value is not shown' });
    return CONTENT_GIVEN;
  }

  boolean(o: Record<string, unknown>, key: string, at: string): boolean | undefined {
    const v = o[key];
    if (v === undefined) return undefined;
    if (typeof v === 'boolean') return v;
    this.problems.push({ source: this.path, field: `${at}.${key}`, message: 'must be true or false' });
    return undefined;
  }

  integer(o: Record<string, unknown>, key: string, at: string, range: IntegerRange): number | undefined {
    const v = o[key];
    if (v === undefined) return undefined;
    if (typeof v === 'number' && inRange(v, range)) return v;
    this.problems.push({ source: this.path, field: `${at}.${key}`, message: rangeMessage(range) });
    return undefined;
  }

  stringList(o: Record<string, unknown>, key: string, at: string): string[] | undefined {
    const v = o[key];
    if (v === undefined) return undefined;
    if (Array.isArray(v) && v.every((s) => typeof s === 'string')) return v as string[];
    this.problems.push({ source: this.path, field: `${at}.${key}`, message: 'must be a list of strings' });
    return undefined;
  }
}

/**
 * A path option (flag or variable) that holds the content itself — a PEM, a service key's JSON — is a
 * problem of its own, and the value is replaced by `CONTENT_GIVEN`: every later message would name it as
 * a path, echoing a private key or a client secret. (The option still counts as given, so no "missing"
 * message follows, and nothing reads it: the problem ends the parse.) Returns the environment so replaced;
 * `values` is replaced in place.
 */
function withoutContentForPaths(values: Record<string, string | boolean | string[] | undefined>, env: Env, problems: ConfigProblem[]): Env {
  let kept = env;
  for (const [name, spec] of Object.entries(FLAGS)) {
    if (!spec.path) continue;
    const given = values[name];
    if ((typeof given === 'string' && isContent(given)) || (Array.isArray(given) && given.some(isContent))) {
      problems.push({ source: `--${name}`, field: name, message: notAPath(name) });
      values[name] = Array.isArray(given) ? given.map((v) => (isContent(v) ? CONTENT_GIVEN : v)) : CONTENT_GIVEN;
    }
    const fromEnv = spec.env === undefined ? undefined : env[spec.env];
    if (spec.env !== undefined && fromEnv !== undefined && (spec.multiple ? fromEnv.split(',') : [fromEnv]).some(isContent)) {
      problems.push({ source: spec.env, field: name, message: notAPath(name) });
      kept = { ...kept, [spec.env]: CONTENT_GIVEN };
    }
  }
  return kept;
}

/**
 * Stands in for a path option that held content (see `withoutContentForPaths`); never read. Without a comma: a
 * list variable (SIDECAR_CA) is split on commas, and each piece must still be known for this.
 */
const CONTENT_GIVEN = '(content given as a path; not shown)';

/** Content rather than a path: a PEM block, JSON, or several lines. */
function isContent(value: string): boolean {
  if (value.includes('-----BEGIN') || value.includes('\n')) return true;
  // JSON, also as an env file keeps it in quotes ('{"clientid": …}'); `[prod]/key.json` is a path.
  const bare = value.trim().replace(/^(['"])(.*)\1$/s, '$2').trim();
  if (!/^[{[]/.test(bare)) return false;
  try {
    JSON.parse(bare);
    return true;
  } catch {
    return false;
  }
}

function notAPath(name: string): string {
  const instead = name === 'service-key' ? ' (or pass the JSON in SIDECAR_SERVICE_KEY_JSON)' : '';
  return `holds file content (PEM or JSON), not a path: write it to a file and give the file's path${instead}; the value is not shown`;
}

/** Flag-or-env access with the source of each value, for messages. */
class Reader {
  constructor(
    private readonly values: Record<string, string | boolean | string[] | undefined>,
    private readonly env: Env,
    private readonly problems: ConfigProblem[],
  ) {}

  has(name: string): boolean {
    return this.values[name] !== undefined || this.envValue(name) !== undefined;
  }

  envValue(name: string): string | undefined {
    const envName = FLAGS[name]?.env;
    const v = envName ? this.env[envName] : undefined;
    return v === '' ? undefined : v;
  }

  sourceOf(name: string): string {
    if (this.values[name] !== undefined) return `--${name}`;
    return FLAGS[name]?.env ?? `--${name}`;
  }

  string(name: string): string | undefined {
    const v = this.values[name];
    if (typeof v === 'string') return v;
    return this.envValue(name);
  }

  flagList(name: string): string[] | undefined {
    const v = this.values[name];
    return Array.isArray(v) ? v : undefined;
  }

  /** Repeatable flag, or its env variable split on commas. */
  list(name: string): string[] {
    return (this.flagList(name) ?? this.envValue(name)?.split(',') ?? []).map((s) => s.trim()).filter(Boolean);
  }

  boolean(name: string): boolean | undefined {
    if (this.values[name] === true) return true;
    const v = this.envValue(name);
    if (v === undefined) return undefined;
    if (/^(1|true|yes)$/i.test(v)) return true;
    if (/^(0|false|no)$/i.test(v)) return false;
    this.problems.push({ source: this.sourceOf(name), field: name, message: 'must be true or false' });
    return undefined;
  }

  integer(name: string, range: IntegerRange): number | undefined {
    const v = this.string(name);
    if (v === undefined) return undefined;
    const n = Number(v);
    if (/^\d+$/.test(v.trim()) && inRange(n, range)) return n;
    // The value is not echoed: a secret pasted into the wrong variable must not reach the log.
    this.problems.push({ source: this.sourceOf(name), field: name, message: rangeMessage(range) });
    return undefined;
  }
}

/** Bounds of a numeric option, with its unit for messages. */
interface IntegerRange {
  min: number;
  max: number;
  unit: 'ms' | 'bytes' | 'connections';
}

/** Milliseconds, from `min` up to what a Node timer can hold. */
function ms(min: number): IntegerRange {
  return { min, max: MAX_TIMER_MS, unit: 'ms' };
}

const BODY_BYTES: IntegerRange = { min: 0, max: MAX_REPLAY_BODY_BYTES, unit: 'bytes' };
const REPLAY_MEMORY_BYTES: IntegerRange = { min: 0, max: 16 * MAX_REPLAY_BODY_BYTES, unit: 'bytes' };
const CONNECTIONS: IntegerRange = { min: 0, max: 1_000_000, unit: 'connections' };

function inRange(n: number, range: IntegerRange): boolean {
  return Number.isSafeInteger(n) && n >= range.min && n <= range.max;
}

function rangeMessage(range: IntegerRange): string {
  return `must be an integer from ${range.min} to ${range.max} ${range.unit}`;
}

function optional<K extends string, V>(key: K, value: V | undefined): { [P in K]?: V } {
  return (value === undefined ? {} : { [key]: value }) as { [P in K]?: V };
}

function readText(path: string, kind?: 'pem'): string {
  return readTextFileSync(path, { pem: kind === 'pem' });
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value)) deepFreeze(child);
  }
  return value;
}
