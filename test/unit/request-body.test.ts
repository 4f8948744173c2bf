import type { IncomingMessage } from 'node:http';
import { once } from 'node:events';
import { Readable } from 'node:stream';
import { setImmediate as tick } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { ReplayBudget } from '../../src/replay-budget.js';
import { RequestBody } from '../../src/request-body.js';

const SOCKET_READ = 64 * 1024;

/** A sender's request stream that the test feeds, as node's parser does: one socket read per push. */
function sender(bytes: number): { req: IncomingMessage; source: Readable; pauses: () => number } {
  const source = new Readable({ read() {} });
  let pauses = 0;
  source.on('pause', () => pauses++);
  Object.assign(source, { headers: { 'content-length': String(bytes) }, complete: false });
  return { req: source as unknown as IncomingMessage, source, pauses: () => pauses };
}

describe('RequestBody', () => {
  it('passes full socket reads on without pausing the sender while the upstream takes them', async () => {
    const chunks = 16;
    const { req, source, pauses } = sender(chunks * SOCKET_READ);
    const body = new RequestBody(req, 2 * 1024 * 1024, undefined, new ReplayBudget());
    const upstream = body.stream()!;
    let received = 0;
    upstream.on('data', (chunk: Buffer) => (received += chunk.length));
    for (let i = 0; i < chunks; i++) {
      source.push(Buffer.alloc(SOCKET_READ, i));
      await tick();
    }
    expect(pauses()).toBe(0);
    source.push(null); // (its end unpipes, which pauses it once more)
    await once(upstream, 'end');
    expect(received).toBe(chunks * SOCKET_READ);
    expect(Buffer.concat(await body.replay()!.toArray()).length).toBe(chunks * SOCKET_READ);
  });

  it('sends the kept copy again as it is, from blocks charged to the budget: no second, uncounted copy', async () => {
    const { req, source } = sender(4 * SOCKET_READ);
    const budget = new ReplayBudget();
    const body = new RequestBody(req, 1024 * 1024, undefined, budget);
    const upstream = body.stream()!;
    upstream.resume();
    const pushed = Array.from({ length: 4 }, (_, i) => Buffer.alloc(SOCKET_READ, i));
    for (const chunk of pushed) source.push(chunk);
    source.push(null);
    await once(upstream, 'end');
    expect(budget.used).toBe(4 * SOCKET_READ); // sized to the declared length
    const first = (await body.replay()!.toArray()) as Buffer[];
    const again = (await body.replay()!.toArray()) as Buffer[];
    expect(Buffer.concat(first).equals(Buffer.concat(pushed))).toBe(true);
    // The second replay is the whole body too (a body sent three times: after a 401, then after a CSRF 403)…
    expect(Buffer.concat(again).equals(Buffer.concat(pushed)), 'the second replay holds the whole body').toBe(true);
    // …from the same memory each time, not copies of it.
    expect(again).toHaveLength(first.length);
    again.forEach((block, i) => expect(block.buffer).toBe(first[i]!.buffer));
    body.finish();
    expect(budget.used).toBe(0);
  });

  it.each([
    ['declared', { 'content-length': String(2 * SOCKET_READ) }],
    ['chunked', { 'transfer-encoding': 'chunked' }],
  ])('a %s body of exactly --max-replay-body bytes is kept, one byte more is not', async (_kind, headers) => {
    for (const extra of [0, 1]) {
      const source = new Readable({ read() {} });
      const size = 2 * SOCKET_READ + extra;
      Object.assign(source, { headers: 'content-length' in headers ? { 'content-length': String(size) } : headers, complete: false });
      const body = new RequestBody(source as unknown as IncomingMessage, 2 * SOCKET_READ, undefined, new ReplayBudget());
      const upstream = body.stream()!;
      upstream.resume();
      source.push(Buffer.alloc(SOCKET_READ, 1));
      source.push(Buffer.alloc(SOCKET_READ + extra, 2));
      source.push(null);
      await once(upstream, 'end');
      expect({ size, replayable: body.replayable() }).toEqual({ size, replayable: extra === 0 });
      body.finish();
    }
  });

  it('a chunked body of tiny chunks is kept in blocks, charged as allocated, not as thousands of Buffers', async () => {
    const source = new Readable({ read() {} });
    Object.assign(source, { headers: { 'transfer-encoding': 'chunked' }, complete: false });
    const budget = new ReplayBudget();
    const body = new RequestBody(source as unknown as IncomingMessage, 1024 * 1024, undefined, budget);
    const upstream = body.stream()!;
    upstream.resume();
    const bytes = 20_000;
    for (let i = 0; i < bytes; i++) source.push(Buffer.from([i % 251]));
    source.push(null);
    await once(upstream, 'end');
    const blocks = (await body.replay()!.toArray()) as Buffer[];
    expect(blocks.map((b) => b.length)).toEqual([16_384, bytes - 16_384]);
    expect(Buffer.concat(blocks).equals(Buffer.from(Array.from({ length: bytes }, (_, i) => i % 251)))).toBe(true);
    expect(budget.used).toBe(2 * 16_384); // what is allocated, not the 20,000 bytes counted one by one
    body.finish();
    expect(budget.used).toBe(0);
  });

  it('a copy the budget cannot hold is dropped whole, and what it had taken is given back', async () => {
    const { req, source } = sender(3 * SOCKET_READ);
    const budget = new ReplayBudget(2 * SOCKET_READ);
    const body = new RequestBody(req, 1024 * 1024, undefined, budget);
    const upstream = body.stream()!;
    upstream.resume();
    for (let i = 0; i < 3; i++) source.push(Buffer.alloc(SOCKET_READ, i));
    source.push(null);
    await once(upstream, 'end');
    expect(body.replayable()).toBe(false);
    expect(body.replay()).toBeUndefined();
    expect(budget.used).toBe(0);
  });

  it('still pauses the sender, within a few reads, when the upstream stops taking the body', async () => {
    const { req, source } = sender(32 * SOCKET_READ);
    const body = new RequestBody(req, 4 * 1024 * 1024, undefined, new ReplayBudget());
    const upstream = body.stream()!;
    upstream.on('data', () => upstream.pause()); // takes one chunk, then waits (as undici on a full socket)
    let pushed = 0;
    while (pushed < 32 && !source.isPaused()) {
      source.push(Buffer.alloc(SOCKET_READ));
      pushed++;
      await tick();
    }
    expect(source.isPaused()).toBe(true);
    // Held between the sender and the upstream: what the pass-through buffers, not the whole body.
    expect(upstream.readableLength + (upstream as unknown as { writableLength: number }).writableLength).toBeLessThanOrEqual(3 * SOCKET_READ);
    expect(pushed).toBeLessThanOrEqual(4);
    source.destroy();
  });
});

describe('ReplayBudget', () => {
  it('holds copies up to its limit exactly, and takes nothing beyond it', () => {
    const budget = new ReplayBudget(100);
    expect(budget.take(60)).toBe(true);
    expect(budget.take(40)).toBe(true); // 100 of 100: fits
    expect(budget.used).toBe(100);
    expect(budget.take(1)).toBe(false);
    expect(budget.used).toBe(100);
    budget.give(100);
    expect(budget.used).toBe(0);
  });
});
