/**
 * The forward path: plain HTTP in, HTTPS with `Authorization: Bearer` out.
 *
 * Each request is checked (origin-form target, inbound control), matched to a
 * route, stripped of hop-by-hop headers and the sender's credentials (RFC 9110
 * §7.6.1), and streamed to the upstream with undici; the response streams
 * back. Bodies are never buffered whole: only a bounded copy of a small
 * request body is kept so that the request can be replayed once after an
 * upstream 401 (token refreshed, RFC 6750 §3.1) or a CSRF 403.
 *
 * Every request gets an answer. Failures before the response started become
 * one JSON error (see `errors.ts`); failures after it started close the
 * sender's connection, so a truncated body is never passed off as complete.
 */
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { Transform, type Readable, type TransformCallback } from 'node:stream';
import type { Dispatcher } from 'undici';
import { csrfFromResponse, isCsrfRequired, isModifying, type CsrfCredentials } from './csrf-session.js';
import { SidecarError, toHttpFailure, type HttpFailure } from './errors.js';
import { requestHeadersForUpstream, responseHeadersForSender, type HeaderRecord } from './headers.js';
import { BASIC_AUTH_CHALLENGE, type InboundControl } from './inbound-control.js';
import { classifyNetworkError } from './network-error.js';
import { upstreamTarget, type Route, type RouteTable } from './routes.js';
import type { AccessToken } from './token-client.js';
import type { TokenProvider } from './token-provider.js';

/** What happened to one request, for access logs and metrics. */
export interface RequestRecord {
  /** `x-request-id` as received, or generated; sent upstream and back. */
  requestId: string;
  route: string | undefined;
  method: string;
  /** Path without the query (queries may carry ids or secrets). */
  path: string;
  status: number;
  upstreamStatus: number | undefined;
  /** Time from sending upstream to the (last attempt's) response headers. */
  upstreamMs: number | undefined;
  durationMs: number;
  bytesIn: number;
  bytesOut: number;
  /** Sidecar error code when the sidecar answered itself. */
  error: string | undefined;
  /** `401-refresh`, `csrf`, `reconnect` (joined with `+`) when the request was sent again. */
  retried: string | undefined;
  /** The sender went away before the answer was complete. */
  aborted: boolean;
}

/** Where the proxy reports what it did: logs and metrics, wired by `sidecar`. */
export interface ProxyObserver {
  requestStarted(): void;
  requestFinished(record: RequestRecord): void;
  csrfFetched(route: string, ok: boolean): void;
  /** Malformed requests rejected by the HTTP parser. */
  clientError(code: string): void;
  /** Unexpected failures (bugs): logged, never shown to the sender. */
  internalError(err: unknown): void;
}

export interface ProxyOptions {
  /** Current routes; a function so that credential rotation can swap them. */
  routes: () => RouteTable;
  tokens: TokenProvider;
  inbound: InboundControl;
  observer: ProxyObserver;
  /** True once shutdown began: answers carry `Connection: close`. */
  draining: () => boolean;
}

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
  // The response in progress per socket: a parser error after it started (a malformed chunk after an
  // early answer) must cut the connection, never write a second response into the first.
  const answering = new WeakMap<Socket, ServerResponse>();
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
    (req, res) => {
      answering.set(req.socket, res);
      res.once('close', () => {
        if (answering.get(req.socket) === res) answering.delete(req.socket);
      });
      handler(req, res);
    },
  );
  server.timeout = limits.socketIdleTimeoutMs;
  // Never a tunnel: CONNECT and Upgrade are refused before any upstream is involved.
  server.on('connect', (_req: IncomingMessage, socket: Socket) => refuseRaw(socket, 405, 'CONNECT is not supported: this is not a forward proxy'));
  server.on('upgrade', (_req: IncomingMessage, socket: Socket) => refuseRaw(socket, 400, 'protocol upgrades are not supported'));
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
    const code = err.code ?? 'HPE_UNKNOWN';
    options.observer.clientError(code);
    if (!socket.writable || answering.get(socket)?.headersSent || code === 'ECONNRESET') {
      socket.destroy();
      return;
    }
    const status = code === 'HPE_HEADER_OVERFLOW' ? 431 : code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
    refuseRaw(socket, status, status === 431 ? 'request headers too large' : status === 408 ? 'request timed out' : 'malformed HTTP request');
  });
  return server;
}

