/** Smoke test of the integration test helpers: test PKI, real oidc-provider token server (basic/post/mTLS), SAP-like HTTPS upstream. */
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { Readable } from 'node:stream';
import { setImmediate } from 'node:timers/promises';
import { Agent, request, type Dispatcher } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256Hex } from '../helpers/net.js';
import { DEFAULT_RESOURCE, startOAuthServer, type OAuthServer } from '../helpers/oauth-server.js';
import { CLIENT_SUBJECT, createPki, normalizeDn, type Pki } from '../helpers/pki.js';
import { UNAUTHORISED_BODY, downloadSha256, startUpstream, type Upstream } from '../helpers/upstream.js';

// SAP-shaped client ids (`!` and `|`) and secrets full of characters that
// change meaning under application/x-www-form-urlencoded decoding.
const BASIC_ID = 'sb-1234!b1|it-rt-acme!b196';
/** Decodes cleanly when sent raw (`+` → space, `%41` → `A`), but to the wrong secret: 401. */
const BASIC_SECRET = 'Xy!|$=%41+:z=';
const MALFORMED_ID = 'sb-5678!b1|it-rt-acme!b196';
/** Sent raw, `%+:` is not a valid escape: oidc-provider answers 400 invalid_request. */
const MALFORMED_SECRET = 'a$b=c%+:d!e|f';
const POST_ID = 'sb-post!b2|it-rt-acme!b196';
const POST_SECRET = 'p!|$=%+:w';
const CERT_ID = 'sb-cert!b3|it-rt-acme!b196';

const FORM = { 'content-type': 'application/x-www-form-urlencoded' };
const formEncode = (value: string): string => new URLSearchParams({ v: value }).toString().slice(2);
const basic = (user: string, password: string): string => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;

interface TokenResponse {
  access_token?: string;
  token_type?: string;
  expires_in?: number;
  scope?: string;
  error?: string;
  error_description?: string;
}

let pki: Pki;
let as: OAuthServer;
let upstream: Upstream;
let tls: Agent;
let mtls: Agent;
const agents: Agent[] = [];

function agent(connect: { cert?: string; key?: string } = {}): Agent {
  const created = new Agent({ connect: { ca: pki.ca, ...connect } });
  agents.push(created);
  return created;
}

async function tokenRequest(
  dispatcher: Dispatcher,
  body: Record<string, string>,
  headers: Record<string, string> = {},
): Promise<{ status: number; json: TokenResponse }> {
  const res = await request(as.tokenUrl, {
    method: 'POST',
    dispatcher,
    headers: { ...FORM, ...headers },
    body: new URLSearchParams(body).toString(),
  });
  return { status: res.statusCode, json: (await res.body.json()) as TokenResponse };
}

async function basicToken(user: string, password: string, extra: Record<string, string> = {}) {
  return tokenRequest(tls, { grant_type: 'client_credentials', ...extra }, { authorization: basic(user, password) });
}

beforeAll(async () => {
  pki = await createPki();
  as = await startOAuthServer(pki, {
    clients: [
      { clientId: BASIC_ID, secret: BASIC_SECRET, authMethod: 'client_secret_basic' },
      { clientId: MALFORMED_ID, secret: MALFORMED_SECRET, authMethod: 'client_secret_basic' },
      { clientId: POST_ID, secret: POST_SECRET, authMethod: 'client_secret_post' },
      { clientId: CERT_ID, authMethod: 'tls_client_auth', subjectDn: CLIENT_SUBJECT },
    ],
  });
  upstream = await startUpstream(pki, { verify: (token) => as.verify(token, { audience: DEFAULT_RESOURCE }) });
  tls = agent();
  mtls = agent({ cert: pki.client.chain, key: pki.client.keyPkcs1 });
});

afterAll(async () => {
  await Promise.all(agents.map((a) => a.close()));
  await as?.close();
  await upstream?.close();
});

