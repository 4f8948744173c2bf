/**
 * Lingering close: a connection closed after an answer that came while the sender was still sending its body
 * (an early answer, a refusal) keeps reading — and dropping — that body before it closes.
 *
 * Why: node closes such a connection as soon as the answer is written, while the sender's bytes keep arriving.
 * The kernel answers bytes that reach a closed socket with a reset, and a reset makes the sender's stack throw
 * away the answer it has not read yet: a sender that writes its whole body before reading (Python's
 * `http.client`, many SOAP stacks) never sees the `413` or `401`, only a broken pipe. RFC 9112 §9.6: a server
 * closing while the client may still send should half-close first and go on reading. Like nginx's lingering
 * close, the reading is bounded in time: the connection closes when the body has been read, when the sender
 * closes its side, or after `LINGER_MS`, whichever comes first.
 */
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';

/** Longest time a connection reads a body nobody will use after its answer (nginx's `lingering_time`). */
export const LINGER_MS = 30_000;

/**
 * Make node's close after the answer on `socket` (its `destroySoon`, called when a `Connection: close` answer
 * has finished) a lingering one while `req`'s body is still arriving. The body must be flowing (resumed, its
 * data dropped) for the reading to go on.
 */
export function lingerAfterAnswer(socket: Socket, req: IncomingMessage, lingerMs: number = LINGER_MS): void {
  socket.destroySoon = function lingeringDestroySoon(this: Socket): void {
    if (this.writable) this.end(); // the answer, then a FIN: the sender can read it all
    // Whatever happens below, the connection is gone after `lingerMs` (a sender that neither stops sending
    // nor reads its answer).
    const timer = setTimeout(() => this.destroy(), lingerMs);
    this.once('close', () => clearTimeout(timer));
    let closing = false;
    const close = (): void => {
      if (closing) return;
      closing = true;
      // Never before the answer has been handed to the kernel: destroying earlier would drop what is left of it.
      if (this.writableFinished) this.destroy();
      else this.once('finish', () => this.destroy());
    };
    if (req.complete) return close();
    req.once('end', close);
    this.once('end', close); // the sender closed its side
  };
}
