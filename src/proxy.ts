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
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import type { Dispatcher } from 'undici';
import { csrfFromResponse, isCsrfRequired, isModifying, mergeCookies, type CsrfCredentials } from './csrf-session.js';
import type { ConnectionLimit } from './connection-limit.js';
import { SidecarError, toHttpFailure, type HttpFailure } from './errors.js';
import { requestHeadersForUpstream, responseHeadersForSender, type HeaderRecord } from './headers.js';
import { BASIC_AUTH_CHALLENGE, type InboundControl } from './inbound-control.js';
import { classifyNetworkError, descriptorsText, isMalformedAnswer, malformedAnswerText, proxyAdvice, proxyConnectFailureText, trustAdvice } from './network-error.js';
import { lingerAfterAnswer } from './lingering-close.js';
import { reachedHost, senderLocation } from './redirect-location.js';
import { ReplayBudget } from './replay-budget.js';
import { bodyStillComing, RequestBody } from './request-body.js';
import { headRefusal, onlyChunked } from './request-head.js';
import { requestIdOf } from './request-id.js';
import { hasDotSegment, upstreamTarget, type Route, type RouteTable } from './routes.js';
import type { Scavenger } from './scavenger.js';
import {
  ANSWERING,
  CLOSING,
  DROPPED,
  FULL,
  MAX_DROPPED,
  MAX_PIPELINED,
  OVER_LIMIT,
  OWED,
  refuseRaw,
  SHED,
  stopReading,
  takesNoMore,
  TURNS,
  UNREAD,
  type AnsweringSocket,
  type MarkedSocket,
  type Turn,
  type Turns,
} from './sender-connection.js';
import type { AccessToken } from './token-client.js';
import type { TokenProvider } from './token-provider.js';
import { UpstreamCall, type AttemptOwner, type Verdict } from './upstream-call.js';

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
  /**
   * Why, when the sidecar answered a 5xx itself (a token, upstream or CSRF failure): the message its answer carries,
   * so that the operator reads in the log what the sender was told (the upstream's host, the HTTPS proxy, the TLS cause).
   */
  reason?: string;
  /** `401-refresh`, `csrf`, `reconnect` (joined with `+`) when the request was sent again. */
  retried: string | undefined;
  /** The sender went away before the answer was complete. */
  aborted: boolean;
  /** The sidecar cut the answer after its head went out (the upstream failed mid-answer, the body broke). */
  cut?: boolean;
}

/** Where the proxy reports what it did: logs and metrics, wired by `sidecar`. */
export interface ProxyObserver {
  requestStarted(): void;
  requestFinished(record: RequestRecord): void;
  /** `superseded`: given up for a rotation (the new route's fetch follows) or a stop: no failure of the upstream's. */
  csrfFetched(route: string, ok: boolean, superseded?: boolean): void;
  /** A request the HTTP parser rejected (its code says why), or a `CONNECT` (code `CONNECT`); not socket errors. */
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
  /** Told of every body chunk passed on, so that dead chunks are collected soon (see `scavenger.ts`). */
  scavenger?: Scavenger;
  /** Bounds the memory of all kept body copies together (default `DEFAULT_REPLAY_MEMORY_BYTES`). */
  replayBudget?: ReplayBudget;
  /** Counts sender connections; requests on one accepted beyond its limit are refused (default: no limit). */
  connections?: ConnectionLimit;
}

/** The `Via` entries the sidecar adds: received protocol and a pseudonym (RFC 9110 §7.6.3). */
const VIA_1_1 = '1.1 oauth-sidecar';
const VIA_1_0 = '1.0 oauth-sidecar';

/** What a 405 lists (RFC 9110 §15.5.6): the standard methods the sidecar forwards (all but CONNECT and TRACE). */
export const ALLOWED_METHODS = 'GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS';

/** `Max-Forwards = 1*DIGIT` (RFC 9110 §7.6.2), node having trimmed it; longer than 9 digits it goes on uncounted. */
const DIGITS = /^\d{1,9}$/;

/** The request handler: one `Exchange` per request, the server's (`proxy-server.ts`) or a test's. */
export function createProxyHandler(proxyOptions: ProxyOptions): (req: IncomingMessage, res: ServerResponse, expectsContinue?: boolean) => void {
  const options = proxyOptions.replayBudget ? proxyOptions : { ...proxyOptions, replayBudget: new ReplayBudget() };
  return (req, res, expectsContinue = false) => new Exchange(req, res, options, expectsContinue).start();
}

/** One sender request and everything the sidecar does for it. */
class Exchange implements AttemptOwner, Turn {
  readonly #req: IncomingMessage;
  readonly #res: ServerResponse;
  readonly #options: ProxyOptions;
  readonly #started = performance.now();
  readonly #path: string;
  readonly #requestId: string;
  #route: Route | undefined;
  #upstreamStatus: number | undefined;
  #error: string | undefined;
  #retried: string | undefined;
  /** Cures under way whose resend has not gone out yet (a cure can fail before it: the token, the CSRF fetch). */
  #curing: string | undefined;
  #body: RequestBody | undefined;
  /** The upstream call in progress (or the last one): told when the sender goes away. */
  #call: UpstreamCall | undefined;
  // What each attempt sends: set by `#forward`, changed by the cures between attempts.
  #method = 'GET';
  #upstreamPath = '';
  #token: AccessToken | undefined;
  #csrf: CsrfCredentials | undefined;
  #csrfApplies = false;
  // Each cure is tried at most once per request: a refreshed token after a 401, a new CSRF session
  // after a 403, a new connection after a reset of a pooled one.
  #refreshed = false;
  #renewed = false;
  #reconnected = false;
  #attempts = 0;
  /** `Max-Forwards` of an OPTIONS request, when it had one above 0. */
  #maxForwards: number | undefined;
  /** The sender closed its connection before the answer was complete. */
  #senderGone = false;
  /** The head of an answer discarded for a cure while the body was still arriving (see `decide`). */
  #held: { status: number; headers: IncomingHttpHeaders } | undefined;

