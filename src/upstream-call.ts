/**
 * One upstream attempt as an undici dispatch handler (undici's lowest-level API, `Dispatcher.dispatch`): the
 * head is judged as it arrives (the owner's `decide` writes it to the sender when it is to be passed on), and
 * body chunks go straight into the ServerResponse with backpressure — no intermediate Readable, pipe, abort
 * signal or promise per chunk, and no promise per call: the owner (the proxy's exchange) is told when the body
 * has been handed to the sender (or, for a retry, discarded), or of any upstream failure.
 *
 * 204 and 304 end with their head (RFC 9110 §15.3.5, §15.4.5); an answer delimited by its connection's close
 * (RFC 9112 §6.3) that ends in a reset is a cut, not an end.
 */
import type { IncomingHttpHeaders, ServerResponse } from 'node:http';
import type { Dispatcher } from 'undici';
import { answeredSince, awaitConnection, type ConnectionListener } from './connection-reuse.js';
import type { Scavenger } from './scavenger.js';

/**
 * How much of a 401 or CSRF 403 is held while the request body settles (they carry a few hundred bytes);
 * a longer one is passed on at once instead.
 */
export const HOLDABLE_ANSWER_BYTES = 64 * 1024;

/** What to do with an upstream answer: pass it on, or discard it and send the request again with a cure. */
export type Verdict = 'deliver' | 'retry-401' | 'retry-csrf';

/** What an attempt reports to and asks of the request it is made for (the proxy's exchange). */
export interface AttemptOwner {
  /** The sender's body has been read to its end (or there was none). */
  readonly bodySent: boolean;
  /** Whether the answer being discarded must be kept: the cure may yet prove impossible. */
  readonly holdingAnswer: boolean;
  /** Where the request body stands: none, read whole, or still arriving. */
  requestBody(): 'none' | 'whole' | 'partial';
  /** The final head came: pass it on (written to the sender), or discard the answer for a cure. */
  decide(status: number, headers: IncomingHttpHeaders): Verdict;
  /** A held answer is too long to hold on: it goes to the sender now. */
  passOnHeld(verdict: 'retry-401' | 'retry-csrf'): 'deliver';
  /** The answer was passed on, or discarded for a cure (`held`: its body, when it was held and came whole). */
  attemptSettled(verdict: Verdict, held?: Buffer[]): void;
  /** The attempt failed. */
  attemptFailed(call: UpstreamCall, thrown: unknown): void;
}

/** One attempt, for one request: made by the owner, handed to `Dispatcher.dispatch`. */
export class UpstreamCall implements Dispatcher.DispatchHandler, ConnectionListener {
  /** The request went out on a pooled connection that had carried one before (see `connection-reuse`). */
  reusedConnection = false;
  /** The connection (socket) the request went out on, once known (see `connection-reuse`). */
  connection: object | undefined;
  /** What the connection had read when the request head went out (see `connection-reuse`). */
  bytesReadAtSend: number | undefined;
  /** An interim answer came: the upstream has the request. */
  #interim = false;
  /** Body bytes handed to the sender. */
  bytesOut = 0;
  /** Body bytes received, handed on or discarded. */
  #received = 0;
  /** Time from sending to the response head. */
  upstreamMs: number | undefined;
  readonly #sentAt = performance.now();
  readonly #res: ServerResponse;
  readonly #exchange: AttemptOwner;
  readonly #scavenger: Scavenger | undefined;
  #controller: Dispatcher.DispatchController | undefined;
  #verdict: Verdict | undefined;
  #pendingAbort: Error | undefined;
  #waitingForDrain = false;

  readonly #head: boolean;
  /** The route's response timeout: what the final head may take after the first interim answer (see `onResponseStart`). */
  readonly #responseMs: number;
  /** When the first interim answer came after the request body had gone, if one did. */
  #interimSince: number | undefined;

  constructor(res: ServerResponse, exchange: AttemptOwner, scavenger: Scavenger | undefined, head: boolean, responseMs: number) {
    this.#res = res;
    this.#exchange = exchange;
    this.#scavenger = scavenger;
    this.#head = head;
    this.#responseMs = responseMs;
  }

  /** undici handed the request to a connection (`onRequestStart`): from here on it may have been sent. */
  get started(): boolean {
    return this.#controller !== undefined;
  }

  /** Whether the upstream answered anything to this request (see `connection-reuse`'s `answeredSince`). */
  get answered(): boolean {
    return this.#interim || answeredSince(this);
  }

  /** True once the response head went to the sender: a failure now can only cut the connection. */
  get delivering(): boolean {
    return this.#verdict === 'deliver';
  }

