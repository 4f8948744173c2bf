import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { pipeline } from 'node:stream/promises';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { HOP_BY_HOP, requestHeadersForUpstream, responseHeadersForSender } from '../../src/headers.js';

const HOP_BY_HOP_NAMES = ['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade'];

/** Set-Cookie values with `=`, `;`, commas, quotes and latin1 obs-text bytes (node/undici decode header bytes as latin1). */
const NASTY_COOKIES = [
  'JSESSIONID=abc=def==; Path=/; HttpOnly; Secure',
  'pref="a,b;c=d"; Expires=Wed, 21 Oct 2037 07:28:00 GMT; SameSite=Lax',
  'name=caf\u00e9 \u00ff\u0080\u00a0; Domain=example.com',
  'empty=; Max-Age=0',
];

function deepFreeze<T extends object>(o: T): T {
  for (const v of Object.values(o)) if (typeof v === 'object' && v !== null) Object.freeze(v);
  return Object.freeze(o);
}

describe('HOP_BY_HOP', () => {
  it('is exactly the RFC 9110 §7.6.1 connection-specific set plus trailer', () => {
    expect([...HOP_BY_HOP].sort()).toEqual([...HOP_BY_HOP_NAMES].sort());
  });
});

describe('requestHeadersForUpstream', () => {
  it.each(HOP_BY_HOP_NAMES)('drops hop-by-hop %s', (name) => {
    const out = requestHeadersForUpstream({ [name]: 'x', accept: '*/*' });
    expect(out).toEqual({ accept: '*/*' });
  });

  it.each(['authorization', 'proxy-authorization'])('drops the sender credential %s', (name) => {
    const out = requestHeadersForUpstream({ [name]: 'Basic dXNlcjpwYXNz', accept: '*/*' });
    expect(out).toEqual({ accept: '*/*' });
  });

  it.each(['host', 'expect', 'forwarded', 'close', 'x-original-url', 'x-original-uri', 'X-Rewrite-URL', 'x-envoy-original-path'])('drops %s', (name) => {
    expect(requestHeadersForUpstream({ [name]: 'v', 'x-keep': '1' })).toEqual({ 'x-keep': '1' });
  });

  it.each(['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-forwarded-port', 'x-forwarded-prefix', 'x-forwarded-client-cert', 'x-real-ip', 'x-client-ip', 'x-cluster-client-ip', 'true-client-ip'])(
    'drops the sender claim %s',
    (name) => {
      expect(requestHeadersForUpstream({ [name]: '203.0.113.9', 'x-keep': '1' })).toEqual({ 'x-keep': '1' });
    },
  );

  it('keeps look-alikes of dropped names', () => {
    const incoming = { 'x-forwarded': 'a', 'x-forwardedfor': 'b', 'x-forward-for': 'c', 'authorization-hint': 'd', hosts: 'e', tee: 'f' };
    expect(requestHeadersForUpstream(incoming)).toEqual(incoming);
  });

  it('matches names case-insensitively and writes them lower-case', () => {
    const out = requestHeadersForUpstream({ Authorization: 'Basic x', 'Transfer-Encoding': 'chunked', 'X-Forwarded-For': '1.2.3.4', 'X-Custom': 'v' });
    expect(out).toEqual({ 'x-custom': 'v' });
  });

  it('lower-cases a name whatever letter is upper-case, both ways and in extra headers', () => {
    const out = requestHeadersForUpstream({ connectioN: 'close', 'keep-alivE': 'x', 'x-a': '1', 'X-b': '2', 'x-C': '3' }, { extra: { 'X-Request-ID': 'id' } });
    expect(out).toEqual({ 'x-a': '1', 'x-b': '2', 'x-c': '3', 'x-request-id': 'id' });
    expect(responseHeadersForSender({ 'Proxy-AuthenticatE': 'Basic', 'Content-Type': 'text/plain', tE: 'trailers' })).toEqual({ 'content-type': 'text/plain' });
    // Beyond ASCII too: the Kelvin sign lower-cases to "k", so this name is keep-alive and dropped.
    expect(responseHeadersForSender({ '\u212Aeep-alive': 'x', 'x-\u00c9': 'y' })).toEqual({ 'x-\u00e9': 'y' });
  });

  it('keeps content-length, cookies and everything else, values by identity', () => {
    const cookies = ['a=1', 'b=2'];
    const incoming: IncomingHttpHeaders = {
      'content-length': '12345',
      'content-type': 'application/xml; charset=utf-8',
      cookie: 'JSESSIONID=abc; other="x,y"',
      'user-agent': 'SAP-PI/7.5',
      'sap-client': '100',
      'x-latin1': 'caf\u00e9 \u00ff\u0080',
      'x-empty': '',
      'set-cookie': cookies,
    };
    const out = requestHeadersForUpstream(incoming);
    expect(out).toEqual(incoming);
    expect(out['set-cookie']).toBe(cookies);
    expect(Object.getPrototypeOf(out)).toBe(Object.prototype);
  });

  it('skips undefined values', () => {
    expect(requestHeadersForUpstream({ accept: undefined, 'x-a': 'a' })).toEqual({ 'x-a': 'a' });
  });

  describe('Connection-named fields', () => {
    it('drops every listed field: mixed case, spaces, tabs, empty elements', () => {
      const out = requestHeadersForUpstream({
        connection: ' X-Foo ,\tx-BAR,, ,Keep-Alive ,CLOSE,x-baz\t',
        'x-foo': '1',
        'x-bar': '2',
        'x-baz': '3',
        'x-qux': '4',
      });
      expect(out).toEqual({ 'x-qux': '4' });
    });

    it('ignores junk tokens, which cannot name a field', () => {
      const out = requestHeadersForUpstream({
        connection: 'bad token, x-a;b, "quoted", x-\u00e9, (x), x-good',
        bad: '1',
        token: '2',
        'x-a': '3',
        'x-good': '4',
      });
      expect(out).toEqual({ bad: '1', token: '2', 'x-a': '3' });
    });

    it('reads an array of Connection values', () => {
      const out = requestHeadersForUpstream({ connection: ['x-one', 'X-Two, x-three'] as unknown as string, 'x-one': '1', 'x-two': '2', 'x-three': '3', 'x-four': '4' });
      expect(out).toEqual({ 'x-four': '4' });
    });

    it('never drops content-length on the say-so of Connection', () => {
      const out = requestHeadersForUpstream({ connection: 'content-length, Content-Length', 'content-length': '5' });
      expect(out).toEqual({ 'content-length': '5' });
    });

    it('copes with an empty Connection value', () => {
      expect(requestHeadersForUpstream({ connection: '', 'x-a': 'a' })).toEqual({ 'x-a': 'a' });
    });
  });

  it('adds extra headers after filtering, replacing same-named sender values', () => {
    const out = requestHeadersForUpstream(
      { authorization: 'Basic c2VuZGVyOnB3', 'x-request-id': 'from-sender', accept: '*/*' },
      { extra: { Authorization: 'Bearer tok', 'x-request-id': 'ours' } },
    );
    expect(out).toEqual({ accept: '*/*', authorization: 'Bearer tok', 'x-request-id': 'ours' });
  });

  it('does not mutate the input', () => {
    const incoming = deepFreeze({
      connection: 'x-foo, close',
      'x-foo': '1',
      authorization: 'Basic x',
      host: 'sidecar:8080',
      'set-cookie': ['a=1', 'b=2'],
      cookie: 'c=3',
    });
    const before = structuredClone(incoming);
    const out = requestHeadersForUpstream(incoming, { extra: { authorization: 'Bearer t' } });
    expect(incoming).toEqual(before);
    out['x-new'] = 'changed';
    expect(incoming).not.toHaveProperty('x-new');
  });

  it('copies a __proto__ field as an own property without touching the prototype', () => {
    const incoming = JSON.parse('{"__proto__": ["evil"], "x-a": "a"}') as IncomingHttpHeaders;
    const out = requestHeadersForUpstream(incoming);
    expect(Object.getPrototypeOf(out)).toBe(Object.prototype);
    expect(Object.keys(out)).toEqual(['__proto__', 'x-a']);
    expect(Object.getOwnPropertyDescriptor(out, '__proto__')?.value).toEqual(['evil']);
  });
});

