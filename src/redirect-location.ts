/**
 * An upstream's `Location` (a redirect, or the resource a 201 created: an OData create answers with its URL)
 * as the sender has to follow it. A URL on the route's upstream, under the path the route forwards to, is
 * turned into the same resource behind the sidecar: its address and the route's prefix, as nginx's
 * `proxy_redirect default` does. Followed as the upstream wrote it, it would take the sender past the
 * sidecar: over HTTPS, which a legacy sender may not speak, and without a token. Any other `Location` (another
 * host, an identity provider's login page, a path outside the route) is passed on as it came.
 *
 * An absolute URL stays absolute (`http://` and the sender's own `Host`; RFC 1945 senders know no other
 * kind), a relative reference stays relative (RFC 9110 §10.2.2 allows it).
 */
import type { Route } from './routes.js';

/** What of a route the mapping needs. */
export type LocationRoute = Pick<Route, 'origin' | 'basePath' | 'prefix'> & { readonly config: { readonly rewritePrefix: string | undefined } };

/** A `Host` header that can stand in a URL as it is: a name or IPv4 address, or a bracketed IPv6 one, and a port. */
const HOST = /^(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$/;

/** An absolute URL or a network-path reference (`//host/…`): anything that names a host. */
const NAMES_HOST = /^(?:[A-Za-z][A-Za-z0-9+.-]*:|\/\/)/;

/**
 * `location` as the sender must see it, given the upstream request it answers (`upstreamPath`: path and
 * query, as forwarded) and the sender's `Host` header.
 */
export function senderLocation(location: string, route: LocationRoute, upstreamPath: string, senderHost: string | undefined): string {
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
  const relative = senderPath + url.search + url.hash;
  if (!NAMES_HOST.test(location.trimStart())) return relative;
  return senderHost !== undefined && HOST.test(senderHost) ? `http://${senderHost}${relative}` : relative;
}

/** A normalised route path as the segments it stands for: the root `/` stands for none. */
function segments(path: string): string {
  return path === '/' ? '' : path;
}
