/**
 * What the sidecar keeps on each sender connection, beside node's own state: the answers it owes, the turns its
 * pipelined requests take (RFC 9112 §9.3.2), whether it is closing or read no more (RFC 9112 §9.6), and the
 * refusals written on the raw socket where no `ServerResponse` exists. The server (`proxy-server.ts`) and each
 * request's `Exchange` (`proxy.ts`) read and set these marks; this module is where they are defined.
 */
import type { ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { closeWithoutLingering } from './lingering-close.js';

/** What the connection asks of the exchange whose turn it is (see `TURNS`). */
export interface Turn {
  /** The sidecar, not the sender, is what the exchange waits on: the socket idle timeout does not apply. */
  waitsOnSidecar(): boolean;
  /** Its answer is being written and is not whole: a close would pass it off as complete. */
  readonly answerHalfWritten: boolean;
  /** The socket drained after node let go of it (a CONNECT behind answers owed). */
  socketDrained(): void;
  /** Its body broke (`status` the refusal, or undefined for a cut). */
  bodyBroke(status: number | undefined): void;
}

/**
 * The response being written on a connection (set and cleared by its `Exchange`). A parser
 * error while it is being written (a malformed chunk after an early answer) must cut the connection,
 * never write a second response into the first.
 */
export const ANSWERING = Symbol('oauth-sidecar.answering');
export type AnsweringSocket = Socket & { [ANSWERING]?: ServerResponse };
/** Marks a connection accepted while `--max-connections` others were open: its requests are refused. */
export const OVER_LIMIT = Symbol('oauth-sidecar.over-limit');
/**
 * Marks a connection whose current answer closes it (a refusal that stops reading it, the sender's own
 * `Connection: close`, a drain). node runs the handler of a pipelined request as soon as its head is parsed,
 * but never sends its answer once the connection closes: such a request is not forwarded (RFC 9112 §9.6: no
 * further requests are processed on that connection).
 */
export const CLOSING = Symbol('oauth-sidecar.closing');
/** How many answers this connection still owes (requests taken on, whose responses have not closed). */
export const OWED = Symbol('oauth-sidecar.owed');
/**
 * The requests of one connection take turns (RFC 9112 §9.3.2 lets a server process pipelined requests in
 * order): one is forwarded only once the answer ahead of it has closed, as nginx does, so a sender cannot
 * make the sidecar start an upstream exchange per pipelined request (past --max-connections) nor queue them
 * without bound: beyond `MAX_PIPELINED` answers owed the connection takes no more (see `Exchange`).
 */
export const TURNS = Symbol('oauth-sidecar.turns');
export interface Turns {
  /** The exchange whose turn it is (running, or answering), if any. */
  current: Turn | undefined;
  /** Exchanges waiting their turn, in order: `run` when it comes, `closed` when the connection goes first. */
  readonly waiting: Array<{ run: () => void; closed: () => void }>;
}
/** Answers a connection may owe at once; a request beyond them is not taken and the connection closes after them. */
export const MAX_PIPELINED = 32;

/**
 * Requests not taken (behind an answer that closes the connection, beyond `MAX_PIPELINED`) that a connection may
 * bring before it is closed at once, answers owed or not. More than one 64 KiB read holds (3,641 of the smallest
 * requests), so only a connection read on after it was stopped (see `stopReading`) ever reaches it: node keeps each
 * request's objects until the connection closes.
 */
export const MAX_DROPPED = 4_096;
/** How many requests of the connection were not taken (see `MAX_DROPPED`). */
export const DROPPED = Symbol('oauth-sidecar.dropped');
/** Marks a connection the sidecar closed for `MAX_DROPPED`: requests cut with it before they went out were refused. */
export const SHED = Symbol('oauth-sidecar.shed');
/** Marks a connection that owed `MAX_PIPELINED` answers when another request came: it takes no more. */
export const FULL = Symbol('oauth-sidecar.full');
/** Marks a connection from which nothing more is read: an answer closing it does not wait for a body to end. */
export const UNREAD = Symbol('oauth-sidecar.unread');
/** Marks a connection answered on the raw socket (`refuseRaw`): what the sender sends after it is not counted again. */
export const REFUSED = Symbol('oauth-sidecar.refused');
export type MarkedSocket = Socket & { [REFUSED]?: true; [OVER_LIMIT]?: true; [CLOSING]?: true; [OWED]?: number; [TURNS]?: Turns; [FULL]?: true; [UNREAD]?: true; [DROPPED]?: number; [SHED]?: true };

/**
 * Bytes that are no request arrived (or a CONNECT) while answers to earlier requests are owed: nothing may be
 * written before or into them, so nothing is answered here. Nothing more is read; the connection closes after
 * the last answer owed.
 */
export function closeAfterAnswersOwed(socket: AnsweringSocket & MarkedSocket): void {
  socket[CLOSING] = true;
  stopReading(socket);
  // Nothing more is read: a lingering close (waiting for a body to end) would wait for nothing.
  closeWithoutLingering(socket);
  closeAfterNewestAnswer(socket);
}

/** The newest answer owed on the connection closes it: one not yet begun says so, one under way is followed by the close. */
export function closeAfterNewestAnswer(socket: AnsweringSocket): void {
  const newest = socket[ANSWERING];
  if (newest === undefined) return;
  if (!newest.headersSent) newest.shouldKeepAlive = false;
  else if (!newest.writableFinished) newest.once('finish', () => socket.destroySoon());
  else socket.destroySoon();
}

/**
 * A request came while the connection owed MAX_PIPELINED answers: it is not taken, nor is any after it; the
 * requests already taken are served in turn, the newest answer owed closing the connection, and nothing more is
 * read meanwhile.
 */
export function takesNoMore(socket: AnsweringSocket & MarkedSocket): void {
  if (socket[FULL]) return;
  socket[FULL] = true;
  stopReading(socket);
  closeAfterNewestAnswer(socket);
}

/**
 * Read no more from a connection (every request taken on it has its body by then: bytes are parsed in order). As
 * node's server does under a flood of pipelined requests, its `_paused` flag keeps node from resuming the socket
 * when a request's body is read; node's own resume as answers drain is turned off too. What the read in progress
 * still brings is parsed to its end and not taken; `MAX_DROPPED` bounds that regardless.
 */
export function stopReading(socket: Socket): void {
  (socket as MarkedSocket)[UNREAD] = true;
  (socket as Socket & { _paused?: boolean })._paused = true;
  socket.pause();
  // For good: node resumes a socket it paused itself as its answers are written (socketOnDrain), and then reads
  // more of a burst it will never take, however well-behaved the sender.
  socket.resume = () => socket;
}

/** Answers `status` on the socket itself (no ServerResponse exists for these) and closes it; returns the bytes of the answer's body. */
export function refuseRaw(socket: Socket, status: number, message: string, extraHeaders = '', route: string | null = null): number {
  (socket as MarkedSocket)[REFUSED] = true;
  const body = JSON.stringify({ error: 'REQUEST_REFUSED', message, route });
  const reason = status === 405 ? 'Method Not Allowed' : status === 431 ? 'Request Header Fields Too Large' : status === 408 ? 'Request Timeout' : 'Bad Request';
  socket.end(
    `HTTP/1.1 ${status} ${reason}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n` +
      `x-sidecar-error: REQUEST_REFUSED\r\n${extraHeaders}connection: close\r\n\r\n${body}`,
  );
  // node's server no longer minds this socket (after CONNECT not even its idle timeout), and a sender may keep
  // its half open: give it a moment to read the answer, then close, so no refused socket outlives the refusal
  // or holds up a shutdown.
  socket.once('end', () => socket.destroy());
  socket.setTimeout(REFUSAL_LINGER_MS, () => socket.destroy());
  return Buffer.byteLength(body);
}

/** How long a refused connection is kept for the sender to read the answer before it is closed. */
export const REFUSAL_LINGER_MS = 2_000;

/**
 * Close a connection a sender let sit (idle timeout) or a stop ended. One whose answer being written is half written
 * is reset: a close would pass an answer delimited by it (HTTP/1.0, no length) off as complete (RFC 9112 §6.3, item
 * 8). Any other is closed, so that answers already written whole ahead of one not begun still reach the sender (a
 * reset would drop them from its receive buffer).
 */
export function cut(socket: Socket): void {
  if (socket.destroyed) return;
  if ((socket as MarkedSocket)[TURNS]?.current?.answerHalfWritten) socket.resetAndDestroy();
  else socket.destroy();
}
