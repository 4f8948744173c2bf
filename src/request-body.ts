/**
 * A request body on its way upstream: streamed to undici through a pass-through
 * that counts it for the scavenger, with a bounded copy kept so that a small
 * body can be sent again after a 401 or a CSRF 403 (RFC 6750 §3.1). All copies
 * together are bounded by the `ReplayBudget`.
 */
import type { IncomingMessage } from 'node:http';
import { Readable, Transform, type TransformCallback } from 'node:stream';
import type { ReplayBudget } from './replay-budget.js';
import type { Scavenger } from './scavenger.js';

/**
 * The request body as undici's body: streamed, with a copy of the first
 * `limit` bytes kept so that a small body can be sent again, each chunk
 * counted for the scavenger. The copy is taken from the sender's stream
 * itself, so it stays whole when the upstream stops taking the body (an early
 * answer) and the rest is read on for a resend (`whenSettled`).
 */
export class RequestBody {
  readonly #req: IncomingMessage;
  readonly #limit: number;
  readonly #scavenger: Scavenger | undefined;
  readonly #present: boolean;
  readonly #budget: ReplayBudget;
  /** The copy's filled blocks; `#block` is the one being filled (`#blockUsed` bytes of it). */
  #copy: Buffer[] | undefined = [];
  #block: Buffer | undefined;
  #blockUsed = 0;
  /** Bytes of the body copied (the per-request limit counts these). */
  #copied = 0;
  /** The declared `Content-Length`, if any: blocks are sized to it. */
  readonly #declared: number | undefined;
  /** Bytes of the copy reserved in the budget (given back when the copy is dropped or the request is over). */
  #reserved = 0;
  /** Bytes received from the sender. */
  #seen = 0;
  /** Bytes handed on towards the upstream (what the scavenger counts). */
  #passed = 0;
  #ended = false;
  #tee: Transform | undefined;
  #settled: (() => void) | undefined;

  constructor(req: IncomingMessage, limit: number, scavenger: Scavenger | undefined, budget: ReplayBudget) {
    this.#req = req;
    this.#limit = limit;
    this.#scavenger = scavenger;
    this.#budget = budget;
    const length = req.headers['content-length'];
    this.#declared = length === undefined ? undefined : Number(length);
    this.#present = announcesBody(req);
    // A declared length over the limit can never be replayed: no copy is kept.
    if (length !== undefined && Number(length) > limit) this.#copy = undefined;
  }

