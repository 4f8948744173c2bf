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

  it('sends the kept chunks again as they are: no second, uncounted copy of the body', async () => {
    const { req, source } = sender(4 * SOCKET_READ);
    const budget = new ReplayBudget();
    const body = new RequestBody(req, 1024 * 1024, undefined, budget);
    const upstream = body.stream()!;
    upstream.resume();
    const pushed = Array.from({ length: 4 }, (_, i) => Buffer.alloc(SOCKET_READ, i));
    for (const chunk of pushed) source.push(chunk);
    source.push(null);
    await once(upstream, 'end');
    expect(budget.used).toBe(4 * SOCKET_READ);
    for (let attempt = 0; attempt < 2; attempt++) {
      const sent = (await body.replay()!.toArray()) as Buffer[];
      expect(sent).toHaveLength(4);
      sent.forEach((chunk, i) => expect(chunk).toBe(pushed[i])); // the very buffers counted in the budget
    }
    body.finish();
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