describe('responseHeadersForSender', () => {
  it.each(HOP_BY_HOP_NAMES)('drops hop-by-hop %s', (name) => {
    expect(responseHeadersForSender({ [name]: 'x', 'content-type': 'text/plain' })).toEqual({ 'content-type': 'text/plain' });
  });

  it('drops Connection-named fields, close, proxy-authenticate and proxy-authentication-info', () => {
    const out = responseHeadersForSender({
      connection: 'X-Hop, close, junk token',
      'x-hop': '1',
      close: 'x',
      'proxy-authenticate': 'Basic realm="upstream-proxy"',
      'proxy-authentication-info': 'nextnonce="x"',
      junk: 'kept',
      'www-authenticate': 'Bearer realm="cpi"',
    });
    expect(out).toEqual({ junk: 'kept', 'www-authenticate': 'Bearer realm="cpi"' });
  });

  it('keeps content-length, even when Connection names it', () => {
    const out = responseHeadersForSender({ connection: 'content-length', 'content-length': '42', 'content-encoding': 'gzip' });
    expect(out).toEqual({ 'content-length': '42', 'content-encoding': 'gzip' });
  });

  it('keeps multiple set-cookie values: same array, order and bytes', () => {
    const cookies = [...NASTY_COOKIES];
    const upstream = deepFreeze({ 'set-cookie': cookies, 'transfer-encoding': 'chunked', link: ['<a>; rel=x', '<b>; rel=y'], etag: 'W/"1"', date: undefined });
    const out = responseHeadersForSender(upstream);
    expect(out).toEqual({ 'set-cookie': NASTY_COOKIES, link: ['<a>; rel=x', '<b>; rel=y'], etag: 'W/"1"' });
    expect(out['set-cookie']).toBe(cookies);
    expect(Buffer.from((out['set-cookie'] as string[]).join('\n'), 'latin1')).toEqual(Buffer.from(NASTY_COOKIES.join('\n'), 'latin1'));
  });

  it('redacts the secrets in every value of a repeated field, not only in single values', () => {
    const token = 'eyJhbGciOiJSUzI1NiJ9.access-token-value';
    const out = responseHeadersForSender(
      { 'set-cookie': ['a=1; Path=/', `echo=${token}; Path=/`], 'www-authenticate': [`Bearer error="invalid_token", token="${token}"`, 'Basic realm="x"'] },
      { secrets: [token] },
    );
    expect(out).toEqual({
      'set-cookie': ['a=1; Path=/', 'echo=[redacted]; Path=/'],
      'www-authenticate': ['Bearer error="invalid_token", token="[redacted]"', 'Basic realm="x"'],
    });
  });

  it('adds extra headers', () => {
    expect(responseHeadersForSender({ 'x-request-id': 'upstream' }, { extra: { 'X-Request-Id': 'ours' } })).toEqual({ 'x-request-id': 'ours' });
  });

  it('keeps a __proto__ field from undici as an own key', () => {
    const upstream: Record<string, string> = {};
    Object.defineProperty(upstream, '__proto__', { value: 'x', enumerable: true });
    const out = responseHeadersForSender(upstream);
    expect(Object.getPrototypeOf(out)).toBe(Object.prototype);
    expect(Object.getOwnPropertyDescriptor(out, '__proto__')?.value).toBe('x');
  });
});

