/** The built-in demo tenant: its token server really checks credentials, its runtime really checks tokens and CSRF, and close() leaves nothing behind. */
import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { Readable } from 'node:stream';
import { connect as tlsConnect } from 'node:tls';
import { Agent, request, type Dispatcher } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDemoPki } from '../../src/demo-pki.js';
import {
  DEMO_CLIENT_ID,
  DEMO_SCOPE,
  MAX_BUFFERED_BODY_BYTES,
  startDemoTenant,
  UAA_RESOURCE_SCOPE,
  type DemoTenant,
  type EchoResponse,
} from '../../src/demo-tenant.js';
import { parseServiceKey } from '../../src/service-key.js';

const FORM = { 'content-type': 'application/x-www-form-urlencoded' };
const GRANT = 'grant_type=client_credentials';
const UNAUTHORISED = {
  error: 'unauthorised',
  error_description: 'An Authentication object was not found in the SecurityContext',
};
const TIMESTAMP = /^Current time \(UTC\): (\d{4}-\d{2}-\d{2}) (\d{2}:\d{2}:\d{2})$/;

interface SecretKey {
  oauth: { clientid: string; clientsecret: string; tokenurl: string; url: string; createdate: string };
}
interface CertificateKey {
  oauth: {
    clientid: string;
    certificate: string;
    key: string;
    tokenurl: string;
    url: string;
    certificatedetails: { issuerdn: string; subjectdn: string; serialnumber: string; validuntil: string };
  };
}

let tenant: DemoTenant;
/** Issues already-expired tokens, with its own signing key. */
let expiring: DemoTenant;
let secretKey: SecretKey;
let certificateKey: CertificateKey;
let ca: string;
let agent: Agent;
let mtlsAgent: Agent;
let rogueAgent: Agent;
const agents: Agent[] = [];
const tenants: DemoTenant[] = [];

beforeAll(async () => {
  [tenant, expiring] = await Promise.all([startDemoTenant(), startDemoTenant({ tokenLifetimeS: 0 })]);
  tenants.push(tenant, expiring);
  ca = await readFile(tenant.caPath, 'utf8');
  secretKey = JSON.parse(await readFile(tenant.serviceKeyPath, 'utf8')) as SecretKey;
  certificateKey = JSON.parse(await readFile(tenant.certificateKeyPath, 'utf8')) as CertificateKey;
  // Same subject names, but another CA: the demo token server must refuse its client certificate.
  const rogue = await createDemoPki();
  agent = newAgent({ ca: [ca, await readFile(expiring.caPath, 'utf8')] });
  mtlsAgent = newAgent({ ca, cert: certificateKey.oauth.certificate, key: certificateKey.oauth.key });
  rogueAgent = newAgent({ ca, cert: rogue.client.chain, key: rogue.client.key });
});

afterAll(async () => {
  await Promise.all(agents.map((a) => a.close()));
  await Promise.all(tenants.map((t) => t.close()));
});

function newAgent(connectOptions: { ca: string | string[]; cert?: string; key?: string }): Agent {
  const created = new Agent({ connect: connectOptions });
  agents.push(created);
  return created;
}

/** application/x-www-form-urlencoded, as RFC 6749 §2.3.1 asks for before base64. */
function formEncode(value: string): string {
  return new URLSearchParams({ v: value }).toString().slice(2);
}

function basic(id: string, secret: string): string {
  return `Basic ${Buffer.from(`${formEncode(id)}:${formEncode(secret)}`).toString('base64')}`;
}

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
}

async function call(
  url: string,
  options: { method?: Dispatcher.HttpMethod; headers?: Record<string, string>; body?: string | Buffer | Readable; dispatcher?: Agent } = {},
): Promise<Reply> {
  const response = await request(url, {
    method: options.method ?? 'GET',
    headers: options.headers,
    body: options.body,
    dispatcher: options.dispatcher ?? agent,
  });
  return { status: response.statusCode, headers: response.headers, text: await response.body.text() };
}