  /** The sender went away: stop the upstream request (now, or as soon as undici starts it). */
  abort(reason: Error): void {
    if (this.#controller) this.#controller.abort(reason);
    else this.#pendingAbort = reason;
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.#controller = controller;
    if (this.#pendingAbort) controller.abort(this.#pendingAbort);
    else awaitConnection(this);
  }

  onResponseStart(controller: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders): void {
    // Informational answers come before the real one, and none reaches the sender. The sidecar is a gateway, the
    // origin server as its senders see it (RFC 9110 §3.7), and its senders are the HTTP/1.1 clients RFC 8297 §4
    // warns of: Python's http.client and Java's HttpURLConnection take a 103 Early Hints for the final answer and
    // then read the real one as the answer to their next request on the connection.
    if (statusCode < 200) {
      this.#interim = true;
      // undici starts its headers timeout afresh with each of them: an upstream sending them without end (a
      // `102 Processing` every second) would hold the request for ever. Once the body has gone, the final head
      // must follow the first of them within the route's response timeout.
      if (this.#exchange.bodySent) {
        const now = performance.now();
        this.#interimSince ??= now;
        if (now - this.#interimSince > this.#responseMs) {
          const err = new Error(`only interim answers (${statusCode}) for ${this.#responseMs} ms`);
          controller.abort(Object.assign(err, { code: 'UND_ERR_HEADERS_TIMEOUT' }));
          return;
        }
      }
      return;
    }
    this.upstreamMs = performance.now() - this.#sentAt;
    // Three digits, but no HTTP status (RFC 9110 §15: 100–599); node would write it on, as node's `writeHead`
    // refuses only what is not three digits: failed like such a refusal.
    if (statusCode > 599) {
      controller.abort(Object.assign(new RangeError(`status ${statusCode} is not an HTTP status`), { code: 'ERR_HTTP_INVALID_STATUS_CODE' }));
      return;
    }
    try {
      this.#verdict = this.#exchange.decide(statusCode, headers);
      if (this.#verdict !== 'deliver' && this.#exchange.holdingAnswer) this.#held = [];
    } catch (err) {
      // e.g. a header value node refuses to write: nothing reached the sender yet.
      controller.abort(err as Error);
      return;
    }
    // 204 and 304 have no content (RFC 9110 §15.3.5, §15.4.5): the answer is complete with its head. undici
    // may still fail the exchange over the Content-Length a 304 may carry (it describes the representation).
    if (this.#verdict === 'deliver' && (statusCode === 204 || statusCode === 304)) {
      this.#bodiless = true;
      this.#res.end();
    }
    this.#status = statusCode;
    this.#closeDelimited = !this.#head && headers['content-length'] === undefined && headers['transfer-encoding'] === undefined;
  }

  /** The final answer's status. */
  #status = 0;

  /**
   * The answer's body ends where the connection does: no Content-Length, not chunked (RFC 9112 §6.3). A
   * reset is then no end but a cut, which undici reports as the end all the same (its workaround for macOS
   * resetting after a whole body): `onResponseEnd` asks the connection.
   */
  #closeDelimited = false;

  /** The answer was complete with its head (204, 304). */
  #bodiless = false;
  /** The body of an answer discarded for a retry, kept (up to `HOLDABLE_ANSWER_BYTES`) in case the retry cannot be made. */
  #held: Buffer[] | undefined;
  #heldBytes = 0;

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    this.#scavenger?.passed(this.#received, chunk.length);
    this.#received += chunk.length;
    if (this.#verdict !== 'deliver') {
      // A body to discard before the retry, or to hold in case the retry cannot be made.
      const held = this.#held;
      if (held === undefined) return;
      if (this.#heldBytes + chunk.length <= HOLDABLE_ANSWER_BYTES) {
        held.push(chunk);
        this.#heldBytes += chunk.length;
        return;
      }
      this.#held = undefined;
      if (!this.#exchange.holdingAnswer) return; // the body ended within the copy meanwhile: the retry needs no answer
      // Too long to hold while the request body settles (or the body outgrew the copy): passed on now, the
      // request is not sent again.
      this.#verdict = this.#exchange.passOnHeld(this.#verdict!);
      for (const part of held) this.#res.write(part);
      this.bytesOut += this.#heldBytes;
    }
    this.bytesOut += chunk.length;
    if (!this.#res.write(chunk) && !this.#waitingForDrain) {
      controller.pause();
      this.#waitingForDrain = true;
      this.#onDrain ??= () => {
        this.#waitingForDrain = false;
        this.#controller?.resume();
      };
      this.#res.once('drain', this.#onDrain);
    }
  }

  /** Made on the first full write only: most answers never wait for the sender. */
  #onDrain: (() => void) | undefined;

  onResponseEnd(controller: Dispatcher.DispatchController): void {
    // Not for an answer to a request body that may lie unread upstream: an upstream that answered before reading
    // it all and then closed resets the connection (unread data), its answer whole all the same. That is a body
    // still going out, or one refused (4xx/5xx): the sidecar cannot tell whether the upstream read a body that
    // fit in the socket buffers.
    if (this.#closeDelimited && !this.#bodiless) {
      const body = this.#exchange.requestBody();
      const cut = body === 'none' || (body === 'whole' && this.#status < 400) ? (this.connection as { errored?: Error | null } | undefined)?.errored : undefined;
      if (cut) return this.onResponseError(controller, cut);
    }
    if (this.#verdict === 'deliver' && !this.#bodiless) this.#res.end();
    this.#exchange.attemptSettled(this.#verdict ?? 'deliver', this.#held);
  }

  onResponseError(_controller: Dispatcher.DispatchController, err: Error): void {
    if (this.#bodiless) {
      this.#exchange.attemptSettled('deliver'); // already answered in full
      return;
    }
    if (this.#waitingForDrain && this.#onDrain) this.#res.off('drain', this.#onDrain);
    // A body being discarded for a retry may fail: the retry goes out on another connection all the same
    // (but the answer, if held, is incomplete).
    if (this.#verdict === 'retry-401' || this.#verdict === 'retry-csrf') this.#exchange.attemptSettled(this.#verdict);
    else this.#exchange.attemptFailed(this, err);
  }
}
