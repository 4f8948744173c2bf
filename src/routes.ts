/**
 * Routes at run time: a path prefix bound to its upstream pool, token client
 * and CSRF session. The longest matching prefix wins; the upstream comes only
 * from configuration, never from the request, so the sidecar is never an open
 * proxy.
 */
import type { Dispatcher } from 'undici';
import type { RouteConfig } from './config.js';
import type { Credentials } from './credentials.js';
import { CsrfSession } from './csrf-session.js';
import { createDispatcher, type OutboundNetwork } from './dispatcher.js';
import { ConfigError } from './errors.js';
export { hasDotSegment } from './dot-segment.js';
import { createTokenClient, type TokenClient } from './token-client.js';

export interface Route {
  readonly name: string;
  readonly prefix: string;
  readonly config: RouteConfig;
  readonly credentials: Credentials;
  /** `https://host:port` of the upstream. */
  readonly origin: string;
  /** Path the upstream URL carries (`''` or `/base`), prepended to forwarded paths. */
  readonly basePath: string;
  readonly tokenClient: TokenClient;
  readonly dispatcher: Dispatcher;
  readonly csrf: CsrfSession | undefined;
}

export interface RouteDeps {
  network: OutboundNetwork;
  tokenTimeoutMs: number;
}

/** Bind a configured route to its credentials: pools, token client, CSRF session. */
export function createRoute(config: RouteConfig, credentials: Credentials, deps: RouteDeps): Route {
  const upstream = config.upstream ?? credentials.url;
  if (!upstream) {
    throw new ConfigError([
      { source: credentials.source, field: 'url', message: `route ${config.name}: the service key has no url; set --upstream (or upstream: on the route)` },
    ]);
  }
  const url = new URL(upstream);
  return {
    name: config.name,
    prefix: config.prefix,
    config,
    credentials,
    origin: url.origin,
    basePath: url.pathname.replace(/\/+$/, ''),
    tokenClient: createTokenClient({ credentials, settings: config.token, network: deps.network, attemptTimeoutMs: deps.tokenTimeoutMs }),
    dispatcher: createDispatcher({
      network: deps.network,
      connectTimeoutMs: config.timeouts.connectMs,
      headersTimeoutMs: config.timeouts.responseMs,
      bodyTimeoutMs: config.timeouts.idleMs,
      // Below the ~60 s idle timeout of SAP's load balancers, so the pool drops a socket before the server does.
      keepAliveTimeoutMs: 30_000,
    }),
    csrf: config.csrf === 'auto' ? new CsrfSession() : undefined,
  };
}

export async function closeRoute(route: Route): Promise<void> {
  await Promise.all([route.dispatcher.close(), route.tokenClient.close()]);
}

/**
 * Drop a route's pools at shutdown, once every sender has been answered or cut and its token requests were
 * abandoned: what they still carry (a CSRF fetch no sender waits for any more) is not waited for up to its
 * timeout. Idempotent, also for a route whose `closeRoute` is under way or done.
 */
export async function discardRoute(route: Route): Promise<void> {
  await Promise.all([route.dispatcher.destroy(), route.tokenClient.destroy()]);
}

export class RouteTable {
  readonly routes: readonly Route[];
  readonly #byLength: readonly Route[];

  constructor(routes: readonly Route[]) {
    this.routes = routes;
    this.#byLength = [...routes].sort((a, b) => b.prefix.length - a.prefix.length);
  }

  /** The route with the longest prefix matching `pathname` at a segment boundary. */
  match(pathname: string): Route | undefined {
    for (const route of this.#byLength) {
      if (prefixMatches(route.prefix, pathname)) return route;
    }
    return undefined;
  }
}

/** `prefix` as `config` normalises it (`routePath`): no trailing `/` unless it is the root. */
function prefixMatches(prefix: string, pathname: string): boolean {
  if (!pathname.startsWith(prefix)) return false;
  // `/orders` serves `/orders`, `/orders/` and `/orders/…`, not `/ordersx`; `/` serves every path.
  return prefix === '/' || pathname.length === prefix.length || pathname.charCodeAt(prefix.length) === 0x2f;
}

/**
 * The upstream request target for `target` (origin-form path + query) on `route`: the upstream's base path,
 * then `target` with the route's prefix replaced by `rewritePrefix` when one is set. What follows the prefix
 * is kept as sent, a trailing `/` included: `/orders` and `/orders/` are different resources upstream.
 */
export function upstreamTarget(route: Route, target: string): string {
  const rewrite = route.config.rewritePrefix;
  if (rewrite === undefined) return route.basePath + target;
  const path = route.basePath + routeSegments(rewrite) + target.slice(routeSegments(route.prefix).length);
  // Only an empty base, a rewrite to `/` and a sender's path equal to the prefix leave nothing.
  return path === '' || path.startsWith('?') ? `/${path}` : path;
}

/** A normalised route path as the segments it stands for: the root `/` stands for none. */
export function routeSegments(path: string): string {
  return path === '/' ? '' : path;
}