// ---------------------------------------------------------------------------
// Against real undici and node:http: the filtered headers never make undici throw.
// ---------------------------------------------------------------------------

interface Echo {
  method: string;
  /** [name, value] pairs exactly as the upstream's parser saw them. */
  raw: [string, string][];
  body: string;
}

const servers: Server[] = [];

afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
});

async function listen(server: Server): Promise<string> {
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/** An upstream that answers with what it received, and sets nasty cookies. */
function echoUpstream(): Promise<string> {
  return listen(
    createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const raw: [string, string][] = [];
        for (let i = 0; i < req.rawHeaders.length; i += 2) raw.push([req.rawHeaders[i]!, req.rawHeaders[i + 1]!]);
        const echo: Echo = { method: req.method ?? '', raw, body: Buffer.concat(chunks).toString('latin1') };
        const body = JSON.stringify(echo);
        res.setHeader('set-cookie', NASTY_COOKIES);
        res.setHeader('x-hop', 'must not reach the sender');
        res.setHeader('connection', 'x-hop');
        res.setHeader('keep-alive', 'timeout=5');
        res.setHeader('content-type', 'application/json');
        res.setHeader('content-length', Buffer.byteLength(body));
        // A Buffer, not a string: node would send headers and a string body
        // together as UTF-8, re-encoding the latin1 cookie bytes.
        res.end(Buffer.from(body));
      });
    }),
  );
}