/** Answer on a raw socket (no ServerResponse exists for these) and close it. */
function refuseRaw(socket: Socket, status: number, message: string): void {
  const body = JSON.stringify({ error: 'REQUEST_REFUSED', message, route: null });
  const reason = status === 405 ? 'Method Not Allowed' : status === 431 ? 'Request Header Fields Too Large' : status === 408 ? 'Request Timeout' : 'Bad Request';
  socket.end(
    `HTTP/1.1 ${status} ${reason}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n` +
      `x-sidecar-error: REQUEST_REFUSED\r\nconnection: close\r\n\r\n${body}`,
  );
}

export function createProxyHandler(options: ProxyOptions): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) => {
    const exchange = new Exchange(req, res, options);
    exchange.run().catch((err: unknown) => exchange.fail(err));
  };
}

/** One sender request and everything the sidecar does for it. */
class Exchange {
  readonly #req: IncomingMessage;
  readonly #res: ServerResponse;
  readonly #options: ProxyOptions;
  readonly #started = performance.now();
  readonly #abort = new SenderGone();
  readonly #path: string;
  readonly #requestId: string;
  #route: Route | undefined;
  #upstreamStatus: number | undefined;
  #upstreamMs: number | undefined;
  #error: string | undefined;
  #retried: string | undefined;
  #body: RequestBody | undefined;
  /** Declared response length, or the counter of a chunked body. */
  #bytesOut: number | ByteCounter = 0;
  #senderGone = false;

  constructor(req: IncomingMessage, res: ServerResponse, options: ProxyOptions) {
    this.#req = req;
    this.#res = res;
    this.#options = options;
    const url = req.url ?? '';
    const q = url.indexOf('?');
    this.#path = q === -1 ? url : url.slice(0, q);
    this.#requestId = requestIdOf(req.headers['x-request-id']);
    options.observer.requestStarted();
    res.once('close', () => {
      if (!res.writableFinished) this.#abort.abort();
      this.#report();
    });
  }

  async run(): Promise<void> {
    const req = this.#req;
    const target = req.url ?? '';
    // Origin-form only (RFC 9112 §3.2.1): an absolute-form target would make this an open proxy.
    if (target.charCodeAt(0) !== 0x2f) {
      return this.#refuse(new SidecarError('REQUEST_REFUSED', 'only origin-form request targets (/path) are accepted: this is not a forward proxy'));
    }
    const verdict = this.#options.inbound.check(req.socket.remoteAddress, req.headers.authorization);
    if (verdict === 'unauthorized') {
      return this.#refuse(new SidecarError('SENDER_UNAUTHORIZED', 'basic authentication required'), { 'www-authenticate': BASIC_AUTH_CHALLENGE });
    }
    if (verdict === 'forbidden') return this.#refuse(new SidecarError('SENDER_FORBIDDEN', 'sender address not allowed'));

    // RFC 9112 §6.3: only chunked framing is forwarded; node's parser refuses the rest, this is defence in depth.
    const te = req.headers['transfer-encoding'];
    if (te !== undefined && te.trim().toLowerCase() !== 'chunked') {
      return this.#refuse(new SidecarError('REQUEST_REFUSED', 'unsupported Transfer-Encoding'));
    }
    const route = this.#options.routes().match(this.#path);
    if (!route) return this.#refuse(new SidecarError('ROUTE_NOT_FOUND', `no route for ${truncate(this.#path)}`));
    this.#route = route;
    await this.#forward(route, target);
  }

