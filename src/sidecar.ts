/**
 * Assembles a running sidecar from a validated config: credentials per route,
 * token provider, inbound control, the proxy server; and takes it down again.
 * Logging happens here, at the edge: the modules below return results and
 * emit events.
 */
import { readFile } from 'node:fs/promises';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Config } from './config.js';
import { loadCredentials } from './credentials.js';
import { ConfigError, SidecarError, type ConfigProblem } from './errors.js';
import { createInboundControl, exposureProblems, parseAllowlist, parseBasicAuthFile, type InboundControl, type InboundControlOptions } from './inbound-control.js';
import type { Logger } from './logger.js';
import { createProxyServer, type RequestRecord } from './proxy.js';
import { closeRoute, createRoute, RouteTable, type Route } from './routes.js';
import { TokenProvider, type TokenEvent } from './token-provider.js';

export interface Sidecar {
  readonly server: Server;
  /** The bound address (port 0 resolved). */
  readonly address: { host: string; port: number };
  readonly routes: RouteTable;
  readonly tokens: TokenProvider;
  readonly inbound: InboundControl;
  /** Stop accepting, let in-flight requests finish, close pools. */
  close(): Promise<void>;
}

export async function startSidecar(config: Readonly<Config>, log: Logger): Promise<Sidecar> {
  const inbound = await inboundControl(config);
  const routes = new RouteTable(await Promise.all(config.routes.map((route) => loadRoute(route, config, log))));
  const routeNames = new Map<string, string[]>();
  for (const route of routes.routes) {
    routeNames.set(route.tokenClient.cacheKey, [...(routeNames.get(route.tokenClient.cacheKey) ?? []), route.name]);
  }
  const tokens = new TokenProvider({ onEvent: (event) => logTokenEvent(log, event, routeNames.get(event.key) ?? []) });
  const server = createProxyServer({
    routes: () => routes,
    tokens,
    inbound,
    onRequest: (record) => logRequest(log, record),
    onInternalError: (err) => log.error({ err }, 'internal error while proxying'),
    onClientError: (code) => log.warn({ code }, 'malformed request rejected'),
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.listen.port, config.listen.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const bound = server.address() as AddressInfo;
  const address = { host: bound.address, port: bound.port };
  log.info(
    {
      listen: `${address.host.includes(':') ? `[${address.host}]` : address.host}:${address.port}`,
      inbound: inbound.summary,
      routes: routes.routes.map(describeRoute),
    },
    'oauth-sidecar listening',
  );
  // Warm the cache so that the first request does not wait for a token.
  for (const route of routes.routes) {
    tokens.getToken(route.tokenClient).catch(() => {
      /* logged through the token events; requests will retry */
    });
  }
  return {
    server,
    address,
    routes,
    tokens,
    inbound,
    async close() {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
      });
      await Promise.all(routes.routes.map(closeRoute));
    },
  };
}

async function loadRoute(route: Config['routes'][number], config: Readonly<Config>, log: Logger): Promise<Route> {
  const { credentials, notices } = await loadCredentials(route.credentials);
  for (const notice of notices) log[notice.level]({ route: route.name, source: credentials.source }, notice.message);
  return createRoute(route, credentials, { network: config.network, tokenTimeoutMs: config.tokenTimeoutMs });
}

async function inboundControl(config: Readonly<Config>): Promise<InboundControl> {
  const problems: ConfigProblem[] = [];
  const options: { -readonly [K in keyof InboundControlOptions]: InboundControlOptions[K] } = {
    allowAnySender: config.inbound.allowAnySender,
  };
  const file = config.inbound.basicAuthFile;
  if (file) {
    try {
      options.basicAuth = parseBasicAuthFile(await readFile(file, 'utf8'), file);
    } catch (err) {
      if (err instanceof ConfigError) problems.push(...err.problems);
      else problems.push({ source: file, field: 'basic-auth-file', message: `cannot read (${(err as NodeJS.ErrnoException).code ?? 'error'})` });
    }
  }
  if (config.inbound.allowCidrs.length > 0) {
    try {
      options.allowlist = parseAllowlist(config.inbound.allowCidrs, 'allow-cidr');
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      problems.push(...err.problems);
    }
  }
  problems.push(...exposureProblems(config.listen.host, options, '--listen'));
  if (problems.length > 0) throw new ConfigError(problems);
  return createInboundControl(options, 'inbound');
}

function describeRoute(route: Route) {
  return {
    name: route.name,
    prefix: route.prefix,
    upstream: route.origin + route.basePath,
    credentialSource: route.credentials.source,
    keyType: route.credentials.kind,
    clientId: route.credentials.clientId,
    tokenUrl: route.credentials.tokenUrl,
    tokenAuth: route.tokenClient.authMethod,
    csrf: route.config.csrf,
  };
}

function logTokenEvent(log: Logger, event: TokenEvent, routes: string[]): void {
  switch (event.type) {
    case 'fetched':
      log.info(
        { routes, expiresAt: new Date(event.token.expiresAt).toISOString(), lifetimeSource: event.token.lifetimeSource, durationMs: Math.round(event.durationMs) },
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
    case 'hit':
      return;
  }
}

function logRequest(log: Logger, r: RequestRecord): void {
  const level = r.status >= 500 || r.error === 'INTERNAL' ? 'warn' : 'info';
  log[level](
    {
      route: r.route,
      method: r.method,
      path: r.path,
      status: r.status,
      upstreamStatus: r.upstreamStatus,
      durationMs: Math.round(r.durationMs * 10) / 10,
      bytesIn: r.bytesIn,
      bytesOut: r.bytesOut,
      ...(r.error && { error: r.error }),
      ...(r.retried && { retried: r.retried }),
      ...(r.aborted && { aborted: true }),
    },
    'request',
  );
}