/** Headers node:http's strict parser can deliver, with every name undici refuses or treats specially. */
const NASTY_INCOMING: IncomingHttpHeaders = {
  host: 'sidecar.local:8080',
  connection: 'Keep-Alive, Upgrade, TE, X-Hop-A,x-hop-b , junk token, ",", close',
  'keep-alive': 'timeout=5, max=100',
  'proxy-connection': 'keep-alive',
  te: 'trailers, deflate;q=0.5',
  trailer: 'x-checksum',
  'transfer-encoding': 'chunked',
  upgrade: 'h2c, websocket',
  expect: '100-continue',
  authorization: 'Basic c2VuZGVyOnNlY3JldA==',
  'proxy-authorization': 'Basic cHJveHk6c2VjcmV0',
  forwarded: 'for=203.0.113.9;proto=https',
  'x-forwarded-for': '203.0.113.9',
  'x-forwarded-host': 'evil.example',
  'x-hop-a': '1',
  'x-hop-b': '2',
  close: 'reserved',
  'content-length': '5',
  'content-type': 'text/plain; charset=iso-8859-1',
  cookie: 'a=1; b="x,y=z"',
  "!#$%&'*+-.^_`|~az09": 'every tchar in a name',
  'x-latin1': 'caf\u00e9 \u00ff\u0080\t tab',
  'x-empty': '',
  'x-comma': 'a, b, c',
};

const FORWARDED_NAMES = ["!#$%&'*+-.^_`|~az09", 'content-length', 'content-type', 'cookie', 'x-comma', 'x-empty', 'x-latin1'];