describe('pki', () => {
  it('issues a client chain from the intermediate with a PKCS#1 key', () => {
    const [leafPem, intermediatePem] = pki.client.chain.split(/(?<=-----END CERTIFICATE-----)\n/).filter((p) => p.trim());
    const leaf = new X509Certificate(leafPem ?? '');
    const intermediate = new X509Certificate(intermediatePem ?? '');
    expect(leaf.checkIssued(intermediate)).toBe(true);
    expect(intermediate.checkIssued(new X509Certificate(pki.ca))).toBe(true);
    expect(leaf.toString()).toBe(new X509Certificate(pki.client.leaf).toString());
    expect(normalizeDn(leaf.subject)).toBe(normalizeDn(pki.client.subject));
    expect(leaf.keyUsage).toEqual(['1.3.6.1.5.5.7.3.2']);
    expect(leaf.publicKey.asymmetricKeyType).toBe('rsa');
    expect(pki.client.keyPkcs1).toMatch(/^-----BEGIN RSA PRIVATE KEY-----\n/);
    expect(pki.client.keyPkcs8).toMatch(/^-----BEGIN PRIVATE KEY-----\n/);
    expect(leaf.checkPrivateKey(createPrivateKey(pki.client.keyPkcs1))).toBe(true);
  });

  it('issues a server cert for localhost, 127.0.0.1 and ::1 and memoizes', async () => {
    const server = new X509Certificate(pki.server.cert);
    expect(server.subjectAltName).toBe('DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1');
    expect(server.keyUsage).toEqual(['1.3.6.1.5.5.7.3.1']);
    expect(await createPki()).toBe(pki);
  });

  it('issues extra client certs with chosen validity', async () => {
    const notAfter = new Date(Date.now() + 10 * 60_000);
    const soon = await pki.issueClientCert({ cn: 'expiring', notAfter });
    const leaf = new X509Certificate(soon.leaf);
    expect(leaf.subject).toBe('CN=expiring\nO=Test\nC=DE');
    expect(Math.abs(new Date(leaf.validTo).getTime() - notAfter.getTime())).toBeLessThan(1000);
    expect(leaf.checkIssued(new X509Certificate(pki.intermediate))).toBe(true);
  });
});

describe('oauth server: client_secret_basic', () => {
  it('accepts id and secret form-urlencoded before base64 (RFC 6749 §2.3.1)', async () => {
    for (const encode of [formEncode, encodeURIComponent]) {
      const { status, json } = await basicToken(encode(BASIC_ID), encode(BASIC_SECRET));
      expect(status, JSON.stringify(json)).toBe(200);
      expect(json).toMatchObject({ token_type: 'Bearer', expires_in: 300 });
    }
    expect(as.lastRequest).toMatchObject({
      authMethod: 'client_secret_basic',
      basicUser: encodeURIComponent(BASIC_ID),
      params: { grant_type: 'client_credentials' },
      status: 200,
    });
  });

  it('rejects the same credentials sent raw: 401 invalid_client', async () => {
    const { status, json } = await basicToken(BASIC_ID, BASIC_SECRET);
    expect(status).toBe(401);
    expect(json.error).toBe('invalid_client');
    expect(as.lastRequest).toMatchObject({ status: 401, error: 'invalid_client' });
  });

  it('answers 400 invalid_request when the raw secret is not even decodable', async () => {
    expect((await basicToken(formEncode(MALFORMED_ID), formEncode(MALFORMED_SECRET))).status).toBe(200);
    const { status, json } = await basicToken(MALFORMED_ID, MALFORMED_SECRET);
    expect(status).toBe(400);
    expect(json).toMatchObject({ error: 'invalid_request', error_description: expect.stringContaining('not properly encoded') });
  });

  it('issues a JWT access token that verify() accepts, with the default resource as audience', async () => {
    const { json } = await basicToken(formEncode(BASIC_ID), formEncode(BASIC_SECRET));
    const claims = await as.verify(json.access_token ?? '', { audience: DEFAULT_RESOURCE });
    expect(claims).toMatchObject({ client_id: BASIC_ID, sub: BASIC_ID, iss: as.issuer, aud: DEFAULT_RESOURCE });
    expect((claims.exp ?? 0) - (claims.iat ?? 0)).toBe(300);
    await expect(as.verify(`${json.access_token ?? ''}x`)).rejects.toThrow();
    const jwks = (await (await request(as.jwksUrl, { dispatcher: tls })).body.json()) as { keys: Array<Record<string, unknown>> };
    expect(jwks.keys).toEqual([expect.objectContaining({ kty: 'EC', crv: 'P-256', kid: 'test-signing-key' })]);
    expect(jwks.keys[0]).not.toHaveProperty('d');
  });

  it('honours resource, scope and a changed TTL', async () => {
    as.setAccessTokenTTL(7);
    try {
      const { json } = await basicToken(formEncode(BASIC_ID), formEncode(BASIC_SECRET), {
        resource: 'https://other.test',
        scope: 'it-rt-acme!b196.ESBMessaging.send',
      });
      expect(json).toMatchObject({ expires_in: 7, scope: 'it-rt-acme!b196.ESBMessaging.send' });
      const claims = await as.verify(json.access_token ?? '', { audience: 'https://other.test' });
      expect(claims.scope).toBe('it-rt-acme!b196.ESBMessaging.send');
      expect((claims.exp ?? 0) - (claims.iat ?? 0)).toBe(7);
    } finally {
      as.setAccessTokenTTL(300);
    }
  });
});