  async #forward(route: Route, target: string): Promise<void> {
    const req = this.#req;
    const method = req.method ?? 'GET';
    const body = new RequestBody(req, route.config.maxReplayBodyBytes);
    this.#body = body;
    const path = upstreamTarget(route, target);
    const csrfApplies = route.csrf !== undefined && isModifying(method);
    let token = await this.#options.tokens.getToken(route.tokenClient);
    let csrf = csrfApplies ? route.csrf?.current : undefined;
    // Each cure is tried at most once per request: a refreshed token after a 401, a new CSRF session after a 403.
    let refreshed = false;
    let renewed = false;
    let reconnected = false;
    for (let attempt = 1; ; attempt++) {
      let response: Dispatcher.ResponseData;
      try {
        response = await this.#dispatch(route, method, path, body, token, csrf, attempt);
      } catch (err) {
        // A pooled connection the upstream closed as the request went out: an idempotent request may be
        // sent again on a new one (RFC 9110 §9.2.2); anything else would risk doing the work twice.
        if (!reconnected && IDEMPOTENT.has(method) && body.replayable() && this.#isReset(err)) {
          reconnected = true;
          this.#retried = this.#retried ? `${this.#retried}+reconnect` : 'reconnect';
          continue;
        }
        throw err;
      }
      const status = response.statusCode;
      this.#upstreamStatus = status;

      if (status === 401 && !refreshed && body.replayable()) {
        await response.body.dump();
        refreshed = true;
        this.#retried = this.#retried ? `${this.#retried}+401-refresh` : '401-refresh';
        token = await this.#options.tokens.refreshAfterRejection(route.tokenClient, token);
        continue;
      }
      if (csrfApplies && !renewed && isCsrfRequired(status, response.headers) && body.replayable()) {
        await response.body.dump();
        renewed = true;
        this.#retried = this.#retried ? `${this.#retried}+csrf` : 'csrf';
        const stale = csrf;
        csrf = await route.csrf!.renew(stale, () => this.#fetchCsrf(route, path, token, stale));
        if (!csrf) throw new SidecarError('CSRF_FETCH_FAILED', `route ${route.name}: the upstream asked for a CSRF token but the fetch returned none`);
        continue;
      }
      return this.#respond(response);
    }
  }

