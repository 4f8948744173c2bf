/**
 * Whether an upstream request went out on a pooled connection that had
 * carried a request before.
 *
 * A connection reset before any answer means different things on the two:
 * on a reused connection it is most likely the keep-alive race (the upstream
 * closed the idle connection just as the request went out, RFC 9112 §9.3.1),
 * and an idempotent request may be sent again (RFC 9110 §9.2.2); on a fresh
 * connection it is the upstream's reaction to this very request, and sending
 * it again would only make it happen twice.
 *
 * undici does not tell a dispatch handler which connection it got. Its
 * diagnostics channel `undici:client:sendHeaders` does: undici publishes it
 * synchronously in the same call that starts the handler (`onRequestStart`,
 * then the request head is built and published with its socket). So the
 * handler registers itself in `onRequestStart`, and the next publication
 * settles it. A request aborted in between publishes nothing and is simply
 * never retried; the registration is overwritten by the next request. The
 * channel and its `socket` are documented undici API; the order is not, so the
 * fault suite pins it down (a fresh connection's reset is sent once, a reused
 * one's retried once): should it change, at worst an idempotent request is
 * judged wrongly, and `POST`/`PATCH` are never sent twice either way.
 */
import { subscribe } from 'node:diagnostics_channel';

/** Told, when its request head goes out, which connection carries it and whether it had been used before. */
export interface ConnectionListener {
  reusedConnection: boolean;
  connection?: object | undefined;
  /**
   * What the connection had read (after TLS: its cleartext) when the head went out. Read more since, and the
   * upstream has answered something on it: a reset then is no keep-alive race, and the request is not sent again.
   */
  bytesReadAtSend?: number | undefined;
}

/** Whether the upstream sent anything on the listener's connection after its request head went out. */
export function answeredSince(listener: ConnectionListener): boolean {
  const read = (listener.connection as { bytesRead?: unknown } | undefined)?.bytesRead;
  return typeof read === 'number' && listener.bytesReadAtSend !== undefined && read > listener.bytesReadAtSend;
}

/** Sockets that have carried a request head; weak, so closed sockets are collected. */
const used = new WeakSet<object>();
let waiting: ConnectionListener | undefined;
let subscribed = false;

function onSendHeaders(message: unknown): void {
  const socket = (message as { socket?: unknown } | undefined)?.socket;
  if (typeof socket !== 'object' || socket === null) return;
  if (waiting) {
    waiting.reusedConnection = used.has(socket);
    waiting.connection = socket;
    const read = (socket as { bytesRead?: unknown }).bytesRead;
    waiting.bytesReadAtSend = typeof read === 'number' ? read : undefined;
    waiting = undefined;
  }
  used.add(socket);
}

/** Call from `onRequestStart`: `listener.reusedConnection` and `connection` are set as the request head goes out. */
export function awaitConnection(listener: ConnectionListener): void {
  if (!subscribed) {
    subscribe('undici:client:sendHeaders', onSendHeaders);
    subscribed = true;
  }
  waiting = listener;
}
