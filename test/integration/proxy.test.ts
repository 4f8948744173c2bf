import { createHash, randomBytes } from 'node:crypto';
import { request as httpRequest, type ServerResponse } from 'node:http';
import { connect, createServer as createTcpServer, type Socket } from 'node:net';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { ConfigError } from '../../src/errors.js';
import { createScavenger, SCAVENGE_STEP_BYTES, youngGenerationCollector } from '../../src/scavenger.js';
import { closedPort, gate, listen } from '../helpers/net.js';
import { downloadSha256 } from '../helpers/upstream.js';
import { parseAnswer, rawOpen } from '../helpers/raw-http.js';
import type { OAuthServer } from '../helpers/oauth-server.js';
import { runSidecar, type RunningSidecar } from '../helpers/sidecar.js';
import type { Upstream } from '../helpers/upstream.js';
import { startWorld, type World } from '../helpers/world.js';

const CLIENT_ID = 'sb-11111111-2222-3333-4444-555555555555!b123456|it-rt-acme-dev!b196';
const SECRET = '66666666-7777$FAKE!|$=%+:secret=';

let world: World;
let oauth: OAuthServer;
let upstream: Upstream;
let files: World['files'];
let keyPath: string;
let caPath: string;
let sidecar: RunningSidecar;
const extraSidecars: RunningSidecar[] = [];

function serviceKey(overrides: Record<string, string> = {}): string {
  return JSON.stringify({ oauth: { clientid: CLIENT_ID, clientsecret: SECRET, tokenurl: oauth.tokenUrl, url: upstream.url, ...overrides } });
}

async function another(argv: string[], env: Record<string, string> = {}): Promise<RunningSidecar> {
  const s = await runSidecar(['--ca', caPath, ...argv], env);
  extraSidecars.push(s);
  return s;
}

beforeAll(async () => {
  world = await startWorld([{ clientId: CLIENT_ID, secret: SECRET, authMethod: 'client_secret_basic' }]);
  ({ oauth, upstream, files, caPath } = world);
  keyPath = await world.secretKey('key.json', CLIENT_ID, SECRET);
  sidecar = await runSidecar(['--service-key', keyPath, '--ca', caPath]);
});

afterAll(async () => {
  await Promise.all([sidecar?.close(), ...extraSidecars.map((s) => s.close())]);
  await world?.close();
});

beforeEach(() => {
  upstream.setHandler(undefined);
  oauth.setInterceptor(undefined);
});

async function echo(res: Awaited<ReturnType<typeof request>>) {
  return (await res.body.json()) as { method: string; url: string; headers: Record<string, string>; bodyLength: number; bodySha256: string };
}

describe('forwarding', () => {
  it('reaches the integration flow with a verified Bearer token', async () => {
    const res = await request(`${sidecar.url}/http/GetTimestamp`);
    expect(res.statusCode).toBe(200);
    expect(await res.body.text()).toMatch(/^Current time \(UTC\): \d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/);
    const seen = upstream.requests.at(-1)!;
    expect(seen.authorized).toBe(true);
    expect(seen.headers.host).toBe(`127.0.0.1:${upstream.port}`);
  });

  it.each(['GET', 'DELETE', 'OPTIONS', 'HEAD'])('%s without a body passes method, path and query unchanged', async (method) => {
    const res = await request(`${sidecar.url}/http/echo?a=1&b=%20x&a=2`, { method: method as 'GET' });
    expect(res.statusCode).toBe(200);
    if (method === 'HEAD') {
      await res.body.dump();
      expect(upstream.requests.at(-1)).toMatchObject({ method: 'HEAD', url: '/http/echo?a=1&b=%20x&a=2' });
      return;
    }
    expect(await echo(res)).toMatchObject({ method, url: '/http/echo?a=1&b=%20x&a=2', bodyLength: 0 });
  });

  it.each(['POST', 'PUT', 'PATCH', 'DELETE'])('%s with a body passes it unchanged', async (method) => {
    const body = randomBytes(10_000);
    const res = await request(`${sidecar.url}/http/echo`, { method: method as 'POST', body, headers: { 'content-type': 'application/xml' } });
    const seen = await echo(res);
    expect(seen).toMatchObject({ method, bodyLength: body.length, bodySha256: createHash('sha256').update(body).digest('hex') });
    expect(seen.headers['content-type']).toBe('application/xml');
  });

  it('strips the sender credentials and hop-by-hop headers, keeps the rest', async () => {
    // node:http as the sender: undici would rewrite the Connection header itself.
    const headers = await new Promise<Record<string, string>>((resolve, reject) => {
      const req = httpRequest(`${sidecar.url}/http/echo`, {
        headers: {
          authorization: 'Basic bGVnYWN5OnBhc3N3b3Jk',
          'proxy-authorization': 'Basic eDp5',
          connection: 'keep-alive, x-drop-me',
          'x-drop-me': '1',
          'x-forwarded-for': '6.6.6.6',
          soapaction: '"urn:order"',
          'x-custom': 'kept',
        },
      });
      req.on('response', (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve((JSON.parse(Buffer.concat(chunks).toString()) as { headers: Record<string, string> }).headers));
      });
      req.on('error', reject);
      req.end();
    });
    expect(headers['authorization']).toMatch(/^Bearer ey/);
    expect(headers).not.toHaveProperty('proxy-authorization');
    expect(headers).not.toHaveProperty('x-drop-me');
    expect(headers).not.toHaveProperty('x-forwarded-for');
    expect(headers).toMatchObject({ soapaction: '"urn:order"', 'x-custom': 'kept' });
  });

  it('passes the final answer on after informational ones, and only it (103 Early Hints is not passed on)', async () => {
    upstream.setHandler((_req, res) => {
      res.writeEarlyHints({ link: '</style.css>; rel=preload; as=style' });
      res.writeHead(200, { 'content-type': 'text/plain', 'x-final': 'yes' });
      res.end('after the hints');
      return true;
    });
    let informational = 0;
    const res = await request(`${sidecar.url}/http/hints`, { onInfo: () => informational++ } as Parameters<typeof request>[1]);
    expect(res.statusCode).toBe(200);
    expect(informational).toBe(0);
    expect(res.headers['x-final']).toBe('yes');
    expect(await res.body.text()).toBe('after the hints');
  });

  it('returns status, headers and several Set-Cookie byte for byte', async () => {
    const cookies = ['JSESSIONID=ABC123; Path=/; Secure; HttpOnly', '__VCAP_ID__=f00d%3D%3D; Path=/', 'weird=a,b c=\xe9; Path=/'];
    upstream.setHandler((_req, res) => {
      res.writeHead(207, { 'set-cookie': cookies, 'x-upstream': 'yes', 'content-type': 'text/plain' });
      res.end('multi');
      return true;
    });
    const res = await new Promise<import('node:http').IncomingMessage>((resolve, reject) =>
      httpRequest(`${sidecar.url}/http/cookies`, resolve).on('error', reject).end(),
    );
    res.resume();
    expect(res.statusCode).toBe(207);
    expect(res.headers['x-upstream']).toBe('yes');
    expect(res.headers['set-cookie']).toEqual(cookies);
  });

  it('handles Expect: 100-continue and still adds the token', async () => {
    const body = randomBytes(50_000);
    const { status, seen } = await new Promise<{ status: number; seen: { bodyLength: number; headers: Record<string, string> } }>((resolve, reject) => {
      const req = httpRequest(`${sidecar.url}/http/echo`, { method: 'POST', headers: { expect: '100-continue', 'content-length': body.length } }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, seen: JSON.parse(Buffer.concat(chunks).toString()) }));
      });
      req.on('error', reject);
      req.on('continue', () => req.end(body));
    });
    expect(status).toBe(200);
    expect(seen.bodyLength).toBe(body.length);
    expect(seen.headers['authorization']).toMatch(/^Bearer /);
    expect(seen.headers).not.toHaveProperty('expect');
  });

  it('streams a large upload and download (hash compared)', async () => {
    const size = 48 * 1024 * 1024;
    const hash = createHash('sha256');
    let sent = 0;
    const source = Readable.from(
      (function* () {
        while (sent < size) {
          const chunk = randomBytes(Math.min(256 * 1024, size - sent));
          sent += chunk.length;
          hash.update(chunk);
          yield chunk;
        }
      })(),
    );
    const up = await echo(await request(`${sidecar.url}/http/echo`, { method: 'POST', body: source }));
    expect(up.bodyLength).toBe(size);
    expect(up.bodySha256).toBe(hash.digest('hex'));

    const down = await request(`${sidecar.url}/http/download?bytes=${size}&chunked`);
    const got = createHash('sha256');
    let length = 0;
    for await (const chunk of down.body) {
      got.update(chunk as Buffer);
      length += (chunk as Buffer).length;
    }
    expect(length).toBe(size);
    expect(got.digest('hex')).toBe(downloadSha256(size));
  });

  it('collects body chunks as they pass: a scavenge every 4 MiB of long bodies each way, none for small ones (scavenger.ts)', async () => {
    const scavenger = createScavenger({ collect: youngGenerationCollector() });
    const s = await runSidecar(['--service-key', keyPath, '--ca', caPath], {}, { scavenger });
    extraSidecars.push(s);
    const size = 16 * 1024 * 1024;
    const body = randomBytes(size);
    const up = await echo(await request(`${s.url}/http/echo`, { method: 'POST', body: Readable.from([body.subarray(0, size / 2), body.subarray(size / 2)]) }));
    expect(up.bodySha256).toBe(createHash('sha256').update(body).digest('hex'));
    const afterUpload = scavenger.runs;
    expect(afterUpload).toBeGreaterThanOrEqual(2);
    expect(afterUpload).toBeLessThanOrEqual(size / SCAVENGE_STEP_BYTES);

    const down = await request(`${s.url}/http/download?bytes=${size}`);
    const got = createHash('sha256');
    for await (const chunk of down.body) got.update(chunk as Buffer);
    expect(got.digest('hex')).toBe(downloadSha256(size));
    expect(scavenger.runs - afterUpload).toBeGreaterThanOrEqual(2);

    // 6 MiB in bodies of 512 KiB: each is short of LONG_BODY_BYTES, so none of it counts.
    const afterDownload = scavenger.runs;
    for (let i = 0; i < 12; i++) {
      const small = await echo(await request(`${s.url}/http/echo`, { method: 'POST', body: randomBytes(512 * 1024) }));
      expect(small.bodyLength).toBe(512 * 1024);
    }
    expect(scavenger.runs).toBe(afterDownload);
  });

  it('aborts the upstream request when the sender disconnects mid-upload and mid-download', async () => {
    // Mid-upload: announce 10 MB, send 1 MB, vanish once the upstream is receiving.
    let arrived!: () => void;
    const receiving = new Promise<void>((resolve) => (arrived = resolve));
    upstream.setHandler((_req, _res, body) => {
      body.once('data', () => arrived());
      body.resume();
      return true; // never answers: only the abort ends this request
    });
    const req = httpRequest(`${sidecar.url}/http/echo`, { method: 'POST', headers: { 'content-length': 10_000_000 } });
    req.on('error', () => {});
    req.write(randomBytes(1_000_000));
    await receiving;
    req.destroy();
    await upstream.settled();
    const upload = upstream.requests.at(-1)!;
    expect(upload.aborted).toBe(true);
    expect(upload.bodyLength).toBeLessThan(10_000_000);

    // Mid-download: read one chunk of 256 MB, then vanish.
    upstream.setHandler(undefined);
    const res = await request(`${sidecar.url}/http/download?bytes=${256 * 1024 * 1024}`);
    for await (const _ of res.body) break;
    await expect.poll(() => upstream.requests.at(-1)?.aborted, { interval: 20 }).toBe(true);
    await expect.poll(() => sidecar.logs.filter((l) => l['aborted'] === true).length, { interval: 20 }).toBeGreaterThanOrEqual(2);
  });

  it('an upstream reset mid-response closes the sender connection instead of a truncated success', async () => {
    upstream.setHandler((_req, res) => {
      res.writeHead(200, { 'content-length': '1000000' });
      res.write(Buffer.alloc(1000));
      setImmediate(() => res.socket?.destroy());
      return true;
    });
    const res = await request(`${sidecar.url}/http/reset`);
    expect(res.statusCode).toBe(200);
    await expect(res.body.arrayBuffer()).rejects.toThrow();
  });
});

