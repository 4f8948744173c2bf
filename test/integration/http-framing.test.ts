/**
 * Message framing at both ends (RFC 9112): what the sidecar refuses from a
 * sender before anything is forwarded, and what it does with an upstream
 * answer it cannot pass on as it is. The upstream here is a raw TLS server
 * that writes exact bytes (a node HTTPS server would frame its answers itself);
 * the token server checks the client secret; senders are raw sockets.
 */
import { createServer as createTlsServer, type TLSSocket } from 'node:tls';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { SocketTracker, closeServer, listen } from '../helpers/net.js';
import { createPki } from '../helpers/pki.js';
import { rawOpen, rawRequest } from '../helpers/raw-http.js';
import { expectNoSecretOrStack, secretForms } from '../helpers/secrets.js';
import { runSidecar, scratch, type RunningSidecar } from '../helpers/sidecar.js';
import { TokenEndpoint } from '../helpers/token-endpoint.js';

const CLIENT_ID = 'sb-framing!b7|it-rt-acme!b196';
const SECRET = 'fr4ming$Secret=value!|%+:9c';
/** Far beyond any real answer, below the test timeout: a hung exchange fails with its own message. */
const BOUND_MS = 10_000;

/** What the raw upstream writes for a request whose target contains the key (the head is all it reads). */
const ANSWERS: Record<string, (socket: TLSSocket, head: string) => void> = {
  // A chunked answer that dies after its first chunk: the sender must not see a complete message.
  '/cut': (socket) => {
    socket.write('HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\na\r\n0123456789\r\n', () => socket.destroy());
  },
  // Three digits, but no HTTP status (RFC 9110 §15: 100–599).
  '/status-999': (socket) => {
    socket.write('HTTP/1.1 999 Whatever\r\ncontent-length: 2\r\n\r\nok');
  },
  '/gzip-te': (socket) => {
    socket.write('HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n5\r\n\x1f\x8b\x08\x00\x00\r\n0\r\n\r\n');
  },
  // Early hints that echo the request's token (a `Link` built from the request as received).
  '/hints-echo': (socket, head) => {
    const token = /\r\nauthorization: Bearer (\S+)/i.exec(head)?.[1] ?? 'none';
    socket.write(`HTTP/1.1 103 Early Hints\r\nlink: </preload?auth=${token}>; rel=preload\r\n\r\n`);
    socket.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok');
  },
  // Answers a little later: long enough for whatever the sender pipelined behind it to be read meanwhile.
  '/slow': (socket) => {
    setTimeout(() => socket.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok'), 200);
  },
  // A chunked answer whose second half comes later.
  '/trickle': (socket) => {
    socket.write('HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n');
    setTimeout(() => socket.write('3\r\ndef\r\n0\r\n\r\n'), 300);
  },
  // Early hints without end (here 400 of 8 KB) before the answer: what a sender that does not read would pile up.
  '/hints-flood': (socket) => {
    const link = `</${'x'.repeat(8_000)}>; rel=preload`;
    for (let i = 0; i < 400; i++) socket.write(`HTTP/1.1 103 Early Hints\r\nlink: ${link}\r\n\r\n`);
    socket.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok');
  },
  // Answers without a body (RFC 9112 §6.3 items 1–2), none with a length.
  '/no-content': (socket) => {
    socket.write('HTTP/1.1 204 No Content\r\n\r\n');
  },
  '/not-modified': (socket) => {
    socket.write('HTTP/1.1 304 Not Modified\r\netag: "v1"\r\n\r\n');
  },
  '/head-no-length': (socket) => {
    socket.write('HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n');
  },
  '/hints': (socket) => {
    socket.write('HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload; as=style\r\n\r\n');
    socket.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok');
  },
};

let upstreamTargets: string[] = [];
let sidecar: RunningSidecar;
let cleanup: () => Promise<void>;
/** The access tokens the token server gave out: none may appear in any output. */
let tokensWritten: ReadonlySet<string> = new Set();

beforeAll(async () => {
  const pki = await createPki();
  const upstream = createTlsServer({ cert: pki.server.chain, key: pki.server.key }, (socket) => {
    socket.on('error', () => undefined);
    let head = '';
    socket.on('data', (chunk: Buffer) => {
      head += chunk.toString('latin1');
      let end: number;
      while ((end = head.indexOf('\r\n\r\n')) !== -1) {
        const requestHead = head.slice(0, end);
        const target = requestHead.split(' ')[1] ?? '';
        head = head.slice(end + 4);
        upstreamTargets.push(target);
        const answer = Object.entries(ANSWERS).find(([key]) => target.includes(key))?.[1];
        if (answer) answer(socket, requestHead);
        else socket.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok');
      }
    });
  });
  const upstreamSockets = new SocketTracker(upstream);
  const upstreamPort = await listen(upstream);
  const tokens = await TokenEndpoint.start({ tls: { cert: pki.server.chain, key: pki.server.key, ca: pki.ca }, clients: [{ clientId: CLIENT_ID, secret: SECRET }] });
  const files = await scratch();
  const key = await files.write(
    'key.json',
    JSON.stringify({ oauth: { clientid: CLIENT_ID, clientsecret: SECRET, tokenurl: tokens.tokenUrl, url: `https://127.0.0.1:${upstreamPort}` } }),
  );
  const ca = await files.write('ca.pem', pki.ca);
  sidecar = await runSidecar(['--service-key', key, '--ca', ca]);
  tokensWritten = tokens.tokensWritten;
  cleanup = async () => {
    await sidecar.close();
    await closeServer(upstream, upstreamSockets);
    await tokens.close();
    await files.cleanup();
  };
});

// Whatever a case sent or was sent, the sidecar goes on serving.
afterEach(async () => {
  const answer = await rawRequest(sidecar.address.port, 'GET /still-serving HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n', { timeoutMs: BOUND_MS });
  expect(answer.status).toBe(200);
});

afterAll(async () => {
  await cleanup?.();
  // The whole log, shutdown included: no client secret, no access token (the upstream echoes it in 103 hints).
  expect(tokensWritten.size).toBeGreaterThan(0);
  expectNoSecretOrStack(sidecar?.logText() ?? '', [...secretForms(CLIENT_ID, SECRET), ...tokensWritten]);
});

/** The first log line `match` accepts, once the access log (written in batches) has it. */
async function logged(match: (line: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> {
  const deadline = performance.now() + BOUND_MS;
  for (;;) {
    const line = sidecar.logs.find(match);
    if (line !== undefined) return line;
    if (performance.now() > deadline) throw new Error('no such log line');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** The sidecar still answers a plain request, and forwards it. */
async function expectServing(): Promise<void> {
  const before = upstreamTargets.length;
  const answer = await rawRequest(sidecar.address.port, 'GET /still-serving HTTP/1.1\r\nHost: localhost\r\n\r\n', { timeoutMs: BOUND_MS, untilResponse: true });
  expect(answer.status, answer.text).toBe(200);
  expect(upstreamTargets.slice(before)).toEqual(['/still-serving']);
}

describe('requests whose framing or target cannot be trusted: 400, connection closed, nothing forwarded', () => {
  it.each([
    ['Transfer-Encoding in an HTTP/1.0 request', 'POST /te-1.0 HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nGET /te-1.0-second HTTP/1.0\r\n\r\n', /HTTP\/1\.0/],
    ['an HTTP/1.1 request without Host', 'GET /no-host HTTP/1.1\r\n\r\n', /must carry a Host/],
    ['two Host headers', 'GET /two-hosts HTTP/1.1\r\nHost: localhost\r\nHost: other.example\r\n\r\n', /more than one Host/],
    ['two Host headers in HTTP/1.0', 'GET /two-hosts-1.0 HTTP/1.0\r\nHost: localhost\r\nhost: other.example\r\n\r\n', /more than one Host/],
    ['a fragment in the target', 'GET /fragment#part?x HTTP/1.1\r\nHost: localhost\r\n\r\n', /fragment/],
  ])('%s', async (_name, bytes, message) => {
    const before = upstreamTargets.length;
    const answer = await rawRequest(sidecar.address.port, bytes, { timeoutMs: BOUND_MS });
    expect(answer.ended, answer.text).toBe('closed');
    expect(answer.status, answer.text).toBe(400);
    expect(answer.headers['x-sidecar-error']).toBe('REQUEST_REFUSED');
    expect(answer.headers['connection']).toBe('close');
    expect((JSON.parse(answer.body) as { message: string }).message).toMatch(message);
    // One answer only: a second request on the connection was never read.
    expect(answer.text.match(/HTTP\/1\.1 \d{3} /g)).toHaveLength(1);
    expect(upstreamTargets.slice(before)).toEqual([]);
    await expectServing();
  });

  it('requests pipelined behind a refusal that closes the connection are not forwarded, and are logged as refused (RFC 9112 §9.6)', async () => {
    const before = upstreamTargets.length;
    const pipelined = ['/pipelined-1', '/pipelined-2'].map((path) => `GET ${path} HTTP/1.1\r\nHost: localhost\r\n\r\n`).join('');
    const answer = await rawRequest(sidecar.address.port, `GET /refused-first HTTP/1.1\r\n\r\n${pipelined}`, { timeoutMs: BOUND_MS });
    expect(answer.ended, answer.text).toBe('closed');
    expect(answer.status, answer.text).toBe(400);
    expect(answer.text.match(/HTTP\/1\.1 \d{3} /g)).toHaveLength(1);
    // A request forwarded meanwhile would have been sent before this one, which waits for its answer.
    await expectServing();
    expect(upstreamTargets.slice(before)).toEqual(['/still-serving']);
    for (const path of ['/pipelined-1', '/pipelined-2']) {
      const line = await logged((l) => l['msg'] === 'request' && l['path'] === path);
      expect(line).toMatchObject({ status: 0, error: 'REQUEST_REFUSED' });
      expect(line['aborted']).toBeUndefined();
    }
    // Every request started was also finished: none is left counted in flight.
    const metrics = await (await fetch(`http://127.0.0.1:${sidecar.adminAddress!.port}/metrics`)).text();
    expect(metrics).toMatch(/^oauth_sidecar_requests_in_flight 0$/m);
  });

  it.each([
    ['bytes after a Connection: close request', 'POST /slow?after-close HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhiGET /never HTTP/1.1\r\nHost: localhost\r\n\r\n', '/slow?after-close'],
    ['garbage pipelined behind a request', 'GET /slow?then-garbage HTTP/1.1\r\nHost: localhost\r\n\r\nNOT HTTP AT ALL\r\n\r\n', '/slow?then-garbage'],
  ])('%s: the answer under way goes out whole and alone, then the connection closes', async (_name, bytes, target) => {
    const before = upstreamTargets.length;
    const answer = await rawRequest(sidecar.address.port, bytes, { timeoutMs: BOUND_MS });
    expect(answer.ended, answer.text).toBe('closed');
    // Not a 400 written ahead of (or into) the answer the sender is waiting for.
    expect(answer.text.match(/^HTTP\/1\.1 \d{3} .*$/gm)).toEqual(['HTTP/1.1 200 OK']);
    expect(answer.body).toBe('ok');
    await expectServing();
    expect(upstreamTargets.slice(before)).toEqual([target, '/still-serving']);
  });

  it.each([
    ['garbage behind two pipelined requests (the second refused)', 'GET /slow?owed-1 HTTP/1.1\r\nHost: localhost\r\n\r\nGET /owed/../x HTTP/1.1\r\nHost: localhost\r\n\r\nNOT HTTP AT ALL\r\n\r\n', ['HTTP/1.1 200 OK', 'HTTP/1.1 400 Bad Request']],
    ['a CONNECT behind a pending request', 'GET /slow?owed-2 HTTP/1.1\r\nHost: localhost\r\n\r\nCONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n', ['HTTP/1.1 200 OK']],
  ])('%s: every answer owed goes out, in order, then the connection closes', async (_name, bytes, statusLines) => {
    const answer = await rawRequest(sidecar.address.port, bytes, { timeoutMs: BOUND_MS });
    expect(answer.ended, answer.text).toBe('closed');
    // (A status line follows the body before it directly: no line anchors.)
    expect(answer.text.match(/HTTP\/1\.1 \d{3} [^\r]*/g)).toEqual(statusLines);
    await expectServing();
  });

  it('garbage behind an HTTP/1.0 answer still under way: the answer arrives whole before the close', async () => {
    const keepAlive = (path: string): string => `GET ${path} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n`;
    const sender = await rawOpen(sidecar.address.port, keepAlive('/trickle') + keepAlive('/behind-trickle'));
    await expect.poll(() => sender.received().includes('abc')).toBe(true);
    sender.socket.write('NOT HTTP\r\n\r\n');
    expect(await sender.closed).toBe('closed');
    // Close-delimited (no length for an HTTP/1.0 sender): a close before "def" would pass for the end.
    expect(sender.received()).toMatch(/\r\n\r\nabcdef$/);
  });

  it('requests pipelined behind an answer that is cut are ended with it: reported, their body copies given back, nothing left in flight', async () => {
    const pipelined = 'GET /after-cut HTTP/1.1\r\nHost: localhost\r\n\r\nPOST /after-cut-post HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello';
    const answer = await rawRequest(sidecar.address.port, `GET /cut HTTP/1.1\r\nHost: localhost\r\n\r\n${pipelined}`, { timeoutMs: BOUND_MS });
    expect(answer.ended, answer.text).toBe('reset');
    for (const path of ['/after-cut', '/after-cut-post']) {
      expect(await logged((l) => l['msg'] === 'request' && l['path'] === path)).toMatchObject({ aborted: true });
    }
    const inFlight = async (): Promise<string> => (await (await fetch(`http://127.0.0.1:${sidecar.adminAddress!.port}/metrics`)).text()).match(/^oauth_sidecar_requests_in_flight \d+$/m)![0];
    await expect.poll(inFlight).toBe('oauth_sidecar_requests_in_flight 0');
    expect(sidecar.replayBudget.used).toBe(0);
    await expectServing();
  });

  it.each(['', 'Max-Forwards: 0\r\n'])('OPTIONS * (asterisk-form, %s) is about the sidecar itself: answered 200 with Allow, nothing forwarded', async (extra) => {
    const before = upstreamTargets.length;
    const answer = await rawRequest(sidecar.address.port, `OPTIONS * HTTP/1.1\r\nHost: localhost\r\n${extra}\r\n`, { timeoutMs: BOUND_MS, untilResponse: true });
    expect(answer.status, answer.text).toBe(200);
    expect(answer.headers['allow']).toBe('GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS');
    expect(answer.headers['content-length']).toBe('0');
    expect(upstreamTargets.slice(before)).toEqual([]);
  });

  it('an asterisk-form target on any other method → 400 naming it, nothing forwarded', async () => {
    const before = upstreamTargets.length;
    const answer = await rawRequest(sidecar.address.port, 'GET * HTTP/1.1\r\nHost: localhost\r\n\r\n', { timeoutMs: BOUND_MS, untilResponse: true });
    expect(answer.status, answer.text).toBe(400);
    expect((JSON.parse(answer.body) as { message: string }).message).toMatch(/the asterisk-form is for OPTIONS alone/);
    expect(upstreamTargets.slice(before)).toEqual([]);
  });

  it('an HTTP/1.0 keep-alive sender keeps its connection after answers without a body (204, 304, HEAD), none with a length', async () => {
    const keepAlive = (method: string, path: string): string => `${method} ${path} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n`;
    const sender = await rawOpen(
      sidecar.address.port,
      keepAlive('GET', '/no-content') + keepAlive('GET', '/not-modified') + keepAlive('HEAD', '/head-no-length') + keepAlive('GET', '/after-bodiless'),
    );
    await expect.poll(() => sender.received().match(/HTTP\/1\.1 \d{3} /g)?.length ?? 0, { timeout: BOUND_MS }).toBe(4);
    const answers = sender.received().split(/(?=HTTP\/1\.1 \d{3} )/);
    expect(answers.map((a) => a.slice(9, 12))).toEqual(['204', '304', '200', '200']);
    for (const answer of answers) expect(answer).toMatch(/\r\nconnection: keep-alive\r\n/i);
    expect(answers[3]).toMatch(/\r\n\r\nok$/);
    expect(sender.socket.destroyed).toBe(false);
    sender.socket.destroy();
  });

  it('an HTTP/1.0 sender gets no chunked answer, also when it sends TE: chunked (RFC 9112 §6.1): the close ends it', async () => {
    const answer = await rawRequest(sidecar.address.port, 'GET /trickle?te HTTP/1.0\r\nTE: chunked\r\nConnection: keep-alive\r\n\r\n', { timeoutMs: BOUND_MS });
    expect(answer.status, answer.text).toBe(200);
    expect(answer.headers['transfer-encoding']).toBeUndefined();
    expect(answer.headers['connection']).toBe('close');
    expect(answer.ended).toBe('closed');
    expect(answer.body).toBe('abcdef');
  });

  it('an HTTP/1.0 request without Host is served (old senders omit it)', async () => {
    const answer = await rawRequest(sidecar.address.port, 'GET /no-host-1.0 HTTP/1.0\r\n\r\n', { timeoutMs: BOUND_MS });
    expect(answer.status, answer.text).toBe(200);
    expect(answer.body).toBe('ok');
    expect(upstreamTargets).toContain('/no-host-1.0');
  });
});

describe('upstream answers that cannot be passed on as they are', () => {
  it('a body cut mid-way reaches an HTTP/1.0 sender as a reset, never as a close that would pass for the end', async () => {
    const answer = await rawRequest(sidecar.address.port, 'GET /cut?1.0 HTTP/1.0\r\n\r\n', { timeoutMs: BOUND_MS });
    expect(answer.text).toMatch(/^HTTP\/1\.1 200 /); // the head had gone out
    expect(answer.text).toContain('0123456789');
    expect(answer.ended).toBe('reset');
    const line = await logged((l) => l['msg'] === 'request' && l['path'] === '/cut' && l['error'] !== undefined);
    expect(line['error']).toBe('UPSTREAM_UNREACHABLE');
    expect(line['level']).toBe('warn');
    expect(line['aborted']).toBeUndefined(); // the upstream failed; the sender stayed to the end
    await expectServing();
  });

  it('… and an HTTP/1.1 sender sees no last chunk, and a reset', async () => {
    const answer = await rawRequest(sidecar.address.port, 'GET /cut?1.1 HTTP/1.1\r\nHost: localhost\r\n\r\n', { timeoutMs: BOUND_MS });
    expect(answer.text).toMatch(/^HTTP\/1\.1 200 /);
    expect(answer.text).toContain('0123456789');
    expect(answer.text).not.toMatch(/\r\n0\r\n\r\n$/);
    expect(answer.ended).toBe('reset');
  });

  it('a transfer coding other than chunked (gzip, chunked) → 502 UPSTREAM_UNREACHABLE, never a corrupt 200', async () => {
    const answer = await rawRequest(sidecar.address.port, 'GET /gzip-te HTTP/1.1\r\nHost: localhost\r\n\r\n', { timeoutMs: BOUND_MS, untilResponse: true });
    expect(answer.status, answer.text).toBe(502);
    expect(answer.headers['x-sidecar-error']).toBe('UPSTREAM_UNREACHABLE');
    expect((JSON.parse(answer.body) as { message: string }).message).toMatch(/transfer coding other than chunked/);
    await expectServing();
  });

  it('a status outside 100–599 → 502 UPSTREAM_UNREACHABLE, not passed on for the sender to guess at', async () => {
    const answer = await rawRequest(sidecar.address.port, 'GET /status-999 HTTP/1.1\r\nHost: localhost\r\n\r\n', { timeoutMs: BOUND_MS, untilResponse: true });
    expect(answer.status, answer.text).toBe(502);
    expect(answer.headers['x-sidecar-error']).toBe('UPSTREAM_UNREACHABLE');
    expect((JSON.parse(answer.body) as { message: string }).message).toMatch(/cannot be passed on \(ERR_HTTP_INVALID_STATUS_CODE\)/);
    await expectServing();
  });

  it('103 Early Hints never reaches a sender (RFC 8297 §4: HTTP/1.1 clients that take it for the answer read every later one wrong)', async () => {
    /** Status lines (one may follow a body directly: no line anchors). */
    const statusLines = (text: string) => text.match(/HTTP\/1\.[01] \d{3} [^\r]*/g);
    // Two requests on one keep-alive connection, each answered with its own answer alone, as Python's http.client
    // and Java's HttpURLConnection read them (they take the first status line as the answer).
    const both = await rawRequest(
      sidecar.address.port,
      'GET /hints HTTP/1.1\r\nHost: localhost\r\n\r\nGET /hints-echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n',
      { timeoutMs: BOUND_MS },
    );
    expect(statusLines(both.text)).toEqual(['HTTP/1.1 200 OK', 'HTTP/1.1 200 OK']);
    expect(both.text).toMatch(/^HTTP\/1\.1 200 OK\r\n[^]*?\r\n\r\nokHTTP\/1\.1 200 OK\r\n[^]*\r\n\r\nok$/);
    // Nor the Link that echoed the token (above), nor a flood of them (400 of 8 KB): only the answer.
    expect(both.text).not.toMatch(/tok-\d+-|preload/);
    const flood = await rawRequest(sidecar.address.port, 'GET /hints-flood HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n', { timeoutMs: BOUND_MS });
    expect(statusLines(flood.text)).toEqual(['HTTP/1.1 200 OK']);
    expect(flood.text.endsWith('\r\n\r\nok')).toBe(true);
    const old = await rawRequest(sidecar.address.port, 'GET /hints?1.0 HTTP/1.0\r\n\r\n', { timeoutMs: BOUND_MS });
    expect(old.status, old.text).toBe(200);
    expect(statusLines(old.text)).toEqual(['HTTP/1.1 200 OK']);
  });
});
