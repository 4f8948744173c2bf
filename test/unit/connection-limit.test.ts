import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { ConnectionLimit, connectionsWithin, FD_RESERVE, openFileLimit } from '../../src/connection-limit.js';

/** Only what the limit uses of a socket: its 'close' event. */
function socket(): Socket & EventEmitter {
  return new EventEmitter() as Socket & EventEmitter;
}

describe('ConnectionLimit', () => {
  it('serves up to max connections, refuses the ones beyond while those are open, and counts both', () => {
    const refusedAt: number[] = [];
    const limit = new ConnectionLimit(2, (open) => refusedAt.push(open));
    const [a, b, c, d] = [socket(), socket(), socket(), socket()];
    expect(limit.accept(a)).toBe(true);
    expect(limit.accept(b)).toBe(true);
    expect(limit.accept(c)).toBe(false);
    expect(limit.accept(d)).toBe(false);
    expect(limit.open).toBe(4);
    expect(limit.refused).toBe(2);
    expect(refusedAt).toEqual([3, 4]); // each refusal is told, with the connections open then
    // A refused connection closing makes no room: only served ones hold places.
    c.emit('close');
    expect(limit.open).toBe(3);
    expect(limit.accept(socket())).toBe(false);
    // A served one closing does, even while refused ones linger.
    a.emit('close');
    expect(limit.accept(socket())).toBe(true);
    expect(limit.accept(socket())).toBe(false);
    expect(limit.refused).toBe(4);
  });

  it('counts but never refuses with max 0', () => {
    const limit = new ConnectionLimit(0, () => {
      throw new Error('never refused');
    });
    const sockets = Array.from({ length: 100 }, socket);
    for (const s of sockets) expect(limit.accept(s)).toBe(true);
    expect(limit.open).toBe(100);
    sockets.slice(0, 40).forEach((s) => s.emit('close'));
    expect(limit.open).toBe(60);
    expect(limit.refused).toBe(0);
  });
  it('a served connection released (it takes no more requests) gives its place back, and counts as open until it closes', () => {
    const limit = new ConnectionLimit(1);
    const [a, b, c] = [socket(), socket(), socket()];
    expect(limit.accept(a)).toBe(true);
    limit.release(a);
    limit.release(a); // once only
    expect(limit.open).toBe(1);
    expect(limit.accept(b)).toBe(true);
    expect(limit.accept(c)).toBe(false);
    expect(limit.open).toBe(3);
    a.emit('close');
    expect(limit.open).toBe(2);
    limit.release(c); // a refused connection holds no place to give
    expect(limit.accept(socket())).toBe(false); // b still holds the one place
    expect(limit.open).toBe(3);
  });
});

describe('the open-file limit', () => {
  const limits = (soft: string, hard = soft) =>
    [
      'Limit                     Soft Limit           Hard Limit           Units     ',
      'Max processes             63844                63844                processes ',
      `Max open files            ${soft.padEnd(21)}${hard.padEnd(21)}files     `,
      'Max locked memory         8388608              8388608              bytes     ',
    ].join('\n');

  it("reads the soft limit from /proc/self/limits' text, and nothing where it cannot", () => {
    expect(openFileLimit(() => limits('1024', '524288'))).toBe(1024);
    expect(openFileLimit(() => limits('1048576'))).toBe(1_048_576);
    expect(openFileLimit(() => limits('unlimited'))).toBeUndefined();
    expect(openFileLimit(() => 'Limit  Soft Limit\n')).toBeUndefined();
    expect(
      openFileLimit(() => {
        throw Object.assign(new Error('no such file'), { code: 'ENOENT' });
      }),
    ).toBeUndefined();
  });

  it('reads this process\'s own limit on Linux', () => {
    if (process.platform !== 'linux') return;
    const limit = openFileLimit();
    expect(limit).toBeGreaterThan(FD_RESERVE);
  });

  it('counts a served connection once for itself and once per route, after the reserve and a token connection per route; always at least one', () => {
    expect(connectionsWithin(1024, 1)).toBe(Math.floor((1024 - FD_RESERVE - 1) / 2));
    expect(connectionsWithin(1024, 4)).toBe(Math.floor((1024 - FD_RESERVE - 4) / 5));
    expect(connectionsWithin(1_048_576, 300)).toBe(Math.floor((1_048_576 - FD_RESERVE - 300) / 301));
    expect(connectionsWithin(FD_RESERVE + 5, 1)).toBe(2);
    expect(connectionsWithin(64, 1)).toBe(1);
  });
});
