/**
 * An upstream's `Location` (a redirect, or the resource a 201 created: an OData create answers with its URL)
 * as the sender has to follow it. A URL on the route's upstream, under the path the route forwards to, is
 * turned into the same resource behind the sidecar: its address and the route's prefix, as nginx's
 * `proxy_redirect default` does. Followed as the upstream wrote it, it would take the sender past the
 * sidecar: over HTTPS, which a legacy sender may not speak, and without a token. Any other `Location` (another
 * host, an identity provider's login page, a path outside the route) is passed on as it came.
 *
 * An absolute URL stays absolute (`http://` and the sender's own `Host`, or the address it reached when it sent
 * none; RFC 1945 senders know no other kind), a relative reference stays relative (RFC 9110 §10.2.2 allows it).
 * The value is rewritten only where the result is sure to mean the same resource: not when it has bytes the
 * URL parser would re-encode (undici hands header values over as latin1, so UTF-8 would come out
 * double-encoded), not when the path would start with `//` (a reference to another host), and not when the
 * sidecar would route the new path elsewhere (a longer prefix of another route).
 */
import type { Route } from './routes.js';

/** What of a route the mapping needs. */
export type LocationRoute = Pick<Route, 'name' | 'origin' | 'basePath' | 'prefix'> & { readonly config: { readonly rewritePrefix: string | undefined } };

/** A `Host` header that can stand in a URL as it is: a name or IPv4 address, or a bracketed IPv6 one, and a port. */
const HOST = /^(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$/;

/** An absolute URL or a network-path reference (`//host/…`): anything that names a host. */
const NAMES_HOST = /^(?:[A-Za-z][A-Za-z0-9+.-]*:|\/\/)/;

/** Printable ASCII only, once the whitespace around it is gone: what the URL parser passes through unchanged. */
const PLAIN = /^[\x21-\x7e]*$/;

/**
 * `location` as the sender must see it, given the upstream request it answers (`upstreamPath`: path and
 * query, as forwarded), the sender's host (its `Host` header, or the address it reached) and the name of the
 * route the sidecar would give a path.
 */
export function senderLocation(
  location: string,
  route: LocationRoute,
  upstreamPath: string,
  senderHost: string | undefined,
  routeOf: (path: string) => string | undefined,
): string {
  if (!PLAIN.test(location.trim())) return location;
  let url: URL;
  try {
    url = new URL(location, route.origin + upstreamPath);
  } catch {
    return location; // not a URL the sender could follow either: its business
  }
  if (url.origin !== route.origin || url.username !== '' || url.password !== '') return location;
  const upstreamBase = route.basePath + segments(route.config.rewritePrefix ?? route.prefix);
  const path = url.pathname;
  if (upstreamBase !== '' && path !== upstreamBase && !path.startsWith(`${upstreamBase}/`)) return location;
  const senderPath = segments(route.prefix) + path.slice(upstreamBase.length) || '/';
  // `//x/…` names host x: never made out of a path on the upstream. Nor a path another route would take.
  if (senderPath.startsWith('//') || routeOf(senderPath) !== route.name) return location;
  const relative = senderPath + url.search + url.hash;
  if (!NAMES_HOST.test(location.trimStart())) return relative;
  return senderHost !== undefined && HOST.test(senderHost) ? `http://${senderHost}${relative}` : relative;
}

/** A normalised route path as the segments it stands for: the root `/` stands for none. */
function segments(path: string): string {
  return path === '/' ? '' : path;
}

/** `host:port` of the address a sender reached (`Location` for a sender that sent no `Host`: HTTP/1.0). */
export function reachedHost(address: string | undefined, port: number | undefined): string | undefined {
  if (address === undefined || port === undefined) return undefined;
  return address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`;
}