  #isReset(err: unknown): boolean {
    return (
      !this.#abort.aborted &&
      err instanceof SidecarError &&
      err.code === 'UPSTREAM_UNREACHABLE' &&
      classifyNetworkError(err.cause).failure === 'reset'
    );
  }

  async #dispatch(
    route: Route,
    method: string,
    path: string,
    body: RequestBody,
    token: AccessToken,
    csrf: CsrfCredentials | undefined,
    attempt: number,
  ): Promise<Dispatcher.ResponseData> {
    const extra: Record<string, string> = { authorization: `Bearer ${token.value}`, 'x-request-id': this.#requestId };
    if (csrf) {
      extra['x-csrf-token'] = csrf.token;
      if (csrf.cookie) extra['cookie'] = this.#req.headers.cookie ? `${this.#req.headers.cookie}; ${csrf.cookie}` : csrf.cookie;
    }
    const headers = requestHeadersForUpstream(this.#req.headers, { extra });
    const sent = performance.now();
    try {
      const response = await route.dispatcher.request({
        origin: route.origin,
        path,
        method: method as Dispatcher.HttpMethod,
        headers,
        body: attempt === 1 ? body.stream() : body.replay(),
        signal: this.#abort,
      });
      this.#upstreamMs = performance.now() - sent;
      return response;
    } catch (err) {
      throw this.#upstreamError(route, err);
    }
  }

  /** GET the same URL with `X-CSRF-Token: Fetch`; the adapter answers without running the flow. */
  async #fetchCsrf(route: Route, path: string, token: AccessToken, stale: CsrfCredentials | undefined): Promise<CsrfCredentials | undefined> {
    const headers: HeaderRecord = { authorization: `Bearer ${token.value}`, 'x-csrf-token': 'Fetch', 'x-request-id': this.#requestId };
    if (stale?.cookie) headers['cookie'] = stale.cookie;
    try {
      const response = await route.dispatcher.request({ origin: route.origin, path, method: 'GET', headers, signal: this.#abort });
      await response.body.dump();
      const session = csrfFromResponse(response.headers);
      this.#options.observer.csrfFetched(route.name, session !== undefined);
      return session;
    } catch (err) {
      this.#options.observer.csrfFetched(route.name, false);
      throw this.#upstreamError(route, err);
    }
  }

  async #respond(response: Dispatcher.ResponseData): Promise<void> {
    const res = this.#res;
    res.writeHead(response.statusCode, responseHeadersForSender(response.headers, { extra: this.#ownHeaders() }));
    const length = response.headers['content-length'];
    // With a declared length the byte count is known; count only chunked bodies.
    const counter = typeof length === 'string' ? undefined : new ByteCounter();
    this.#bytesOut = counter ?? Number(length);
    try {
      await pump(response.body, counter, res);
    } catch (err) {
      const { failure, code } = classifyNetworkError(err);
      if (failure === 'aborted' || code === 'ERR_STREAM_PREMATURE_CLOSE') this.#senderGone = true;
      else this.#error = 'UPSTREAM_UNREACHABLE'; // reset mid-response: the sender's connection is cut
      throw err;
    }
  }

  #upstreamError(route: Route, err: unknown): unknown {
    if (err instanceof SidecarError || this.#abort.aborted) return err;
    const { failure, code } = classifyNetworkError(err);
    const host = new URL(route.origin).host;
    switch (failure) {
      case 'timeout':
        return new SidecarError('UPSTREAM_TIMEOUT', `upstream ${host} did not answer in time (${code})`, { cause: err });
      case 'tls-trust':
        return new SidecarError('UPSTREAM_TLS', `upstream ${host}: TLS certificate not trusted (${code}) — add the issuing CA with --ca`, { cause: err });
      case 'tls':
        return new SidecarError('UPSTREAM_TLS', `upstream ${host}: TLS handshake failed (${code})`, { cause: err });
      case 'proxy':
        return new SidecarError('UPSTREAM_UNREACHABLE', `upstream ${host}: the HTTPS proxy failed (${code}) — check HTTPS_PROXY/NO_PROXY`, { cause: err });
      default:
        return new SidecarError('UPSTREAM_UNREACHABLE', `upstream ${host} unreachable (${code})`, { cause: err });
    }
  }

  /** Last resort for any failure: a JSON error if nothing was sent yet, else cut the connection. */
  fail(err: unknown): void {
    const res = this.#res;
    if (res.headersSent) {
      res.destroy();
      return;
    }
    if (this.#abort.aborted || res.destroyed) {
      this.#senderGone = true; // nobody left to tell
      return;
    }
    if (!(err instanceof SidecarError)) this.#options.observer.internalError(err);
    this.#refuse(err);
  }

  #refuse(err: unknown, headers: Record<string, string> = {}): void {
    const failure: HttpFailure = toHttpFailure(err);
    this.#error = failure.code;
    const body = JSON.stringify({ error: failure.code, message: failure.message, route: this.#route?.name ?? null });
    const res = this.#res;
    res.writeHead(failure.status, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(body),
      'cache-control': 'no-store',
      'x-sidecar-error': failure.code,
      ...(failure.retryAfter !== undefined && { 'retry-after': String(failure.retryAfter) }),
      ...this.#ownHeaders(),
      ...headers,
    });
    res.end(body);
    // A request body nobody will read: drain it, and close the connection after this answer.
    const req = this.#req;
    if (!req.complete) {
      res.shouldKeepAlive = false;
      req.resume();
    }
  }

  /** Headers the sidecar adds to every answer. */
  #ownHeaders(): Record<string, string> {
    return this.#options.draining() ? { 'x-request-id': this.#requestId, connection: 'close' } : { 'x-request-id': this.#requestId };
  }

  #report(): void {
    this.#options.observer.requestFinished({
      requestId: this.#requestId,
      route: this.#route?.name,
      method: this.#req.method ?? '',
      path: this.#path,
      status: this.#res.headersSent ? this.#res.statusCode : 0,
      upstreamStatus: this.#upstreamStatus,
      upstreamMs: this.#upstreamMs,
      durationMs: performance.now() - this.#started,
      bytesIn: this.#body?.bytes ?? 0,
      bytesOut: typeof this.#bytesOut === 'number' ? (this.#res.writableFinished ? this.#bytesOut : 0) : this.#bytesOut.bytes,
      error: this.#error,
      retried: this.#retried,
      aborted: this.#senderGone || (!this.#res.writableFinished && this.#error === undefined),
    });
  }
}

/**
 * The request body as undici's body: streamed, with a copy of the first
 * `limit` bytes kept so that a small body can be sent again.
 */
class RequestBody {
  readonly #req: IncomingMessage;
  readonly #limit: number;
  readonly #present: boolean;
  #copy: Buffer[] | undefined = [];
  #copied = 0;
  #seen = 0;
  #ended = false;

  constructor(req: IncomingMessage, limit: number) {
    this.#req = req;
    this.#limit = limit;
    const length = req.headers['content-length'];
    this.#present = (length !== undefined && length !== '0') || req.headers['transfer-encoding'] !== undefined;
    // A declared length over the limit can never be replayed: stream it untouched.
    if (length !== undefined && Number(length) > limit) this.#copy = undefined;
  }

  stream(): Readable | undefined {
    if (!this.#present) return undefined;
    if (this.#copy === undefined) return this.#req;
    const tee = new Transform({
      transform: (chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback) => {
        this.#seen += chunk.length;
        if (this.#copy !== undefined) {
          this.#copied += chunk.length;
          if (this.#copied > this.#limit) this.#copy = undefined;
          else this.#copy.push(chunk);
        }
        callback(null, chunk);
      },
      flush: (callback: TransformCallback) => {
        this.#ended = true;
        callback();
      },
    });
    this.#req.on('error', (err) => tee.destroy(err));
    return this.#req.pipe(tee);
  }

  /** Bytes received from the sender (declared length when streamed untouched). */
  get bytes(): number {
    if (this.#copy === undefined && this.#seen === 0) return this.#req.complete ? Number(this.#req.headers['content-length'] ?? 0) : 0;
    return this.#seen;
  }

  /** True when the body can be sent again: none, or fully kept. */
  replayable(): boolean {
    return !this.#present || (this.#copy !== undefined && this.#ended);
  }

  replay(): Buffer | undefined {
    return this.#present && this.#copy ? Buffer.concat(this.#copy, this.#copied) : undefined;
  }
}

/**
 * Tells undici the sender went away. undici accepts an EventEmitter with `aborted` as a signal; on
 * Node 20 an AbortController per request (plus its listeners) was a measurable share of the
 * per-request CPU in the benchmark.
 */
class SenderGone extends EventEmitter {
  aborted = false;
  reason: unknown = undefined;

  abort(): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = Object.assign(new Error('the sender went away'), { code: 'UND_ERR_ABORTED' });
    this.emit('abort');
  }
}

/**
 * Stream the upstream body to the sender: `pipe`, settled on finish, error or premature close. Any
 * failure destroys every stream, so the sender's connection is cut rather than left with a truncated
 * body that looks complete. (`stream.pipeline` does the same with more per-call allocation.)
 */
function pump(source: Readable, through: Transform | undefined, res: ServerResponse): Promise<void> {
  return new Promise((resolve, reject) => {
    let settled = false;
    const fail = (err: Error): void => {
      if (settled) return;
      settled = true;
      source.destroy();
      through?.destroy();
      res.destroy(err);
      reject(err);
    };
    source.once('error', fail);
    through?.once('error', fail);
    res.once('error', fail);
    res.once('finish', () => {
      if (settled) return;
      settled = true;
      resolve();
    });
    res.once('close', () => {
      if (!res.writableFinished) fail(Object.assign(new Error('Premature close'), { code: 'ERR_STREAM_PREMATURE_CLOSE' }));
    });
    (through ? source.pipe(through) : source).pipe(res);
  });
}

/** Counts response bytes on their way to the sender. */
class ByteCounter extends Transform {
  bytes = 0;
  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.bytes += chunk.length;
    callback(null, chunk);
  }
}

/** Methods whose repetition has no further effect (RFC 9110 §9.2.2). */
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']);

/** A sender's `x-request-id` when it is a sane token, else a new UUID. */
function requestIdOf(value: string | string[] | undefined): string {
  return typeof value === 'string' && REQUEST_ID.test(value) ? value : randomUUID();
}

const REQUEST_ID = /^[\x21-\x7e]{1,128}$/;

function truncate(text: string): string {
  return text.length > 120 ? `${text.slice(0, 120)}…` : text;
}
