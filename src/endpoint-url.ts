/**
 * The rules every URL the sidecar sends requests to follows, wherever it is set: a route's upstream (flags,
 * variables, the config file) and a service key's `url` and `tokenurl`. One place, so the same URL gets the same
 * verdict and the same words whether it came from a flag or a key. Messages never echo the value: it may carry a
 * password or a signed query.
 */
import { PORT_ZERO_PROBLEM } from './errors.js';

/** Plain HTTP is for local test servers only. */
const LOOPBACK_HOSTS: ReadonlySet<string> = new Set(['127.0.0.1', 'localhost', '[::1]']);

/**
 * `value` as a URL, or the first rule it breaks: https only (http only to a loopback host); no user name or
 * password (dropped on the way out, or shown wherever the URL is); a port to connect to; and for an upstream
 * no query or fragment (each request's own query is what goes upstream). A token URL may carry a query: it is sent.
 */
export function endpointUrl(value: string, use: 'upstream' | 'token'): { url: URL; problem?: undefined } | { url?: undefined; problem: string } {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return { problem: 'is not a URL' };
  }
  if (url.protocol !== 'https:' && !(url.protocol === 'http:' && LOOPBACK_HOSTS.has(url.hostname))) {
    return { problem: 'must be an https URL (http only for 127.0.0.1, localhost or ::1)' };
  }
  if (url.username || url.password) return { problem: 'must not carry a user name or password (credentials come from the service key)' };
  if (url.port === '0') return { problem: PORT_ZERO_PROBLEM };
  if (use === 'upstream' && (url.search || url.hash)) {
    return { problem: "must not carry a query or a fragment: each request's own query is what goes upstream" };
  }
  return { url };
}
