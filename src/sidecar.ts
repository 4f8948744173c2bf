/**
 * Assembles a running sidecar from a validated config — credentials per route
 * (watched for rotation), token provider, inbound control, the proxy and
 * admin listeners — and takes it down gracefully. Logging and metrics are
 * wired here, at the edge: the modules below return results and emit events.
 */
import { setMaxListeners } from 'node:events';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';
import { createAdminServer } from './admin-server.js';
import { wallTimeOf } from './clock.js';
import { bindHost, FLAGS, type Config, type RouteConfig } from './config.js';
import { ConnectionLimit, connectionsWithin, openFileLimit } from './connection-limit.js';
import { CredentialWatcher, DEFAULT_POLL_INTERVAL_MS } from './credential-watcher.js';
import { LogPace } from './log-pace.js';
import { loadCredentials, type LoadedCredentials } from './credentials.js';
import { ConfigError, isTransientTokenError, shownSource, SidecarError, type ConfigProblem } from './errors.js';
import { boundExposureProblems, createInboundControl, exposureOf, parseAllowlist, readBasicAuthFile, type InboundControl, type InboundControlOptions } from './inbound-control.js';
import type { Logger, Loggers } from './logger.js';
import { Metrics } from './metrics.js';
import type { ProxyObserver } from './proxy.js';
import { connectionsClosed, createProxyServer, DEFAULT_SERVER_LIMITS, type ServerLimits } from './proxy-server.js';
import { closeRoute, discardRoute, createRoute, RouteTable, type Route } from './routes.js';
import { ReplayBudget } from './replay-budget.js';
import { shownUrl } from './service-key.js';
import { createScavenger, youngGenerationCollector, type Scavenger } from './scavenger.js';
import { TokenProvider, type TokenEvent, type TokenProviderOptions, tokenCacheSize } from './token-provider.js';

export interface Sidecar {
  readonly server: Server;
  /** The bound proxy address (port 0 resolved). */
  readonly address: { host: string; port: number };
  /** The bound admin address, when enabled. */
  readonly adminAddress: { host: string; port: number } | undefined;
  readonly routes: RouteTable;
  readonly tokens: TokenProvider;
  readonly inbound: InboundControl;
  readonly metrics: Metrics;
  /** What kept body copies hold now (`--max-replay-memory`). */
  readonly replayBudget: ReplayBudget;
  /** Fail readiness, keep serving for the shutdown delay, drain, close. Idempotent. */
  shutdown(): Promise<void>;
  /** Stop now: no delay, no grace; during a `shutdown()` it ends that one's waiting (the second signal). */
  close(): Promise<void>;
}

export interface SidecarOptions {
  /** Token provider tuning (tests shorten the backoff). */
  tokens?: Pick<TokenProviderOptions, 'backoff'>;
  /** Credential watcher tuning (tests shorten the polling and debounce, and move the expiry checks' clock). */
  watch?: { pollIntervalMs?: number; debounceMs?: number; now?: () => Date };
  /** Process metrics; tests that start many sidecars turn them off. */
  defaultMetrics?: boolean;
  /** HTTP server limits (tests shorten the header timeout to exercise slowloris). */
  limits?: Partial<ServerLimits>;
  /** Collects body chunks as they pass (default: a scavenge every 4 MiB of long bodies; tests count them). */
  scavenger?: Scavenger;
  /** At most one warning this often that senders went over `--max-connections` (default a minute; tests shorten it). */
  connectionWarningIntervalMs?: number;
  /** At most one warning this often per route for a failure every request meets (default a minute; tests shorten it). */
  outageWarningIntervalMs?: number;
  /** The process's open-file limit (default: read from `/proc/self/limits`); tests set it. */
  openFileLimit?: number;
  /** Token requests a second at most when the cache is warmed at start (default 20; tests slow it). */
  warmUpPerSecond?: number;
}

/** Token requests a second at most when the cache is warmed at start (one per distinct key). */
const WARM_UP_PER_SECOND = 20;

/** At most one warning a minute that senders went over `--max-connections`. */
const CONNECTION_LIMIT_LOG_INTERVAL_MS = 60_000;
/** At most one warning a minute per route for what fails every request alike (see `LogPace`). */
const OUTAGE_LOG_INTERVAL_MS = 60_000;

