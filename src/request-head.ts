/**
 * Request head: why a request's framing, fields or target cannot be trusted, checked before anything else is done
 * with it (RFC 9112).
 *
 * Most of these, node's HTTP parser refuses already; what it lets through is checked here. How much it lets through
 * depends on node's version: node 20.19.0 and 20.19.1 (llhttp 8) take a field name with a space or nothing in it
 * (`Bad Name: x`, `: x`, `X-A : x`) and a target with raw bytes outside visible ASCII (a TAB, `\xff`), which
 * newer parsers refuse. Such a head is not one HTTP message for certain, so it gets the same answer on every node
 * the sidecar supports: 400, and the connection closes.
 */
import type { IncomingMessage } from 'node:http';

/** A field name is a token (RFC 9110 §5.6.2, §5.1); whitespace before the colon is refused (RFC 9112 §5.1). */
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** A request target is visible ASCII (RFC 9112 §3.2, RFC 3986: non-ASCII is percent-encoded). */
const NOT_VISIBLE_ASCII = /[^\x21-\x7e]/;

/**
 * Why `req`'s head cannot be trusted, else `undefined`: a field name that is no token (RFC 9110 §5.1), or a target
 * with a byte outside visible ASCII (RFC 9112 §3.2); a `Transfer-Encoding` other than chunked, or any in an
 * HTTP/1.0 request (§6.1); an HTTP/1.1 request without `Host`, or any request with two (§3.2: node keeps the first
 * and drops the rest, and HTTP/1.0 senders may omit it); a fragment, which no request target carries (§3.2.1).
 */
export function headRefusal(req: Pick<IncomingMessage, 'headers' | 'rawHeaders' | 'httpVersion'>, target: string): string | undefined {
  let hosts = 0;
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (!TOKEN.test(name)) return 'a header field name that is not a token (RFC 9110 §5.1): empty, or with a space or another separator';
    if (name.length === 4 && name.toLowerCase() === 'host') hosts++;
  }
  if (NOT_VISIBLE_ASCII.test(target)) return 'a request target with a byte outside visible ASCII (RFC 9112 §3.2): non-ASCII must be percent-encoded';
  const codings = req.headers['transfer-encoding'];
  if (codings !== undefined) {
    // node's parser refuses other codings already: this is defence in depth.
    if (!onlyChunked(codings)) return 'unsupported Transfer-Encoding';
    if (req.httpVersion === '1.0') return 'Transfer-Encoding in an HTTP/1.0 request: its framing cannot be trusted (RFC 9112 §6.1)';
  }
  // node's parser takes lengths up to 2^64 − 1, but undici reads and writes one as a JavaScript number: one past
  // 2^53 − 1 would go upstream rounded, not the message's length (RFC 9110 §8.6).
  const length = req.headers['content-length'];
  if (length !== undefined && Number(length) > Number.MAX_SAFE_INTEGER) return `a Content-Length over ${Number.MAX_SAFE_INTEGER} bytes cannot be forwarded exactly`;
  if (hosts > 1) return 'more than one Host header';
  if (hosts === 0 && req.httpVersion !== '1.0') return 'an HTTP/1.1 request must carry a Host header';
  if (target.includes('#')) return 'a fragment (#) is not part of a request target';
  return undefined;
}

/** `Transfer-Encoding: chunked` and nothing else, as requests and answers are framed here. */
export function onlyChunked(codings: string | string[]): boolean {
  return typeof codings === 'string' && codings.trim().toLowerCase() === 'chunked';
}