describe('tokens on the request path', () => {
  it('refreshes the token once and replays after an upstream 401', async () => {
    let rejected: string | undefined;
    upstream.setHandler((req, res) => {
      const auth = req.headers.authorization;
      if (rejected === undefined) rejected = auth;
      if (auth === rejected) {
        res.writeHead(401, { 'content-type': 'application/json' });
        res.end('{"error":"unauthorised"}');
        return true;
      }
      return false;
    });
    const before = oauth.tokenRequests;
    const body = Buffer.from('<order id="1"/>');
    const results = await Promise.all(
      Array.from({ length: 5 }, () => request(`${sidecar.url}/http/echo`, { method: 'POST', body }).then(async (r) => ({ status: r.statusCode, body: await echo(r) }))),
    );
    for (const r of results) {
      expect(r.status).toBe(200);
      expect(r.body.bodyLength).toBe(body.length);
    }
    expect(oauth.tokenRequests - before).toBe(1);
  });

  it('a resend after a 401 that gets no answer is logged without the discarded attempt\'s status', async () => {
    let rejected: string | undefined;
    upstream.setHandler((req, res, body) => {
      rejected ??= req.headers.authorization;
      body.resume();
      if (req.headers.authorization === rejected) {
        res.writeHead(401, { 'www-authenticate': 'Bearer error="invalid_token"' });
        res.end();
      } else {
        req.socket.destroy(); // the resend: reset before any head
      }
      return true;
    });
    // A sidecar of its own: the shared one refreshed after a 401 less than REJECTION_INTERVAL_MS ago.
    const own = await another(['--service-key', keyPath]);
    const res = await request(`${own.url}/http/resend-reset`, { method: 'POST', body: 'x' });
    expect(res.statusCode).toBe(502);
    const told = (await res.body.json()) as { error: string; message: string };
    expect(told).toMatchObject({ error: 'UPSTREAM_UNREACHABLE', message: expect.stringMatching(/^upstream /) });
    await expect.poll(() => own.logs.find((l) => l['path'] === '/http/resend-reset')).toBeDefined();
    const line = own.logs.find((l) => l['path'] === '/http/resend-reset')!;
    expect(line).toMatchObject({ status: 502, error: 'UPSTREAM_UNREACHABLE', retried: '401-refresh' });
    expect(line).not.toHaveProperty('upstreamStatus');
    // What the sender was told, for the operator too.
    expect(line['reason']).toBe(told.message);
  });

  it('a newly fetched token refused too (the key does not grant the endpoint): the 401 is passed on, and one warning a minute says why', async () => {
    const own = await another(['--service-key', keyPath]);
    upstream.setHandler((req, res) => {
      if (req.url !== '/http/no-role') return false;
      res.writeHead(401, { 'www-authenticate': 'Bearer error="invalid_token"' }).end();
      return true;
    });
    for (let i = 0; i < 3; i++) {
      const res = await request(`${own.url}/http/no-role`);
      expect(res.statusCode).toBe(401);
      await res.body.dump();
    }
    upstream.setHandler(undefined);
    await expect.poll(() => own.logs.filter((l) => l['path'] === '/http/no-role').length).toBe(3);
    const warnings = own.logs.filter((l) => String(l['msg']).startsWith('the upstream refused a newly fetched token too'));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatchObject({ level: 'warn', route: 'default', skipped: 0 });
  });

  it('returns the 401 when the body was too large to keep for a replay', async () => {
    const small = await another(['--service-key', keyPath, '--max-replay-body', '1024']);
    upstream.setHandler((_req, res, body) => {
      body.resume();
      body.on('end', () => {
        res.writeHead(401, { 'content-type': 'application/json' });
        res.end('{"error":"unauthorised"}');
      });
      return true;
    });
    const client = small.routes.routes[0]!.tokenClient;
    const rejected = await small.tokens.getToken(client); // the start-up token, fetched by now
    const before = oauth.tokenRequests;
    const res = await request(`${small.url}/http/echo`, { method: 'POST', body: randomBytes(4096) });
    expect(res.statusCode).toBe(401);
    await res.body.dump();
    // The rejected token is retired all the same (one new one fetched), though the request could not be sent again.
    const next = await small.tokens.getToken(client);
    expect(next).not.toBe(rejected);
    expect(oauth.tokenRequests - before).toBe(1);
    expect(upstream.requests.filter((r) => r.url === '/http/echo' && r.method === 'POST').at(-1)!.bodyLength).toBe(4096);
  });

  it('fetches a CSRF token with the session cookies, retries, and reuses them', async () => {
    const session = { token: 'csrf-' + randomBytes(4).toString('hex'), cookie: 'JSESSIONID=s1' };
    let fetches = 0;
    const posts: Array<{ token?: string; cookie?: string }> = [];
    upstream.setHandler((req, res, body) => {
      body.resume();
      if (req.method === 'GET' && req.headers['x-csrf-token'] === 'Fetch') {
        fetches++;
        res.writeHead(200, { 'x-csrf-token': session.token, 'set-cookie': [`${session.cookie}; Path=/; HttpOnly`, '__VCAP_ID__=abc; Path=/'] });
        res.end();
        return true;
      }
      posts.push({ token: req.headers['x-csrf-token'] as string | undefined, cookie: req.headers.cookie });
      if (req.headers['x-csrf-token'] !== session.token || !req.headers.cookie?.includes(session.cookie)) {
        res.writeHead(403, { 'x-csrf-token': 'Required', 'content-type': 'text/html' });
        res.end('<html>Forbidden</html>');
        return true;
      }
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('processed');
      return true;
    });
    const first = await request(`${sidecar.url}/http/order`, { method: 'POST', body: 'a' });
    expect(first.statusCode).toBe(200);
    expect(first.headers).not.toHaveProperty('x-csrf-token');
    expect(await first.body.text()).toBe('processed');
    const second = await request(`${sidecar.url}/http/order`, { method: 'POST', body: 'b' });
    expect(second.statusCode).toBe(200);
    await second.body.dump();
    expect(fetches).toBe(1);
    expect(posts).toHaveLength(3);
    expect(posts[2]).toEqual({ token: session.token, cookie: `${session.cookie}; __VCAP_ID__=abc` });
    // A sender whose cookie jar kept an old JSESSIONID: the session's goes upstream in its place, its own others stay.
    const jar = await request(`${sidecar.url}/http/order`, { method: 'POST', body: 'c', headers: { cookie: 'JSESSIONID=stale; theme=dark' } });
    expect(jar.statusCode).toBe(200);
    await jar.body.dump();
    expect(posts[3]).toEqual({ token: session.token, cookie: `theme=dark; ${session.cookie}; __VCAP_ID__=abc` });
    expect(fetches).toBe(1);
  });

  it("a flow echoing the request's headers hands the sender neither the token nor the route's CSRF session", async () => {
    const own = await another(['--service-key', keyPath]);
    // A base64 session id with `/`, padding and no digit, quoted as RFC 6265 allows: redacted all the same.
    const session = { token: 'csrf-' + randomBytes(12).toString('hex'), id: randomBytes(16).toString('hex'), vcap: 'ab/tkPlkYsgdJXAWyPPMcFehg==' };
    upstream.setHandler((req, res, body) => {
      body.resume();
      if (req.method === 'GET' && req.headers['x-csrf-token'] === 'Fetch') {
        res.writeHead(200, {
          'x-csrf-token': session.token,
          'set-cookie': [`JSESSIONID=${session.id}; Path=/`, `__VCAP_ID__="${session.vcap}"; Path=/`, 'sap-usercontext=sap-client=100; Path=/', 'lang=application/json; Path=/'],
        });
        res.end();
        return true;
      }
      if (req.headers['x-csrf-token'] !== session.token) {
        res.writeHead(403, { 'x-csrf-token': 'Required' }).end();
        return true;
      }
      // A flow returning the message headers it received, and re-issuing the session cookie.
      res.writeHead(200, {
        'x-echo-authorization': String(req.headers.authorization),
        'x-echo-csrf': String(req.headers['x-csrf-token']),
        'x-echo-cookie': String(req.headers.cookie),
        'set-cookie': `JSESSIONID=${session.id}; Path=/`,
        // Text that session cookies of plain text (SAP's client, here a made-up one) also hold: no credential.
        location: '/http/orders/42?sap-client=100',
        'content-type': 'application/json; charset=utf-8',
      });
      res.end('processed');
      return true;
    });
    const res = await request(`${own.url}/http/order`, { method: 'POST', body: 'a', headers: { cookie: 'theme=dark-and-stormy' } });
    expect(res.statusCode).toBe(200);
    await res.body.dump();
    expect(res.headers['x-echo-authorization']).toBe('Bearer [redacted]');
    expect(res.headers['x-echo-csrf']).toBe('[redacted]');
    expect(res.headers['x-echo-cookie']).toBe('theme=dark-and-stormy; JSESSIONID=[redacted]; __VCAP_ID__="[redacted]"; sap-usercontext=sap-client=100; lang=application/json');
    expect(res.headers['set-cookie']).toBe('JSESSIONID=[redacted]; Path=/');
    expect(res.headers['location']).toMatch(/\/http\/orders\/42\?sap-client=100$/);
    expect(res.headers['content-type']).toBe('application/json; charset=utf-8');
  });

  /**
   * An upstream that wants CSRF on POSTs; its fetch answers as `fetchAnswers` says, in turn (then with the session);
   * a `held` one is answered with the session by `releaseFetch`.
   */
  function csrfUpstream(session: { token: string; cookie: string }, fetchAnswers: Array<'none' | 'session' | '401' | 'held'> = []) {
    const seen: string[] = [];
    let held: ServerResponse | undefined;
    /** The Bearer token each request carried, in the order of `seen`. */
    const tokens: string[] = [];
    let fetched: () => void = () => undefined;
    let fetchedOnce = new Promise<void>((resolve) => (fetched = resolve));
    upstream.setHandler((req, res, body) => {
      body.resume();
      tokens.push(req.headers.authorization ?? '');
      if (req.method === 'GET' && req.headers['x-csrf-token'] === 'Fetch') {
        const answer = fetchAnswers.shift() ?? 'session';
        seen.push(answer === '401' ? 'fetch-401' : 'fetch');
        if (answer === 'held') {
          held = res;
          return true;
        }
        if (answer === '401') res.writeHead(401, { 'www-authenticate': 'Bearer error="invalid_token"' });
        else res.writeHead(200, answer === 'session' ? { 'x-csrf-token': session.token, 'set-cookie': `${session.cookie}; Path=/` } : {});
        res.end(() => fetched());
        return true;
      }
      const ok = req.headers['x-csrf-token'] === session.token && req.headers.cookie === session.cookie;
      seen.push(ok ? 'post' : 'post-403');
      res.writeHead(ok ? 200 : 403, ok ? { 'content-type': 'text/plain' } : { 'x-csrf-token': 'Required', 'content-type': 'text/html' });
      res.end(ok ? 'processed' : '<html>Forbidden</html>');
      return true;
    });
    return {
      seen,
      tokens,
      /** Resolves once a fetch has been answered (the next call waits for the next one). */
      fetchAnswered: () => fetchedOnce.then(() => void (fetchedOnce = new Promise<void>((resolve) => (fetched = resolve)))),
      /** A `held` fetch has arrived. */
      fetchHeld: () => held !== undefined,
      releaseFetch: () => held!.writeHead(200, { 'x-csrf-token': session.token, 'set-cookie': `${session.cookie}; Path=/` }).end(() => fetched()),
    };
  }

  it('a 401 whose body breaks off is still cured: the request is sent again with a new token, not answered 502', async () => {
    const own = await another(['--service-key', keyPath]);
    let calls = 0;
    upstream.setHandler((_req, res, body) => {
      body.resume();
      if (++calls === 1) {
        // The head and part of the body, then the connection dies: the answer being discarded fails.
        res.writeHead(401, { 'www-authenticate': 'Bearer error="invalid_token"', 'content-length': '100' });
        res.write('x'.repeat(10), () => res.socket?.destroy());
        return true;
      }
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('cured');
      return true;
    });
    const res = await request(`${own.url}/http/order`, { method: 'POST', body: 'a' });
    expect(res.statusCode).toBe(200);
    expect(await res.body.text()).toBe('cured');
    expect(calls).toBe(2);
  });

  it('a CSRF 403 that comes again with the new session goes to the sender: one fetch, sent twice, no loop', async () => {
    const own = await another(['--service-key', keyPath]);
    const seen: string[] = [];
    upstream.setHandler((req, res, body) => {
      body.resume();
      if (req.method === 'GET' && req.headers['x-csrf-token'] === 'Fetch') {
        seen.push('fetch');
        res.writeHead(200, { 'x-csrf-token': 'csrf-' + randomBytes(8).toString('hex'), 'set-cookie': 'JSESSIONID=never-accepted; Path=/' });
        res.end();
        return true;
      }
      seen.push('post-403'); // e.g. a session bound to another node of the tenant: every token is refused
      res.writeHead(403, { 'x-csrf-token': 'Required', 'content-type': 'text/html' });
      res.end('<html>Forbidden</html>');
      return true;
    });
    const res = await request(`${own.url}/http/order`, { method: 'POST', body: 'a', headersTimeout: 5_000 });
    expect(res.statusCode).toBe(403);
    expect(res.headers['x-csrf-token']).toBe('Required');
    await res.body.dump();
    expect(seen).toEqual(['post-403', 'fetch', 'post-403']);
  });

  it('a CSRF 403 to a request too long to send again goes to the sender, and the session is fetched at once for the next', async () => {
    const small = await another(['--service-key', keyPath, '--max-replay-body', '16']);
    const csrf = csrfUpstream({ token: 'csrf-' + randomBytes(4).toString('hex'), cookie: 'JSESSIONID=big' });
    const first = await request(`${small.url}/http/order`, { method: 'POST', body: randomBytes(100) });
    expect(first.statusCode).toBe(403);
    expect(first.headers['x-csrf-token']).toBe('Required');
    await first.body.dump();
    await csrf.fetchAnswered();
    const second = await request(`${small.url}/http/order`, { method: 'POST', body: randomBytes(100) });
    expect(second.statusCode).toBe(200);
    expect(await second.body.text()).toBe('processed');
    expect(csrf.seen).toEqual(['post-403', 'fetch', 'post']);
  });

  it('a modifying request that arrives while the session is being fetched waits for it, rather than earn a 403 it cannot cure', async () => {
    const small = await another(['--service-key', keyPath, '--max-replay-body', '16']);
    const csrf = csrfUpstream({ token: 'csrf-' + randomBytes(4).toString('hex'), cookie: 'JSESSIONID=wait' }, ['held']);
    const first = await request(`${small.url}/http/order`, { method: 'POST', body: randomBytes(100) });
    expect(first.statusCode).toBe(403); // too long to send again: the sender's, and the session is fetched at once
    await first.body.dump();
    await expect.poll(csrf.fetchHeld).toBe(true);
    // The sender tries again at once, head and body in one write: the sidecar decides on it as it reads them.
    const second = await rawOpen(small.address.port, `POST /http/order HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 100\r\n\r\n${'x'.repeat(100)}`);
    const inFlight = async () => {
      const text = await (await request(`http://127.0.0.1:${small.adminAddress!.port}/metrics`)).body.text();
      return Number(/^oauth_sidecar_requests_in_flight (\d+)$/m.exec(text)?.[1]);
    };
    await expect.poll(inFlight).toBe(1);
    expect(csrf.seen).toEqual(['post-403', 'fetch']); // not sent with the refused session
    csrf.releaseFetch();
    const closed = await second.closed;
    const answer = parseAnswer(second.received(), closed, 0);
    expect(answer.status, answer.text).toBe(200);
    expect(answer.body).toBe('9\r\nprocessed\r\n0\r\n\r\n');
    expect(csrf.seen).toEqual(['post-403', 'fetch', 'post']);
  });

  it('after a CSRF fetch that returned no token, the next modifying request is sent as it is and cured again', async () => {
    const own = await another(['--service-key', keyPath]);
    const csrf = csrfUpstream({ token: 'csrf-' + randomBytes(4).toString('hex'), cookie: 'JSESSIONID=again' }, ['none']);
    const first = await request(`${own.url}/http/order`, { method: 'POST', body: 'a' });
    expect(first.statusCode).toBe(502);
    const told = (await first.body.json()) as { error: string; message: string };
    expect(told).toMatchObject({ error: 'CSRF_FETCH_FAILED' });
    // Not sent again (the cure failed before the resend): no `retried`; the reason is what the sender was told.
    await expect.poll(() => own.logs.find((l) => l['path'] === '/http/order')).toBeDefined();
    const line = own.logs.find((l) => l['path'] === '/http/order')!;
    expect(line).toMatchObject({ status: 502, error: 'CSRF_FETCH_FAILED', reason: told.message });
    expect(line).not.toHaveProperty('retried');
    expect(own.logs.filter((l) => String(l['msg']).startsWith('CSRF token fetch failed'))).toEqual([expect.objectContaining({ level: 'warn', route: 'default' })]);
    // No fetch ahead of the request (a GET to an endpoint that never asked would run it): the 403 asks again.
    const second = await request(`${own.url}/http/order`, { method: 'POST', body: 'b' });
    expect(second.statusCode).toBe(200);
    expect(await second.body.text()).toBe('processed');
    expect(csrf.seen).toEqual(['post-403', 'fetch', 'post-403', 'fetch', 'post']);
  });

  it('a CSRF fetch answered 401 (the token went bad meanwhile) is made once more with a new token, which the resend carries too', async () => {
    const own = await another(['--service-key', keyPath]);
    await (await request(`${own.url}/http/warm`)).body.dump(); // its token is cached
    const csrf = csrfUpstream({ token: 'csrf-' + randomBytes(4).toString('hex'), cookie: 'JSESSIONID=renewed' }, ['401']);
    const before = oauth.tokenRequests;
    const res = await request(`${own.url}/http/order`, { method: 'POST', body: 'a' });
    expect(res.statusCode).toBe(200);
    expect(await res.body.text()).toBe('processed');
    expect(csrf.seen).toEqual(['post-403', 'fetch-401', 'fetch', 'post']);
    const [first, refused, renewed, resent] = csrf.tokens;
    expect(refused).toBe(first);
    expect(renewed).not.toBe(first);
    expect(resent).toBe(renewed);
    expect(oauth.tokenRequests - before).toBe(1);
    expect(own.logs.find((l) => l['path'] === '/http/order')).toMatchObject({ status: 200, retried: 'csrf' });
  });

  it('a CSRF fetch answered 401 again with the new token: 502 naming the 401, one token request, no loop, and none more for the next request', async () => {
    const own = await another(['--service-key', keyPath]);
    await (await request(`${own.url}/http/warm`)).body.dump(); // its token is cached
    const csrf = csrfUpstream({ token: 'csrf-' + randomBytes(4).toString('hex'), cookie: 'JSESSIONID=never' }, ['401', '401', '401', '401']);
    const before = oauth.tokenRequests;
    const res = await request(`${own.url}/http/order`, { method: 'POST', body: 'a' });
    expect(res.statusCode).toBe(502);
    const body = (await res.body.json()) as { error: string; message: string };
    expect(body).toMatchObject({ error: 'CSRF_FETCH_FAILED' });
    expect(body.message).toContain('answered its fetch with 401');
    expect(csrf.seen).toEqual(['post-403', 'fetch-401', 'fetch-401']);
    expect(oauth.tokenRequests - before).toBe(1);
    // The next request right after meets the same 401: no second token request (one per rejection interval).
    const again = await request(`${own.url}/http/order`, { method: 'POST', body: 'b' });
    expect(again.statusCode).toBe(502);
    await again.body.dump();
    expect(csrf.seen).toEqual(['post-403', 'fetch-401', 'fetch-401', 'post-403', 'fetch-401']);
    expect(oauth.tokenRequests - before).toBe(1);
  });

  it('a CSRF fetch shared by two requests fails: the one whose sender stayed gets 502, also when the first sender left', async () => {
    const own = await another(['--service-key', keyPath]);
    let fetches = 0;
    let heldFetch: ServerResponse | undefined;
    let heldB: ServerResponse | undefined;
    const posts: string[] = [];
    upstream.setHandler((req, res, body) => {
      body.resume();
      if (req.method === 'GET' && req.headers['x-csrf-token'] === 'Fetch') {
        // The first is answered by a reset, below; the one sent again after it, by a reset at once.
        if (++fetches === 1) heldFetch = res;
        else req.socket.destroy();
        return true;
      }
      if (req.method === 'GET') {
        res.writeHead(200, { 'content-type': 'text/plain' }).end('warm');
        return true;
      }
      posts.push(req.url ?? '');
      // B went out before A, and its 403 comes once A's fetch is under way: B joins that fetch.
      if (req.url === '/http/order-b') heldB = res;
      else res.writeHead(403, { 'x-csrf-token': 'Required', 'content-type': 'text/html' }).end('<html>Forbidden</html>');
      return true;
    });
    await (await request(`${own.url}/http/warm`)).body.dump(); // its token is cached
    const b = request(`${own.url}/http/order-b`, { method: 'POST', body: 'b' });
    await expect.poll(() => heldB, { interval: 10 }).toBeDefined();
    const first = new AbortController();
    const a = request(`${own.url}/http/order-a`, { method: 'POST', body: 'a', signal: first.signal }).catch((err: unknown) => err);
    await expect.poll(() => heldFetch, { interval: 10 }).toBeDefined(); // A's 403 started the fetch
    heldB!.writeHead(403, { 'x-csrf-token': 'Required', 'content-type': 'text/html' }).end('<html>Forbidden</html>');
    first.abort(); // A's sender gives up (its own timeout)
    expect(await a).toBeInstanceOf(Error);
    await expect.poll(() => own.logs.some((l) => l['path'] === '/http/order-a' && l['aborted'] === true), { interval: 10 }).toBe(true);
    heldFetch!.socket?.destroy(); // the fetch fails: a reset, and again when it is sent once more
    const res = await b;
    expect(res.statusCode).toBe(502);
    expect(await res.body.json()).toMatchObject({ error: 'UPSTREAM_UNREACHABLE' });
    expect(fetches).toBe(2);
    expect(posts).toEqual(['/http/order-b', '/http/order-a']);
    expect(own.logs.filter((l) => l['msg'] === 'internal error while proxying')).toEqual([]);
  });

  it('a CSRF fetch on a pooled connection the upstream closes as it arrives is sent once more, on a new one: the POST goes through', async () => {
    const own = await another(['--service-key', keyPath]); // its own pool: the POST's connection is the one the fetch reuses
    const session = 'csrf-' + randomBytes(4).toString('hex');
    const onSocket = new WeakMap<object, number>();
    const fetches: number[] = [];
    const posts: Array<string | undefined> = [];
    upstream.setHandler((req, res, body) => {
      const nth = (onSocket.get(req.socket) ?? 0) + 1;
      onSocket.set(req.socket, nth);
      body.resume();
      if (req.method === 'GET' && req.headers['x-csrf-token'] === 'Fetch') {
        fetches.push(nth);
        // The upstream's keep-alive timer closed the idle connection as the fetch arrived on it: no answer.
        if (nth > 1 && fetches.length === 1) req.socket.destroy();
        else res.writeHead(200, { 'x-csrf-token': session, 'set-cookie': 'JSESSIONID=s9; Path=/' }).end();
        return true;
      }
      if (req.method === 'GET') {
        res.writeHead(200, { 'content-type': 'text/plain' }).end('warm');
        return true;
      }
      posts.push(req.headers['x-csrf-token'] as string | undefined);
      if (req.headers['x-csrf-token'] !== session) res.writeHead(403, { 'x-csrf-token': 'Required', 'content-type': 'text/html' }).end('<html>Forbidden</html>');
      else res.writeHead(200, { 'content-type': 'text/plain' }).end('processed');
      return true;
    });
    // Two pooled connections, idle: the POST takes one, its fetch the other (whatever becomes of the POST's).
    await Promise.all([1, 2].map(async () => (await request(`${own.url}/http/warm`)).body.dump()));
    const res = await request(`${own.url}/http/order-stale`, { method: 'POST', body: '<order/>' });
    expect(res.statusCode).toBe(200);
    expect(await res.body.text()).toBe('processed');
    expect(fetches).toHaveLength(2); // on a reused connection (dropped), then once more
    expect(fetches[0]).toBeGreaterThan(1);
    expect(posts).toEqual([undefined, session]);
    await expect.poll(() => own.logs.find((l) => l['path'] === '/http/order-stale')).toMatchObject({ status: 200, retried: 'csrf' });
  });

  describe('an answer that comes before the sender has finished its body', () => {
    /** A sender body that ends only once `release()` is called: its first `first` bytes come at once. */
    function heldBody(first: Buffer, rest: Buffer) {
      const stream = new Readable({ read() {} });
      stream.push(first);
      return {
        stream,
        release() {
          stream.push(rest);
          stream.push(null);
        },
        sha256: createHash('sha256').update(Buffer.concat([first, rest])).digest('hex'),
      };
    }

    it.each([
      ['the upstream reads on after its 401', false],
      ['the upstream closes the connection after its 401', true],
    ])('a 401 before a small body ended: the body is kept to its end and replayed with a new token (%s)', async (_name, closes) => {
      const body = heldBody(randomBytes(1000), randomBytes(3000));
      let rejected: string | undefined;
      upstream.setHandler((req, res) => {
        rejected ??= req.headers.authorization;
        if (req.headers.authorization !== rejected) return false;
        res.writeHead(401, { 'content-type': 'application/json', ...(closes && { connection: 'close' }) });
        res.end('{"error":"unauthorised"}', () => body.release());
        return true;
      });
      // A sidecar of its own: the shared one refreshed after a 401 less than REJECTION_INTERVAL_MS ago.
      const fresh = await another(['--service-key', keyPath]);
      await fresh.tokens.getToken(fresh.routes.routes[0]!.tokenClient);
      const before = upstream.requests.length;
      const res = await request(`${fresh.url}/http/echo`, { method: 'POST', body: body.stream });
      expect(res.statusCode).toBe(200);
      expect(await echo(res)).toMatchObject({ method: 'POST', bodyLength: 4000, bodySha256: body.sha256 });
      expect(upstream.requests.slice(before)).toHaveLength(2);
    });

    it('a CSRF 403 before a small body ended: the token is fetched and the whole body sent again', async () => {
      const body = heldBody(randomBytes(1000), randomBytes(3000));
      const session = { token: 'csrf-' + randomBytes(4).toString('hex') };
      upstream.setHandler((req, res) => {
        if (req.method === 'GET' && req.headers['x-csrf-token'] === 'Fetch') {
          res.writeHead(200, { 'x-csrf-token': session.token, 'set-cookie': 'JSESSIONID=early; Path=/' });
          res.end();
          return true;
        }
        if (req.headers['x-csrf-token'] === session.token) return false; // the echo
        res.writeHead(403, { 'x-csrf-token': 'Required', 'content-type': 'text/html' });
        res.end('<html>Forbidden</html>', () => body.release());
        return true;
      });
      const res = await request(`${sidecar.url}/http/echo?early-csrf`, { method: 'POST', body: body.stream });
      expect(res.statusCode).toBe(200);
      expect(res.headers).not.toHaveProperty('x-csrf-token');
      expect(await echo(res)).toMatchObject({ bodyLength: 4000, bodySha256: body.sha256 });
    });

    it('a 401 before a body that then outgrows --max-replay-body: the 401 goes to the sender as the upstream sent it', async () => {
      const small = await another(['--service-key', keyPath, '--max-replay-body', '1024']);
      const body = heldBody(randomBytes(512), randomBytes(4096));
      upstream.setHandler((_req, res) => {
        res.writeHead(401, { 'content-type': 'application/json', 'www-authenticate': 'Bearer' });
        res.end('{"error":"unauthorised"}', () => body.release());
        return true;
      });
      const res = await request(`${small.url}/http/echo`, { method: 'POST', body: body.stream });
      expect(res.statusCode).toBe(401);
      expect(res.headers['www-authenticate']).toBe('Bearer');
      expect(await res.body.text()).toBe('{"error":"unauthorised"}');
    });

    it('a 401 too long to hold while the body is still coming (over 64 KiB, chunked) is passed on at once', async () => {
      const fresh = await another(['--service-key', keyPath]);
      const body = heldBody(randomBytes(512), randomBytes(512));
      const long = randomBytes(100 * 1024).toString('hex');
      upstream.setHandler((_req, res) => {
        res.writeHead(401, { 'content-type': 'text/plain' });
        res.end(long);
        return true;
      });
      const res = await request(`${fresh.url}/http/echo`, { method: 'POST', body: body.stream });
      expect(res.statusCode).toBe(401);
      expect(await res.body.text()).toBe(long);
      body.release();
      upstream.setHandler(undefined);
      expect((await request(`${fresh.url}/http/echo`)).statusCode).toBe(200);
    });

    it('a long 401 held while the body outgrows the copy: passed on whole once too long to hold', async () => {
      const small = await another(['--service-key', keyPath, '--max-replay-body', '1024']);
      const body = heldBody(randomBytes(512), randomBytes(4096));
      const head = randomBytes(32 * 1024).toString('hex'); // 64 KiB of text
      const tail = 'x'.repeat(8 * 1024);
      upstream.setHandler((_req, res, upload) => {
        res.writeHead(401, { 'content-type': 'text/plain' });
        res.write(head, () => body.release());
        // Once the whole body has passed the sidecar, its copy has been dropped: then the rest of the answer.
        let received = 0;
        upload.on('data', (c: Buffer) => {
          received += c.length;
          if (received === 512 + 4096) res.end(tail);
        });
        return true;
      });
      const res = await request(`${small.url}/http/echo`, { method: 'POST', body: body.stream });
      expect(res.statusCode).toBe(401);
      expect(await res.body.text()).toBe(head + tail);
    });

    /**
     * A sender that writes its whole body before it reads anything (Python's http.client, many SOAP stacks): its
     * socket reads nothing meanwhile, so an answer is lost if the connection is reset before the sender reads.
     */
    async function writeAllThenRead(head: string, bodyBytes: number, port = sidecar.address.port): Promise<{ text: string; error: string | undefined }> {
      const socket = connect(port, '127.0.0.1');
      socket.pause();
      let error: string | undefined;
      socket.on('error', (err: NodeJS.ErrnoException) => (error ??= err.code ?? err.message));
      const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
      const chunk = Buffer.alloc(64 * 1024, 'x');
      const written = new Promise<void>((resolve) => {
        let sent = 0;
        const pump = (): void => {
          while (!socket.destroyed) {
            if (sent >= bodyBytes) return resolve();
            sent += chunk.length;
            if (!socket.write(chunk)) return void socket.once('drain', pump);
          }
          resolve();
        };
        socket.write(head, pump);
      });
      await Promise.race([written, closed]);
      const chunks: Buffer[] = [];
      socket.on('data', (c: Buffer) => chunks.push(c));
      socket.resume();
      await closed;
      return { text: Buffer.concat(chunks).toString('latin1'), error };
    }

    it('an early answer to a sender that writes its whole body before reading: the body is read to its end, then the answer is there', async () => {
      upstream.setHandler((_req, res) => {
        res.writeHead(413, { 'content-type': 'text/plain' });
        res.end('too big!');
        return true;
      });
      const size = 8 * 1024 * 1024;
      const { text, error } = await writeAllThenRead(`POST /http/early-413 HTTP/1.1\r\nHost: localhost\r\nContent-Length: ${size}\r\n\r\n`, size);
      expect(error).toBeUndefined();
      expect(text).toMatch(/^HTTP\/1\.1 413 /);
      expect(text).toMatch(/\r\nconnection: close\r\n/i);
      expect(text.endsWith('too big!') || text.endsWith('8\r\ntoo big!\r\n0\r\n\r\n')).toBe(true);
    });

    it('a refusal to a sender that writes its whole body before reading: it gets the 400, not a reset', async () => {
      const size = 8 * 1024 * 1024;
      const { text, error } = await writeAllThenRead(`POST /http/../etc HTTP/1.1\r\nHost: localhost\r\nContent-Length: ${size}\r\n\r\n`, size);
      expect(error).toBeUndefined();
      expect(text).toMatch(/^HTTP\/1\.1 400 /);
      expect(text).toMatch(/"error":"REQUEST_REFUSED"/);
    });

    it('the replay copy goes when the answer begins, not when the download ends: a slow download holds no --max-replay-memory', async () => {
      const { arrived, arrival, release, released } = gate();
      upstream.setHandler((req, res, body) => {
        if (!req.url?.startsWith('/http/slow-answer')) return false;
        body.resume();
        body.on('end', () => {
          res.writeHead(200, { 'content-type': 'text/plain' });
          res.write('first part, ');
          arrived();
          void released.then(() => res.end('last part'));
        });
        return true;
      });
      const pending = request(`${sidecar.url}/http/slow-answer`, { method: 'POST', body: randomBytes(256 * 1024) });
      await arrival;
      const res = await pending; // its head is here, its body still coming
      expect(res.statusCode).toBe(200);
      expect(sidecar.replayBudget.used).toBe(0);
      release();
      expect(await res.body.text()).toBe('first part, last part');
    });

    it('an upstream that cannot be reached, to a sender that writes its whole body before reading: it gets the 502, not a broken pipe', async () => {
      // The request never starts upstream, so nothing reads the body on the way there: the sidecar must.
      const port = await closedPort();
      const dead = await another(['--service-key', keyPath, '--upstream', `https://127.0.0.1:${port}`]);
      const size = 4 * 1024 * 1024;
      const { text, error } = await writeAllThenRead(`POST /http/unreachable HTTP/1.1\r\nHost: localhost\r\nContent-Length: ${size}\r\n\r\n`, size, dead.address.port);
      expect(error).toBeUndefined();
      expect(text).toMatch(/^HTTP\/1\.1 502 /);
      expect(text).toMatch(/"error":"UPSTREAM_UNREACHABLE"/);
    });

    it('a complete answer before the sender finished uploading: the sender gets it, and its connection is not left hanging', async () => {
      upstream.setHandler((_req, res) => {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end('early');
        return true;
      });
      const socket = connect(sidecar.address.port, '127.0.0.1');
      const chunks: Buffer[] = [];
      socket.on('data', (c: Buffer) => chunks.push(c));
      socket.on('error', () => undefined);
      const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
      socket.write(`POST /http/early HTTP/1.1\r\nHost: localhost\r\nContent-Length: ${8 * 1024 * 1024}\r\n\r\n`);
      // Pump the body as fast as the socket takes it, like a sender that writes everything before reading.
      const chunk = Buffer.alloc(64 * 1024);
      let sent = 0;
      const pump = (): void => {
        while (sent < 8 * 1024 * 1024 && !socket.destroyed) {
          sent += chunk.length;
          if (!socket.write(chunk)) return void socket.once('drain', pump);
        }
      };
      pump();
      let timer: NodeJS.Timeout | undefined;
      const hanging = new Promise((resolve) => (timer = setTimeout(resolve, 5_000, 'hanging')));
      const outcome = await Promise.race([closed.then(() => 'closed'), hanging]);
      clearTimeout(timer);
      socket.destroy();
      expect(outcome).toBe('closed');
      const text = Buffer.concat(chunks).toString('latin1');
      expect(text).toMatch(/^HTTP\/1\.1 200 /);
      expect(text).toMatch(/\r\nconnection: close\r\n/i);
      expect(text).toMatch(/\r\n\r\n5\r\nearly\r\n0\r\n\r\n$/); // the whole answer
    });

    it('a sender that reads the early answer and then goes on uploading gets its whole body read, then a clean close', async () => {
      // The answer is complete before most of the body has come: undici then drops the upstream connection (and
      // the body stream piped into it), so only the sidecar itself can go on reading what the sender still sends.
      upstream.setHandler((_req, res) => {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end('early');
        return true;
      });
      const size = 16 * 1024 * 1024;
      // Half-open like most HTTP clients: the sidecar's FIN after the answer does not end the sender's upload.
      const socket = connect({ port: sidecar.address.port, host: '127.0.0.1', allowHalfOpen: true });
      let error: string | undefined;
      socket.on('error', (err: NodeJS.ErrnoException) => (error ??= err.code ?? err.message));
      const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
      const chunks: Buffer[] = [];
      const answered = new Promise<void>((resolve) =>
        socket.on('data', (c: Buffer) => {
          chunks.push(c);
          if (Buffer.concat(chunks).toString('latin1').endsWith('\r\n0\r\n\r\n')) resolve();
        }),
      );
      const chunk = Buffer.alloc(64 * 1024, 'x');
      socket.write(`POST /http/early-then-more HTTP/1.1\r\nHost: localhost\r\nContent-Length: ${size}\r\n\r\n`);
      socket.write(chunk);
      await answered;
      let sent = chunk.length;
      await new Promise<void>((resolve) => {
        const pump = (): void => {
          while (sent < size && !socket.destroyed) {
            sent += chunk.length;
            if (!socket.write(chunk)) return void socket.once('drain', pump);
          }
          resolve();
        };
        socket.once('close', () => resolve());
        pump();
      });
      socket.end();
      await closed;
      expect(error).toBeUndefined(); // not EPIPE/ECONNRESET after the linger gave up on a stalled upload
      expect(sent).toBe(size);
      const text = Buffer.concat(chunks).toString('latin1');
      expect(text).toMatch(/^HTTP\/1\.1 200 /);
      expect(text).toMatch(/\r\nconnection: close\r\n/i);
    });
  });

  it('passes a role 403 (no CSRF header) through untouched', async () => {
    upstream.setHandler((_req, res, body) => {
      body.resume();
      res.writeHead(403, { 'content-type': 'text/html' });
      res.end('role missing');
      return true;
    });
    const res = await request(`${sidecar.url}/http/order`, { method: 'POST', body: 'x' });
    expect(res.statusCode).toBe(403);
    expect(await res.body.text()).toBe('role missing');
  });
});