export async function startSidecar(config: Readonly<Config>, loggers: Loggers, options: SidecarOptions = {}): Promise<Sidecar> {
  const log = loggers.log;
  const { inbound, loaded } = await loadInputs(config, log);
  let table = new RouteTable(loaded.map((l, i) => createRoute(config.routes[i]!, l.credentials, routeDeps(config))));
  const routes = () => table;
  // Filled once the watchers exist; a route is failing while its watcher's last reload failed.
  let watchers: CredentialWatcher[] = [];
  const credentialErrors = (): ReadonlyMap<string, string> =>
    new Map(watchers.flatMap((w, i) => (w.lastError === undefined ? [] : [[config.routes[i]!.name, describeError(w.lastError)] as const])));
  let draining = false;
  /** Aborted when a stop begins (`draining`): readiness probes still waiting for a token answer at once. */
  const stopBegun = new AbortController();
  // One listener per probe waiting for a token, removed when it is answered; any number may wait at once.
  setMaxListeners(0, stopBegun.signal);
  /** Set when the drain begins, after the shutdown delay (during which senders are served as usual). */
  let closingConnections = false;

  /** New routes whose credentials are being validated (their token request under way). */
  const validating = new Set<Route>();
  // A rotation's token request is made under the new credentials' key (a new secret makes a new key): named by
  // the route it is validated for. Each name once: new credentials may make the same key as those they replace.
  const routesOfKey = (key: string) => [...new Set([...table.routes, ...validating].filter((r) => r.tokenClient.cacheKey === key).map((r) => r.name))];
  let metrics: Metrics | undefined;
  const tokens = new TokenProvider({
    max: tokenCacheSize(config.routes.length),
    ...options.tokens,
    onEvent: (event) => {
      try {
        const routes = routesOfKey(event.key);
        metrics?.tokenEvent(event, routes);
        logTokenEvent(log, event, routes);
      } catch (err) {
        // A bug here; the provider carries on regardless. Not the event: it may hold the token.
        log.error({ type: event.type, error: err instanceof Error ? err.name : typeof err }, 'token event not recorded');
      }
    },
  });
  // Logged when senders go beyond the limit, at most once a minute: a storm of refusals is a warning a minute,
  // the first at once, the refusals after it counted in one line at the minute's end.
  const warningIntervalMs = options.connectionWarningIntervalMs ?? CONNECTION_LIMIT_LOG_INTERVAL_MS;
  let limitLoggedAt = Number.NEGATIVE_INFINITY;
  let refusedAtLastLog = 0;
  let laterWarning: NodeJS.Timeout | undefined;
  const warnOverLimit = (open: number): void => {
    limitLoggedAt = performance.now();
    const refused = connections.refused - refusedAtLastLog;
    refusedAtLastLog = connections.refused;
    log.warn({ open, maxConnections: connections.max, refused }, 'sender connections beyond --max-connections: requests on them are answered 503 TOO_MANY_CONNECTIONS');
  };
  const connections = new ConnectionLimit(servedConnections(config.maxConnections, options.openFileLimit ?? openFileLimit(), config.routes.length, log), (open) => {
    const wait = limitLoggedAt + warningIntervalMs - performance.now();
    if (wait <= 0) return warnOverLimit(open);
    laterWarning ??= setTimeout(() => {
      laterWarning = undefined;
      warnOverLimit(connections.open);
    }, wait).unref();
  });
  metrics = new Metrics({ routes, tokens, credentialErrors, connections, logDropped: loggers.dropped, defaultMetrics: options.defaultMetrics ?? true });
  const m = metrics;

  const outages = new LogPace(options.outageWarningIntervalMs ?? OUTAGE_LOG_INTERVAL_MS);
  const observer: ProxyObserver = {
    requestStarted: () => m.requestStarted(),
    requestFinished: (record) => {
      m.requestFinished(record);
      loggers.access.write(record);
      // A token fetched after the upstream's 401 refused as well: no token of this key will do (RFC 6750 §3.1).
      if (record.status === 401 && record.upstreamStatus === 401 && record.retried?.includes('401-refresh')) {
        const paced = outages.take(`token-refused:${record.route}`);
        if (paced) {
          log.warn({ route: record.route, ...paced }, 'the upstream refused a newly fetched token too: the service key does not grant this endpoint (an api-plan key on the runtime host, or the reverse; README: Troubleshooting)');
        }
      }
      // An answer begun before the drain went out keep-alive: its connection is idle now, and node's server
      // does not close such a one by itself (its keep-alive timeout outlasts the grace period).
      if (closingConnections) setImmediate(() => server.closeIdleConnections());
    },
    csrfFetched: (route, ok, superseded) => {
      m.csrfFetched(route, ok);
      if (ok || superseded) log.info({ route, ok }, 'CSRF token fetched');
      else {
        const paced = outages.take(`csrf:${route}`);
        if (paced) log.warn({ route, ...paced }, 'CSRF token fetch failed: requests that need one fail (502 or 504; their access lines\' reason says why)');
      }
    },
    clientError: (code) => {
      m.malformedRequest(code);
      log.warn({ code }, 'malformed request rejected');
    },
    internalError: (err) => log.error({ err }, 'internal error while proxying'),
  };
  const scavenger = options.scavenger ?? createScavenger({ collect: youngGenerationCollector() });
  const replayBudget = new ReplayBudget(config.maxReplayMemoryBytes);
  const server = createProxyServer({ routes, tokens, inbound, observer, draining: () => draining, scavenger, replayBudget, connections }, { ...DEFAULT_SERVER_LIMITS, ...options.limits });
  const admin = config.adminListen
    ? createAdminServer({ routes, tokens, metrics: m, draining: () => draining, stopping: stopBegun.signal, credentialErrors })
    : undefined;

  let address: { host: string; port: number };
  let adminAddress: { host: string; port: number } | undefined;
  try {
    address = await listen(server, config.listen, 'listen', listenSources(config, 'listen', 'listen'));
    const exposed = boundExposureProblems(config.listen.host, address.host, exposureOf(config.inbound), listenSources(config, 'listen', 'listen'), { configFile: config.routesSource !== 'flags' });
    if (exposed.length > 0) throw new ConfigError(exposed);
    // Two names for one address (an /etc/hosts name and its address, `::ffff:127.0.0.1` and `127.0.0.1`) pass the
    // config's check; the bind then says so.
    const ownPort = config.adminListen?.port === address.port ? ` (perhaps by this sidecar's own listen address, ${hostPort(config.listen)}, if both name the same address)` : '';
    adminAddress = admin && config.adminListen ? await listen(admin, config.adminListen, 'admin-listen', listenSources(config, 'admin-listen', 'adminListen'), ownPort) : undefined;
  } catch (err) {
    // Nothing half-started is left behind: a proxy serving without its admin port would never be restarted.
    server.close();
    admin?.close();
    await Promise.all(table.routes.map(closeRoute));
    throw err;
  }

  /** Set once `shutdown()` or `close()` began; a rotation finishing after that is not applied. */
  let stopping: Promise<void> | undefined;
  /** Replaced routes whose pools are still closing (their requests finishing). */
  const retiring = new Set<Route>();
  /** Swaps under way; a stop waits for them, so that none is left to apply, count or log once it is over. */
  const rotations = new Set<Promise<boolean>>();
  /**
   * Rotation: each route's credentials are watched; a valid change swaps the route atomically. True only when
   * the routes were replaced: false when the sidecar began stopping first (abandoned, neither applied nor refused).
   */
  const swap = async (name: string, next: LoadedCredentials): Promise<boolean> => {
    const old = table.routes.find((r) => r.name === name);
    if (!old || stopping) return false;
    const fresh = createRoute(old.config, next.credentials, routeDeps(config));
    validating.add(fresh);
    try {
      await tokens.refresh(fresh.tokenClient);
    } catch (err) {
      // Not applied until a token has been obtained with them: a refusal, but also a new token URL that
      // does not resolve, a new certificate the server's TLS refuses, or an outage. The old credentials (and
      // their cached token) keep serving; the watcher offers the change again at its next check.
      await closeRoute(fresh);
      // Abandoned because the sidecar is stopping: no verdict on the new credentials.
      if (stopping) return false;
      throw err;
    } finally {
      validating.delete(fresh);
    }
    // Stopped while the token request was under way: the routes being closed are the old ones; not applied.
    if (stopping) {
      await closeRoute(fresh);
      return false;
    }
    table = new RouteTable(table.routes.map((r) => (r === old ? fresh : r)));
    // No request needs a token of the old credentials any more: one still being fetched (a token server that
    // hangs) is given up, so that the requests waiting for it move to the new route now, not at its timeout —
    // or, under the same cache key, get the token just validated. Not while another route still uses that key
    // (the same client in another file) and the new credentials have a key of their own: its requests may be
    // waiting for that very fetch, and nothing else would bring them a token.
    const oldKey = old.tokenClient.cacheKey;
    const keptByOther = table.routes.some((r) => r !== fresh && r.tokenClient.cacheKey === oldKey);
    if (fresh.tokenClient.cacheKey === oldKey || !keptByOther) old.tokenClient.abandon('replaced');
    // The old key's token, backoff and 401 record go too: the cache holds only keys in use, so a route's token,
    // stored long ago, is never the one dropped to make room for keys that rotations replaced.
    if (fresh.tokenClient.cacheKey !== oldKey && !keptByOther) tokens.forget(old.tokenClient);
    // The old pools finish their in-flight requests before closing.
    retiring.add(old);
    void closeRoute(old).finally(() => retiring.delete(old));
    for (const notice of next.notices) log[notice.level]({ route: name, source: next.credentials.source }, notice.message);
    log.info({ route: name, source: next.credentials.source, keyType: next.credentials.kind, clientId: next.credentials.clientId }, 'credentials rotated');
    return true;
  };
  watchers = await Promise.all(
    config.routes.map((route, i) =>
      CredentialWatcher.start(route.credentials, {
        initial: loaded[i]!,
        // The routes' polls spread over the interval, not all in one tick.
        pollPhaseMs: Math.floor(((options.watch?.pollIntervalMs ?? DEFAULT_POLL_INTERVAL_MS) * i) / config.routes.length),
        ...options.watch,
        // A change the token server refuses throws: the watcher reports it and offers it again at the next reload.
        onChange: async (next) => {
          const rotation = swap(route.name, next);
          rotations.add(rotation);
          try {
            // One abandoned at shutdown is not counted: it was neither applied nor refused.
            if (await rotation) m.credentialReload(route.name, 'applied');
          } finally {
            rotations.delete(rotation);
          }
        },
        onError: (err) => reloadFailed(route.name, err),
        onNotices: (notices) => {
          const { source } = table.routes.find((r) => r.name === route.name)!.credentials;
          for (const notice of notices) log[notice.level]({ route: route.name, source }, notice.message);
        },
        onRecovered: () => log.info({ route: route.name }, 'the service key matches the credentials in use again: the reload failure is over'),
        onWatchError: (err, dir) => log.warn({ dir, code: (err as NodeJS.ErrnoException)?.code }, 'cannot watch for credential changes; polling only'),
      }),
    ),
  );
  function reloadFailed(route: string, err: unknown): void {
    const code = err instanceof SidecarError ? err.code : 'INTERNAL';
    m.credentialReload(route, code);
    const error = err instanceof SidecarError ? err.message : undefined;
    // The key left in place has run out (its reload is refused as expired): there are no previous credentials
    // to fall back on, and the token server refuses these.
    const inUse = table.routes.find((r) => r.name === route)?.credentials;
    const now = options.watch?.now?.() ?? new Date();
    if (inUse && inUse.kind !== 'client-secret' && inUse.notAfter <= now) {
      log.error({ route, code, error }, 'the client certificate in use has expired: token requests fail until the service key is replaced');
      return;
    }
    log.error({ route, code, error }, reloadFailureMessage(err));
  }

  log.info(
    {
      listen: hostPort(address),
      admin: adminAddress ? hostPort(adminAddress) : 'off',
      inbound: inbound.summary,
      routes: table.routes.map(describeRoute),
    },
    'oauth-sidecar listening',
  );
  // Warm the cache so that the first request does not wait for a token. One key after another, at most
  // WARM_UP_PER_SECOND a second: XSUAA admits ~60 token requests a second per subaccount, and tokens fetched in one
  // burst would come due close together (their refresh points spread only ± 5 % of a lifetime). (A request that
  // comes first fetches its own.)
  const warmUps = new Set<NodeJS.Timeout>();
  const warmUp = (name: string): void => {
    const route = table.routes.find((r) => r.name === name);
    if (route === undefined || stopping) return;
    tokens.getToken(route.tokenClient).catch(() => {
      /* logged through the token events; requests will retry */
    });
  };
  const warmKeys = new Set<string>();
  for (const route of table.routes) {
    if (warmKeys.has(route.tokenClient.cacheKey)) continue; // a key shared by routes is one token
    const at = (warmKeys.size * 1_000) / (options.warmUpPerSecond ?? WARM_UP_PER_SECOND);
    warmKeys.add(route.tokenClient.cacheKey);
    if (at === 0) warmUp(route.name);
    else {
      const timer = setTimeout(() => {
        warmUps.delete(timer);
        warmUp(route.name);
      }, at).unref();
      warmUps.add(timer);
    }
  }

  // Aborted by `close()` during a graceful stop: the delay and the grace period end at once.
  const hurry = new AbortController();
  const stop = (delayMs: number, graceMs: number): Promise<void> => {
    if (stopping) {
      if (delayMs === 0 && graceMs === 0) hurry.abort();
      return stopping;
    }
    stopping = (async () => {
      draining = true;
      stopBegun.abort();
      for (const timer of warmUps) clearTimeout(timer);
      for (const w of watchers) w.close();
      if (delayMs > 0) {
        log.info({ delayMs }, 'readiness failed; still serving while endpoints are removed');
        await delay(delayMs, undefined, { signal: hurry.signal }).catch(() => undefined);
      }
      closingConnections = true;
      // No request is left to use a token: a token request under way (a hanging token server, a retry
      // waiting out Retry-After) is abandoned rather than waited for, up to --token-timeout per attempt. At the
      // grace period's end that comes first, so that a sender still waiting for its token gets its 503 rather
      // than a closed connection.
      const abandonTokens = (): void => {
        for (const route of [...table.routes, ...validating, ...retiring]) route.tokenClient.abandon();
      };
      await drain(server, graceMs, log, hurry.signal, { beforeCut: abandonTokens });
      // Its probes answer at once now (readiness: 503): a moment for any still being written (a slow scrape).
      if (admin) await drain(admin, ADMIN_GRACE_MS, log, hurry.signal, { level: 'debug' });
      abandonTokens();
      // A rotation under way ends now (its token request was abandoned): not applied, its new route closed.
      await Promise.allSettled(rotations);
      await Promise.all([...table.routes, ...retiring].map(discardRoute));
      if (laterWarning !== undefined) {
        // Refusals still to be counted in a line (also those during the stop): now, before "stopped".
        clearTimeout(laterWarning);
        laterWarning = undefined;
        warnOverLimit(connections.open);
      }
    })();
    return stopping;
  };

  return {
    server,
    address,
    adminAddress,
    get routes() {
      return table;
    },
    tokens,
    inbound,
    metrics: m,
    replayBudget,
    shutdown: () => stop(config.shutdownDelayMs, config.shutdownGraceMs),
    close: () => stop(0, 0),
  };
}