function tokenRequest(body: string, headers: Record<string, string> = {}, dispatcher: Agent = agent, on: DemoTenant = tenant): Promise<Reply> {
  return call(on.tokenUrl, { method: 'POST', headers: { ...FORM, ...headers }, body, dispatcher });
}

function postForm(extra: Record<string, string> = {}): string {
  return new URLSearchParams({ grant_type: 'client_credentials', ...extra }).toString();
}

async function accessToken(on: DemoTenant = tenant, scope?: string): Promise<string> {
  const reply = await tokenRequest(postForm(scope ? { scope } : {}), { authorization: basic(on.clientId, secretKey.oauth.clientsecret) }, agent, on);
  expect(reply.status).toBe(200);
  return (JSON.parse(reply.text) as { access_token: string }).access_token;
}

function claimsOf(jwt: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(jwt.split('.')[1]!, 'base64url').toString('utf8')) as Record<string, unknown>;
}

function bearer(token: string, headers: Record<string, string> = {}): Record<string, string> {
  return { authorization: `Bearer ${token}`, ...headers };
}

function setCookies(reply: Reply): string[] {
  const value = reply.headers['set-cookie'];
  return value === undefined ? [] : Array.isArray(value) ? value : [value];
}

/** GET with `X-CSRF-Token: Fetch`; returns the token and the `cookie` header to send back. */
async function fetchCsrf(token: string, path = '/http/echo', cookie?: string): Promise<{ csrf: string; cookie: string; reply: Reply }> {
  const reply = await call(`${tenant.url}${path}`, { headers: bearer(token, { 'x-csrf-token': 'Fetch', ...(cookie ? { cookie } : {}) }) });
  expect(reply.status).toBe(200);
  const csrf = reply.headers['x-csrf-token'];
  expect(typeof csrf).toBe('string');
  return { csrf: csrf as string, cookie: setCookies(reply).map((c) => c.split(';', 1)[0]).join('; '), reply };
}

