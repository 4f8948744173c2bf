/**
 * The sidecar's HTTP server: node's server hardened for a proxy in front of legacy senders (head timeout against
 * slowloris, bounded heads, every header field checked, no 100 Continue before the handler decides, CONNECT
 * refused, parser errors answered once), with the proxy handler (`proxy.ts`) attached. It also tracks the sender
 * connections so that a stop can close them all and wait until what each close sets off has run.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';
import { ALLOWED_METHODS, createProxyHandler, type ProxyOptions } from './proxy.js';
import {
  ANSWERING,
  closeAfterAnswersOwed,
  cut,
  OVER_LIMIT,
  OWED,
  REFUSAL_LINGER_MS,
  REFUSED,
  refuseRaw,
  TURNS,
  type AnsweringSocket,
  type MarkedSocket,
} from './sender-connection.js';

export interface ServerLimits {
  /** Time to receive the request head (slowloris). */
  headersTimeoutMs: number;
  /** Idle keep-alive connections are closed after this. */
  keepAliveTimeoutMs: number;
  /** A socket silent this long is closed (covers stalled uploads). */
  socketIdleTimeoutMs: number;
  maxHeaderSize: number;
}

export const DEFAULT_SERVER_LIMITS: ServerLimits = {
  headersTimeoutMs: 20_000,
  // Longer than typical client pools' idle time, so the client closes first (nodejs/node#47130).
  keepAliveTimeoutMs: 65_000,
  socketIdleTimeoutMs: 120_000,
  maxHeaderSize: 16 * 1024,
};