/** What the admin listener's own requests get to finish once the proxy has drained (they answer at once). */
const ADMIN_GRACE_MS = 1_000;

/**
 * Stop accepting; give in-flight requests until the deadline (or until `hurry` aborts); then `beforeCut` runs, what
 * is answered in the turn after it goes out, and what is left is cut.
 */
async function drain(
  server: Server,
  graceMs: number,
  log: Logger,
  hurry?: AbortSignal,
  { level = 'warn' as 'warn' | 'debug', beforeCut = (): void => undefined } = {},
): Promise<void> {
  if (!server.listening) return;
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  server.closeIdleConnections();
  const over = new AbortController(); // ends a pending grace timer: it must not keep the process alive
  const signal = hurry ? AbortSignal.any([over.signal, hurry]) : over.signal;
  const deadline = delay(graceMs, undefined, { signal }).then(
    () => 'deadline' as const,
    () => 'deadline' as const,
  );
  const first = await Promise.race([closed.then(() => 'closed' as const), deadline]);
  over.abort();
  if (first === 'deadline') {
    log[level]({ graceMs }, hurry?.aborted ? 'second signal; closing remaining connections' : 'grace period over; closing remaining connections');
    beforeCut();
    await new Promise((resolve) => setImmediate(resolve));
    server.closeAllConnections();
    await closed;
  }
  await connectionsClosed(server);
}