describe('service keys on disk', () => {
  it('writes private files in a private temp directory', async () => {
    expect((await stat(tenant.dir)).mode & 0o777).toBe(0o700);
    for (const path of [tenant.serviceKeyPath, tenant.certificateKeyPath, tenant.caPath]) {
      expect(path.startsWith(tenant.dir)).toBe(true);
      expect((await stat(path)).mode & 0o777).toBe(0o600);
    }
    expect(ca).toMatch(/^-----BEGIN CERTIFICATE-----\n[\s\S]+-----END CERTIFICATE-----\n$/);
  });

  it('writes a ClientId/Secret key with SAP-like values that the sidecar accepts', () => {
    const { oauth } = secretKey;
    expect(oauth).toEqual({ clientid: DEMO_CLIENT_ID, clientsecret: expect.any(String), tokenurl: tenant.tokenUrl, url: tenant.url, createdate: expect.any(String) });
    expect(oauth.clientid).toMatch(/^sb-[^!]+![a-z]\d+\|it-rt-[^!]+![a-z]\d+$/);
    expect(oauth.clientsecret).toMatch(/\$.*=$/);
    expect(tenant.clientId).toBe(DEMO_CLIENT_ID);
    expect(tenant.tokenUrl).toMatch(/^https:\/\/127\.0\.0\.1:\d+\/oauth\/token$/);
    expect(tenant.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    const { credentials } = parseServiceKey(secretKey, tenant.serviceKeyPath);
    expect(credentials).toMatchObject({ kind: 'client-secret', clientId: DEMO_CLIENT_ID, tokenUrl: tenant.tokenUrl, url: tenant.url });
  });

  it('writes a Certificate key (chain to the demo CA, key, details) that the sidecar accepts without warnings', () => {
    const { oauth } = certificateKey;
    expect(oauth.certificate.match(/-----BEGIN CERTIFICATE-----/g)).toHaveLength(2);
    expect(oauth.certificate.endsWith(ca)).toBe(true);
    expect(oauth.key).toMatch(/^-----BEGIN (RSA |EC )?PRIVATE KEY-----/);
    expect(oauth.certificatedetails).toMatchObject({ issuerdn: expect.stringContaining('CN='), subjectdn: expect.stringContaining('CN=') });
    expect(new Date(oauth.certificatedetails.validuntil).getTime()).toBeGreaterThan(Date.now() + 300 * 86_400_000);
    const { credentials, notices } = parseServiceKey(certificateKey, tenant.certificateKeyPath);
    expect(credentials).toMatchObject({ kind: 'certificate', clientId: DEMO_CLIENT_ID, tokenUrl: tenant.tokenUrl });
    expect(notices).toEqual([]);
  });

  it('rejects an invalid token lifetime', async () => {
    await expect(startDemoTenant({ tokenLifetimeS: -1 })).rejects.toThrow(RangeError);
    await expect(startDemoTenant({ tokenLifetimeS: 1.5 })).rejects.toThrow(RangeError);
  });
});

describe('token server', () => {
  it('accepts client_secret_basic with form-encoded id and secret, answering like XSUAA', async () => {
    const before = tenant.tokenRequests;
    const header = basic(DEMO_CLIENT_ID, secretKey.oauth.clientsecret);
    // The encoding matters here: the raw values contain characters that encode differently.
    expect(Buffer.from(header.slice(6), 'base64').toString()).toMatch(/%7C.*%24.*%3D$/);
    const reply = await tokenRequest(GRANT, { authorization: header });
    expect(reply.status).toBe(200);
    expect(reply.headers['cache-control']).toBe('no-store');
    const body = JSON.parse(reply.text) as Record<string, unknown>;
    expect(body).toEqual({
      access_token: expect.stringMatching(/^[\w-]+\.[\w-]+\.[\w-]+$/),
      token_type: 'bearer',
      expires_in: 3600,
      scope: `${DEMO_SCOPE} ${UAA_RESOURCE_SCOPE}`,
      jti: expect.any(String),
    });
    const jwt = body['access_token'] as string;
    expect(JSON.parse(Buffer.from(jwt.split('.')[0]!, 'base64url').toString())).toMatchObject({ alg: 'ES256', typ: 'JWT' });
    const claims = claimsOf(jwt);
    expect(claims).toMatchObject({ iss: tenant.tokenUrl, sub: DEMO_CLIENT_ID, client_id: DEMO_CLIENT_ID, jti: body['jti'] });
    expect(claims['scope']).toEqual([DEMO_SCOPE, UAA_RESOURCE_SCOPE]);
    expect((claims['exp'] as number) - (claims['iat'] as number)).toBe(3600);
    expect(Math.abs((claims['iat'] as number) - Date.now() / 1000)).toBeLessThan(5);
    expect(tenant.tokenRequests).toBe(before + 1);
  });

  it('accepts client_secret_post', async () => {
    const reply = await tokenRequest(postForm({ client_id: DEMO_CLIENT_ID, client_secret: secretKey.oauth.clientsecret }));
    expect(reply.status).toBe(200);
    expect(claimsOf((JSON.parse(reply.text) as { access_token: string }).access_token)['client_id']).toBe(DEMO_CLIENT_ID);
  });

  it('accepts mTLS with the demo client certificate and client_id, no secret', async () => {
    const reply = await tokenRequest(postForm({ client_id: certificateKey.oauth.clientid }), {}, mtlsAgent);
    expect(reply.status).toBe(200);
    expect(JSON.parse(reply.text)).toMatchObject({ token_type: 'bearer', scope: expect.stringContaining(DEMO_SCOPE) });
  });

  it.each([
    ['a wrong secret (basic)', () => tokenRequest(GRANT, { authorization: basic(DEMO_CLIENT_ID, 'wrong$secret=') })],
    ['a wrong client id (basic)', () => tokenRequest(GRANT, { authorization: basic('sb-other!b1|it-rt-demo!b1', secretKey.oauth.clientsecret) })],
    ['a wrong secret (post)', () => tokenRequest(postForm({ client_id: DEMO_CLIENT_ID, client_secret: 'wrong$secret=' }))],
    ['no credentials at all', () => tokenRequest(GRANT)],
    ['client_id without a client certificate', () => tokenRequest(postForm({ client_id: DEMO_CLIENT_ID }))],
    ['the demo certificate without client_id', () => tokenRequest(GRANT, {}, mtlsAgent)],
    ['the demo certificate with another client_id', () => tokenRequest(postForm({ client_id: 'sb-other!b1|it-rt-demo!b1' }), {}, mtlsAgent)],
    ['a certificate from another CA with the same subject', () => tokenRequest(postForm({ client_id: DEMO_CLIENT_ID }), {}, rogueAgent)],
  ])('rejects %s with 401 Bad credentials', async (_name, send) => {
    const reply = await send();
    expect(reply.status).toBe(401);
    expect(JSON.parse(reply.text)).toEqual({ error: 'unauthorized', error_description: 'Bad credentials' });
  });

  it('requires grant_type in a form body (400 Missing grant type)', async () => {
    const authorization = basic(DEMO_CLIENT_ID, secretKey.oauth.clientsecret);
    for (const reply of [
      await tokenRequest('', { authorization }),
      await call(tenant.tokenUrl, { method: 'POST', headers: { authorization, 'content-type': 'application/json' }, body: '{"grant_type":"client_credentials"}' }),
    ]) {
      expect(reply.status).toBe(400);
      expect(JSON.parse(reply.text)).toEqual({ error: 'invalid_request', error_description: 'Missing grant type' });
    }
  });

  it('refuses other grant types, unknown scopes and other methods', async () => {
    const authorization = basic(DEMO_CLIENT_ID, secretKey.oauth.clientsecret);
    const password = await tokenRequest('grant_type=password&username=a&password=b', { authorization });
    expect(password.status).toBe(400);
    expect(JSON.parse(password.text)).toMatchObject({ error: 'unsupported_grant_type' });
    const scope = await tokenRequest(postForm({ scope: 'it-rt-other!b2.ESBMessaging.send' }), { authorization });
    expect(scope.status).toBe(400);
    expect(JSON.parse(scope.text)).toMatchObject({ error: 'invalid_scope' });
    const get = await call(tenant.tokenUrl, { headers: { authorization } });
    expect(get.status).toBe(405);
    expect(get.headers['allow']).toBe('POST');
  });
});

describe('runtime', () => {
  let token: string;

  beforeAll(async () => {
    token = await accessToken();
  });

  it('answers GetTimestamp like the SAP tutorial flow', async () => {
    const reply = await call(`${tenant.url}/http/GetTimestamp`, { headers: bearer(token) });
    expect(reply.status).toBe(200);
    expect(reply.headers['content-type']).toMatch(/^text\/plain/);
    const match = TIMESTAMP.exec(reply.text);
    expect(match).not.toBeNull();
    const when = Date.parse(`${match![1]}T${match![2]}Z`);
    expect(Math.abs(when - Date.now())).toBeLessThan(5_000);
    expect(reply.headers['sap_messageprocessinglogid']).toMatch(/^[\w-]{28}$/);
  });

  it.each([
    ['no Authorization header', {}],
    ['Basic credentials', { authorization: 'Basic c2I6eA==' }],
    ['an opaque Bearer token', { authorization: 'Bearer not-a-jwt' }],
  ])('answers 401 to %s', async (_name, headers: Record<string, string>) => {
    const reply = await call(`${tenant.url}/http/GetTimestamp`, { headers });
    expect(reply.status).toBe(401);
    expect(JSON.parse(reply.text)).toEqual(UNAUTHORISED);
  });

  it('answers 401 to a tampered token (claims changed, signature kept)', async () => {
    const [header, payload, signature] = token.split('.') as [string, string, string];
    const claims = JSON.parse(Buffer.from(payload, 'base64url').toString()) as Record<string, unknown>;
    const forged = Buffer.from(JSON.stringify({ ...claims, exp: (claims['exp'] as number) + 86_400 })).toString('base64url');
    expect(forged).not.toBe(payload);
    const reply = await call(`${tenant.url}/http/GetTimestamp`, { headers: bearer(`${header}.${forged}.${signature}`) });
    expect(reply.status).toBe(401);
    expect(JSON.parse(reply.text)).toEqual(UNAUTHORISED);
  });

  it('answers 401 to an expired token and to a token of another tenant', async () => {
    const expired = await accessToken(expiring);
    expect(claimsOf(expired)['exp']).toBe(claimsOf(expired)['iat']);
    const own = await call(`${expiring.url}/http/GetTimestamp`, { headers: bearer(expired) });
    expect(own.status).toBe(401);
    const foreign = await call(`${tenant.url}/http/GetTimestamp`, { headers: bearer(expired) });
    expect(foreign.status).toBe(401);
    // The token of this tenant does work here, so the 401s above are about the token.
    expect((await call(`${tenant.url}/http/GetTimestamp`, { headers: bearer(token) })).status).toBe(200);
  });

  it('answers 403 (not a CSRF one) to a valid token without the ESBMessaging.send role', async () => {
    const roleless = await accessToken(tenant, UAA_RESOURCE_SCOPE);
    expect(claimsOf(roleless)['scope']).toEqual([UAA_RESOURCE_SCOPE]);
    const reply = await call(`${tenant.url}/http/GetTimestamp`, { headers: bearer(roleless) });
    expect(reply.status).toBe(403);
    expect(reply.headers['x-csrf-token']).toBeUndefined();
    expect(reply.text).toContain('403');
  });

  it('answers 404 Not Found to unknown paths', async () => {
    for (const path of ['/http/nope', '/http/getTimestamp', '/cxf/GetTimestamp', '/']) {
      const reply = await call(`${tenant.url}${path}`, { headers: bearer(token) });
      expect(reply.status, path).toBe(404);
      expect(reply.text).toBe('Not Found');
    }
  });

  describe('CSRF protection', () => {
    it('refuses a POST without a token: 403 with X-CSRF-Token: Required', async () => {
      for (const path of ['/http/echo', '/http/GetTimestamp']) {
        const reply = await call(`${tenant.url}${path}`, { method: 'POST', headers: bearer(token), body: 'x' });
        expect(reply.status, path).toBe(403);
        expect(reply.headers['x-csrf-token']).toBe('Required');
        expect(reply.headers['content-type']).toMatch(/^text\/html/);
        expect(reply.text).toMatch(/<html[\s\S]*403/);
      }
    });

    it('hands out a token and session cookies on Fetch without running the flow', async () => {
      const { csrf, reply } = await fetchCsrf(token, '/http/GetTimestamp');
      expect(csrf.length).toBeGreaterThanOrEqual(16);
      expect(csrf).not.toBe('Required');
      const names = setCookies(reply).map((c) => c.split('=', 1)[0]);
      expect(names).toEqual(['JSESSIONID', '__VCAP_ID__']);
      expect(reply.text).toBe('');
      expect(reply.headers['sap_messageprocessinglogid']).toBeUndefined();
    });

    it('answers Fetch on HEAD too, and keeps one token per session', async () => {
      const first = await fetchCsrf(token);
      const head = await call(`${tenant.url}/http/echo`, { method: 'HEAD', headers: bearer(token, { 'x-csrf-token': 'fetch', cookie: first.cookie }) });
      expect(head.status).toBe(200);
      expect(head.headers['x-csrf-token']).toBe(first.csrf);
      const fresh = await fetchCsrf(token);
      expect(fresh.csrf).not.toBe(first.csrf);
    });

    it('accepts a POST with the token and the session cookies, and no other combination', async () => {
      const { csrf, cookie } = await fetchCsrf(token);
      const other = await fetchCsrf(token);
      const attempts: Array<[string, Record<string, string>, number]> = [
        ['token without cookies', { 'x-csrf-token': csrf }, 403],
        ['cookies without token', { cookie }, 403],
        ['token of another session', { 'x-csrf-token': other.csrf, cookie }, 403],
        ['token and cookies', { 'x-csrf-token': csrf, cookie }, 200],
        ['token and cookies after a client cookie', { 'x-csrf-token': csrf, cookie: `JSESSIONID=client; theme=dark; ${cookie}` }, 200],
      ];
      for (const [name, headers, status] of attempts) {
        const reply = await call(`${tenant.url}/http/echo`, { method: 'POST', headers: bearer(token, headers), body: 'hello' });
        expect(reply.status, name).toBe(status);
        if (status === 403) expect(reply.headers['x-csrf-token'], name).toBe('Required');
      }
      const timestamp = await call(`${tenant.url}/http/GetTimestamp`, { method: 'POST', headers: bearer(token, { 'x-csrf-token': csrf, cookie }), body: 'ignored' });
      expect(timestamp.status).toBe(200);
      expect(timestamp.text).toMatch(TIMESTAMP);
    });
  });

  describe('echo flow', () => {
    let session: { csrf: string; cookie: string };

    beforeAll(async () => {
      session = await fetchCsrf(token);
    });

    function post(body: string | Buffer | Readable, path = '/http/echo', headers: Record<string, string> = {}): Promise<Reply> {
      return call(`${tenant.url}${path}`, {
        method: 'POST',
        headers: bearer(token, { 'x-csrf-token': session.csrf, cookie: session.cookie, ...headers }),
        body,
      });
    }

    it('returns method, path with query, headers with the Bearer token redacted, and the body', async () => {
      const body = 'grüße {"a":1}';
      const reply = await post(body, '/http/echo?x=1&y=%7C', { 'content-type': 'application/json', 'x-custom': 'yes' });
      expect(reply.status).toBe(200);
      expect(reply.headers['sap_messageprocessinglogid']).toMatch(/^[\w-]{28}$/);
      const echo = JSON.parse(reply.text) as EchoResponse;
      expect(echo).toMatchObject({
        method: 'POST',
        path: '/http/echo?x=1&y=%7C',
        bodyLength: Buffer.byteLength(body),
        bodySha256: createHash('sha256').update(body).digest('hex'),
        body,
      });
      expect(echo.headers).toMatchObject({ authorization: 'Bearer <redacted>', 'x-custom': 'yes', 'content-type': 'application/json', 'x-csrf-token': '<redacted>', cookie: '<redacted>' });
      expect(reply.text).not.toContain(session.csrf);
      expect(reply.text).not.toContain(token);
      expect(reply.text).not.toContain(token.split('.')[2]!);
    });

    it('echoes a GET without a CSRF token', async () => {
      const reply = await call(`${tenant.url}/http/echo`, { headers: bearer(token) });
      expect(reply.status).toBe(200);
      expect(JSON.parse(reply.text)).toMatchObject({ method: 'GET', bodyLength: 0, body: '', headers: { authorization: 'Bearer <redacted>' } });
    });

    it('streams a large body: hashes it all, returns no text', async () => {
      const chunk = Buffer.alloc(16 * 1024, 'a');
      const count = 20;
      const expected = createHash('sha256');
      for (let i = 0; i < count; i += 1) expected.update(chunk);
      const reply = await post(Readable.from((function* () {
        for (let i = 0; i < count; i += 1) yield chunk;
      })()));
      expect(reply.status).toBe(200);
      const echo = JSON.parse(reply.text) as EchoResponse;
      expect(echo.bodyLength).toBe(count * chunk.length);
      expect(echo.bodyLength).toBeGreaterThan(MAX_BUFFERED_BODY_BYTES);
      expect(echo.bodySha256).toBe(expected.digest('hex'));
      expect(echo.body).toBeNull();
      expect(echo.bodyOmitted).toMatch(/larger/);
    });

    it('returns no text for a body that is not UTF-8, and text just under 64 KiB', async () => {
      const binary = await post(Buffer.from([0xff, 0xfe, 0x00, 0x80]));
      expect(JSON.parse(binary.text)).toMatchObject({ bodyLength: 4, body: null, bodyOmitted: 'not valid UTF-8' });
      const largest = 'b'.repeat(MAX_BUFFERED_BODY_BYTES - 1);
      expect((JSON.parse((await post(largest)).text) as EchoResponse).body).toBe(largest);
      expect((JSON.parse((await post(`${largest}b`)).text) as EchoResponse).body).toBeNull();
    });
  });
});

describe('close()', () => {
  it('stops both servers despite open connections, frees the ports and removes the directory', async () => {
    const own = await startDemoTenant();
    tenants.push(own);
    const ownCa = await readFile(own.caPath, 'utf8');
    const ownAgent = newAgent({ ca: ownCa });
    const key = JSON.parse(await readFile(own.serviceKeyPath, 'utf8')) as SecretKey;
    const reply = await tokenRequest(GRANT, { authorization: basic(own.clientId, key.oauth.clientsecret) }, ownAgent, own);
    expect(reply.status).toBe(200);
    const ownToken = (JSON.parse(reply.text) as { access_token: string }).access_token;
    // An idle keep-alive connection in the agent…
    const timestamp = await call(`${own.url}/http/GetTimestamp`, { headers: bearer(ownToken), dispatcher: ownAgent });
    expect(timestamp.status).toBe(200);
    expect(own.tokenRequests).toBe(1);
    // …a TCP connection that never starts its TLS handshake…
    const silent = await openSocket(() => connect(Number(new URL(own.tokenUrl).port), '127.0.0.1'), 'connect');
    // …and an upload the echo flow is still reading (100 Continue: the server has the request).
    const upload = await openSocket(
      () => tlsConnect({ host: '127.0.0.1', port: Number(new URL(own.url).port), ca: ownCa, servername: 'localhost' }),
      'secureConnect',
    );
    const continued = new Promise<string>((resolve) => upload.once('data', (data: Buffer) => resolve(data.toString('latin1'))));
    upload.write(
      `POST /http/echo HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${ownToken}\r\n` +
        'Content-Length: 1000\r\nExpect: 100-continue\r\n\r\n',
    );
    expect(await continued).toMatch(/^HTTP\/1\.1 100 Continue/);

    try {
      // Open connections must not hold close() up: if they did, the test's own timeout would end it.
      await own.close();
      // The server ended both connections (else the test's own timeout ends the wait).
      await Promise.all([onceClosed(silent), onceClosed(upload)]);
    } finally {
      silent.destroy();
      upload.destroy();
    }
    await expect(stat(own.dir)).rejects.toMatchObject({ code: 'ENOENT' });
    for (const url of [own.tokenUrl, own.url]) {
      expect(await connectError(Number(new URL(url).port))).toBe('ECONNREFUSED');
    }
    await expect(own.close()).resolves.toBeUndefined();
  });
});

/** A connected socket; rejects if the connection fails. */
function openSocket<S extends Socket>(open: () => S, ready: 'connect' | 'secureConnect'): Promise<S> {
  return new Promise((resolve, reject) => {
    const socket = open();
    socket.once('error', reject);
    socket.once(ready, () => {
      socket.off('error', reject);
      // Resets after close() are expected; onceClosed() watches for them.
      socket.on('error', () => undefined);
      resolve(socket);
    });
  });
}

/** Resolves once the socket is closed (by the peer: this side reads on and never ends it). */
function onceClosed(socket: Socket): Promise<void> {
  return new Promise<void>((resolve) => {
    if (socket.closed) return resolve();
    socket.once('close', () => resolve());
    socket.resume();
  });
}

/** The error code of a TCP connect to 127.0.0.1:port, or 'connected'. */
function connectError(port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve('connected');
    });
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
  });
}