describe('with undici 7', () => {
  it('undici itself refuses the raw sender headers (control)', async () => {
    const origin = await echoUpstream();
    for (const headers of [{ expect: '100-continue' }, { 'transfer-encoding': 'chunked' }, { 'keep-alive': 'timeout=5' }, { upgrade: 'h2c' }, { connection: 'junk token' }]) {
      await expect(request(origin, { headers })).rejects.toThrow();
    }
  });

  it('accepts requestHeadersForUpstream output for a nasty header set and forwards it byte for byte', async () => {
    const origin = await echoUpstream();
    const headers = requestHeadersForUpstream(NASTY_INCOMING, { extra: { authorization: 'Bearer token-123' } });
    expect(Object.keys(headers).sort()).toEqual([...FORWARDED_NAMES, 'authorization'].sort());

    const { statusCode, body } = await request(origin, { method: 'POST', headers, body: 'hello' });
    expect(statusCode).toBe(200);
    const echo = (await body.json()) as Echo;
    const received = new Map(echo.raw.map(([n, v]) => [n.toLowerCase(), v]));
    expect(received.get('authorization')).toBe('Bearer token-123');
    expect(received.get('host')).toBe(new URL(origin).host);
    for (const name of FORWARDED_NAMES) expect(received.get(name), name).toBe(NASTY_INCOMING[name]);
    for (const gone of ['expect', 'transfer-encoding', 'upgrade', 'te', 'trailer', 'keep-alive', 'proxy-connection', 'proxy-authorization', 'forwarded', 'x-forwarded-for', 'x-forwarded-host', 'x-hop-a', 'x-hop-b', 'close']) {
      expect(received.has(gone), gone).toBe(false);
    }
    expect(echo.body).toBe('hello');
  });

  it('proxies raw sender bytes through node:http, undici and res.writeHead in both directions', async () => {
    const upstream = await echoUpstream();
    const sidecar = createServer((req, res) => {
      const headers = requestHeadersForUpstream(req.headers, { extra: { authorization: 'Bearer token-123', 'x-request-id': 'rid-1' } });
      request(`${upstream}${req.url ?? '/'}`, { method: 'POST', headers, body: req })
        .then(async (up) => {
          res.writeHead(up.statusCode, responseHeadersForSender(up.headers));
          await pipeline(up.body, res);
        })
        .catch((err: unknown) => {
          if (res.headersSent) res.destroy();
          else res.writeHead(502, { 'content-type': 'text/plain' }).end(String(err));
        });
    });
    const url = new URL(await listen(sidecar));

    const requestBytes = Buffer.from(
      [
        'POST /cxf/orders?x=1 HTTP/1.1',
        'Host: sidecar.local',
        'Connection: Keep-Alive, Upgrade, X-Hop-A ,junk token, close',
        'Keep-Alive: timeout=5',
        'Upgrade: h2c',
        'TE: trailers',
        'Expect: 100-continue',
        'Authorization: Basic c2VuZGVyOnNlY3JldA==',
        'Proxy-Authorization: Basic cHJveHk6c2VjcmV0',
        'X-Forwarded-For: 203.0.113.9',
        'Forwarded: for=203.0.113.9',
        'X-Hop-A: 1',
        'X-Request-Id: from-sender',
        'Cookie: a=1',
        'Cookie: b="x,y"',
        'X-Latin1: caf\u00e9 \u00ff',
        'Transfer-Encoding: chunked',
        '',
        '5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n',
      ].join('\r\n'),
      'latin1',
    );
    const response = await new Promise<string>((resolve, reject) => {
      const socket = connect(Number(url.port), url.hostname);
      const chunks: Buffer[] = [];
      socket.on('data', (c: Buffer) => chunks.push(c));
      socket.on('error', reject);
      socket.on('close', () => resolve(Buffer.concat(chunks).toString('latin1')));
      // No half-close: node's server would end the socket before the response.
      // `Connection: close` makes the server close it after the response.
      socket.write(requestBytes);
    });

    // node answered Expect itself; the final response follows the 100.
    const final = response.slice(response.lastIndexOf('HTTP/1.1 '));
    const split = final.indexOf('\r\n\r\n');
    const head = final.slice(0, split).split('\r\n');
    expect(head[0]).toBe('HTTP/1.1 200 OK');
    const lines = head.slice(1).map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 2)] as const);
    expect(lines.filter(([n]) => n === 'set-cookie').map(([, v]) => v)).toEqual(NASTY_COOKIES);
    expect(lines.some(([n]) => n === 'x-hop' || n === 'keep-alive')).toBe(false);

    // The response was read as latin1 (header bytes); the JSON body is UTF-8.
    const echo = JSON.parse(Buffer.from(final.slice(split + 4), 'latin1').toString('utf8')) as Echo;
    const received = new Map(echo.raw.map(([n, v]) => [n.toLowerCase(), v]));
    expect(echo.body).toBe('hello world');
    expect(received.get('authorization')).toBe('Bearer token-123');
    expect(received.get('x-request-id')).toBe('rid-1');
    expect(received.get('cookie')).toBe('a=1; b="x,y"');
    expect(received.get('x-latin1')).toBe('caf\u00e9 \u00ff');
    for (const gone of ['expect', 'upgrade', 'te', 'keep-alive', 'proxy-authorization', 'forwarded', 'x-forwarded-for', 'x-hop-a']) {
      expect(received.has(gone), gone).toBe(false);
    }
    // undici framed the body itself (chunked, or content-length when the stream had already ended).
    expect(received.get('transfer-encoding') === 'chunked' || received.get('content-length') === '11').toBe(true);
  });
});