/**
 * Listen on `at`; a failure is a `ConfigError` naming the address, why, and where it is set (exit code 2).
 * `inUseBy` is added to an EADDRINUSE: who else may hold the address.
 */
function listen(server: Server, at: { host: string; port: number }, field: string, source: string, inUseBy = ''): Promise<{ host: string; port: number }> {
  return new Promise((resolve, reject) => {
    const failed = (err: NodeJS.ErrnoException): void => {
      const why = `${LISTEN_FAILURES[err.code ?? ''] ?? 'failed'} (${err.code ?? 'error'})${err.code === 'EADDRINUSE' ? inUseBy : ''}`;
      reject(new ConfigError([{ source, field, message: `cannot listen on ${hostPort(at)}: ${why}` }]));
    };
    server.once('error', failed);
    server.listen(at.port, bindHost(at.host), () => {
      server.off('error', failed);
      const bound = server.address() as AddressInfo;
      resolve({ host: bound.address, port: bound.port });
    });
  });
}

/**
 * Where a listen address may be set: the config keeps the address, not where it came from, so the message
 * names the flag, its variable and, with a config file, the file's key (the default applies when none is set).
 */
function listenSources(config: Readonly<Config>, flag: 'listen' | 'admin-listen', fileKey: 'listen' | 'adminListen'): string {
  const env = FLAGS[flag]?.env;
  const file = config.routesSource === 'flags' ? undefined : `${fileKey} in ${shownSource(config.routesSource)}`;
  return [`--${flag}`, env, file].filter((s) => s !== undefined).join(' / ');
}