describe('oauth server: client_secret_post', () => {
  it('accepts client_id and client_secret in the body and records no secret', async () => {
    const { status, json } = await tokenRequest(tls, {
      grant_type: 'client_credentials',
      client_id: POST_ID,
      client_secret: POST_SECRET,
    });
    expect(status, JSON.stringify(json)).toBe(200);
    expect(await as.verify(json.access_token ?? '')).toMatchObject({ client_id: POST_ID });
    expect(as.lastRequest?.authMethod).toBe('client_secret_post');
    expect(as.lastRequest?.params).toEqual({ grant_type: 'client_credentials', client_id: POST_ID });
  });

  it('rejects a wrong secret', async () => {
    const { status, json } = await tokenRequest(tls, {
      grant_type: 'client_credentials',
      client_id: POST_ID,
      client_secret: 'wrong',
    });
    expect(status).toBe(401);
    expect(json.error).toBe('invalid_client');
  });
});

describe('oauth server: tls_client_auth', () => {
  const body = { grant_type: 'client_credentials', client_id: CERT_ID };

  it('accepts the client chain with its PKCS#1 key over mTLS', async () => {
    const { status, json } = await tokenRequest(mtls, body);
    expect(status, JSON.stringify(json)).toBe(200);
    expect(await as.verify(json.access_token ?? '')).toMatchObject({ client_id: CERT_ID });
    expect(as.lastRequest).toMatchObject({
      authMethod: 'tls_client_auth',
      certSubject: 'CN=sidecar-client\nO=Test\nC=DE',
      certAuthorized: true,
    });
  });

  it('rejects a rogue certificate with the same subject', async () => {
    const { status, json } = await tokenRequest(agent({ cert: pki.rogue.chain, key: pki.rogue.key }), body);
    expect(status).toBe(401);
    expect(json.error).toBe('invalid_client');
    expect(as.lastRequest).toMatchObject({ certAuthorized: false, certSubject: 'CN=sidecar-client\nO=Test\nC=DE' });
  });

  it('rejects the leaf without its intermediate (only the root is trusted)', async () => {
    const { status } = await tokenRequest(agent({ cert: pki.client.leaf, key: pki.client.keyPkcs1 }), body);
    expect(status).toBe(401);
  });

  it('rejects a trusted certificate with another subject, and no certificate', async () => {
    const other = await pki.issueClientCert({ cn: 'someone-else' });
    expect((await tokenRequest(agent({ cert: other.chain, key: other.keyPkcs8 }), body)).status).toBe(401);
    const { status, json } = await tokenRequest(tls, body);
    expect(status).toBe(401);
    expect(json.error).toBe('invalid_client');
    expect(as.lastRequest).toMatchObject({ authMethod: 'none', certAuthorized: false });
  });
});

describe('upstream', () => {
  const get = (path: string, headers: Record<string, string> = {}) =>
    request(`${upstream.url}${path}`, { dispatcher: tls, headers });

  async function bearer(): Promise<string> {
    const { json } = await tokenRequest(mtls, { grant_type: 'client_credentials', client_id: CERT_ID });
    return `Bearer ${json.access_token ?? ''}`;
  }

  it('rejects requests without a valid Bearer token like SAP does', async () => {
    const attempts: Record<string, string>[] = [{}, { authorization: 'Bearer not-a-jwt' }, { authorization: basic('a', 'b') }];
    for (const headers of attempts) {
      const res = await get('/http/GetTimestamp', headers);
      expect(res.statusCode).toBe(401);
      expect(res.headers['www-authenticate']).toMatch(/^Bearer /);
      expect(await res.body.json()).toEqual(UNAUTHORISED_BODY);
    }
    expect(upstream.requests.at(-1)).toMatchObject({ authorized: false, method: 'GET' });
  });

  it('accepts the issued access token: GET /http/GetTimestamp', async () => {
    const res = await get('/http/GetTimestamp', { authorization: await bearer() });
    expect(res.statusCode).toBe(200);
    expect(await res.body.text()).toMatch(/^Current time \(UTC\): \d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/);
    expect(upstream.requests.at(-1)).toMatchObject({ authorized: true, claims: { client_id: CERT_ID } });
  });

  it('echoes a streamed body with its length and SHA-256, and records it', async () => {
    const payload = Buffer.alloc(3 * 1024 * 1024, 'sidecar!');
    const res = await request(`${upstream.url}/http/echo?x=1`, {
      method: 'POST',
      dispatcher: tls,
      headers: { authorization: await bearer(), 'content-type': 'application/octet-stream', 'x-test': 'yes' },
      body: payload,
    });
    const echo = (await res.body.json()) as Record<string, unknown>;
    expect(echo).toMatchObject({
      method: 'POST',
      url: '/http/echo?x=1',
      bodyLength: payload.length,
      bodySha256: sha256Hex(payload),
      headers: expect.objectContaining({ 'x-test': 'yes' }),
    });
    expect(upstream.requests.at(-1)).toMatchObject({ bodyLength: payload.length, bodySha256: sha256Hex(payload) });
  });

  it('streams /http/download?bytes=N deterministically', async () => {
    const bytes = 5 * 1024 * 1024 + 3;
    const res = await get(`/http/download?bytes=${bytes}`, { authorization: await bearer() });
    expect(res.headers['content-length']).toBe(String(bytes));
    const chunks: Buffer[] = [];
    for await (const chunk of res.body) chunks.push(chunk as Buffer);
    const received = Buffer.concat(chunks);
    expect(received.length).toBe(bytes);
    expect(sha256Hex(received)).toBe(downloadSha256(bytes));
  });

  it('lets a test override the routes', async () => {
    upstream.setHandler((req, res) => {
      if (req.url !== '/http/custom') return false;
      res.writeHead(418, { 'content-type': 'text/plain' }).end('teapot');
      return true;
    });
    try {
      const auth = await bearer();
      const custom = await get('/http/custom', { authorization: auth });
      expect(custom.statusCode).toBe(418);
      expect(await custom.body.text()).toBe('teapot');
      const fallthrough = await get('/http/GetTimestamp', { authorization: auth });
      expect(fallthrough.statusCode).toBe(200);
      await fallthrough.body.dump();
    } finally {
      upstream.setHandler(undefined);
    }
  });
});