  constructor(req: IncomingMessage, res: ServerResponse, options: ProxyOptions, expectsContinue: boolean) {
    this.#req = req;
    this.#res = res;
    this.#options = options;
    this.#expectsContinue = expectsContinue;
    const url = req.url ?? '';
    this.#path = url.charCodeAt(0) === 0x2f && url.charCodeAt(1) !== 0x2f ? withoutQuery(url) : loggableTarget(url);
    this.#requestId = requestIdOf(req.headers['x-request-id']);
    options.observer.requestStarted();
    const socket = req.socket as AnsweringSocket & MarkedSocket;
    // An answer still under way on this connection (pipelining): this request's answer waits its turn.
    this.#ahead = socket[ANSWERING];
    // Not taken: one behind an answer that closes the connection (see `CLOSING`), and one beyond MAX_PIPELINED
    // answers owed (the connection takes no more: the newest answer owed closes it). Nothing more is to be read.
    const behindClose = socket[CLOSING] === true;
    const overflow = !behindClose && (socket[FULL] === true || (socket[OWED] ?? 0) >= MAX_PIPELINED);
    if (overflow) takesNoMore(socket);
    else if (behindClose) stopReading(socket);
    this.#notTaken = behindClose || overflow;
    // A request that will be dropped never answers: the answer under way keeps the socket.
    if (!this.#notTaken) {
      socket[ANSWERING] = res;
      socket[OWED] = (socket[OWED] ?? 0) + 1;
      this.#owing = true;
    }
    // 'close' comes once per response; `on` spares the wrapper `once` would make. (A response waiting its turn
    // never emits 'close' when the connection closes first: `start` sees to those.)
    res.on('close', () => this.#closed());
  }

  /** Sent `Expect: 100-continue`: told to send its body once the sidecar has decided to take it. */
  readonly #expectsContinue: boolean;
  /** Not taken: dropped at once (see the constructor and `start`). */
  #notTaken: boolean;
  /** It is this exchange's turn on its connection (see `TURNS`); passed on when its answer closes. */
  #hasTurn = false;

  /** Run now, or when the answer ahead on the connection has closed (see `TURNS`). */
  start(): void {
    const socket = this.#req.socket as MarkedSocket;
    // Not taken either: one pipelined during a drain behind an answer not yet begun, which will close the
    // connection (`#ownHeaders`). Requests not taken are dropped at once and take no turn.
    const ahead = this.#ahead;
    if (!this.#notTaken && ahead !== undefined && !ahead.headersSent && this.#options.draining()) {
      this.#notTaken = true;
      stopReading(socket);
    }
    if (this.#notTaken) return this.#runNow();
    let turns = socket[TURNS];
    if (turns === undefined) {
      const created: Turns = { current: undefined, waiting: [] };
      turns = socket[TURNS] = created;
      // One listener per connection, not one per pipelined request: exchanges still waiting end with it.
      socket.once('close', () => {
        for (const waiting of created.waiting.splice(0)) waiting.closed();
      });
    }
    if (turns.current === undefined) {
      this.#takeTurn(turns);
      return this.#runNow();
    }
    turns.waiting.push({
      run: () => {
        this.#takeTurn(turns);
        this.#runNow();
      },
      closed: () => this.#closed(),
    });
  }

  #takeTurn(turns: Turns): void {
    turns.current = this;
    this.#hasTurn = true;
  }

  #passTurn(): void {
    if (!this.#hasTurn) return;
    this.#hasTurn = false;
    const turns = (this.#req.socket as MarkedSocket)[TURNS]!;
    turns.current = undefined;
    turns.waiting.shift()?.run();
  }

  #runNow(): void {
    try {
      this.run();
    } catch (err) {
      this.fail(err);
    }
    if (this.#expectsContinue && !this.#res.headersSent && !this.#req.socket.destroyed && this.#owing) this.#res.writeContinue();
  }

  /** The request body of the attempt under way: none, handed to undici whole (a resend's copy always is), or not yet. */
  requestBody(): 'none' | 'whole' | 'partial' {
    const body = this.#body!;
    if (!body.present) return 'none';
    return this.#attempts > 1 || body.takenWhole() ? 'whole' : 'partial';
  }

  /** The connection can take more of the answer (for a socket node no longer minds: see 'connect'). */
  socketDrained(): void {
    this.#res.emit('drain');
  }

  /** Its answer's head went out and the rest has not (see `cut`). */
  get answerHalfWritten(): boolean {
    return this.#res.headersSent && !this.#res.writableFinished;
  }

  /**
   * The sidecar, not the sender, is what the connection waits for: the request arrived whole, or its body is not
   * being read yet (it waits for its token or its CSRF session: an upload stalls on the sidecar), its answer is
   * not complete, and nothing written for the sender is waiting to be read.
   */
  waitsOnSidecar(): boolean {
    return (
      (this.#req.complete || (this.#attempts === 0 && !this.#awaitingBody)) &&
      !this.#res.writableFinished &&
      !this.#senderGone &&
      this.#req.socket.writableLength === 0
    );
  }

  /** Cut before it went out, when the sidecar closed the connection (see `SHED`). */
  #shed = false;

  /** The sidecar cut the answer it had begun (`fail`): its close is not the sender leaving. */
  #cut = false;

  /** The answer under way on the connection when this request arrived, if any (it is pipelined behind it). */
  readonly #ahead: ServerResponse | undefined;
  /** Counted in the connection's answers owed (`OWED`) until its response closes or it is dropped. */
  #owing = false;

  #paid(): void {
    if (!this.#owing) return;
    this.#owing = false;
    const socket = this.#req.socket as MarkedSocket;
    socket[OWED] = (socket[OWED] ?? 1) - 1;
  }

  /** Its body broke while it was being read (see 'clientError'): refused or cut by the sidecar, not a sender gone. */
  #bodyBroken = false;
  /** The status it was refused with on the socket itself, when nothing of its answer had gone out. */
  #refusedInBody: number | undefined;

  /**
   * Its body broke while it was being read (a malformed chunk): refused on the socket itself with `status` (the
   * parser takes no more from it), or cut when its answer had begun (`undefined`; the caller resets the socket).
   * Nothing more goes upstream (an attempt under way is given up, one waiting for its token or CSRF session never
   * starts) nor to the sender, though the socket lingers for it to read the refusal.
   */
  bodyBroke(status: number | undefined): void {
    this.#bodyBroken = true;
    this.#error = 'REQUEST_REFUSED';
    this.#senderGone = true; // nobody to answer any more
    this.#call?.abort(senderGoneError());
    if (status === undefined) {
      this.#cut = true;
      return;
    }
    this.#refusedInBody = status;
    const headers = `x-request-id: ${this.#requestId}\r\ncache-control: no-store\r\n`;
    this.#ownBytes = refuseRaw(this.#req.socket, status, 'malformed HTTP request: its body could not be read', headers, this.#route?.name ?? null);
  }

  /** The response closed, finished or not (or the connection, while it waited its turn). */
  #closed(): void {
    const res = this.#res;
    if (!res.writableFinished && !this.#cut) {
      this.#senderGone = true;
      // The sidecar closed the connection (MAX_DROPPED) before this request went out: refused, not abandoned.
      if ((this.#req.socket as MarkedSocket)[SHED] && this.#call === undefined) this.#shed = true;
      this.#call?.abort(senderGoneError());
    }
    // Not kept alive by its (long-lived) socket until the next request on it.
    const socket = this.#req.socket as AnsweringSocket;
    if (socket[ANSWERING] === res) socket[ANSWERING] = undefined;
    this.#paid();
    this.#passTurn();
    // No resend can come now: the copy goes, and chunks still read before the socket closes are not kept.
    this.#body?.finish();
    this.#report();
  }

  /**
   * Refusals are answered at once; a forwarded request goes out at once when its token is cached.
   * Whatever fails later ends in `fail`; whatever throws here, the caller hands to `fail`.
   */
  run(): void {
    const req = this.#req;
    const socket = req.socket as MarkedSocket;
    if (this.#notTaken) return this.#dropPipelined();
    // The connection went while this request waited its turn: ended here (the connection's 'close' may not
    // find it among those waiting any more), and the turn goes on to the next, which ends the same way.
    if (socket.destroyed) return this.#closed();
    // An answer ahead closed the connection meanwhile.
    if (socket.writableEnded) return this.#dropPipelined();
    // Its body broke while it waited its turn (the parser refused a chunk; nothing more is read): it can never be
    // sent whole. (Every other request taken on such a connection had its body before the bytes that stopped it.)
    if (socket[UNREAD] && !req.complete) return this.#refuseAndClose(new SidecarError('REQUEST_REFUSED', 'malformed HTTP request: its body could not be read'));
    // The sender asked to close after this answer (or is HTTP/1.0 without keep-alive). (A drain marks the
    // connection when this answer's head is written: `#ownHeaders`.)
    if (!this.#res.shouldKeepAlive) socket[CLOSING] = true;
    if (socket[OVER_LIMIT]) {
      const max = this.#options.connections?.max;
      const why = `the sidecar serves at most ${max} sender connections at once (--max-connections) and this one came beyond them; it is closed after this answer`;
      return this.#refuseAndClose(new SidecarError('TOO_MANY_CONNECTIONS', why, { retryAfter: 1 }));
    }
    const target = req.url ?? '';
    // `OPTIONS *` (asterisk-form, RFC 9112 §3.2.4) asks about the server itself: answered here, past inbound control.
    const serverWide = target === '*' && req.method === 'OPTIONS';
    // Origin-form only (RFC 9112 §3.2.1): an absolute-form target would make this an open proxy.
    if (target.charCodeAt(0) !== 0x2f && !serverWide) {
      const why = target === '*' ? 'the asterisk-form is for OPTIONS alone' : 'this is not a forward proxy';
      return this.#refuse(new SidecarError('REQUEST_REFUSED', `only origin-form request targets (/path) are accepted: ${why}`));
    }
    // node's parser takes any `HTTP/d.d`: a request line claiming another major version is no HTTP/1 message.
    if (req.httpVersionMajor !== 1) {
      const refusal = new SidecarError('REQUEST_REFUSED', `HTTP/${req.httpVersion} is not supported: only HTTP/1.0 and HTTP/1.1`, { refusalStatus: 505 });
      return this.#refuseAndClose(refusal);
    }
    const framing = headRefusal(req, target);
    if (framing !== undefined) {
      // The connection's framing is in doubt (RFC 9112 §6.1): nothing more is read from it.
      this.#framingInDoubt = true;
      return this.#refuseAndClose(new SidecarError('REQUEST_REFUSED', framing));
    }
    // node asks the kernel for the peer's address on first use: a sender that has reset the connection has none.
    // It is gone (its 'close' is still to come), not a sender from an address not allowed.
    const remoteAddress = socket.remoteAddress;
    if (remoteAddress === undefined) {
      socket.destroy();
      return this.#closed();
    }
    const verdict = this.#options.inbound.check(remoteAddress, req.headers.authorization);
    // A refused sender does not keep its connection (nor its place under --max-connections).
    if (verdict === 'unauthorized') {
      return this.#refuseAndClose(new SidecarError('SENDER_UNAUTHORIZED', 'basic authentication required'), { 'www-authenticate': BASIC_AUTH_CHALLENGE });
    }
    if (verdict === 'forbidden') return this.#refuseAndClose(new SidecarError('SENDER_FORBIDDEN', 'sender address not allowed'));
    const webPage = this.#options.inbound.webPageRefusal(req.headers);
    if (webPage !== undefined) return this.#refuseAndClose(new SidecarError('SENDER_FORBIDDEN', webPage));
    // RFC 9110 §9.3.7: what the server supports; no route is asked (whatever its Max-Forwards, §7.6.2).
    if (serverWide) return this.#answerOptions();
    // Checked and routed on the path as it goes upstream: `#path` is the log's copy, which for a `//` target drops
    // everything up to an `@` (`//../../x?@` would otherwise pass as `//`).
    const path = target.charCodeAt(1) === 0x2f ? withoutQuery(target) : this.#path;
    if (hasDotSegment(path)) {
      return this.#refuse(new SidecarError('REQUEST_REFUSED', 'dot segments (. or ..) in the path are not accepted: they would leave the route'));
    }
    // RFC 9110 §10.1.1: 100-continue is the one expectation defined; node hands any other to 'checkExpectation'.
    const expectation = req.headers.expect;
    if (expectation !== undefined && expectation.toLowerCase() !== '100-continue') {
      return this.#refuse(new SidecarError('REQUEST_REFUSED', 'Expect other than 100-continue cannot be met', { refusalStatus: 417 }));
    }
    // The upstream would echo the request as it received it, with the access token the sidecar added: a client
    // must not send credentials in a TRACE (RFC 9110 §9.3.8).
    if (req.method === 'TRACE') {
      const refusal = new SidecarError('REQUEST_REFUSED', 'TRACE is not forwarded: the answer would echo the access token', { refusalStatus: 405 });
      return this.#refuse(refusal, { allow: ALLOWED_METHODS });
    }
    // RFC 9110 §7.6.2: an OPTIONS with Max-Forwards 0 is answered here, any other value is counted down. One that
    // is not `1*DIGIT` ("0x10", "0.9", "-1") is no count: it goes on as it came (as does one too long to count).
    const maxForwards = req.method === 'OPTIONS' ? req.headers['max-forwards'] : undefined;
    if (typeof maxForwards === 'string' && DIGITS.test(maxForwards)) {
      const hops = Number(maxForwards);
      if (hops === 0) return this.#answerOptions();
      if (hops > 0) this.#maxForwards = hops;
    }

    const route = this.#options.routes().match(path);
    if (!route) return this.#refuse(new SidecarError('ROUTE_NOT_FOUND', `no route for ${truncate(this.#path)}`));
    this.#route = route;
    this.#forward(route, target);
  }

  /**
   * Send the request upstream and cure what can be cured, without a promise on the common path
   * (token cached, answer passed on): each attempt is an `UpstreamCall` that reports back to
   * `decide`, `attemptSettled` or `attemptFailed`.
   */
  #forward(route: Route, target: string): void {
    const req = this.#req;
    this.#method = req.method ?? 'GET';
    this.#body = new RequestBody(req, route.config.maxReplayBodyBytes, this.#options.scavenger, this.#options.replayBudget!);
    this.#upstreamPath = upstreamTarget(route, target);
    this.#csrfApplies = route.csrf !== undefined && isModifying(this.#method);
    this.#csrf = this.#csrfApplies ? route.csrf?.current : undefined;
    this.#sendThrough(route);
  }

  /** Send through `route` with its own token: the cached one at once, else once it has been fetched. */
  #sendThrough(route: Route): void {
    const tokens = this.#options.tokens;
    const token = tokens.cachedToken(route.tokenClient);
    if (token !== undefined) this.#attemptWith(route, token);
    else this.#continueWithToken(route, tokens.getToken(route.tokenClient));
  }

  /**
   * Go on once `pending` (a token for `route`) settles. When it fails after credentials rotated, the old
   * client's failure (its pool closed by the swap) says nothing about the new one: the request moves to the
   * route as it is now and waits for its token instead.
   */
  #continueWithToken(route: Route, pending: Promise<AccessToken>): void {
    pending
      .then(
        (fresh) => this.#resume(route, fresh),
        (err: unknown) => {
          const now = this.#currentRoute();
          if (now === route || this.#senderGone) throw err;
          this.#sendThrough(now);
        },
      )
      .catch((err: unknown) => this.fail(err));
  }

  /**
   * Go on after a wait (a token, a CSRF fetch) through the route as it is now: credentials rotated meanwhile
   * close the old route's pools, so the request goes out through the new route, with its token when it has one.
   */
  #resume(before: Route, token: AccessToken): void {
    const route = this.#currentRoute();
    if (route === before) return this.#attemptWith(route, token);
    // Never the old credentials' token through the new route: its own, waited for when it has none yet.
    this.#sendThrough(route);
  }

  /** Send with this token from now on (the cached one, or one just fetched). */
  #attemptWith(route: Route, token: AccessToken): void {
    this.#token = token;
    this.#attempt(route);
  }

  /** Go on with `next` once `pending` resolves; any failure (there or in `next`) ends in `fail`. */
  #continueWith<T>(pending: Promise<T>, next: (value: T) => void): void {
    pending.then(next).catch((err: unknown) => this.fail(err));
  }

  /** Send the request upstream once (the first time streaming the body, then from its kept copy); the call reports back here. */
  #attempt(route: Route): void {
    if (this.#senderGone) throw senderGoneError();
    const body = this.#body!;
    if (this.#attempts === 0) {
      if (!body.arriving()) return this.#awaitBody();
      const renewing = this.#csrfApplies && !this.#csrfAwaited ? route.csrf?.renewing : undefined;
      if (renewing !== undefined) return this.#awaitCsrf(renewing);
    }
    this.#attempts++;
    if (this.#curing !== undefined) {
      this.#retried = this.#retried ? `${this.#retried}+${this.#curing}` : this.#curing;
      this.#curing = undefined;
    }
    this.#upstreamStatus = undefined; // the access line's status is the last attempt's, never a discarded one's
    // The sender's fields as forwarded (hop-by-hop and `Connection`-listed ones gone); the sidecar's own
    // extend them, so a `Via` or `Cookie` the sender named in `Connection` does not come back in here.
    const headers = requestHeadersForUpstream(this.#req.headers);
    headers['authorization'] = bearer(this.#token!);
    headers['x-request-id'] = this.#requestId;
    // RFC 9110 §7.6.3: a gateway adds itself to Via on the requests it forwards, with the protocol it received.
    const via = headers['via'];
    const own = this.#req.httpVersion === '1.0' ? VIA_1_0 : VIA_1_1;
    headers['via'] = via === undefined ? own : `${typeof via === 'string' ? via : via.join(', ')}, ${own}`;
    if (this.#maxForwards !== undefined && headers['max-forwards'] !== undefined) headers['max-forwards'] = String(this.#maxForwards - 1);
    const csrf = this.#csrf;
    if (csrf) {
      headers['x-csrf-token'] = csrf.token;
      const cookie = headers['cookie'];
      if (csrf.cookie) headers['cookie'] = typeof cookie === 'string' ? mergeCookies(cookie, csrf.cookie) : csrf.cookie;
    }
    const call = new UpstreamCall(this.#res, this, this.#options.scavenger, this.#method === 'HEAD', route.config.timeouts.responseMs);
    this.#call = call;
    route.dispatcher.dispatch(
      {
        origin: route.origin,
        path: this.#upstreamPath,
        method: this.#method as Dispatcher.HttpMethod,
        headers,
        body: this.#attempts === 1 ? body.stream() : body.replay(),
      },
      call,
    );
  }

  /** Waiting for the first bytes of the body (see `RequestBody.arriving`): the sender, not the sidecar, is awaited. */
  #awaitingBody = false;

  /**
   * The head arrived without any of its body (`Expect: 100-continue`, a sender that pauses): the request goes out
   * once the body begins, through the route as it is then, with its token then and its CSRF session then.
   */
  #awaitBody(): void {
    this.#awaitingBody = true;
    this.#body!.whenArriving(() =>
      this.#later(() => {
        this.#awaitingBody = false;
        this.#sendAfterWait();
      }),
    );
  }

  /** After a wait before the first attempt: through the route as it is now, with its token and CSRF session now. */
  #sendAfterWait(): void {
    const route = this.#currentRoute();
    if (this.#csrfApplies) this.#csrf = route.csrf?.current;
    this.#sendThrough(route);
  }

  /** Waited once for a CSRF fetch under way before the first attempt (see `#awaitCsrf`). */
  #csrfAwaited = false;

  /**
   * A CSRF fetch is under way on the route: the session this request would carry was just refused (or there is
   * none yet), so it waits for the new one rather than earn a 403 of its own — which a body too long to send
   * again could not cure. A fetch that fails leaves it to go as it is (its own 403, if any, is then its cure).
   */
  #awaitCsrf(renewing: Promise<unknown>): void {
    this.#csrfAwaited = true;
    const goOn = (): void => this.#later(() => this.#sendAfterWait());
    renewing.then(goOn, goOn);
  }

