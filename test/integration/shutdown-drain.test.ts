/**
 * Shutdown against real servers on port 0: what the drain waits for and what it does not. An answer that
 * began before the drain goes out keep-alive, and its connection must close once the answer is done, not at
 * the end of the grace period; an upstream request no sender waits for any more (a CSRF fetch) must not
 * hold the stop up to its timeout. Both grace periods and timeouts here outlast the test timeout (20 s), so
 * waiting for them fails the test.
 */
import { writeFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { connectionsClosed } from '../../src/proxy-server.js';
import { rawOpen } from '../helpers/raw-http.js';
import { runSidecar, type RunningSidecar } from '../helpers/sidecar.js';
import { holdRequests, startWorld, type World } from '../helpers/world.js';

const CLIENT_ID = 'sb-drain!b7|it-rt-acme!b196';
const SECRET = 'dr4in$secret=value!|%+:';
const NEXT = { id: 'sb-drain-next!b8|it-rt-acme!b196', secret: 'n3xt$secret=value!|%+:' };

let world: World;
let keyPath: string;
const sidecars: RunningSidecar[] = [];

beforeAll(async () => {
  world = await startWorld([
    { clientId: CLIENT_ID, secret: SECRET, authMethod: 'client_secret_basic' },
    { clientId: NEXT.id, secret: NEXT.secret, authMethod: 'client_secret_basic' },
  ]);
  keyPath = await world.secretKey('key.json', CLIENT_ID, SECRET);
});

afterEach(async () => {
  world.upstream.setHandler(undefined);
  await Promise.all(sidecars.splice(0).map((s) => s.close()));
});

afterAll(async () => {
  await world?.close();
});

async function start(argv: string[], key = keyPath): Promise<RunningSidecar> {
  const s = await runSidecar(['--service-key', key, '--ca', world.caPath, '--shutdown-delay', '0', ...argv], {}, { watch: { pollIntervalMs: 500, debounceMs: 20 } });
  sidecars.push(s);
  await s.tokens.getToken(s.routes.routes[0]!.tokenClient);
  return s;
}

/** The upstream asks every request for a CSRF token and never answers the fetch; resolves once one arrived. */
function csrfFetchNeverAnswered(): Promise<void> {
  return new Promise<void>((fetchArrived) => {
    world.upstream.setHandler((req, res, body) => {
      body.resume();
      if (req.method === 'GET' && req.headers['x-csrf-token'] === 'Fetch') {
        fetchArrived(); // and never answered
        return true;
      }
      res.writeHead(403, { 'x-csrf-token': 'Required', 'content-type': 'text/html' });
      res.end('<html>Forbidden</html>');
      return true;
    });
  });
}

/**
 * A sender of `bytes` whose answer to `path` is half written when this resolves: the upstream sends a head without a
 * length (to an HTTP/1.0 sender the close ends such an answer) and a first part, then nothing.
 */
async function halfWritten(s: RunningSidecar, path: string, bytes: string): Promise<Awaited<ReturnType<typeof rawOpen>>> {
  world.upstream.setHandler((req, res, body) => {
    body.resume();
    if (!req.url?.includes(path)) return false;
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.write('first part');
    return true; // never ended
  });
  const sender = await rawOpen(s.address.port, bytes);
  await expect.poll(() => sender.received()).toContain('first part');
  return sender;
}

describe('shutdown drain', () => {
  it('closes the keep-alive connection of an answer begun before the drain once that answer is done', async () => {
    const s = await start(['--shutdown-grace', '60000']);
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    world.upstream.setHandler(async (req, res, body) => {
      if (req.url !== '/http/slow-body') return false;
      body.resume();
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('first ');
      await released;
      res.end('last');
      return true;
    });
    const res = await request(`${s.url}/http/slow-body`); // the head has arrived: written before the drain
    expect(res.headers['connection']).toBe('keep-alive');
    const stopping = s.shutdown();
    release();
    expect(await res.body.text()).toBe('first last');
    await stopping; // within the test's timeout, not the 60-s grace period
    expect(s.server.listening).toBe(false);
    expect(s.logs.some((l) => String(l['msg']).startsWith('grace period over'))).toBe(false);
  });

  it('does not wait for a CSRF fetch still under way once its sender is gone', async () => {
    const s = await start(['--shutdown-grace', '0', '--upstream-timeout', '60000']);
    const fetching = csrfFetchNeverAnswered();
    const outcome = request(`${s.url}/http/order`, { method: 'POST', body: '<order/>' }).then(
      (r) => r.body.dump().then(() => r.statusCode),
      (err: unknown) => err,
    );
    await fetching;
    await s.shutdown(); // within the test's timeout, not the 60-s upstream timeout
    expect(s.server.listening).toBe(false);
    expect(await outcome).toBeInstanceOf(Error); // cut with the grace period over: never left hanging
    expect(s.logs.filter((l) => l['level'] === 'error')).toEqual([]); // no internal error on the way out
  });

  it('does not forward a request pipelined during the drain behind an answer not yet begun: that answer closes the connection', async () => {
    const s = await start(['--shutdown-grace', '60000']);
    const held = holdRequests(world.upstream, '/http/held');
    const sender = await rawOpen(s.address.port, 'GET /http/held HTTP/1.1\r\nHost: localhost\r\n\r\n');
    await held.arrival;
    const stopping = s.shutdown();
    sender.socket.write('GET /http/echo?pipelined-in-drain HTTP/1.1\r\nHost: localhost\r\n\r\n');
    await expect.poll(() => s.logs.some((l) => l['msg'] === 'request' && l['path'] === '/http/echo')).toBe(true);
    held.release();
    expect(await sender.closed).toBe('closed');
    // One answer, the held one's, with Connection: close; the pipelined request never reached the upstream.
    expect(sender.received().match(/^HTTP\/1\.1 \d{3} .*$/gm)).toEqual(['HTTP/1.1 200 OK']);
    expect(sender.received()).toMatch(/\r\nconnection: close\r\n/i);
    expect(world.upstream.requests.some((r) => r.url.includes('pipelined-in-drain'))).toBe(false);
    expect(s.logs.find((l) => l['msg'] === 'request' && l['path'] === '/http/echo')).toMatchObject({ status: 0, error: 'REQUEST_REFUSED' });
    await stopping; // within the test's timeout, not the 60-s grace period
  });

  it('does not wait the grace period for connections that owe no answer (opened ahead, half a head, also after a request)', async () => {
    const s = await start(['--shutdown-grace', '60000']); // far beyond the test's timeout
    const silent = await rawOpen(s.address.port, '');
    const halfHead = await rawOpen(s.address.port, 'GET /http/ok HTTP/1.1\r\nHost: loc');
    // A keep-alive connection that has been answered, with half the head of its next request behind (sent in the
    // same write, so the server has read it by the time the answer comes).
    const reused = await rawOpen(s.address.port, 'GET /http/ok HTTP/1.1\r\nHost: localhost\r\n\r\nGET /http/ok HTTP/1.1\r\nHost: loc');
    await expect.poll(() => reused.received()).toMatch(/^HTTP\/1\.1 \d{3} /);
    await expect.poll(() => s.metrics.render().then((m) => /^oauth_sidecar_sender_connections 3$/m.test(m.body))).toBe(true);
    await s.shutdown();
    expect(s.server.listening).toBe(false);
    expect(['closed', 'reset']).toContain(await silent.closed);
    expect(['closed', 'reset']).toContain(await halfHead.closed);
    expect(['closed', 'reset']).toContain(await reused.closed);
    expect(s.logText()).not.toMatch(/grace period over/);
  });

  it('a connection node let go of for a CONNECT, its sender not reading the answer owed, is closed when the grace period ends', async () => {
    const s = await start(['--shutdown-grace', '300']);
    const sender = await rawOpen(
      s.address.port,
      'GET /http/download?bytes=20000000 HTTP/1.1\r\nHost: localhost\r\n\r\nCONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n',
    );
    sender.socket.pause(); // never reads: the answer cannot finish
    await expect.poll(() => s.metrics.render().then((m) => /^oauth_sidecar_requests_in_flight 1$/m.test(m.body))).toBe(true);
    await s.shutdown(); // within the test's timeout: the grace period ends it, not the 120-s idle timeout
    expect(s.server.listening).toBe(false);
    sender.socket.resume(); // to see the close behind what the sidecar had sent
    expect(['closed', 'reset']).toContain(await sender.closed);
    expect(sender.received().length).toBeLessThan(20_000_000);
  });

  it("a stop does not cut an answer the sidecar has whole while its end still waits to be written to a slow sender", async () => {
    const s = await start(['--shutdown-grace', '60000']);
    const senders: Array<Socket & { _httpMessage?: { finished: boolean } | null }> = [];
    s.server.on('connection', (socket: Socket) => senders.push(socket));
    let sent = 0;
    world.upstream.setHandler(async (req, res, body) => {
      if (req.url !== '/http/download') return false;
      body.resume();
      res.writeHead(200, { 'content-type': 'application/octet-stream' }); // no length: the close ends it for HTTP/1.0
      // A piece at a time, each passed on by the sidecar before the next (so that none is held up here), until part
      // of the answer waits in the sidecar for the sender, which is not reading; then the end.
      const piece = Buffer.alloc(8_192, 'x');
      const passedOn = () => (senders[0] ? senders[0].bytesWritten + senders[0].writableLength : 0);
      while ((senders[0]?.writableLength ?? 0) === 0) {
        const before = passedOn();
        sent += piece.length;
        res.write(piece);
        while (passedOn() === before) await new Promise((resolve) => setImmediate(resolve));
      }
      res.end('TAIL');
      sent += 4;
      return true;
    });
    const sender = connect(s.address.port, '127.0.0.1');
    sender.pause(); // reads nothing until the stop has begun
    sender.write('GET /http/download HTTP/1.0\r\n\r\n');
    // The sidecar's response has ended (node counts it finished), with its end still queued for the sender.
    await expect.poll(() => senders[0]?._httpMessage?.finished === true && senders[0].writableLength > 0, { timeout: 10_000 }).toBe(true);
    const stopping = s.shutdown();
    let received = 0;
    let tail = '';
    sender.on('data', (chunk: Buffer) => {
      received += chunk.length;
      tail = (tail + chunk.toString('latin1')).slice(-4);
    });
    const ended = new Promise<string>((resolve) => {
      sender.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
      sender.on('end', () => resolve('end'));
    });
    sender.resume();
    expect(await ended).toBe('end');
    await stopping;
    const line = s.logs.find((l) => l['msg'] === 'request' && l['path'] === '/http/download');
    expect(line).toMatchObject({ status: 200, bytesOut: sent });
    expect(line).not.toHaveProperty('aborted', true);
    // The whole body, after its head: nothing cut at the stop.
    expect(tail).toBe('TAIL');
    expect(received).toBeGreaterThan(sent);
    sender.destroy();
  });

  it('the grace period ends an answer under way to an HTTP/1.0 sender with a reset, and its access line is written before the stop ends', async () => {
    const s = await start(['--shutdown-grace', '300']);
    const sender = await halfWritten(s, '/http/endless', 'GET /http/endless HTTP/1.0\r\n\r\n');
    await s.shutdown();
    expect(await sender.closed).toBe('reset');
    // Reported when the stop ends (the CLI flushes the access log then, and exits): as the sender's abort.
    const line = s.logs.find((l) => l['msg'] === 'request' && l['path'] === '/http/endless');
    expect(line).toMatchObject({ status: 200, aborted: true });
    expect(line).not.toHaveProperty('error');
  });

  it('the grace period ends a connection whose complete answer waits in the sender\'s buffer ahead of one not begun with a close, not a reset that would drop it', async () => {
    const s = await start(['--shutdown-grace', '300']);
    let arrived!: () => void;
    const heldArrival = new Promise<void>((resolve) => (arrived = resolve));
    world.upstream.setHandler((req, res, body) => {
      body.resume();
      if (req.url?.includes('/http/held')) {
        arrived(); // and never answered
        return true;
      }
      if (!req.url?.includes('/http/fast')) return false;
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '5' }).end('fast!');
      return true;
    });
    const sender = await rawOpen(s.address.port, 'GET /http/fast HTTP/1.1\r\nHost: localhost\r\n\r\nGET /http/held HTTP/1.1\r\nHost: localhost\r\n\r\n');
    sender.socket.pause(); // reads only after the stop: the first answer waits in its receive buffer
    await heldArrival;
    await s.shutdown();
    sender.socket.resume();
    expect(await sender.closed).toBe('closed');
    expect(sender.received()).toMatch(/^HTTP\/1\.1 200 OK\r\n[\s\S]*\r\n\r\nfast!$/);
  });

  it('the grace period resets a half-written answer delimited by its close also with a request pipelined behind it', async () => {
    const s = await start(['--shutdown-grace', '300']);
    const pipelined = 'GET /http/half HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /http/next HTTP/1.0\r\nConnection: keep-alive\r\n\r\n';
    const sender = await halfWritten(s, '/http/half', pipelined);
    await s.shutdown();
    expect(await sender.closed).toBe('reset');
  });

  it('over-limit refusals during the stop are counted in a line before "stopped"', async () => {
    const s = await runSidecar(['--service-key', keyPath, '--ca', world.caPath, '--shutdown-delay', '300', '--max-connections', '1'], {}, { connectionWarningIntervalMs: 60_000 });
    sidecars.push(s);
    const within = await rawOpen(s.address.port, 'GET /http/echo?within HTTP/1.1\r\nHost: localhost\r\n\r\n');
    const over = () => rawOpen(s.address.port, 'GET /http/echo?over HTTP/1.1\r\nHost: localhost\r\n\r\n');
    await (await over()).closed; // refused: the first warning, at once
    const stopping = s.shutdown();
    await expect.poll(() => s.logs.some((l) => l['msg'] === 'readiness failed; still serving while endpoints are removed')).toBe(true);
    for (const sender of [await over(), await over()]) await sender.closed; // during the delay: refused too
    within.socket.destroy();
    await stopping;
    const refused = s.logs.filter((l) => String(l['msg']).includes('--max-connections')).map((l) => l['refused'] as number);
    expect(refused.reduce((a, b) => a + b, 0)).toBe(3);
  });

  it('the wait for sender connections to close after the server closed is bounded: one that stays open is cut', async () => {
    const s = await start(['--shutdown-grace', '60000']);
    const idle = await rawOpen(s.address.port, ''); // open, nothing sent: node's server counts it, and would wait
    const started = performance.now();
    await connectionsClosed(s.server, 100);
    expect(performance.now() - started).toBeGreaterThanOrEqual(90);
    expect(await idle.closed).toBe('closed'); // it owed no answer: a plain close
  });

  it('a deep burst pipelined during the drain behind an answer not yet begun: that answer still goes out, nothing else is forwarded', async () => {
    const s = await start(['--shutdown-grace', '60000']);
    const held = holdRequests(world.upstream, '/http/held');
    const sender = await rawOpen(s.address.port, 'GET /http/held HTTP/1.1\r\nHost: localhost\r\n\r\n');
    await held.arrival;
    const stopping = s.shutdown();
    // 300 requests in ten writes: more than the sidecar takes from a connection that will close (see MAX_DROPPED).
    for (let w = 0; w < 10; w++) {
      sender.socket.write(Array.from({ length: 30 }, (_, i) => `GET /http/echo?drain-burst-${w * 30 + i}. HTTP/1.1\r\nHost: localhost\r\n\r\n`).join(''));
    }
    await expect.poll(() => s.logs.some((l) => l['msg'] === 'request' && l['path'] === '/http/echo')).toBe(true);
    held.release();
    expect(await sender.closed).toBe('closed');
    expect(sender.received().match(/^HTTP\/1\.1 \d{3} .*$/gm)).toEqual(['HTTP/1.1 200 OK']);
    expect(world.upstream.requests.some((r) => r.url.includes('drain-burst'))).toBe(false);
    await stopping;
  });

  it('does not forward a request pipelined behind an answer whose head went out during the drain (with Connection: close)', async () => {
    const s = await start(['--shutdown-grace', '60000']);
    let arrived!: () => void;
    const arrival = new Promise<void>((resolve) => (arrived = resolve));
    let sendHead!: () => void;
    const headGate = new Promise<void>((resolve) => (sendHead = resolve));
    let finish!: () => void;
    const finishGate = new Promise<void>((resolve) => (finish = resolve));
    world.upstream.setHandler(async (req, res, body) => {
      if (req.url !== '/http/two-part') return false;
      body.resume();
      arrived();
      await headGate;
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('first ');
      await finishGate;
      res.end('last');
      return true;
    });
    const sender = await rawOpen(s.address.port, 'GET /http/two-part HTTP/1.1\r\nHost: localhost\r\n\r\n');
    await arrival;
    const stopping = s.shutdown();
    sendHead();
    await expect.poll(() => sender.received().includes('first ')).toBe(true);
    expect(sender.received()).toMatch(/\r\nconnection: close\r\n/i);
    sender.socket.write('GET /http/echo?behind-closing-head HTTP/1.1\r\nHost: localhost\r\n\r\n');
    await expect.poll(() => s.logs.some((l) => l['msg'] === 'request' && l['path'] === '/http/echo')).toBe(true);
    finish();
    expect(await sender.closed).toBe('closed');
    expect(sender.received()).toMatch(/first \r\n4\r\nlast\r\n0\r\n\r\n$/); // the whole chunked answer, and nothing after it
    expect(world.upstream.requests.some((r) => r.url.includes('behind-closing-head'))).toBe(false);
    expect(s.logs.find((l) => l['msg'] === 'request' && l['path'] === '/http/echo')).toMatchObject({ status: 0, error: 'REQUEST_REFUSED' });
    await stopping;
  });

  it("keeps other senders' idle keep-alive connections open during the shutdown delay", async () => {
    const s = await start(['--shutdown-delay', '60000']);
    const a = await rawOpen(s.address.port, 'GET /http/echo?a1 HTTP/1.1\r\nHost: localhost\r\n\r\n');
    await expect.poll(() => a.received().match(/HTTP\/1\.1 200 /g)?.length ?? 0).toBe(1);
    void s.shutdown(); // the delay: readiness fails, senders are served as before
    const b = await request(`${s.url}/http/echo?b`);
    expect(b.statusCode).toBe(200);
    await b.body.dump();
    // A's idle connection was not closed when B's answer finished: it carries A's next request.
    a.socket.write('GET /http/echo?a2 HTTP/1.1\r\nHost: localhost\r\n\r\n');
    await expect.poll(() => a.received().match(/HTTP\/1\.1 200 /g)?.length ?? 0).toBe(2);
    a.socket.destroy();
    await s.close();
  });

  it("at shutdown, a replaced route's pool is dropped too, with a CSRF fetch no sender waits for", async () => {
    const path = await world.files.write('rotating.json', JSON.stringify({ oauth: { clientid: CLIENT_ID, clientsecret: SECRET, tokenurl: world.oauth.tokenUrl, url: world.upstream.url } }));
    const s = await start(['--shutdown-grace', '0', '--upstream-timeout', '60000', '--max-replay-body', '16'], path);
    const fetching = csrfFetchNeverAnswered();
    const old = s.routes.routes[0]!;
    // Too long to replay: the 403 goes to the sender, and a session is fetched in the background.
    const refused = await request(`${s.url}/http/order`, { method: 'POST', body: 'x'.repeat(100) });
    expect(refused.statusCode).toBe(403);
    await refused.body.dump();
    await fetching;
    await writeFile(path, JSON.stringify({ oauth: { clientid: NEXT.id, clientsecret: NEXT.secret, tokenurl: world.oauth.tokenUrl, url: world.upstream.url } }));
    await expect.poll(() => s.logs.some((l) => l['msg'] === 'credentials rotated')).toBe(true);
    expect(s.routes.routes[0]).not.toBe(old);
    await s.shutdown();
    // undici's dispatchers say whether they were destroyed (`DispatcherBase#destroyed`), though its types do not.
    expect((old.dispatcher as unknown as { destroyed: boolean }).destroyed).toBe(true);
  });
});
