/**
 * Outbound HTTPS connection pools (undici) with the sidecar's TLS rules.
 *
 * TLS verification is always on, and `--ca` only ever *adds* trust anchors to
 * Node's default store (`addedAnchors`). A corporate proxy (`HTTPS_PROXY`/`NO_PROXY`, resolved by
 * `config`) is reached through undici's EnvHttpProxyAgent; the client
 * certificate is given to both `connect` (direct connections) and `requestTls`
 * (the TLS session inside the CONNECT tunnel), so mTLS works through a proxy.
 * Failures to connect to the proxy itself are marked as such (`network-error`),
 * so that messages blame the proxy, not the target it never reached.
 *
 * The classes (and Pool, which Agent loads anyway) come from their own modules,
 * not undici's index: the index also loads fetch, WebSocket, EventSource, the
 * cache stores and the mocks, none of which the sidecar uses, and that costs
 * about 7.5 MB of resident memory (a process
 * loading the sidecar's dependencies, after a full GC: 65–66 MB with the index,
 * 58 MB without; node alone is 45 MB).
 * The one thing the index does that the sidecar needs is below: it gives every
 * dispatcher `request()` (and `stream()`, …) by mixing undici's api into
 * `Dispatcher.prototype`; doing it twice, should something load the index too,
 * changes nothing.
 */
import { isIP } from 'node:net';
import * as tls from 'node:tls';
import type { buildConnector, Dispatcher, Pool as UndiciPool } from 'undici';
import api from 'undici/lib/api/index.js';
import Agent from 'undici/lib/dispatcher/agent.js';
import DispatcherClass from 'undici/lib/dispatcher/dispatcher.js';
import EnvHttpProxyAgent from 'undici/lib/dispatcher/env-http-proxy-agent.js';
import Pool from 'undici/lib/dispatcher/pool.js';
import { markProxyConnectFailure, proxyEndpoint } from './network-error.js';

Object.assign(DispatcherClass.prototype, api);

export interface OutboundNetwork {
  /** `--ca` trust anchors (PEM), added to Node's default store. */
  ca: readonly string[];
  /**
   * The `NODE_EXTRA_CA_CERTS` file as `config` read it (with `--ca` only). Node adds it to its shared default
   * store at start, which the copy `--ca` is added to does not hold on Node 20; `addedAnchors` adds it again.
   */
  extraCaCerts?: { file: string; pem: string } | undefined;
  /** `HTTPS_PROXY`; empty or absent for direct connections. */
  httpsProxy?: string | undefined;
  /** `NO_PROXY` as given (comma- or space-separated hosts, `*` for none). */
  noProxy?: string | undefined;
}

export interface DispatcherOptions {
  network: OutboundNetwork;
  /** PEM chain (leaf first) and key for mTLS. */
  clientCert?: { certificate: string; key: string } | undefined;
  connectTimeoutMs: number;
  headersTimeoutMs: number;
  bodyTimeoutMs: number;
  keepAliveTimeoutMs?: number;
  /** Max connections per origin; undefined = unlimited. */
  connections?: number | undefined;
}

export function createDispatcher(options: DispatcherOptions): Dispatcher {
  // One secure context per pool: built per connection, the root store alone costs ~45 ms of CPU once
  // extra CAs are given. Rotation builds a new pool, hence a new context.
  const secureContext = tls.createSecureContext({
    ...(options.clientCert && { cert: options.clientCert.certificate, key: options.clientCert.key }),
    minVersion: 'TLSv1.2',
  });
  // Not the `ca` option: it *replaces* node's default store, whatever that is (the bundled list, or OpenSSL's
  // under --use-openssl-ca and in distribution builds of node, the OS store under --use-system-ca), and its
  // contents cannot all be listed from JavaScript. Added this way, node gives the context a store of its own
  // built as its default one was (`SecureContext::AddCACert`), and the anchors go on top.
  for (const pem of addedAnchors(options.network)) (secureContext.context as { addCACert(pem: string): void }).addCACert(pem);
  // Explicit, so that NODE_TLS_REJECT_UNAUTHORIZED=0 in the environment (set in some corporate images to get
  // past a TLS-inspecting proxy) cannot turn verification off: node reads it only when this is left unset.
  const connect = { secureContext, timeout: options.connectTimeoutMs, rejectUnauthorized: true };
  const agentOptions = {
    connect,
    headersTimeout: options.headersTimeoutMs,
    bodyTimeout: options.bodyTimeoutMs,
    keepAliveTimeout: options.keepAliveTimeoutMs ?? 4_000,
    ...(options.connections !== undefined && { connections: options.connections }),
  };
  const proxy = options.network.httpsProxy;
  if (!proxy) return new Agent(agentOptions);
  const endpoint = proxyEndpoint(proxy);
  return new EnvHttpProxyAgent({
    ...agentOptions,
    requestTls: connect,
    // An https:// proxy is verified against Node's default store, never not at all. The route's connect limit
    // holds for the connection to the proxy too (undici's own default would be 10 s).
    proxyTls: { rejectUnauthorized: true, timeout: options.connectTimeoutMs, checkServerIdentity: checkProxyIdentity },
    // The pool to the proxy (undici's default, a Pool): what fails before the proxy answers a CONNECT is marked, so
    // that it is not taken for a failure of the target, which it never reached; and its CONNECTs are bounded.
    clientFactory: (origin: URL, poolOptions: { connect?: buildConnector.connector }) => {
      const shown = endpoint ?? origin.host;
      // The CONNECT's answer is bounded by the connect limit too (undici's header timer: it starts once the
      // CONNECT is written, and lets pending I/O win over a late timer; it ticks about once a second, so it fires up
      // to ~1 s late).
      const pool = new Pool(origin, { ...poolOptions, connect: withoutAddressServername(poolOptions.connect), headersTimeout: options.connectTimeoutMs });
      return markingTunnelFailures(pool, shown);
    },
    httpsProxy: proxy,
    // '' (not undefined) keeps undici from reading the environment itself: only HTTPS is proxied.
    httpProxy: '',
    noProxy: options.network.noProxy ?? '',
  });
}