describe('upstream: request records', () => {
  it('lets a handler stream the body, and records a request the client aborts', async () => {
    let arrived: () => void = () => undefined;
    const arrival = new Promise<void>((resolve) => (arrived = resolve));
    upstream.setHandler(async (req, res, body) => {
      if (req.url === '/http/count') {
        let length = 0;
        for await (const chunk of body) length += (chunk as Buffer).length;
        res.end(String(length));
        return true;
      }
      body.resume(); // read the body (a paused socket would not notice the client leaving)…
      arrived(); // …and never answer
      return true;
    });
    try {
      const { json } = await tokenRequest(mtls, { grant_type: 'client_credentials', client_id: CERT_ID });
      const authorization = `Bearer ${json.access_token ?? ''}`;
      const counted = await request(`${upstream.url}/http/count`, {
        method: 'POST',
        dispatcher: tls,
        headers: { authorization },
        body: Buffer.alloc(200_000, 1),
      });
      expect(await counted.body.text()).toBe('200000');
      expect(upstream.requests.at(-1)).toMatchObject({ bodyLength: 200_000, aborted: false });

      // The client goes away mid-body.
      const client = new Agent({ connect: { ca: pki.ca } });
      const stop = new AbortController();
      const pending = request(`${upstream.url}/http/hang`, {
        method: 'POST',
        dispatcher: client,
        headers: { authorization },
        body: Readable.from(endless(stop.signal)),
      }).catch((err: unknown) => err);
      await arrival;
      await client.destroy();
      stop.abort();
      expect(await pending).toBeInstanceOf(Error);
      await upstream.settled();
      const hung = upstream.requests.at(-1);
      expect(hung).toMatchObject({ url: '/http/hang', aborted: true, bodySha256: undefined });
    } finally {
      upstream.setHandler(undefined);
    }
  });
});

/** A request body that never ends, one chunk per macrotask, until `signal` aborts. */
async function* endless(signal: AbortSignal): AsyncGenerator<Buffer> {
  const chunk = Buffer.alloc(16 * 1024, 2);
  while (!signal.aborted) {
    await setImmediate();
    yield chunk;
  }
}

describe('oauth server: outages', () => {
  it('counts token requests, serves an injected failure, stops and starts on the same port', async () => {
    const body = { grant_type: 'client_credentials', client_id: CERT_ID };
    const before = as.tokenRequests;

    as.setInterceptor((_req, res) => {
      res.writeHead(503, { 'content-type': 'application/json', 'retry-after': '1' }).end('{"error":"temporarily_unavailable"}');
      return true;
    });
    expect((await tokenRequest(mtls, body)).status).toBe(503);
    as.setInterceptor(undefined);
    expect(as.lastRequest?.status).toBe(503);

    await as.stop();
    await expect(tokenRequest(mtls, body)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    await as.start();
    expect(new URL(as.tokenUrl).port).toBe(String(as.port));

    const { status, json } = await tokenRequest(mtls, body);
    expect(status).toBe(200);
    await as.verify(json.access_token ?? '');
    // undici may resume the TLS session after the restart; the client certificate is seen either way.
    expect(as.lastRequest).toMatchObject({ authMethod: 'tls_client_auth', certAuthorized: true });
    expect(as.tokenRequests).toBe(before + 2);
    expect(as.serverErrors).toEqual([]);
  });
});