/** The sidecar's HTTP server, hardened, with the proxy handler attached. */
export function createProxyServer(options: ProxyOptions, limits: ServerLimits = DEFAULT_SERVER_LIMITS): Server {
  const handler = createProxyHandler(options);
  const server = createServer(
    {
      headersTimeout: limits.headersTimeoutMs,
      // Node checks header and request timeouts on this interval (default 30 s): make slowloris cuts timely.
      connectionsCheckingInterval: Math.max(50, Math.min(1_000, Math.floor(limits.headersTimeoutMs / 4))),
      // A whole 1 GiB upload may take long; stalls are cut by the socket idle timeout instead.
      requestTimeout: 0,
      keepAliveTimeout: limits.keepAliveTimeoutMs,
      maxHeaderSize: limits.maxHeaderSize,
      // Old HTTP/1.0 senders omit Host; the sidecar never routes on it.
      requireHostHeader: false,
    },
    handler,
  );
  server.timeout = limits.socketIdleTimeoutMs;
  // node keeps only the first 2000 fields in req.headers (by default) and still frames the body by all of them:
  // a field behind 2000 short ones (they fit in 16 KiB) would escape every check here — Transfer-Encoding in
  // HTTP/1.0, a second Host, a Connection-listed field — and a Content-Length there would be dropped from the
  // forwarded request while node reads the body. maxHeaderSize bounds the head instead.
  server.maxHeadersCount = 0;
  // `Expect: 100-continue` (RFC 9110 §10.1.1): node alone would send 100 Continue before the handler runs,
  // inviting the body of a request the sidecar is about to refuse. The handler decides first; a request it did
  // not answer at once (forwarded, or waiting for its token) is then told to send its body.
  server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => handler(req, res, true));
  // Any other expectation: node alone would answer a bare 417, unlogged; the handler refuses it as it refuses others.
  server.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => handler(req, res, false));
  // The socket idle timeout is for senders that go silent: a stalled upload, an answer the sender does not read,
  // an idle connection. While the sidecar itself is waiting (a request received whole, its answer not begun or
  // coming from the upstream, nothing owed to the sender unread), the route's timeouts bound the wait and end it
  // with a 504: a long-running flow under a longer --upstream-timeout is not cut without an answer.
  server.on('timeout', (socket: Socket) => {
    if ((socket as MarkedSocket)[TURNS]?.current?.waitsOnSidecar()) socket.setTimeout(limits.socketIdleTimeoutMs);
    else cut(socket);
  });
  const connections = options.connections;
  server.on('connection', (socket: Socket) => {
    // A sender the address rule refuses takes no place under --max-connections (refused senders holding idle
    // connections would lock out allowed ones): its request gets its 403 and the connection closes; one that
    // sends nothing is closed after the time a refusal lingers, not the head timeout.
    if (!options.inbound.senderAllowed(socket.remoteAddress)) {
      socket.setTimeout(REFUSAL_LINGER_MS);
      return;
    }
    if (connections !== undefined && !connections.accept(socket)) (socket as MarkedSocket)[OVER_LIMIT] = true;
  });
  // Never a tunnel: CONNECT is refused before any upstream is involved. With no 'upgrade' listener node serves
  // a request asking for `Upgrade` (Java's HttpClient asks for h2c on every http:// request) as a plain
  // HTTP/1.1 request, which RFC 9110 §7.8 allows, and the header filter drops `Upgrade` and the fields its
  // `Connection` names: nothing is ever switched to another protocol.
  // Sockets node let go of for a CONNECT while answers were still owed on them: closed with the others.
  const detached = new Set<Socket>();
  // Connections that owe no answer — none begun yet (a client's pre-opened socket, a TCP health check), or half
  // the head of the next request on a keep-alive one: node counts them as neither idle nor busy, and stops their
  // head timeout once the server closes, so a stop would wait the whole grace period for them. They go with the
  // idle ones, as nginx closes them at a stop. (Not one already closing: a lingering close reads a refused body.)
  const open = new Set<Socket>();
  OPEN.set(server, open);
  server.on('connection', (socket: Socket) => {
    open.add(socket);
    socket.once('close', () => open.delete(socket));
  });
  // A stop's end (or a second signal) cuts what is left, answers under way with a reset as `fail` does.
  const closeAllConnections = server.closeAllConnections.bind(server);
  server.closeAllConnections = () => {
    for (const socket of open) cut(socket);
    for (const socket of detached) cut(socket);
    closeAllConnections();
  };
  // Idle: owing no answer. Not node's own notion, which takes a response as done once it has ended, though its end
  // may still wait to be written to a slow sender: a stop would cut that answer short (one delimited by the close
  // passing for complete). An answer is owed until its response closes, after its last byte went to the socket.
  server.closeIdleConnections = () => {
    for (const socket of open) if (((socket as MarkedSocket)[OWED] ?? 0) === 0 && socket.writable) socket.destroy();
  };
  server.on('connect', (_req: IncomingMessage, socket: Socket) => {
    // node takes its own 'error' listener off a socket it hands over: without one, a sender's reset would be an
    // unhandled 'error', which ends the process — before any inbound control has run.
    socket.on('error', () => socket.destroy());
    options.observer.clientError('CONNECT');
    const marked = socket as AnsweringSocket & MarkedSocket;
    if ((marked[OWED] ?? 0) > 0) {
      // node has let go of the socket (its drain, idle timeout and connection tracking went with it) while the
      // answers owed are still to be written: they go on, then the connection closes.
      detached.add(socket);
      socket.once('close', () => detached.delete(socket));
      socket.on('drain', () => marked[TURNS]?.current?.socketDrained());
      socket.on('timeout', () => void (server.emit('timeout', socket) || socket.destroy()));
      return closeAfterAnswersOwed(marked);
    }
    refuseRaw(socket, 405, 'CONNECT is not supported: this is not a forward proxy', `allow: ${ALLOWED_METHODS}\r\n`);
  });
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
    const code = err.code ?? 'HPE_UNKNOWN';
    // A reset or broken pipe is the sender going away (counted as an abort when an answer was under way), not
    // a malformed request: only the parser's and node's HTTP errors are. So is a plain close in the middle of
    // a request (HPE_INVALID_EOF_STATE: the sender's process ended during its upload).
    if ((!code.startsWith('HPE_') && !code.startsWith('ERR_HTTP_')) || code === 'HPE_INVALID_EOF_STATE') {
      socket.destroy();
      return;
    }
    const marked = socket as AnsweringSocket & MarkedSocket;
    // Already refused: node's parser stays in its error and reports it again for every later read of the bytes
    // the sender still sends (a head spanning two reads, a sender that writes on regardless). One request, one
    // count and one warning; the connection closes as the refusal said.
    if (marked[REFUSED]) return;
    options.observer.clientError(code);
    const owed = marked[OWED] ?? 0;
    const answering = marked[ANSWERING];
    // An error in the body of the one request being answered concerns that request: it is refused, or cut.
    const inOwnBody = owed === 1 && answering !== undefined && !answering.req.complete;
    // Else answers are owed to earlier, complete requests (e.g. anything after a `Connection: close` request,
    // HPE_CLOSED_CONNECTION, or garbage behind pipelined requests): they go out whole, then the connection closes.
    if (owed > 0 && !inOwnBody && socket.writable) return closeAfterAnswersOwed(marked);
    if (answering?.headersSent) {
      if (inOwnBody) marked[TURNS]?.current?.bodyBroke(undefined);
      // A reset, not a close: an answer without a length ends at the close and would pass for complete.
      if (!socket.destroyed) socket.resetAndDestroy();
      return;
    }
    if (!socket.writable) {
      socket.destroy();
      return;
    }
    const status = code === 'HPE_HEADER_OVERFLOW' ? 431 : code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
    // A body that broke is its request's refusal: answered with its request id and route, and logged and counted
    // as a 400 of that request, not as a sender that went away.
    const own = inOwnBody ? marked[TURNS]?.current : undefined;
    if (own !== undefined) return own.bodyBroke(status);
    refuseRaw(socket, status, status === 431 ? 'request headers too large' : status === 408 ? 'request timed out' : 'malformed HTTP request');
  });
  return server;
}

/** The sender connections of each proxy server still open (see `connectionsClosed`). */
const OPEN = new WeakMap<Server, Set<Socket>>();

/**
 * Resolves once every sender connection of `server` has closed and what each close sets off has run: a request
 * cut by a stop is then reported (its access line written) as the sender's, before the upstream pools go. node
 * emits the server's 'close' as soon as it has counted its connections destroyed, before their 'close' events.
 */
export async function connectionsClosed(server: Server, boundMs = CLOSE_WAIT_MS): Promise<void> {
  const open = OPEN.get(server);
  if (open !== undefined && open.size > 0) {
    // Not `events.once`: it rejects on an 'error' (a reset), which comes before the 'close'.
    const closed = Promise.all([...open].map((socket) => (socket.closed ? undefined : new Promise((resolve) => socket.once('close', resolve)))));
    const bound = new AbortController();
    const late = await Promise.race([closed.then(() => false), delay(boundMs, true, { signal: bound.signal }).catch(() => false)]);
    bound.abort();
    if (late) {
      // One node no longer counts (a socket it let go of) and that did not close by itself: cut, never waited on.
      for (const socket of open) cut(socket);
      await closed;
    }
  }
  await new Promise((resolve) => setImmediate(resolve));
}

/** How long a stop waits for sender connections to close after the server has closed, before it cuts them. */
const CLOSE_WAIT_MS = 1_000;