const LISTEN_FAILURES: Readonly<Record<string, string>> = {
  EADDRINUSE: 'the address is in use',
  EADDRNOTAVAIL: 'the address is not on this machine',
  EACCES: 'permission denied (ports below 1024 need privileges)',
  ENOTFOUND: 'the host does not resolve',
  EAI_AGAIN: 'the host does not resolve',
};

/**
 * `--max-connections`, or fewer when the process's open-file limit cannot carry that many (see
 * `connection-limit.ts`): those beyond then get their 503 instead of a reset. `0` (no limit of the sidecar's own)
 * is as many as the limit carries. A number set above that is said once, at start.
 */
function servedConnections(requested: number, fileLimit: number | undefined, routes: number, log: Logger): number {
  if (fileLimit === undefined) return requested;
  const fitting = connectionsWithin(fileLimit, routes);
  if (requested === 0) return fitting;
  if (requested <= fitting) return requested;
  log.warn(
    { maxConnections: requested, openFileLimit: fileLimit, served: fitting },
    `the open-file limit (${fileLimit}) does not carry --max-connections ${requested}: ${fitting} sender connections are ` +
      'served at once, so that those beyond get 503 TOO_MANY_CONNECTIONS, not a reset; raise the limit (ulimit -n, ' +
      'docker run --ulimit nofile=N) or lower --max-connections',
  );
  return fitting;
}