/**
 * undici names an https:// proxy at an address by its URL host in SNI (`[::1]`, brackets and all, or `10.0.0.5`,
 * which draws node's DEP0123 warning), where RFC 6066 §3 allows no address: none is sent (undici's connector then
 * sends none, as for a target at an address).
 */
function withoutAddressServername(connect: buildConnector.connector | undefined): buildConnector.connector | undefined {
  if (connect === undefined) return undefined;
  return (opts, callback) => {
    const name = opts.servername?.replace(/^\[(.*)\]$/, '$1');
    connect(name !== undefined && name !== null && isIP(name) !== 0 ? { ...opts, servername: '' } : opts, callback);
  };
}

/**
 * undici gives a proxy at an IPv6 address its URL host, brackets and all (`[::1]`), as the name to check, which
 * then never matches the certificate's IP address: checked without them.
 */
function checkProxyIdentity(host: string, cert: tls.PeerCertificate): Error | undefined {
  return tls.checkServerIdentity(host.replace(/^\[(.*)\]$/, '$1'), cert);
}

/**
 * Whether a connection to `host` (an https:// URL's `host`) goes through `network`'s proxy: undici's
 * EnvHttpProxyAgent rules (7.x: `*` alone bypasses all; an entry, with `.` or `*.` before it, names the host and
 * its subdomains, on any port or the one it gives), for messages that must not blame a proxy the host bypasses.
 */
export function goesThroughProxy(network: OutboundNetwork, host: string): boolean {
  if (!network.httpsProxy) return false;
  const noProxy = network.noProxy ?? '';
  if (noProxy === '*') return false;
  let url: URL;
  try {
    url = new URL(`https://${host}`);
  } catch {
    return true; // no host undici could connect to either way: the proxy is not ruled out
  }
  const hostname = url.host.replace(/:\d*$/, '').toLowerCase();
  const port = Number(url.port) || 443;
  for (const entry of noProxy.split(/[,\s]/)) {
    if (entry === '') continue;
    const parsed = /^(.+):(\d+)$/.exec(entry);
    const name = (parsed ? parsed[1]! : entry).replace(/^\*?\./, '').toLowerCase();
    const entryPort = parsed ? Number.parseInt(parsed[2]!, 10) : 0;
    if (entryPort !== 0 && entryPort !== port) continue;
    if (hostname === name || hostname.endsWith(`.${name}`)) return false;
  }
  return true;
}

/**
 * The pool to the proxy, with what fails before a CONNECT is answered marked as the proxy's (the target was not
 * contacted): the connection to the proxy (refused, DNS, its connect limit, TLS to an https:// proxy, which reach
 * the CONNECT as its error), a reset, an answer that is not HTTP (a wrong port in HTTPS_PROXY), no answer within the
 * limit, and a connection closed before the answer. undici 7 reports that last one as `UND_ERR_SOCKET`, which the target's pool
 * takes for a passing socket error and answers by connecting again, thousands of times a second and for ever
 * (undici issue #3897, fixed only in undici 8, which needs Node 22); it becomes `ECONNRESET`, which fails the
 * request. A pool closed or destroyed under the request (shutdown, rotation) is not the proxy's doing.
 */
function markingTunnelFailures(pool: UndiciPool, proxy: string): UndiciPool {
  const connectVia = pool.connect.bind(pool) as (o: Dispatcher.ConnectOptions) => Promise<Dispatcher.ConnectData>;
  // ProxyAgent calls the promise form only; the callback form is passed through as it is.
  Object.defineProperty(pool, 'connect', {
    configurable: true,
    writable: true,
    value: (o: Dispatcher.ConnectOptions, callback?: unknown) =>
      callback === undefined
        ? connectVia(o).catch((err: unknown) => {
            throw tunnelFailure(err, proxy);
          })
        : (connectVia as (o: Dispatcher.ConnectOptions, callback: unknown) => void)(o, callback),
  });
  return pool;
}

function tunnelFailure(err: unknown, proxy: string): unknown {
  const code = (err as { code?: unknown } | null)?.code;
  if (code === 'UND_ERR_DESTROYED' || code === 'UND_ERR_CLOSED') return err;
  const failure =
    code === 'UND_ERR_SOCKET'
      ? Object.assign(new Error('the HTTPS proxy closed the connection before answering the CONNECT', { cause: err }), { code: 'ECONNRESET' })
      : err;
  markProxyConnectFailure(failure, proxy);
  return failure;
}

/**
 * The trust anchors added to node's default store: none without `--ca` (node's own store, NODE_EXTRA_CA_CERTS
 * included, is used as it is); with it, the NODE_EXTRA_CA_CERTS certificates (which node 20 keeps in its shared
 * store only, not in the context's copy; a duplicate on node 24 is harmless) and the `--ca` ones.
 */
export function addedAnchors(network: OutboundNetwork): string[] {
  if (network.ca.length === 0) return [];
  return [...(network.extraCaCerts ? [network.extraCaCerts.pem] : []), ...network.ca];
}
