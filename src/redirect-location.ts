/**
 * An upstream's `Location` (a redirect, or the resource a 201 created: an OData create answers with its URL)
 * as the sender has to follow it. A URL on the route's upstream, under the path the route forwards to, is
 * turned into the same resource behind the sidecar: its address and the route's prefix, as nginx's
 * `proxy_redirect default` does. Followed as the upstream wrote it, it would take the sender past the
 * sidecar: over HTTPS, which a legacy sender may not speak, and without a token. Any other absolute `Location`
 * (another host, an identity provider's login page, a path outside the route) is passed on as it came.
 *
 * An absolute URL stays absolute (`http://` and the sender's own `Host`, or the address it reached when it sent
 * none; RFC 1945 senders know no other kind), a relative reference stays relative (RFC 9110 §10.2.2 allows it).
 * The value is rewritten only where the result is sure to mean the same resource, keeping the upstream's bytes of
 * path, query and fragment: not when it has bytes outside printable ASCII (undici hands header values over as
 * latin1) and needs the URL parser (all but a path from the root), not when the path would start with `//` (a
 * reference to another host), has dot segments (the sidecar refuses those), would be routed elsewhere (a longer
 * prefix of another route) or is the base path itself on the root route (whose `/` is the base's `/`). A relative
 * reference that is not mapped becomes the absolute upstream URL it stands for: against the sidecar's address it
 * would mean another path.
 */
import { hasDotSegment, routeSegments, type Route } from './routes.js';

/** What of a route the mapping needs. */
export type LocationRoute = Pick<Route, 'name' | 'origin' | 'basePath' | 'prefix'> & { readonly config: { readonly rewritePrefix: string | undefined } };

/** A `Host` header that can stand in a URL as it is: a name or IPv4 address, or a bracketed IPv6 one, and a port. */
const HOST = /^(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$/;

/** An absolute URL or a network-path reference (`//host/…`): anything that names a host. */
const NAMES_HOST = /^(?:[A-Za-z][A-Za-z0-9+.-]*:|\/\/)/;

/** Printable ASCII only (once the whitespace around it is gone): bytes outside it are passed on untouched. */
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
  const text = location.trim();
  if (!PLAIN.test(text)) {
    // Bytes the URL parser would re-encode (undici hands a header value over as latin1): an absolute URL passes as it
    // came; a path from the root needs no parser, so it is mapped on its own bytes — or, outside the route, becomes the
    // upstream URL it stands for. Anything else (a path relative to the request's) passes as it came.
    if (!text.startsWith('/') || text.startsWith('//') || text.includes('\\')) return location;
    return mapped(text, false, route.origin + text, route, senderHost, routeOf);
  }
  // A scheme without `//` (`https:foo`, `https:/x`): the URL parser reads it as relative, its text says otherwise.
  if (/^[A-Za-z][A-Za-z0-9+.-]*:(?!\/\/)/.test(text)) return location;
  let url: URL;
  try {
    url = new URL(text, route.origin + upstreamPath);
  } catch {
    return location; // not a URL the sender could follow either: its business
  }
  const absolute = NAMES_HOST.test(text);
  // Not mapped: as it came when it names its host; a relative one as the upstream's URL it stands for, which is
  // what the upstream meant (resolved against the sidecar's address, it would land on another path of the
  // sidecar, maybe another route's, with that route's token).
  const unmapped = absolute ? location : url.href;
  if (url.origin !== route.origin || url.username !== '' || url.password !== '') return unmapped;
  // A back slash anywhere: the URL parser reads it as `/` (ending the authority too), its text says otherwise.
  if (text.includes('\\')) return unmapped;
  // Path, query and fragment as written, so that the sender gets the upstream's bytes (the URL parser would
  // re-encode quotes in a query, braces, a back quote); a relative path (`list`, `../x`) only the parser resolves,
  // and takes the reference's own query and fragment (RFC 3986 §5.2.2; the request's query only for a bare `#…`).
  const rest = absolute ? afterAuthority(text) : text.startsWith('/') ? text : url.pathname + relativeTail(text, url.search);
  return mapped(rest, absolute, unmapped, route, senderHost, routeOf);
}

/** Query and fragment of a path-relative reference, as written: its own, or for `#…` (and ``) the base's query too. */
function relativeTail(text: string, baseSearch: string): string {
  const cut = text.search(/[?#]/);
  const tail = cut < 0 ? '' : text.slice(cut);
  return text === '' || text.startsWith('#') ? baseSearch + tail : tail;
}

/**
 * `rest` (path, query and fragment on the upstream) as the sender's path behind the sidecar, absolute on the sender's
 * host when `absolute`; `unmapped` where that would not mean the same resource.
 */
function mapped(rest: string, absolute: boolean, unmapped: string, route: LocationRoute, senderHost: string | undefined, routeOf: (path: string) => string | undefined): string {
  const cut = rest.search(/[?#]/);
  const path = (cut < 0 ? rest : rest.slice(0, cut)) || '/';
  const tail = cut < 0 ? '' : rest.slice(cut);
  // A path the sidecar would refuse.
  if (hasDotSegment(path)) return unmapped;
  const upstreamBase = route.basePath + routeSegments(route.config.rewritePrefix ?? route.prefix);
  if (upstreamBase !== '' && path !== upstreamBase && !path.startsWith(`${upstreamBase}/`)) return unmapped;
  // The base itself, on the root route: the sender's `/` is forwarded as the base and a `/` (another resource, and
  // an upstream that redirects one to the other would send the sender round for ever).
  const senderPath = routeSegments(route.prefix) + path.slice(upstreamBase.length);
  if (senderPath === '') return unmapped;
  // `//x/…` names host x: never made out of a path on the upstream, also not as `/<TAB>/x/…` (URL parsers, WHATWG's
  // and Python's, drop every TAB, CR and LF first). Nor a path another route would take.
  if (senderPath.replace(/[\t\n\r]/g, '').startsWith('//') || routeOf(senderPath) !== route.name) return unmapped;
  const relative = senderPath + tail;
  if (!absolute) return relative;
  return senderHost !== undefined && HOST.test(senderHost) && URL.canParse(`http://${senderHost}/`) ? `http://${senderHost}${relative}` : relative;
}

/** What follows the authority of an absolute URL or a network-path reference: path, query and fragment. */
function afterAuthority(text: string): string {
  const start = text.indexOf('//') + 2;
  const end = text.slice(start).search(/[/?#]/);
  return end < 0 ? '' : text.slice(start + end);
}

/** `host:port` of the address a sender reached (`Location` for a sender that sent no `Host`: HTTP/1.0). */
export function reachedHost(address: string | undefined, port: number | undefined): string | undefined {
  if (address === undefined || port === undefined) return undefined;
  // An IPv4 sender on a `[::]` listener reached an IPv4 address, which node shows mapped: written as the sender knows it.
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address)?.[1];
  if (mapped !== undefined) return `${mapped}:${port}`;
  return address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`;
}