  /** The body as undici's body (the same stream however often asked): from here on the sender's body is read. */
  stream(): Readable | undefined {
    if (!this.#present) return undefined;
    if (this.#tee !== undefined) return this.#tee;
    const req = this.#req;
    // `#keep` sees every chunk (also those the upstream never took) and counts them; else the tee counts.
    const keeping = this.#copy !== undefined;
    const tee = new Transform({
      transform: (chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback) => {
        this.#scavenger?.passed(this.#passed, chunk.length);
        this.#passed += chunk.length;
        if (!keeping) this.#seen += chunk.length;
        if (this.#arrival !== undefined) this.#arrived();
        callback(null, chunk);
      },
    });
    this.#tee = tee;
    req.on('error', (err) => tee.destroy(err));
    req.pipe(tee);
    if (keeping) {
      req.on('data', this.#keep);
      req.once('end', this.#end);
    }
    return tee;
  }

  /** Called once the body has begun to arrive (see `whenArriving`). */
  #arrival: (() => void) | undefined;

  readonly #arrived = (): void => {
    const arrival = this.#arrival;
    this.#arrival = undefined;
    arrival?.();
  };

  /**
   * The body has begun to arrive (or there is none): some of it, its end, or the sender gone. Only then does
   * the request go to undici, which writes the head with the body's first bytes: a pooled connection taken
   * for it before sits idle on the wire meanwhile, and the upstream's keep-alive timer may close it (a `POST`,
   * never sent twice, would get 502).
   */
  arriving(): boolean {
    if (!this.#present || this.#passed > 0 || this.#seen > 0) return true;
    const req = this.#req;
    return req.readableLength > 0 || req.complete || req.readableEnded || req.destroyed;
  }

  /** Call `ready` once `arriving()`: the body is read from now on (into the stream undici will be given). */
  whenArriving(ready: () => void): void {
    if (this.arriving()) return ready();
    this.#arrival = ready;
    const req = this.#req;
    req.once('end', this.#arrived);
    req.once('close', this.#arrived);
    // Not yet undici's: a sender gone meanwhile errors it with no listener of undici's to take that (the
    // request then fails as it goes out).
    this.stream()!.on('error', () => undefined);
  }

  /**
   * The copy is written into blocks of its own, charged to the budget as allocated: the chunks themselves are not
   * kept. A chunked body of 1-byte chunks is as many Buffers (~200 bytes each, and each may hold on to the socket
   * read it came in), which counted by their bytes would hold hundreds of times the budget.
   */
  readonly #keep = (chunk: Buffer): void => {
    this.#seen += chunk.length;
    if (this.#copy === undefined) return;
    this.#copied += chunk.length;
    if (this.#copied <= this.#limit && this.#copyIn(chunk)) return;
    // Over this request's limit, or over what all copies together may hold: not replayable after all.
    this.#drop();
    this.#req.off('end', this.#end);
    this.#settle();
  };

  /** Copies `chunk` into the blocks, allocating (and charging) new ones as needed; false when the budget is spent. */
  #copyIn(chunk: Buffer): boolean {
    let offset = 0;
    while (offset < chunk.length) {
      if (this.#block === undefined || this.#blockUsed === this.#block.length) {
        if (this.#block !== undefined) this.#copy!.push(this.#block);
        this.#block = undefined;
        // Sized to what is still to come when the length is declared (a small body takes a small block).
        const size = this.#declared !== undefined ? Math.min(COPY_BLOCK_BYTES, Math.max(1, this.#declared - (this.#copied - chunk.length + offset))) : CHUNKED_COPY_BLOCK_BYTES;
        if (!this.#budget.take(size)) return false;
        this.#reserved += size;
        this.#block = Buffer.allocUnsafe(size);
        this.#blockUsed = 0;
      }
      const copied = chunk.copy(this.#block, this.#blockUsed, offset);
      this.#blockUsed += copied;
      offset += copied;
    }
    return true;
  }

  /** No copy from here on (over a limit, not wanted, or the exchange is over); its bytes go back to the budget. */
  #drop(): void {
    this.#copy = undefined;
    this.#block = undefined;
    this.#budget.give(this.#reserved);
    this.#reserved = 0;
  }

  /** The exchange is over: the copy is dropped for good and its bytes go back to the budget. */
  finish(): void {
    this.#drop();
  }

  readonly #end = (): void => {
    this.#ended = true;
    this.#settle();
  };

  #settle(): void {
    const settled = this.#settled;
    this.#settled = undefined;
    settled?.();
  }

  /** The request announces a body. */
  get present(): boolean {
    return this.#present;
  }

  /** The streamed body was taken whole (undici read it to its end). */
  takenWhole(): boolean {
    return this.#tee?.readableEnded === true;
  }

  /** Bytes received from the sender (the declared length when none of it went towards the upstream). */
  get bytes(): number {
    if (this.#tee === undefined) return this.#req.complete ? Number(this.#req.headers['content-length'] ?? 0) : 0;
    return this.#seen;
  }

  /** True when the body can be sent again: none, or fully kept. */
  replayable(): boolean {
    return !this.#present || (this.#copy !== undefined && this.#ended);
  }

  /** Still arriving, and still within the copy's limit: it may yet become replayable. */
  pending(): boolean {
    return this.#present && this.#copy !== undefined && !this.#ended;
  }

  /**
   * Call `done` once the body is no longer `pending` (ended, outgrown the copy, or the sender gone). If the
   * upstream stopped taking it, the rest is read on here.
   */
  whenSettled(done: () => void): void {
    if (!this.pending()) return done();
    this.#settled = done;
    const req = this.#req;
    req.once('close', () => {
      if (!req.complete) this.#settle();
    });
    const readOn = (): void => {
      if (!this.pending()) return;
      req.unpipe(this.#tee);
      req.resume();
    };
    if (this.#tee === undefined || this.#tee.destroyed) readOn();
    else this.#tee.once('close', readOn);
  }

  /**
   * Nothing will be sent again, and the upstream will not take the rest: the copy goes, and what is still
   * arriving is read into nothing (the connection closes after the answer).
   */
  discardRest(): void {
    const req = this.#req;
    this.#drop(); // `#keep`, if it listens, still counts what is drained
    if (req.complete) return;
    if (this.#tee) req.unpipe(this.#tee);
    req.resume();
  }

  /**
   * The kept copy as a body to send again: its blocks, never joined into a second buffer, which the budget
   * would not count (a burst of resends after a CPI session expired would hold twice --max-replay-memory).
   */
  replay(): Readable | undefined {
    if (!this.#present || this.#copy === undefined) return undefined;
    const blocks = this.#block === undefined ? this.#copy.slice() : [...this.#copy, this.#block.subarray(0, this.#blockUsed)];
    return Readable.from(blocks, { objectMode: false });
  }
}

/** Blocks the replay copy is written into: 64 KiB (a socket read), or the declared length when smaller. */
const COPY_BLOCK_BYTES = 64 * 1024;
/** Blocks for a chunked body, whose length is not known: 16 KiB, so that many small ones do not spend the budget. */
const CHUNKED_COPY_BLOCK_BYTES = 16 * 1024;

/** The request has a body: a non-zero `Content-Length` or a `Transfer-Encoding` (RFC 9112 §6.3). */
export function announcesBody(req: IncomingMessage): boolean {
  const length = req.headers['content-length'];
  return (length !== undefined && length !== '0') || req.headers['transfer-encoding'] !== undefined;
}

/**
 * A request body is announced and not yet all received. Not `!req.complete` alone: node marks even a
 * request without a body complete only after its 'request' listener has returned.
 */
export function bodyStillComing(req: IncomingMessage): boolean {
  return !req.complete && announcesBody(req);
}