describe('errors a sender sees', () => {
  /** The sidecar's JSON error, checked for the secret the sidecar used (`secret`) and stack traces. */
  async function errorOf(res: Awaited<ReturnType<typeof request>>, secret = SECRET) {
    const body = (await res.body.json()) as { error: string; message: string; route: string | null };
    expect(res.headers['x-sidecar-error']).toBe(body.error);
    expect(JSON.stringify(body)).not.toContain(secret);
    expect(JSON.stringify(body)).not.toMatch(/at .*\.ts:\d+/);
    return body;
  }

  it('502 TOKEN_REJECTED when the token server rejects the credentials', async () => {
    const wrong = 'wrong-Secret$0=|%';
    const badKey = await files.write('bad.json', serviceKey({ clientsecret: wrong }));
    const bad = await another(['--service-key', badKey]);
    const res = await request(`${bad.url}/http/GetTimestamp`);
    expect(res.statusCode).toBe(502);
    const body = await errorOf(res, wrong);
    expect(body).toMatchObject({ error: 'TOKEN_REJECTED', route: 'default' });
    expect(body.message).toContain('invalid_client');
    expect(bad.logText()).not.toContain(wrong);
  });

  it('two routes with the same client id but different secrets do not share a token: the wrong one fails alone', async () => {
    const wrong = 'wrong-Secret$1=|%';
    const badKey = await files.write('bad-shared.json', serviceKey({ clientsecret: wrong }));
    const config = await files.write(
      'same-client.yaml',
      ['routes:', '  - name: bad', '    prefix: /bad', `    serviceKey: ${badKey}`, '    rewritePrefix: /', '  - name: good', '    prefix: /good', `    serviceKey: ${keyPath}`, '    rewritePrefix: /'].join('\n'),
    );
    const s = await another(['--config', config]);
    const [bad, good] = s.routes.routes;
    expect(bad!.tokenClient.cacheKey).not.toBe(good!.tokenClient.cacheKey);
    const fine = await request(`${s.url}/good/http/GetTimestamp`);
    expect(fine.statusCode).toBe(200);
    await fine.body.dump();
    const refused = await request(`${s.url}/bad/http/GetTimestamp`);
    expect(refused.statusCode).toBe(502);
    expect(await errorOf(refused, wrong)).toMatchObject({ error: 'TOKEN_REJECTED', route: 'bad' });
    expect(s.logText()).not.toContain(wrong);
  });

  it('503 with Retry-After when the token server fails and no token is cached', async () => {
    oauth.setInterceptor((_req, res) => {
      res.writeHead(500).end();
      return true;
    });
    const cold = await another(['--service-key', keyPath, '--token-timeout', '2000']);
    const res = await request(`${cold.url}/http/GetTimestamp`);
    expect(res.statusCode).toBe(503);
    expect(Number(res.headers['retry-after'])).toBeGreaterThan(0);
    expect((await errorOf(res)).error).toBe('TOKEN_SERVER_ERROR');
  });

  it('a token-server outage does not affect traffic while the cached token is valid', async () => {
    await request(`${sidecar.url}/http/GetTimestamp`).then((r) => r.body.dump());
    await oauth.stop();
    try {
      const res = await request(`${sidecar.url}/http/GetTimestamp`);
      expect(res.statusCode).toBe(200);
      await res.body.dump();
    } finally {
      await oauth.start();
    }
  });

  it('502 UPSTREAM_UNREACHABLE when the upstream refuses connections', async () => {
    const dead = await another(['--service-key', keyPath, '--upstream', `https://127.0.0.1:${await closedPort()}`]);
    const res = await request(`${dead.url}/http/x`);
    expect(res.statusCode).toBe(502);
    expect((await errorOf(res)).error).toBe('UPSTREAM_UNREACHABLE');
  });

  it('502 UPSTREAM_UNREACHABLE naming the HTTPS proxy when the proxy refuses connections, not the upstream it never reached', async () => {
    const port = await closedPort();
    // The token server is reached directly (NO_PROXY names it with its port); the upstream only through the proxy.
    const proxied = await another(['--service-key', keyPath], { HTTPS_PROXY: `http://user:pw@127.0.0.1:${port}`, NO_PROXY: new URL(oauth.tokenUrl).host });
    const res = await request(`${proxied.url}/http/x`);
    expect(res.statusCode).toBe(502);
    const body = await errorOf(res, 'user:pw');
    const host = new URL(upstream.url).host;
    expect(body).toEqual({
      error: 'UPSTREAM_UNREACHABLE',
      message: `upstream ${host}: the HTTPS proxy 127.0.0.1:${port} refused the connection (ECONNREFUSED) — check HTTPS_PROXY`,
      route: 'default',
    });
  });

  /** A proxy that takes connections and misbehaves on each: closes it when the CONNECT arrives, or never answers. */
  async function badProxy(kind: 'closes' | 'mute' | 'resets' | 'not-http'): Promise<{ port: number; accepted: () => number; close: () => Promise<void> }> {
    const sockets = new Set<Socket>();
    let accepted = 0;
    const server = createTcpServer((socket) => {
      accepted++;
      sockets.add(socket);
      socket.on('error', () => undefined);
      socket.on('data', () => {
        if (kind === 'closes') socket.end();
        if (kind === 'resets') socket.resetAndDestroy();
        if (kind === 'not-http') socket.write('SSH-2.0-OpenSSH_9.6\r\n');
      });
    });
    const port = await listen(server);
    return {
      port,
      accepted: () => accepted,
      close: async () => {
        for (const socket of sockets) socket.destroy();
        await new Promise((resolve) => server.close(resolve));
      },
    };
  }

  /** A sidecar whose upstream is reached only through `proxyPort` (the token server directly), connect limit 300 ms. */
  async function throughProxy(proxyPort: number): Promise<RunningSidecar> {
    const config = await files.write(
      `via-proxy-${proxyPort}.yaml`,
      ['routes:', '  - name: default', '    prefix: /', `    serviceKey: ${keyPath}`, '    timeouts:', '      connectMs: 300'].join('\n'),
    );
    return another(['--config', config], { HTTPS_PROXY: `http://127.0.0.1:${proxyPort}`, NO_PROXY: new URL(oauth.tokenUrl).host });
  }

  it('502 naming the HTTPS proxy when it closes the connection before answering the CONNECT, without connecting again and again', { timeout: 15_000 }, async () => {
    const proxy = await badProxy('closes');
    try {
      const proxied = await throughProxy(proxy.port);
      const res = await request(`${proxied.url}/http/x`);
      expect(res.statusCode).toBe(502);
      const body = await errorOf(res);
      expect([body.error, body.message]).toEqual([
        'UPSTREAM_UNREACHABLE',
        `upstream ${new URL(upstream.url).host}: the HTTPS proxy 127.0.0.1:${proxy.port} closed the connection without answering (ECONNRESET) — check HTTPS_PROXY, and that the proxy reaches the host`,
      ]);
      // undici 7 alone reconnects in a tight loop for ever (thousands of connections a second).
      expect(proxy.accepted()).toBeLessThanOrEqual(3);
    } finally {
      await proxy.close();
    }
  });

  it('502 naming the HTTPS proxy when it resets the connection, or answers the CONNECT with something not HTTP (a wrong port)', { timeout: 15_000 }, async () => {
    for (const [kind, code] of [
      ['resets', 'ECONNRESET'],
      ['not-http', 'HTTPParserError'],
    ] as const) {
      const proxy = await badProxy(kind);
      try {
        const proxied = await throughProxy(proxy.port);
        const res = await request(`${proxied.url}/http/x`, { method: 'POST', body: 'x' });
        expect(res.statusCode).toBe(502);
        const body = await errorOf(res);
        expect(body.error).toBe('UPSTREAM_UNREACHABLE');
        expect(body.message).toContain(`the HTTPS proxy 127.0.0.1:${proxy.port} `);
        expect(body.message).toContain(code);
      } finally {
        await proxy.close();
      }
    }
  });

  it('504 naming the HTTPS proxy when it never answers the CONNECT: bounded by the connect limit, not 300 s', { timeout: 15_000 }, async () => {
    const proxy = await badProxy('mute');
    try {
      const proxied = await throughProxy(proxy.port);
      const started = Date.now();
      const res = await request(`${proxied.url}/http/x`);
      expect(res.statusCode).toBe(504);
      const body = await errorOf(res);
      expect([body.error, body.message]).toEqual([
        'UPSTREAM_TIMEOUT',
        `upstream ${new URL(upstream.url).host}: the HTTPS proxy 127.0.0.1:${proxy.port} took the CONNECT but did not answer it in time (UND_ERR_HEADERS_TIMEOUT) — it may not reach the host, or needs longer than the connect limit`,
      ]);
      expect(Date.now() - started).toBeLessThan(10_000);
    } finally {
      await proxy.close();
    }
  });

  it('502 UPSTREAM_UNREACHABLE naming the upstream when it is in NO_PROXY and refuses connections, not the (also dead) proxy', async () => {
    const proxyPort = await closedPort();
    const upstreamPort = await closedPort();
    const direct = await another(['--service-key', keyPath, '--upstream', `https://127.0.0.1:${upstreamPort}`], {
      HTTPS_PROXY: `http://127.0.0.1:${proxyPort}`,
      NO_PROXY: '127.0.0.1',
    });
    const res = await request(`${direct.url}/http/x`);
    expect(res.statusCode).toBe(502);
    const body = await errorOf(res);
    expect(body.message).toBe(`upstream 127.0.0.1:${upstreamPort} unreachable (ECONNREFUSED)`);
  });

  it('504 UPSTREAM_TIMEOUT when the upstream does not answer in time', async () => {
    const impatient = await another(['--service-key', keyPath, '--upstream-timeout', '200']);
    upstream.setHandler(() => true); // never answers
    const res = await request(`${impatient.url}/http/slow`);
    expect(res.statusCode).toBe(504);
    expect((await errorOf(res)).error).toBe('UPSTREAM_TIMEOUT');
  });

  it('logs no secret, key or token', async () => {
    await request(`${sidecar.url}/http/GetTimestamp?secret=in-query`).then((r) => r.body.dump());
    await expect.poll(() => sidecar.logs.some((l) => l['msg'] === 'request' && l['path'] === '/http/GetTimestamp'), { interval: 10 }).toBe(true);
    const line = sidecar.logs.findLast((l) => l['msg'] === 'request' && l['path'] === '/http/GetTimestamp')!;
    expect(line).toMatchObject({ route: 'default', method: 'GET', status: 200, upstreamStatus: 200, bytesIn: 0 });
    expect(line['bytesOut']).toBe('Current time (UTC): 2026-01-01 00:00:00'.length);
    expect(line['requestId']).toEqual(expect.any(String));
    const text = sidecar.logText() + extraSidecars.map((s) => s.logText()).join('\n');
    expect(text).not.toContain(SECRET);
    expect(text).not.toMatch(/Bearer |eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}/);
    expect(text).not.toContain('in-query');
  });
});

