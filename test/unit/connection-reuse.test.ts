/**
 * `connection-reuse`: a listener registered in `onRequestStart` learns, from
 * the next `undici:client:sendHeaders` publication, whether its socket had
 * carried a request head before. Published by hand here; the integration
 * tests (faults.test.ts) drive it through undici against a real upstream.
 */
import { channel } from 'node:diagnostics_channel';
import { describe, expect, it } from 'vitest';
import { answeredSince, awaitConnection, type ConnectionListener } from '../../src/connection-reuse.js';

const sendHeaders = channel('undici:client:sendHeaders');

function listener(): ConnectionListener {
  return { reusedConnection: false };
}

describe('connection-reuse', () => {
  it('a first request head on a socket is fresh; the next one on it is reused; another socket is fresh again', () => {
    const a = {};
    const b = {};
    const first = listener();
    awaitConnection(first);
    sendHeaders.publish({ request: {}, headers: '', socket: a });
    expect(first.reusedConnection).toBe(false);

    const second = listener();
    awaitConnection(second);
    sendHeaders.publish({ request: {}, headers: '', socket: a });
    expect(second.reusedConnection).toBe(true);

    const third = listener();
    awaitConnection(third);
    sendHeaders.publish({ request: {}, headers: '', socket: b });
    expect(third.reusedConnection).toBe(false);
  });

  it('answeredSince: whether the socket read anything after the head went out (a race reads nothing)', () => {
    const socket = { bytesRead: 120 };
    const waiting = listener();
    awaitConnection(waiting);
    sendHeaders.publish({ request: {}, headers: '', socket });
    expect(waiting.bytesReadAtSend).toBe(120);
    expect(answeredSince(waiting)).toBe(false);
    socket.bytesRead = 135;
    expect(answeredSince(waiting)).toBe(true);
    // A socket without a count (or none known) never counts as answered.
    expect(answeredSince(listener())).toBe(false);
  });

  it('settles only the listener waiting at that moment; later publications (other clients) leave it alone', () => {
    const s = {};
    const waiting = listener();
    awaitConnection(waiting);
    sendHeaders.publish({ request: {}, headers: '', socket: s });
    // e.g. a token request or a CSRF fetch on the same socket, not through a listener
    sendHeaders.publish({ request: {}, headers: '', socket: s });
    expect(waiting.reusedConnection).toBe(false);
    // …but it did mark the socket as used for the next listener
    const next = listener();
    awaitConnection(next);
    sendHeaders.publish({ request: {}, headers: '', socket: s });
    expect(next.reusedConnection).toBe(true);
  });

  it('a publication without a socket settles nothing', () => {
    const waiting = listener();
    awaitConnection(waiting);
    sendHeaders.publish({ request: {}, headers: '' });
    sendHeaders.publish(undefined);
    expect(waiting.reusedConnection).toBe(false);
    const s = {};
    sendHeaders.publish({ request: {}, headers: '', socket: s });
    sendHeaders.publish({ request: {}, headers: '', socket: s });
    // still waiting until the first real publication: that one was fresh
    expect(waiting.reusedConnection).toBe(false);
  });
});
