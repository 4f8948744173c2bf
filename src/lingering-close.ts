/**
 * Lingering close: a connection closed after an answer that came while the sender was still sending its body
 * (an early answer, a refusal) keeps reading — and dropping — that body before it closes.
 *
 * Why: node closes such a connection as soon as the answer is written, while the sender's bytes keep arriving.
 * The kernel answers bytes that reach a closed socket with a reset, and a reset makes the sender's stack throw
 * away the answer it has not read yet: a sender that writes its whole body before reading (Python's
 * `http.client`, many SOAP stacks) never sees the `413` or `401`, only a broken pipe. RFC 9112 §9.6: a server
 * closing while the client may still send should half-close first and go on reading. Like nginx's lingering
 * close, the reading is bounded: the connection closes when the body has been read, when the sender closes its
 * side, after `LINGER_IDLE_MS` without a byte from it, or after `LINGER_MS` in all, whichever comes first.
 */
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';

/** Longest time a connection reads a body nobody will use after its answer (nginx's `lingering_time`). */
export const LINGER_MS = 30_000;
/** Longest silence of the sender while the connection lingers (nginx's `lingering_timeout`). */
export const LINGER_IDLE_MS = 5_000;

export interface LingerLimits {
  totalMs: number;
  idleMs: number;
}

/**
 * Make node's close after the answer on `socket` (its `destroySoon`, called when a `Connection: close` answer
 * has finished) a lingering one while `req`'s body is still arriving. The body must be flowing (resumed, its
 * data dropped) for the reading to go on. `onLinger` is told when the lingering begins.
 */
export function lingerAfterAnswer(
  socket: Socket,
  req: IncomingMessage,
  onLinger: () => void = () => undefined,
  limits: LingerLimits = { totalMs: LINGER_MS, idleMs: LINGER_IDLE_MS },
): void {
  socket.destroySoon = function lingeringDestroySoon(this: Socket): void {
    if (this.writable) this.end(); // the answer, then a FIN: the sender can read it all
    if (req.complete) return destroyOnceWritten(this);
    onLinger();
    let silence: NodeJS.Timeout | undefined;
    const heard = (): void => void silence?.refresh(); // the body's chunks: node's parser reads the socket itself
    const stopListening = (): void => {
      clearTimeout(silence);
      req.off('data', heard);
      req.off('end', done);
      this.off('end', done);
    };
    // The body has been read: closed once the answer is written (the total time still bounds a sender that
    // does not read its answer).
    const done = (): void => {
      stopListening();
      destroyOnceWritten(this);
    };
    // A sender that keeps sending, or falls silent, without ending its body: given up. (No reset is possible
    // once the FIN is queued; bytes of the sender still unread make the kernel answer with one anyway.)
    const giveUp = (): void => {
      stopListening();
      this.destroy();
    };
    const total = setTimeout(giveUp, limits.totalMs);
    silence = setTimeout(giveUp, limits.idleMs);
    req.on('data', heard);
    req.once('end', done);
    this.once('end', done); // the sender closed its side
    this.once('close', () => {
      stopListening();
      clearTimeout(total);
    });
  };
}

/** Never before the answer has been handed to the kernel: destroying earlier would drop what is left of it. */
function destroyOnceWritten(socket: Socket): void {
  if (socket.writableFinished) socket.destroy();
  else socket.once('finish', () => socket.destroy());
}

/** Back to node's own close for `socket` (the connection is closed for reasons other than a body still coming). */
export function closeWithoutLingering(socket: Socket): void {
  delete (socket as { destroySoon?: unknown }).destroySoon; // the prototype's again
}
