import { EventEmitter } from 'node:events';
import type { IncomingMessage } from 'node:http';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { closeWithoutLingering, lingerAfterAnswer } from '../../src/lingering-close.js';

/** A request body as the lingering close sees it: `complete`, and `end` when the last byte was read. */
class FakeBody extends EventEmitter {
  complete = false;
  finish(): void {
    this.complete = true;
    this.emit('end');
  }
}

let server: Server | undefined;
afterEach(async () => {
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  server = undefined;
});

/** A connected pair on port 0: the server's side (answering) and the sender's. */
async function pair(): Promise<{ answering: Socket; sender: Socket }> {
  const accepted = new Promise<Socket>((resolve) => {
    server = createServer({ allowHalfOpen: true }, resolve);
  });
  await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
  const port = (server!.address() as { port: number }).port;
  const sender = connect({ port, host: '127.0.0.1', allowHalfOpen: true }); // a FIN from the answering side does not end its sending
  const answering = await accepted;
  answering.resume(); // the body is read and dropped
  return { answering, sender };
}

function closed(socket: Socket): Promise<void> {
  return new Promise((resolve) => (socket.destroyed ? resolve() : socket.once('close', () => resolve())));
}

describe('lingerAfterAnswer', () => {
  it('writes the answer and a FIN, keeps reading, and closes once the body has been read', async () => {
    const { answering, sender } = await pair();
    const body = new FakeBody();
    lingerAfterAnswer(answering, body as unknown as IncomingMessage, undefined, { totalMs: 60_000, idleMs: 60_000 });
    const received: Buffer[] = [];
    sender.on('data', (c: Buffer) => received.push(c));
    const senderEnded = new Promise<void>((resolve) => sender.once('end', () => resolve()));
    answering.write('the answer');
    answering.destroySoon(); // what node calls after a `Connection: close` answer
    await senderEnded;
    expect(Buffer.concat(received).toString()).toBe('the answer');
    expect(answering.destroyed).toBe(false); // still reading what the sender sends
    const more = new Promise<void>((resolve) => answering.once('data', () => resolve()));
    sender.write('rest of the body');
    await more;
    body.finish();
    await closed(answering);
    sender.destroy();
  });

  it('closes when the sender closes its side before the body is complete', async () => {
    const { answering, sender } = await pair();
    lingerAfterAnswer(answering, new FakeBody() as unknown as IncomingMessage, undefined, { totalMs: 60_000, idleMs: 60_000 });
    answering.destroySoon();
    sender.end();
    await closed(answering);
    sender.destroy();
  });

  it('closes after the linger time when the sender neither stops sending nor closes', async () => {
    const { answering, sender } = await pair();
    lingerAfterAnswer(answering, new FakeBody() as unknown as IncomingMessage, undefined, { totalMs: 50, idleMs: 60_000 });
    sender.on('error', () => undefined);
    const sending = setInterval(() => sender.write(Buffer.alloc(1024)), 5);
    try {
      answering.destroySoon();
      await closed(answering);
      expect(answering.destroyed).toBe(true);
    } finally {
      clearInterval(sending);
      sender.destroy();
    }
  });

  it('closes after a silence of the sender; each chunk of the body restarts that wait', async () => {
    const { answering, sender } = await pair();
    const body = new FakeBody();
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    try {
      let lingering = 0;
      lingerAfterAnswer(answering, body as unknown as IncomingMessage, () => lingering++, { totalMs: 60_000, idleMs: 1_000 });
      answering.destroySoon();
      expect(lingering).toBe(1);
      vi.advanceTimersByTime(900);
      body.emit('data', Buffer.alloc(1));
      vi.advanceTimersByTime(900);
      expect(answering.destroyed).toBe(false); // 1.8 s in, but the sender spoke at 0.9 s
      vi.advanceTimersByTime(200);
      expect(answering.destroyed).toBe(true);
    } finally {
      vi.useRealTimers();
      sender.destroy();
    }
  });

  it('a sender that does not read its answer is still given up after the linger time once its body has ended', async () => {
    const { answering, sender } = await pair();
    sender.pause(); // reads nothing: the answer below stays in the buffers
    sender.on('error', () => undefined);
    const body = new FakeBody();
    lingerAfterAnswer(answering, body as unknown as IncomingMessage, undefined, { totalMs: 50, idleMs: 60_000 });
    answering.write(Buffer.alloc(16 * 1024 * 1024)); // more than the kernel's socket buffers hold
    answering.destroySoon();
    body.finish(); // the body has been read; the answer is not all written
    await closed(answering);
    expect(answering.writableFinished).toBe(false);
    sender.destroy();
  });

  it('closes as before when the body is already complete', async () => {
    const { answering, sender } = await pair();
    const body = new FakeBody();
    body.complete = true;
    lingerAfterAnswer(answering, body as unknown as IncomingMessage, undefined, { totalMs: 60_000, idleMs: 60_000 });
    answering.write('done');
    answering.destroySoon();
    await closed(answering);
    sender.destroy();
  });
  it('an answer still in the buffers when the body is already complete reaches the sender whole before the close', async () => {
    const { answering, sender } = await pair();
    sender.pause(); // not reading yet: the answer waits in the buffers when node asks for the close
    const body = new FakeBody();
    body.complete = true;
    lingerAfterAnswer(answering, body as unknown as IncomingMessage, undefined, { totalMs: 60_000, idleMs: 60_000 });
    const answer = Buffer.alloc(8 * 1024 * 1024, 0x61); // more than the kernel's socket buffers hold
    answering.write(answer);
    expect(answering.writableFinished).toBe(false);
    answering.destroySoon();
    let received = 0;
    sender.on('data', (c: Buffer) => (received += c.length));
    const ended = new Promise<void>((resolve) => {
      sender.once('end', () => resolve());
      sender.once('close', () => resolve());
    });
    sender.on('error', () => undefined);
    sender.resume();
    await ended;
    expect(received).toBe(answer.length);
    await closed(answering);
    sender.destroy();
  });

  it('leaves no timer behind once the lingering connection has closed', async () => {
    const { answering, sender } = await pair();
    const body = new FakeBody();
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    try {
      lingerAfterAnswer(answering, body as unknown as IncomingMessage, undefined, { totalMs: 60_000, idleMs: 5_000 });
      answering.destroySoon();
      expect(vi.getTimerCount()).toBe(2); // the linger time and the silence
      const gone = new Promise<void>((resolve) => answering.once('close', () => resolve()));
      body.finish();
      await gone;
      expect(vi.getTimerCount()).toBe(0);
    } finally {
      vi.useRealTimers();
      sender.destroy();
    }
  });
  it("closeWithoutLingering puts node's own close back: no lingering for a body nobody reads any more", async () => {
    const { answering, sender } = await pair();
    let lingering = 0;
    lingerAfterAnswer(answering, new FakeBody() as unknown as IncomingMessage, () => lingering++, { totalMs: 60_000, idleMs: 60_000 });
    closeWithoutLingering(answering);
    answering.destroySoon();
    expect(lingering).toBe(0);
    await closed(answering);
    sender.destroy();
  });
});
