import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { ConnectionLimit } from '../../src/connection-limit.js';

/** Only what the limit uses of a socket: its 'close' event. */
function socket(): Socket & EventEmitter {
  return new EventEmitter() as Socket & EventEmitter;
}

describe('ConnectionLimit', () => {
  it('accepts up to max connections, refuses the ones beyond while they are open, and counts both', () => {
    const reached: number[] = [];
    const limit = new ConnectionLimit(2, (open) => reached.push(open));
    const [a, b, c, d] = [socket(), socket(), socket(), socket()];
    expect(limit.accept(a)).toBe(true);
    expect(limit.accept(b)).toBe(true);
    expect(limit.accept(c)).toBe(false);
    expect(limit.accept(d)).toBe(false);
    expect(limit.open).toBe(4);
    expect(limit.refused).toBe(2);
    expect(reached).toEqual([3]); // told once for the run of refusals
    // Closing any connection (a refused one too) makes room.
    c.emit('close');
    d.emit('close');
    a.emit('close');
    expect(limit.open).toBe(1);
    expect(limit.accept(socket())).toBe(true);
    expect(limit.accept(socket())).toBe(false);
    expect(reached).toEqual([3, 3]); // a new run of refusals after one within the limit
  });

  it('counts but never refuses with max 0', () => {
    const limit = new ConnectionLimit(0, () => {
      throw new Error('never reached');
    });
    for (let i = 0; i < 100; i++) expect(limit.accept(socket())).toBe(true);
    expect(limit.open).toBe(100);
    expect(limit.refused).toBe(0);
  });
});