function routeDeps(config: Readonly<Config>) {
  return { network: config.network, tokenTimeoutMs: config.tokenTimeoutMs };
}

/**
 * The sender control and every route's credentials, read from their files. Every problem found is reported at
 * once, each route's named when there are several (a missing key of the second route is not left for the next
 * start to find).
 */
async function loadInputs(config: Readonly<Config>, log: Logger): Promise<{ inbound: InboundControl; loaded: LoadedCredentials[] }> {
  const [inbound, ...routes] = await Promise.allSettled([inboundControl(config), ...config.routes.map((route) => loadRouteCredentials(route, log))]);
  const problems: ConfigProblem[] = [];
  const outcomes = [inbound!, ...routes];
  for (let i = 0; i < outcomes.length; i++) {
    const outcome = outcomes[i]!;
    if (outcome.status === 'fulfilled') continue;
    if (!(outcome.reason instanceof ConfigError)) throw outcome.reason;
    const route = i > 0 && config.routes.length > 1 ? config.routes[i - 1]! : undefined;
    for (const p of outcome.reason.problems) {
      problems.push(route === undefined ? p : { ...p, field: `route "${route.name}"${p.field ? ` ${p.field}` : ''}` });
    }
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return {
    inbound: (inbound as PromiseFulfilledResult<InboundControl>).value,
    loaded: routes.map((r) => (r as PromiseFulfilledResult<LoadedCredentials>).value),
  };
}

async function loadRouteCredentials(route: RouteConfig, log: Logger): Promise<LoadedCredentials> {
  const loaded = await loadCredentials(route.credentials);
  for (const notice of loaded.notices) log[notice.level]({ route: route.name, source: loaded.credentials.source }, notice.message);
  return loaded;
}

async function inboundControl(config: Readonly<Config>): Promise<InboundControl> {
  const problems: ConfigProblem[] = [];
  const options: { -readonly [K in keyof InboundControlOptions]: InboundControlOptions[K] } = {
    allowAnySender: config.inbound.allowAnySender,
    allowHosts: config.inbound.allowHosts,
  };
  const file = config.inbound.basicAuthFile;
  if (file) {
    try {
      options.basicAuth = await readBasicAuthFile(file, config.inbound.basicAuthFileSetting);
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      problems.push(...err.problems);
    }
  }
  // Validated, with the source of each entry, by `parseConfig`.
  if (config.inbound.allowCidrs.length > 0) options.allowlist = parseAllowlist(config.inbound.allowCidrs, 'allow-cidr');
  if (problems.length > 0) throw new ConfigError(problems);
  return createInboundControl(options, 'inbound');
}

function describeError(err: unknown): string {
  return err instanceof SidecarError ? `${err.code}: ${err.message}` : 'INTERNAL: reload failed';
}

/** `host:port`, an IPv6 host in brackets. */
export function hostPort(a: { host: string; port: number }): string {
  return `${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}`;
}

/** An address to connect to on this machine: a wildcard listener (`0.0.0.0`, `::`) is reached on loopback. */
export function localUrl(a: { host: string; port: number }): string {
  const host = a.host === '0.0.0.0' || a.host === '::' || a.host === '' ? '127.0.0.1' : a.host;
  return `http://${hostPort({ host, port: a.port })}`;
}

function describeRoute(route: Route) {
  return {
    name: route.name,
    prefix: route.prefix,
    upstream: route.origin + route.basePath,
    credentialSource: route.credentials.source,
    keyType: route.credentials.kind,
    clientId: route.credentials.clientId,
    tokenUrl: shownUrl(route.credentials.tokenUrl),
    tokenAuth: route.tokenClient.authMethod,
    csrf: route.config.csrf,
  };
}

function logTokenEvent(log: Logger, event: TokenEvent, routes: string[]): void {
  switch (event.type) {
    case 'fetched':
      log.info(
        { routes, expiresAt: isoTime(wallTimeOf(event.token.expiresAt)), lifetimeSource: event.token.lifetimeSource, durationMs: Math.round(event.durationMs) },
        'token obtained',
      );
      return;
    case 'fetch-failed': {
      const e = event.error;
      log.warn(
        { routes, code: e instanceof SidecarError ? e.code : 'INTERNAL', retryInMs: event.retryInMs },
        e instanceof SidecarError ? e.message : 'token fetch failed unexpectedly',
      );
      return;
    }
    case 'fetch':
      log.debug({ routes, reason: event.reason }, 'fetching token');
      return;
  }
}

/** An epoch-ms time as ISO 8601; one outside what a Date can hold as the number itself, rather than a throw. */
function isoTime(ms: number): string | number {
  const date = new Date(ms);
  return Number.isNaN(date.getTime()) ? ms : date.toISOString();
}

/**
 * What a failed reload says. An outage, a wait the token server asked for (then it is not asked again before the
 * wait ends) or a key that could not be read now (out of file descriptors) is no verdict on the new credentials.
 */
export function reloadFailureMessage(err: unknown): string {
  if (err instanceof ConfigError && err.transient) {
    return 'the service key could not be read now; the previous credentials stay in use, and it is read again at the next check';
  }
  if (isTransientTokenError(err)) {
    return 'new credentials not applied: no token could be obtained with them yet; the previous credentials stay in use, and the change is tried again at the next check';
  }
  return 'new credentials rejected; the previous credentials stay in use';
}