  /** Notes a cure, for the access log's `retried` field once the request is sent again (`#attempt`). */
  #retrying(cure: string): void {
    this.#curing = this.#curing ? `${this.#curing}+${cure}` : cure;
  }

  /** Decided when the upstream's response head arrives, before any of its body: pass it on, or cure and send again. */
  decide(status: number, headers: IncomingHttpHeaders): Verdict {
    this.#upstreamStatus = status;
    const codings = headers['transfer-encoding'];
    if (codings !== undefined && !onlyChunked(codings)) {
      // undici removes only the chunked framing: a gzip coding would reach the sender as a corrupt 200.
      const host = new URL(this.#route!.origin).host;
      throw new SidecarError('UPSTREAM_UNREACHABLE', `upstream ${host} answered with a transfer coding other than chunked, which cannot be passed on`);
    }
    const body = this.#body!;
    // Upstreams (and SAP's CSRF filter) answer a 401 or 403 on the head, before the sender has finished the
    // body: a body still within the copy's limit is then read to its end before the cure, and the answer
    // held for the case that the body outgrows the copy meanwhile.
    const holding = body.pending(); // still arriving, so not yet replayable
    const resendable = body.replayable() || holding;
    let verdict: Verdict = 'deliver';
    if (status === 401 && !this.#refreshed) {
      const tokens = this.#options.tokens;
      // Asked of the route a resend would take: after a rotation, the new credentials' token, not the old
      // key's allowance of one refresh per interval, decides.
      const route = this.#latest(this.#route!);
      if (resendable) {
        if (tokens.retryAfterRejection(route.tokenClient, this.#token!)) verdict = 'retry-401';
      } else {
        this.#retire();
      }
    }
    if (verdict === 'deliver' && this.#csrfApplies && !this.#renewed && isCsrfRequired(status, headers)) {
      if (resendable) verdict = 'retry-csrf';
      else this.#renewInBackground();
    }
    if (verdict !== 'deliver') {
      this.#held = holding ? { status, headers } : undefined;
      return verdict;
    }
    // Nothing will be sent again: the copy, and its share of --max-replay-memory, go now, not after the download.
    body.finish();
    this.#writeHead(status, headers);
    return 'deliver';
  }

  /**
   * A 401 for a request that cannot be sent again (a long or unfinished body): the token may be bad all the
   * same, and the next request should not find it. The 401 itself goes to the sender.
   */
  #retire(): void {
    this.#options.tokens.refreshAfterRejection(this.#latest(this.#route!).tokenClient, this.#token!).catch(() => undefined);
  }

  /** A cure the request cannot have after all (its body outgrew the copy): the next request gets it instead. */
  #forgo(verdict: 'retry-401' | 'retry-csrf'): void {
    if (verdict === 'retry-401') this.#retire();
    else this.#renewInBackground();
  }

  /**
   * A CSRF 403 for a request that cannot be sent again: the 403 goes to the sender, and a new session is
   * fetched now, so that the sender's next modifying request carries a token (one fetch, shared as in `#cure`).
   */
  #renewInBackground(): void {
    const route = this.#latest(this.#route!);
    if (route === this.#route) {
      this.#renewCsrf(route, this.#upstreamPath, this.#token!, this.#csrf).catch(() => undefined);
      return;
    }
    // Credentials rotated since the request went out (the old route's pools are closing): the session is
    // fetched for the route that the sender's next attempt will take, with that route's token.
    const path = upstreamTarget(route, this.#req.url ?? '');
    this.#options.tokens
      .getToken(route.tokenClient)
      .then((token) => this.#renewCsrf(route, path, token, undefined))
      .catch(() => undefined);
  }

  /** A new CSRF session for `route` from the URL that asked, unless another request renewed it since this one's. */
  #renewCsrf(route: Route, path: string, token: AccessToken, stale: CsrfCredentials | undefined): Promise<CsrfCredentials | undefined> {
    return route.csrf!.renew(stale, () => this.#fetchCsrf(route, path, token, stale));
  }

  /**
   * What the last attempt carried that is not the sender's: the access token and, on a CSRF route, the session's
   * token and ids (a session shared by every sender of the route, which may stand in for the token).
   */
  #secretsForSender(): readonly string[] | undefined {
    const token = this.#token;
    const csrf = this.#csrf;
    if (csrf === undefined) return token === undefined ? undefined : tokenOnly(token);
    return sessionSecrets(csrf, token);
  }

  #writeHead(status: number, headers: IncomingHttpHeaders): void {
    // The sender is still sending a body nobody will read on (an early answer): close the connection after
    // this answer, decided before the head is written, which is when node settles `Connection`.
    if (bodyStillComing(this.#req)) this.#closeAfterAnswer();
    const forSender = responseHeadersForSender(headers, { extra: this.#ownHeaders(), secrets: this.#secretsForSender() });
    const location = forSender['location'];
    if (location !== undefined && this.#route !== undefined) {
      const route = this.#route;
      const socket = this.#req.socket;
      const host = this.#req.headers.host ?? reachedHost(socket.localAddress, socket.localPort);
      const routes = this.#options.routes();
      const mapped = (value: string) => senderLocation(value, route, this.#upstreamPath, host, (path) => routes.match(path)?.name);
      // An upstream that repeats the field gets each value mapped (node writes them as they are).
      forSender['location'] = typeof location === 'string' ? mapped(location) : location.map(mapped);
    }
    if (status === 204) delete forSender['content-length']; // RFC 9110 §8.6: never in a 204
    // node keeps an HTTP/1.0 sender's connection only for an answer with a length, or one it may chunk: an answer
    // without a body (RFC 9112 §6.3 items 1–2) needs neither, and its connection stays open. Any other answer to
    // HTTP/1.0 without a length is ended by the close and never chunked (RFC 9112 §6.1), though node would chunk it
    // for a sender that sent `TE: chunked`.
    if (this.#req.httpVersion === '1.0') this.#res.useChunkedEncodingByDefault = status === 204 || status === 304 || this.#req.method === 'HEAD';
    this.#res.writeHead(status, forSender);
  }

  /** The sender's body has been read to its end (or there was none): all of it went, or is going, upstream. */
  get bodySent(): boolean {
    // Not the replay copy's state: a body too long to keep a copy of is still flowing when it has none.
    return this.#req.complete;
  }

  /** Whether the answer being discarded must be kept: the cure may yet prove impossible (see `decide`). */
  get holdingAnswer(): boolean {
    return this.#held !== undefined && !this.#body!.replayable();
  }

  /** A held answer is too long to hold on: it goes to the sender now, and the request is not sent again. */
  passOnHeld(verdict: 'retry-401' | 'retry-csrf'): 'deliver' {
    const head = this.#held!;
    this.#held = undefined;
    this.#forgo(verdict);
    this.#body!.discardRest();
    this.#writeHead(head.status, head.headers);
    return 'deliver';
  }

  /**
   * An attempt's answer was passed on (nothing left to do), or discarded for a cure (`held`: its body, when
   * the answer was held and arrived whole). A cure waits for a body still arriving.
   */
  attemptSettled(verdict: Verdict, held?: Buffer[]): void {
    const body = this.#body!;
    if (verdict === 'deliver') {
      // An early answer: the upstream no longer takes the body, so drain what the sender still sends.
      body.discardRest();
      return;
    }
    const next = (): void => this.#later(() => this.#cureOrDeliver(verdict, held));
    if (body.pending()) body.whenSettled(next);
    else next();
  }

  #cureOrDeliver(verdict: 'retry-401' | 'retry-csrf', held: Buffer[] | undefined): void {
    if (this.#body!.replayable()) return this.#cure(verdict);
    // The body outgrew its copy while the answer waited: the upstream's answer goes to the sender after all.
    const head = this.#held;
    if (this.#senderGone) throw senderGoneError();
    if (head === undefined || held === undefined) {
      throw new SidecarError('UPSTREAM_UNREACHABLE', `upstream ${new URL(this.#route!.origin).host}: its answer was cut off while the request body was still arriving`);
    }
    this.#forgo(verdict);
    this.#body!.discardRest();
    this.#writeHead(head.status, head.headers);
    for (const chunk of held) this.#call!.bytesOut += chunk.length;
    this.#res.end(held.length === 1 ? held[0] : Buffer.concat(held));
  }

  /** Run `step` outside undici's callbacks (cures, resends, failures); whatever it throws ends in `fail`. */
  #later(step: () => void): void {
    queueMicrotask(() => {
      try {
        step();
      } catch (err) {
        this.fail(err);
      }
    });
  }

  /**
   * The request's route as the table has it now: credentials rotated since the request began close the old
   * route's pools (once their requests are done), so a resend goes out through the new one.
   */
  #currentRoute(): Route {
    const before = this.#route!;
    const route = this.#latest(before);
    if (route !== before) {
      this.#route = route;
      this.#upstreamPath = upstreamTarget(route, this.#req.url ?? '');
      // The old route's CSRF session belongs to the old credentials: the new route's, if it has one yet.
      this.#csrf = this.#csrfApplies ? route.csrf?.current : undefined;
    }
    return route;
  }

  /** `route` as the table has it now (itself unless credentials rotated since). */
  #latest(route: Route): Route {
    return this.#options.routes().routes.find((r) => r.name === route.name) ?? route;
  }

  #cure(verdict: 'retry-401' | 'retry-csrf'): void {
    if (verdict === 'retry-401') {
      this.#refreshed = true;
      this.#retrying('401-refresh');
      const route = this.#currentRoute();
      this.#continueWithToken(route, this.#options.tokens.refreshAfterRejection(route.tokenClient, this.#token!));
      return;
    }
    this.#renewed = true;
    this.#retrying('csrf');
    this.#cureCsrf(this.#route!);
  }

  /**
   * A CSRF session for the route as it is now, then the resend. Credentials rotated since `before`: the new
   * route's session (none carried over from the old one), fetched with the new credentials' token.
   */
  #cureCsrf(before: Route): void {
    const route = this.#currentRoute();
    if (route === before) return this.#renewCsrfAndResume(route, this.#token!, this.#csrf);
    // A session the new route already has is used as it is (this request never tried it), else one is fetched.
    const tokens = this.#options.tokens;
    const cached = tokens.cachedToken(route.tokenClient);
    if (cached !== undefined) this.#renewCsrfAndResume(route, cached, undefined);
    else this.#continueWith(tokens.getToken(route.tokenClient), (fresh) => this.#renewCsrfAndResume(route, fresh, undefined));
  }

  #renewCsrfAndResume(route: Route, token: AccessToken, stale: CsrfCredentials | undefined): void {
    this.#token = token;
    const renewal = this.#renewCsrf(route, this.#upstreamPath, token, stale).catch((err: unknown) => {
      // Rotated while the fetch failed (the old token refused, the old pool closed): that failure was the old
      // route's; the new route's session is fetched below.
      if (this.#latest(route) !== route) return undefined;
      throw err;
    });
    this.#continueWith(renewal, (csrf) => {
      // Rotated while the session was being fetched: it is the old credentials' (or none, the old token refused
      // with the old route's pool closed); the new route's is fetched.
      if (this.#latest(route) !== route) return this.#cureCsrf(route);
      if (!csrf) throw new SidecarError('CSRF_FETCH_FAILED', `route ${route.name}: the upstream asked for a CSRF token but the fetch returned none`);
      this.#csrf = csrf;
      // The newest token: a fetch answered 401 renewed it (`#fetchCsrf`), and the session is the client's, not the token's.
      this.#resume(route, this.#options.tokens.cachedToken(route.tokenClient) ?? this.#token!);
    });
  }

  /** An attempt failed: send it again on a new connection when that is safe, else answer with the failure. */
  attemptFailed(call: UpstreamCall, thrown: unknown): void {
    this.#later(() => {
      const err = this.#attemptError(this.#route!, call, thrown);
      // A pooled connection the upstream closed as the request went out: an idempotent request may be
      // sent again (RFC 9110 §9.2.2); anything else would risk doing the work twice. A reset on a fresh
      // connection is the upstream's answer to this request, not that race: not sent again, unless the
      // connection died before the request was handed to it (e.g. during the TLS handshake).
      // Nor once the upstream has answered anything to it (an interim answer, part of a head): it has the request.
      const sentOnFresh = call.started && !call.reusedConnection;
      const body = this.#body!;
      if (this.#reconnected || sentOnFresh || call.answered || !IDEMPOTENT.has(this.#method) || !this.#isReset(err)) return this.fail(err);
      const reconnect = (): void => {
        // The race meets a body that is still arriving as often as not (it comes one round trip after the
        // head): like a cure, the resend waits for the rest, and goes only if it all fit in the copy.
        if (!body.replayable() || this.#senderGone) return this.fail(err);
        this.#reconnected = true;
        this.#retrying('reconnect');
        this.#resume(this.#route!, this.#token!); // through the new route, with its token, after a rotation
      };
      if (body.pending()) body.whenSettled(() => this.#later(reconnect));
      else reconnect();
    });
  }

  #isReset(err: unknown): boolean {
    return (
      !this.#senderGone &&
      err instanceof SidecarError &&
      err.code === 'UPSTREAM_UNREACHABLE' &&
      classifyNetworkError(err.cause).failure === 'reset'
    );
  }

  /** What a failed attempt means for the sender. */
  #attemptError(route: Route, call: UpstreamCall, err: unknown): unknown {
    if (!call.delivering) return this.#upstreamError(route, err, call.answered);
    // The answer had started: the sender's connection is cut (by `fail`), never left with a truncated body.
    const { failure, code } = classifyNetworkError(err);
    if (!this.#senderGone && failure !== 'aborted' && code !== 'ERR_STREAM_PREMATURE_CLOSE') {
      // e.g. the body stalled past the route's idle timeout, or the connection died mid-body
      this.#error = failure === 'timeout' ? 'UPSTREAM_TIMEOUT' : 'UPSTREAM_UNREACHABLE';
    }
    return err;
  }

  /**
   * GET the same URL with `X-CSRF-Token: Fetch`; the adapter answers without running the flow. A 401 means the
   * token went bad since the request that asked was accepted (RFC 6750 §3.1: expired or revoked): the fetch is
   * made once more with a new token, under the same once-per-interval rule as a request's own 401.
   */
  async #fetchCsrf(route: Route, path: string, token: AccessToken, stale: CsrfCredentials | undefined): Promise<CsrfCredentials | undefined> {
    const headers: HeaderRecord = { authorization: bearer(token), 'x-csrf-token': 'Fetch', 'x-request-id': this.#requestId };
    if (stale?.cookie) headers['cookie'] = stale.cookie;
    const tokens = this.#options.tokens;
    // Not cut short when this request's sender leaves: other requests may have joined the fetch (one per
    // route), and what it fails with is theirs too, so it is mapped whoever is still waiting.
    let status: number;
    let session: CsrfCredentials | undefined;
    try {
      let response = await this.#csrfGet(route, path, headers);
      // Rotated meanwhile: the old token's 401 is no reason to fetch again through the old route, whose pool is
      // closed; no session, and the waiting requests go on to the new route's (`#renewCsrfAndResume`).
      if (response.statusCode === 401 && this.#latest(route) !== route) {
        this.#options.observer.csrfFetched(route.name, false, true);
        return undefined;
      }
      if (response.statusCode === 401 && tokens.retryAfterRejection(route.tokenClient, token)) {
        // Rotated during the refresh: it is given up, or the fetch through the old route's closed pool fails, and
        // the waiting requests go on to the new route (`#renewCsrfAndResume`).
        headers['authorization'] = bearer(await tokens.refreshAfterRejection(route.tokenClient, token));
        response = await this.#csrfGet(route, path, headers);
      }
      status = response.statusCode;
      session = csrfFromResponse(response.headers, stale?.cookie);
    } catch (err) {
      // Given up for a rotation (the old key's refresh abandoned) or a stop: the request goes on, or ends, as such.
      this.#options.observer.csrfFetched(route.name, false, this.#latest(route) !== route || this.#options.draining());
      throw upstreamFailure(route, err);
    }
    this.#options.observer.csrfFetched(route.name, session !== undefined);
    if (session === undefined && status >= 400) {
      throw new SidecarError('CSRF_FETCH_FAILED', `route ${route.name}: the upstream asked for a CSRF token but answered its fetch with ${status}`);
    }
    return session;
  }

  /**
   * The fetch's GET, its answer's body read to the end. A connection reset before its answer sends it once more:
   * most likely a pooled connection the upstream closed as the GET went out (RFC 9112 §9.3.1), and a fetch is
   * safe to repeat (RFC 9110 §9.2.1; the adapter answers it without running the flow). As a sender's own GET is
   * sent once more in that race, so is the fetch that the sender's modifying request waits for.
   */
  async #csrfGet(route: Route, path: string, headers: HeaderRecord): Promise<Dispatcher.ResponseData> {
    const options = { origin: route.origin, path, method: 'GET' as const, headers };
    let response: Dispatcher.ResponseData;
    try {
      response = await route.dispatcher.request(options);
    } catch (err) {
      if (classifyNetworkError(err).failure !== 'reset') throw err;
      response = await route.dispatcher.request(options);
    }
    await response.body.dump();
    return response;
  }

  #upstreamError(route: Route, err: unknown, answered = false): unknown {
    return this.#senderGone ? err : upstreamFailure(route, err, answered);
  }

  /** Last resort for any failure: a JSON error if nothing was sent yet, else cut the connection. */
  fail(err: unknown): void {
    const res = this.#res;
    if (res.headersSent) {
      // Cut with a reset, not a close: an answer to an HTTP/1.0 sender (or one without a length) ends at the
      // close, so a plain close would pass a truncated body off as complete (RFC 9112 §6.3, item 8).
      this.#cut = true;
      const socket = res.socket;
      if (socket && !socket.destroyed) socket.resetAndDestroy();
      res.destroy();
      return;
    }
    if (this.#senderGone || res.destroyed) {
      this.#senderGone = true; // nobody left to tell
      return;
    }
    if (!(err instanceof SidecarError)) this.#options.observer.internalError(err);
    this.#refuse(err);
  }

  #refuse(err: unknown, headers: Record<string, string> = {}): undefined {
    const failure: HttpFailure = toHttpFailure(err);
    this.#error = failure.code;
    if (failure.status >= 500) this.#reason = failure.message;
    const body = JSON.stringify({ error: failure.code, message: failure.message, route: this.#route?.name ?? null });
    const length = Buffer.byteLength(body);
    this.#ownBytes = this.#req.method === 'HEAD' ? 0 : length;
    const res = this.#res;
    const req = this.#req;
    // A request body nobody will read: close the connection after this answer (decided before the head is
    // written, which is when node settles `Connection`), and drain what arrives until then.
    if (bodyStillComing(req)) this.#closeAfterAnswer();
    res.writeHead(failure.status, {
      'content-type': 'application/json',
      'content-length': length,
      'cache-control': 'no-store',
      'x-sidecar-error': failure.code,
      ...(failure.retryAfter !== undefined && { 'retry-after': String(failure.retryAfter) }),
      ...this.#ownHeaders(),
      ...headers,
    });
    res.end(body);
    // Read on to the end (until the close): a body piped towards an upstream request that never started (a
    // refused connection, a TLS failure) would otherwise stay paused, and its sender never read its answer.
    if (this.#body !== undefined) this.#body.discardRest();
    else if (!req.complete) req.resume();
    return undefined;
  }

  /** `OPTIONS` with `Max-Forwards: 0`: the sidecar is the final recipient. */
  #answerOptions(): undefined {
    this.#res.writeHead(200, { allow: ALLOWED_METHODS, 'content-length': '0', ...this.#ownHeaders() });
    this.#res.end();
    return undefined;
  }

  /** Headers the sidecar adds to every answer. */
  #ownHeaders(): Record<string, string> {
    if (!this.#options.draining()) return { 'x-request-id': this.#requestId };
    // This answer closes the connection: requests pipelined behind it are not forwarded (see `CLOSING`).
    (this.#req.socket as MarkedSocket)[CLOSING] = true;
    return { 'x-request-id': this.#requestId, connection: 'close' };
  }

  /** Close the connection after this answer (decided before its head is written): see `CLOSING`. */
  #closeAfterAnswer(): void {
    this.#res.shouldKeepAlive = false;
    const socket = this.#req.socket as MarkedSocket;
    socket[CLOSING] = true;
    // A body still arriving is read (and dropped) before the close, so that its sender gets to read the answer;
    // not where nobody can tell where it ends.
    // It serves no more requests meanwhile, so its place under --max-connections goes to a new connection.
    if (bodyStillComing(this.#req) && !this.#framingInDoubt && !socket[UNREAD]) {
      lingerAfterAnswer(socket, this.#req, () => this.#options.connections?.release(socket));
    }
  }

  /** The request's framing is refused: what follows its head on the connection is not read. */
  #framingInDoubt = false;

  /** `#refuse`, and the connection closes after the answer. */
  #refuseAndClose(err: SidecarError, headers?: Record<string, string>): undefined {
    this.#closeAfterAnswer();
    return this.#refuse(err, headers);
  }

  /**
   * A request pipelined behind an answer that closes the connection: node will never send its answer, so it
   * is not forwarded, and is reported now (its response never emits 'close').
   */
  #dropPipelined(): undefined {
    this.#error = 'REQUEST_REFUSED';
    // Never answered: the answer ahead stays the connection's newest (when this one had taken its place).
    const socket = this.#req.socket as AnsweringSocket;
    if (socket[ANSWERING] === this.#res) socket[ANSWERING] = this.#ahead;
    this.#paid();
    this.#report();
    this.#passTurn();
    const marked = socket as MarkedSocket;
    marked[DROPPED] = (marked[DROPPED] ?? 0) + 1;
    if (marked[DROPPED] > MAX_DROPPED && !socket.destroyed) {
      marked[SHED] = true;
      socket.destroy();
    }
    return undefined;
  }

  #reported = false;
  /** Body bytes of the sidecar's own answer (a refusal or failure), for the access line. */
  #ownBytes = 0;
  /** The message of the sidecar's own 5xx answer (see `RequestRecord.reason`). */
  #reason: string | undefined;

  #report(): void {
    if (this.#reported) return;
    this.#reported = true;
    const res = this.#res;
    this.#options.observer.requestFinished({
      requestId: this.#requestId,
      route: this.#route?.name,
      method: this.#req.method ?? '',
      path: this.#path,
      status: this.#refusedInBody ?? (res.headersSent ? res.statusCode : 0),
      upstreamStatus: this.#upstreamStatus,
      upstreamMs: this.#call?.upstreamMs,
      durationMs: performance.now() - this.#started,
      bytesIn: this.#body?.bytes ?? 0,
      bytesOut: (this.#call?.bytesOut ?? 0) + this.#ownBytes,
      error: this.#shed ? (this.#error ?? 'REQUEST_REFUSED') : this.#error,
      retried: this.#retried,
      reason: this.#reason,
      aborted: !this.#shed && !this.#bodyBroken && (this.#senderGone || (!res.writableFinished && this.#error === undefined)),
      cut: this.#cut,
    });
  }
}

/** A CSRF token shorter than this is not redacted from answers (real ones are 24+ random characters). */
const MIN_CSRF_TOKEN_LENGTH = 12;

/**
 * A session cookie value that is redacted from answers wherever it appears: one that looks like a session id (16+
 * characters of letters, digits, `%`, `.`, `_`, `~`, `+`, `/`, `-`, with digits or both cases, maybe `=` padding:
 * `JSESSIONID`, `__VCAP_ID__`, `MYSAPSSO2`). Cookies that hold plain text (SAP's `sap-usercontext=sap-client=100`)
 * would garble unrelated fields — a `Location`'s query, a `Content-Type` — and are no credential.
 */
function isSessionId(value: string): boolean {
  // A random id has digits or both cases (base64 may lack digits): a lower-case word with a slash
  // (`application/json`) is text.
  return /^[A-Za-z0-9%._~+/-]{16,}={0,2}$/.test(value) && (/\d/.test(value) || (/[a-z]/.test(value) && /[A-Z]/.test(value)));
}

/** The values of a `cookie` header (`a=1; b="2"` → `1`, `2`: quotes, which RFC 6265 allows, are not the value's). */
function cookieValues(cookie: string | undefined): string[] {
  if (cookie === undefined) return [];
  return cookie.split(';').map((pair) => pair.slice(pair.indexOf('=') + 1).trim().replace(/^"(.*)"$/, '$1'));
}

/** The token alone as the secrets kept out of answers, made once per token rather than once per request. */
const tokenOnlySecrets = new WeakMap<AccessToken, string[]>();
function tokenOnly(token: AccessToken): readonly string[] {
  let secrets = tokenOnlySecrets.get(token);
  if (secrets === undefined) tokenOnlySecrets.set(token, (secrets = [token.value]));
  return secrets;
}

/**
 * A CSRF session's ids and token, and the access token beside it, as the secrets kept out of answers: made once
 * per session and token rather than once per answer (a cookie header split and tested per request).
 */
const sessionSecretsOf = new WeakMap<CsrfCredentials, { token: AccessToken | undefined; secrets: readonly string[] }>();
function sessionSecrets(csrf: CsrfCredentials, token: AccessToken | undefined): readonly string[] {
  const cached = sessionSecretsOf.get(csrf);
  if (cached !== undefined && cached.token === token) return cached.secrets;
  const secrets = cookieValues(csrf.cookie).filter(isSessionId);
  if (csrf.token.length >= MIN_CSRF_TOKEN_LENGTH) secrets.push(csrf.token);
  if (token !== undefined) secrets.push(token.value);
  sessionSecretsOf.set(csrf, { token, secrets });
  return secrets;
}

/** `Bearer <token>`, made once per token rather than once per request. */
const bearers = new WeakMap<AccessToken, string>();
function bearer(token: AccessToken): string {
  let value = bearers.get(token);
  if (value === undefined) bearers.set(token, (value = `Bearer ${token.value}`));
  return value;
}

function senderGoneError(): Error {
  return Object.assign(new Error('the sender went away'), { code: 'UND_ERR_ABORTED' });
}

/** node's `writeHead` refusals: the upstream's response head cannot be passed on as it is. */
const UNFORWARDABLE_HEAD: ReadonlySet<string | undefined> = new Set(['ERR_INVALID_CHAR', 'ERR_INVALID_HTTP_TOKEN', 'ERR_HTTP_INVALID_HEADER_VALUE', 'ERR_HTTP_INVALID_STATUS_CODE']);

/** Methods whose repetition has no further effect (RFC 9110 §9.2.2). */
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE']);

/** The path alone, for the log: no query, and no fragment (refused in `run`, but a classic place for a token). */
function withoutQuery(target: string): string {
  const q = target.indexOf('?');
  const f = target.indexOf('#');
  const cut = q === -1 ? f : f === -1 ? q : Math.min(q, f);
  return cut === -1 ? target : target.slice(0, cut);
}

/**
 * An absolute- or authority-form target (refused in `run`, but logged), or an origin-form one that looks like a
 * network-path reference (`//user:password@host/x`), may carry `user:password@`, and the password may hold `@`,
 * `/` or `?`: everything up to the last `@` goes, then the query.
 */
function loggableTarget(target: string): string {
  const at = target.lastIndexOf('@');
  if (at === -1) return withoutQuery(target);
  const scheme = /^(?:[a-z][a-z0-9+.-]*:)?\/\//i.exec(target)?.[0] ?? '';
  return withoutQuery(scheme + target.slice(at + 1));
}

function truncate(text: string): string {
  return text.length > 120 ? `${text.slice(0, 120)}…` : text;
}

/**
 * What a failed call to `route`'s upstream means for a sender: one `SidecarError` with a stable code. `answered`:
 * the upstream had sent part of an answer (an interim one, part of a head) before the failure.
 */
function upstreamFailure(route: Route, err: unknown, answered = false): unknown {
  if (err instanceof SidecarError) return err;
  const { failure, code, proxy } = classifyNetworkError(err);
  const host = new URL(route.origin).host;
  if (UNFORWARDABLE_HEAD.has(code)) {
    return new SidecarError('UPSTREAM_UNREACHABLE', `upstream ${host} answered with a header that cannot be passed on (${code})`, { cause: err });
  }
  // Out of descriptors is the sidecar's own limit, whichever connection met it (to the upstream or to a proxy).
  if (failure === 'descriptors') return new SidecarError('UPSTREAM_UNREACHABLE', `upstream ${host} not reached: ${descriptorsText(code)}`, { cause: err });
  if (proxy !== undefined) {
    // The connection to the HTTPS proxy failed: the upstream was never contacted, and its name would mislead.
    const message = `upstream ${host}: ${proxyConnectFailureText(proxy, failure, code)}`;
    return new SidecarError(failure === 'timeout' ? 'UPSTREAM_TIMEOUT' : 'UPSTREAM_UNREACHABLE', message, { cause: err });
  }
  // After the proxy's own failures: a proxy answering its CONNECT with something not HTTP is the proxy's.
  if (isMalformedAnswer(code)) {
    // Reached, and it answered: what it sent is no HTTP/1.1 answer undici can read. Not the network's fault.
    return new SidecarError('UPSTREAM_UNREACHABLE', `upstream ${host} ${malformedAnswerText(code)}`, { cause: err });
  }
  switch (failure) {
    case 'timeout':
      return new SidecarError('UPSTREAM_TIMEOUT', `upstream ${host} did not answer in time (${code})`, { cause: err });
    case 'tls-trust':
      return new SidecarError('UPSTREAM_TLS', `upstream ${host}: TLS certificate not trusted (${code}) — ${trustAdvice(code)}`, { cause: err });
    case 'tls':
      return new SidecarError('UPSTREAM_TLS', `upstream ${host}: TLS handshake failed (${code})`, { cause: err });
    case 'proxy':
      return new SidecarError('UPSTREAM_UNREACHABLE', `upstream ${host}: the HTTPS proxy failed (${code}) — ${proxyAdvice(code ?? '')}`, { cause: err });
    case 'reset':
      if (answered) return new SidecarError('UPSTREAM_UNREACHABLE', `upstream ${host} closed the connection in the middle of its answer (${code})`, { cause: err });
      break;
  }
  return new SidecarError('UPSTREAM_UNREACHABLE', `upstream ${host} unreachable (${code})`, { cause: err });
}