describe('never an open proxy', () => {
  /** Send raw bytes and read the whole answer (the sidecar closes these connections). */
  function raw(text: string): Promise<string> {
    return new Promise((resolve, reject) => {
      const socket = connect(sidecar.address.port, '127.0.0.1', () => socket.write(text));
      let data = '';
      socket.on('data', (c: Buffer) => (data += c.toString('latin1')));
      socket.on('end', () => resolve(data));
      socket.on('error', reject);
    });
  }

  it.each([
    ['absolute-form target', 'GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n', 400],
    ['CONNECT', 'CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n', 405],
    ['Content-Length with Transfer-Encoding', 'POST /http/echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 400],
  ])('refuses %s without calling the upstream', async (_name, text, status) => {
    const before = upstream.requests.length;
    const answer = await raw(text);
    expect(answer).toMatch(new RegExp(`^HTTP/1.1 ${status} `));
    expect(upstream.requests.length).toBe(before);
  });
});

describe('inbound control and routes', () => {
  it('refuses to start on a non-loopback address without inbound control', async () => {
    await expect(runSidecar(['--service-key', keyPath, '--ca', caPath, '--listen', '0.0.0.0:0'])).rejects.toBeInstanceOf(ConfigError);
  });

  it('checks and strips inbound basic auth', async () => {
    const users = await files.write('users', 'erp:sha256:' + createHash('sha256').update('s3cret:with:colons').digest('hex') + '\n');
    const guarded = await another(['--service-key', keyPath, '--listen', '0.0.0.0:0', '--basic-auth-file', users]);
    const url = `http://127.0.0.1:${guarded.address.port}/http/echo`;
    const denied = await request(url);
    expect(denied.statusCode).toBe(401);
    expect(denied.headers['www-authenticate']).toMatch(/^Basic /);
    await denied.body.dump();
    const wrong = await request(url, { headers: { authorization: 'Basic ' + Buffer.from('erp:nope').toString('base64') } });
    expect(wrong.statusCode).toBe(401);
    await wrong.body.dump();
    const ok = await request(url, { headers: { authorization: 'Basic ' + Buffer.from('erp:s3cret:with:colons').toString('base64') } });
    expect(ok.statusCode).toBe(200);
    expect((await echo(ok)).headers['authorization']).toMatch(/^Bearer /);
  });

  it('enforces a sender allowlist', async () => {
    const listed = await another(['--service-key', keyPath, '--listen', '0.0.0.0:0', '--allow-cidr', '10.0.0.0/8']);
    const res = await request(`http://127.0.0.1:${listed.address.port}/http/echo`);
    expect(res.statusCode).toBe(403);
    expect((await res.body.json()) as object).toMatchObject({ error: 'SENDER_FORBIDDEN' });
    const open = await another(['--service-key', keyPath, '--listen', '0.0.0.0:0', '--allow-cidr', '127.0.0.0/8']);
    const ok = await request(`http://127.0.0.1:${open.address.port}/http/GetTimestamp`);
    expect(ok.statusCode).toBe(200);
    await ok.body.dump();
  });

  it('routes by longest prefix, rewrites, and answers 404 for unrouted paths', async () => {
    const config = await files.write(
      'routes.yaml',
      [
        'routes:',
        '  - name: orders',
        '    prefix: /orders',
        `    serviceKey: ${keyPath}`,
        '    rewritePrefix: /http/echo',
        '  - name: flows',
        '    prefix: /http',
        `    serviceKey: ${keyPath}`,
        '  - name: orders-v2',
        '    prefix: /orders/v2',
        `    serviceKey: ${keyPath}`,
        `    upstream: ${upstream.url}/http/echo/v2`,
      ].join('\n'),
    );
    const multi = await another(['--config', config]);
    upstream.setHandler((req, res, body) => {
      body.resume();
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ url: req.url }));
      return true;
    });
    expect((await echo(await request(`${multi.url}/orders/42?x=1`))).url).toBe('/http/echo/42?x=1');
    expect((await echo(await request(`${multi.url}/orders/v2/7`))).url).toBe('/http/echo/v2/orders/v2/7');
    expect((await echo(await request(`${multi.url}/http/anything`))).url).toBe('/http/anything');
    const none = await request(`${multi.url}/ordersx`);
    expect(none.statusCode).toBe(404);
    const answer = await none.body.text();
    expect(JSON.parse(answer)).toMatchObject({ error: 'ROUTE_NOT_FOUND', route: null });
    // The access line counts the sidecar's own answer like an upstream's.
    await expect.poll(() => multi.logs.find((l) => l['msg'] === 'request' && l['path'] === '/ordersx')?.['bytesOut'], { interval: 10 }).toBe(Buffer.byteLength(answer));
    // …and what it sends: nothing to a HEAD.
    const head = await request(`${multi.url}/ordersy`, { method: 'HEAD' });
    expect(head.statusCode).toBe(404);
    await head.body.dump();
    await expect.poll(() => multi.logs.find((l) => l['msg'] === 'request' && l['path'] === '/ordersy')?.['bytesOut'], { interval: 10 }).toBe(0);
    // Three routes, one credential set: one token serves them all.
    expect(new Set(multi.routes.routes.map((r) => r.tokenClient.cacheKey)).size).toBe(1);
  });
});
