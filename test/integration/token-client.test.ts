import { X509Certificate } from 'node:crypto';
import { createServer, type Socket } from 'node:net';
import { Agent } from 'undici';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { CertificateCredentials, SecretCredentials } from '../../src/credentials.js';
import { SidecarError } from '../../src/errors.js';
import {
  createTokenClient,
  MAX_RETRY_AFTER_S,
  MAX_TOKEN_LIFETIME_S,
  MAX_TOKEN_RESPONSE_BYTES,
  TokenClient,
  type TokenRequestSettings,
} from '../../src/token-client.js';
import { markProxyConnectFailure } from '../../src/network-error.js';
import { TokenProvider } from '../../src/token-provider.js';
import { createPki, type Pki } from '../helpers/pki.js';
import { closedPort, listen } from '../helpers/net.js';
import { TokenEndpoint } from '../helpers/token-endpoint.js';

const CLIENT_ID = 'sb-11111111-2222-3333-4444-555555555555!b123456|it-rt-acme-dev!b196';
const SECRET = '66666666-7777$FAKE!|$=%+:secret=';
const CERT_CLIENT_ID = 'sb-cert!b1|it-rt-acme!b196';
const SETTINGS: TokenRequestSettings = { auth: 'basic', params: {} };
const FAST_RETRY = { maxAttempts: 3, baseDelayMs: 10, maxDelayMs: 40, maxRetryAfterMs: 2_000 };

let pki: Pki;
let endpoint: TokenEndpoint;
const clients: TokenClient[] = [];

beforeAll(async () => {
  pki = await createPki();
  endpoint = await TokenEndpoint.start({
    tls: { cert: pki.server.chain, key: pki.server.key, ca: pki.ca },
    clients: [
      { clientId: CLIENT_ID, secret: SECRET },
      { clientId: CERT_CLIENT_ID, certCn: 'sidecar-client' },
    ],
  });
});

afterAll(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await endpoint.close();
});

beforeEach(() => {
  endpoint.requests.length = 0;
});

function secretCredentials(overrides: Partial<SecretCredentials> = {}): SecretCredentials {
  return { kind: 'client-secret', clientId: CLIENT_ID, clientSecret: SECRET, tokenUrl: endpoint.tokenUrl, url: undefined, source: '/keys/test.json', ...overrides };
}

function certCredentials(chain: string, key: string): CertificateCredentials {
  const leaf = new X509Certificate(chain);
  return {
    kind: 'certificate',
    clientId: CERT_CLIENT_ID,
    tokenUrl: endpoint.tokenUrl,
    url: undefined,
    source: '/keys/cert.json',
    certificate: chain,
    key,
    fingerprint: leaf.fingerprint256,
    notAfter: new Date(leaf.validTo),
  };
}

function client(
  credentials: SecretCredentials | CertificateCredentials,
  settings: Partial<TokenRequestSettings> = {},
  attemptTimeoutMs = 2_000,
  clocks: { now?: () => number; wallClock?: () => number } = {},
): TokenClient {
  const c = createTokenClient({ credentials, settings: { ...SETTINGS, ...settings }, network: { ca: [pki.ca] }, attemptTimeoutMs, retry: FAST_RETRY, ...clocks });
  clients.push(c);
  return c;
}

async function failure(promise: Promise<unknown>): Promise<SidecarError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(SidecarError);
  return err as SidecarError;
}

/** No secret (`secret`: the one the client used), key or token may appear in anything a user sees. */
function expectNoSecrets(text: string, secret = SECRET): void {
  expect(text).not.toContain(secret);
  expect(text).not.toContain('PRIVATE KEY');
  expect(text).not.toMatch(/tok-\d+-/);
}

describe('token client against a token endpoint that checks credentials', () => {
  it('client_secret_basic form-encodes id and secret before base64', async () => {
    const token = await client(secretCredentials()).fetchToken();
    expect(token.value).toMatch(/^tok-/);
    expect(token.expiresAt - token.issuedAt).toBe(3600_000);
    expect(token.lifetimeSource).toBe('expires_in');
    expect(token.scopes).toContain('it-rt-acme!b196.ESBMessaging.send');
    expect(endpoint.requests.at(-1)).toMatchObject({ auth: 'basic', form: { grant_type: 'client_credentials' } });
  });

  it('client_secret_post sends id and secret in the body', async () => {
    await client(secretCredentials(), { auth: 'post' }).fetchToken();
    expect(endpoint.requests.at(-1)).toMatchObject({ auth: 'post', form: { client_id: CLIENT_ID } });
  });

  it('sends scope, resource, audience and extra parameters', async () => {
    await client(secretCredentials(), { scope: 'a b', resource: 'https://r', audience: 'aud', params: { token_format: 'jwt' } }).fetchToken();
    expect(endpoint.requests.at(-1)?.form).toEqual({ grant_type: 'client_credentials', scope: 'a b', resource: 'https://r', audience: 'aud', token_format: 'jwt' });
  });

  it('mTLS presents the chain with a PKCS#1 key and sends client_id without a secret', async () => {
    const token = await client(certCredentials(pki.client.chain, pki.client.keyPkcs1)).fetchToken();
    expect(token.value).toMatch(/^tok-/);
    expect(endpoint.requests.at(-1)).toMatchObject({ auth: 'mtls', certAuthorized: true, form: { client_id: CERT_CLIENT_ID } });
  });

  it('a wrong secret is a final TOKEN_REJECTED that names the service key, without retries', async () => {
    const wrong = 'wrong-Secret$0=|%';
    const err = await failure(client(secretCredentials({ clientSecret: wrong })).fetchToken());
    expect(err.code).toBe('TOKEN_REJECTED');
    expect(err.message).toContain('401 invalid_client: Bad credentials');
    expect(err.message).toContain('check clientid/clientsecret of service key /keys/test.json');
    expect(endpoint.requests).toHaveLength(1);
    expectNoSecrets(err.message, wrong);
  });

  it('a rogue certificate is rejected', async () => {
    const err = await failure(client(certCredentials(pki.rogue.chain, pki.rogue.key)).fetchToken());
    expect(err.code).toBe('TOKEN_REJECTED');
    expect(endpoint.requests.at(-1)?.certAuthorized).toBe(false);
    expectNoSecrets(err.message);
  });

  it('retries 500 with backoff and succeeds', async () => {
    endpoint.fail({ kind: 'status', status: 500 }, { kind: 'status', status: 503 });
    const token = await client(secretCredentials()).fetchToken();
    expect(token.value).toMatch(/^tok-/);
    expect(endpoint.requests).toHaveLength(3);
  });

  it('gives up after the bounded attempts with TOKEN_SERVER_ERROR', async () => {
    endpoint.fail(...Array.from({ length: 3 }, () => ({ kind: 'status' as const, status: 500 })));
    const err = await failure(client(secretCredentials()).fetchToken());
    expect(err.code).toBe('TOKEN_SERVER_ERROR');
    expect(endpoint.requests).toHaveLength(3);
  });

  it('honours Retry-After on 429', async () => {
    endpoint.fail({ kind: 'status', status: 429, headers: { 'retry-after': '1' } });
    const started = Date.now();
    await client(secretCredentials()).fetchToken();
    expect(Date.now() - started).toBeGreaterThanOrEqual(950);
    expect(endpoint.requests).toHaveLength(2);
  });

  it('does not wait for a Retry-After beyond its limit and reports it', async () => {
    endpoint.fail({ kind: 'status', status: 429, headers: { 'retry-after': '120' } });
    const err = await failure(client(secretCredentials()).fetchToken());
    expect(err.code).toBe('TOKEN_RATE_LIMITED');
    expect(err.retryAfter).toBe(120);
    expect(endpoint.requests).toHaveLength(1);
  });

  it('believes a Retry-After of at most MAX_RETRY_AFTER_S: a stray one must not close the route for good', async () => {
    for (const retryAfter of ['999999999', '99999999999999999999999', 'Fri, 31 Dec 9999 23:59:59 GMT']) {
      endpoint.fail({ kind: 'status', status: 429, headers: { 'retry-after': retryAfter } });
      const err = await failure(client(secretCredentials()).fetchToken());
      expect({ retryAfter, code: err.code, seconds: err.retryAfter }).toEqual({ retryAfter, code: 'TOKEN_RATE_LIMITED', seconds: MAX_RETRY_AFTER_S });
    }
    expect(endpoint.requests).toHaveLength(3);
  });

  it('a token_type that is not bearer is TOKEN_RESPONSE_INVALID, and a credential echoed in it is not quoted', async () => {
    // What the client really sends in its Basic header (both parts form-encoded), as an echoing server returns it.
    const formEncoded = (value: string) => new URLSearchParams({ s: value }).toString().slice(2);
    const basic = Buffer.from(`${formEncoded(CLIENT_ID)}:${formEncoded(SECRET)}`).toString('base64');
    // The opaque access_token itself too, as a server might send it in both fields.
    for (const type of [SECRET, basic, 'tok-7-x', 'mac']) {
      endpoint.fail({ kind: 'body', body: JSON.stringify({ access_token: 'tok-7-x', token_type: type, expires_in: 3600 }) });
      const err = await failure(client(secretCredentials()).fetchToken());
      expect(err.code).toBe('TOKEN_RESPONSE_INVALID');
      expect(err.message).toContain('not bearer');
      expectNoSecrets(err.message);
      expect(err.message).not.toContain(basic.slice(0, 12));
      expect(err.message).not.toContain('tok-7-x');
      if (type === 'mac') expect(err.message).toContain('token_type is "mac"');
    }
    expect(endpoint.requests).toHaveLength(4);
  });

  it('a 400 about the request (invalid_scope, invalid_target…) names the parameter, not the client credentials', async () => {
    const cases = [
      ['invalid_scope', 'check the scope asked for'],
      ['invalid_target', 'check --resource and --audience'],
      ['unsupported_grant_type', 'allows client_credentials'],
      ['invalid_request', 'check --token-param'],
      ['unauthorized_client', 'add "client_credentials" to the grant-types'],
    ] as const;
    for (const [error, fix] of cases) {
      endpoint.fail({ kind: 'status', status: 400, body: JSON.stringify({ error, error_description: 'no' }) });
      const err = await failure(client(secretCredentials()).fetchToken());
      expect(err.code).toBe('TOKEN_REJECTED');
      expect(err.message).toContain(`refused the token request (400 ${error}: no) — `);
      expect(err.message).toContain(fix);
      // (unauthorized_client is also how some servers refuse a wrong secret: it names both.)
      if (error !== 'unauthorized_client') expect(err.message).not.toContain('clientsecret');
    }
    // The client itself: as before; so is a code that only looks like a known one to a plain object (`constructor`).
    for (const error of ['invalid_client', 'constructor']) {
      endpoint.fail({ kind: 'status', status: 400, body: JSON.stringify({ error }) });
      expect((await failure(client(secretCredentials()).fetchToken())).message).toContain(`rejected the client credentials (400 ${error})`);
    }
    // unauthorized_client with 401, as some servers send it: still the grant, not the secret.
    endpoint.fail({ kind: 'status', status: 401, body: JSON.stringify({ error: 'unauthorized_client' }) });
    const unauthorized = (await failure(client(secretCredentials()).fetchToken())).message;
    expect(unauthorized).toContain('refused the token request (401 unauthorized_client) — the client may not use the client_credentials grant');
    expect(unauthorized).toContain('answer a wrong clientid/clientsecret so too'); // Keycloak does
    expect(endpoint.requests).toHaveLength(cases.length + 3); // none retried
  });

  it('a body with a byte order mark before its JSON is read (RFC 8259 §8.1; .NET servers send one), an error\'s too', async () => {
    endpoint.fail({ kind: 'body', body: `\ufeff${JSON.stringify({ access_token: 'tok-8-bom', token_type: 'bearer', expires_in: 3600 })}` });
    expect((await client(secretCredentials()).fetchToken()).value).toBe('tok-8-bom');
    endpoint.fail({ kind: 'status', status: 401, body: `\ufeff${JSON.stringify({ error: 'invalid_client', error_description: 'Bad credentials' })}` });
    expect((await failure(client(secretCredentials()).fetchToken())).message).toContain('401 invalid_client: Bad credentials');
  });

  it('invalid JSON and a body without access_token are TOKEN_RESPONSE_INVALID, not retried', async () => {
    endpoint.fail({ kind: 'body', body: '<html>login</html>' });
    expect((await failure(client(secretCredentials()).fetchToken())).code).toBe('TOKEN_RESPONSE_INVALID');
    endpoint.fail({ kind: 'body', body: '{"token_type":"bearer"}' });
    const err = await failure(client(secretCredentials()).fetchToken());
    expect(err.message).toContain('no access_token');
    expect(endpoint.requests).toHaveLength(2);
  });

  it('refuses a huge response instead of buffering it', async () => {
    endpoint.fail({ kind: 'huge', bytes: MAX_TOKEN_RESPONSE_BYTES * 16 });
    const err = await failure(client(secretCredentials()).fetchToken());
    expect(err.code).toBe('TOKEN_RESPONSE_INVALID');
  });

  it('an access_token a header cannot carry is TOKEN_RESPONSE_INVALID, not retried, and never quoted', async () => {
    // A trailing newline, a control character, a space, non-ASCII, a tab: each would fail every proxied request.
    const values = ['tok-1-abc\n', 'tok-2-a\u0001b', 'tok-3-a b', 'tok-4-caf\u00e9', '\ttok-5-x'];
    for (const value of values) {
      endpoint.fail({ kind: 'body', body: JSON.stringify({ access_token: value, token_type: 'bearer', expires_in: 3600 }) });
      const err = await failure(client(secretCredentials()).fetchToken());
      expect(err.code).toBe('TOKEN_RESPONSE_INVALID');
      expect(err.message).toContain('characters an HTTP header cannot carry');
      expectNoSecrets(err.message);
    }
    expect(endpoint.requests).toHaveLength(values.length);
  });

  it('a 5xx or 429 with a body over the limit is classified by its status: retried, Retry-After kept', async () => {
    const page = `<html>${'x'.repeat(MAX_TOKEN_RESPONSE_BYTES + 1024)}</html>`;
    endpoint.fail({ kind: 'status', status: 503, body: page });
    const token = await client(secretCredentials()).fetchToken();
    expect(token.value).toMatch(/^tok-/);
    expect(endpoint.requests).toHaveLength(2);

    endpoint.fail({ kind: 'status', status: 429, body: page, headers: { 'retry-after': '120' } });
    const err = await failure(client(secretCredentials()).fetchToken());
    expect(err.code).toBe('TOKEN_RATE_LIMITED');
    expect(err.retryAfter).toBe(120);
    expect(endpoint.requests).toHaveLength(3);
  });

  it('an error answer whose body breaks off is still classified by its status: a 429 keeps its Retry-After, a 401 is final', async () => {
    endpoint.fail({ kind: 'cut', status: 429, body: '{"error":"rate', headers: { 'retry-after': '120' } });
    let err = await failure(client(secretCredentials()).fetchToken());
    expect([err.code, err.retryAfter]).toEqual(['TOKEN_RATE_LIMITED', 120]);
    expect(endpoint.requests).toHaveLength(1);

    endpoint.fail({ kind: 'cut', status: 401, body: '{"error":"invalid_client"' });
    err = await failure(client(secretCredentials()).fetchToken());
    expect(err.code).toBe('TOKEN_REJECTED');
    expect(endpoint.requests).toHaveLength(2); // final: not retried
    expectNoSecrets(err.message);

    // A 200 whose body breaks off is no answer at all: retried like a reset.
    endpoint.fail({ kind: 'cut', status: 200, body: '{"access_token":"tok-' });
    const token = await client(secretCredentials()).fetchToken();
    expect(token.value).toMatch(/^tok-/);
    expect(endpoint.requests).toHaveLength(4);
  });

  it('caps the lifetime at MAX_TOKEN_LIFETIME_S, from expires_in or the JWT exp; an earlier exp wins over the cap', async () => {
    const day = MAX_TOKEN_LIFETIME_S * 1000;
    const body = (fields: string) => `{"access_token":"tok-9-x","token_type":"bearer"${fields}}`;
    // 1e13 s is past what a Date can hold; 1e308 s overflows to Infinity in ms; 1e999 parses as Infinity.
    for (const expiresIn of ['1e13', '1e308', '1e999', '"99999999999999"']) {
      endpoint.fail({ kind: 'body', body: body(`,"expires_in":${expiresIn}`) });
      const token = await client(secretCredentials()).fetchToken();
      expect({ expiresIn, lifetime: token.expiresAt - token.issuedAt, source: token.lifetimeSource }).toEqual({ expiresIn, lifetime: day, source: 'expires_in' });
      expect(Number.isNaN(new Date(token.expiresAt).getTime())).toBe(false);
    }
    const jwt = (exp: number) =>
      [{ alg: 'none' }, { exp }].map((part) => Buffer.from(JSON.stringify(part)).toString('base64url')).join('.') + '.sig';
    endpoint.fail({ kind: 'body', body: JSON.stringify({ access_token: jwt(1e13), token_type: 'bearer' }) });
    const far = await client(secretCredentials()).fetchToken();
    expect([far.expiresAt - far.issuedAt, far.lifetimeSource]).toEqual([day, 'jwt']);
    const exp = Math.floor(Date.now() / 1000) + 7200;
    endpoint.fail({ kind: 'body', body: JSON.stringify({ access_token: jwt(exp), token_type: 'bearer' }) });
    const before = Date.now();
    const near = await client(secretCredentials()).fetchToken();
    // exp against the server's Date (whole seconds: up to 1 s before the moment it stands for), counted from
    // issuedAt on the token clock.
    expect(near.lifetimeSource).toBe('jwt');
    expect(near.expiresAt - near.issuedAt).toBeLessThanOrEqual(exp * 1000 - before + 1_000);
    expect(near.expiresAt - near.issuedAt).toBeGreaterThan(exp * 1000 - before - 1_000);
  });

  it("the JWT's own lifetime bounds expires_in and stands in for it; a server clock behind never stretches a token", async () => {
    const jwt = (claims: { exp: number; iat?: number }) =>
      [{ alg: 'none' }, claims].map((part) => Buffer.from(JSON.stringify(part)).toString('base64url')).join('.') + '.sig';
    // The token server's `Date` says `now`; the token clock runs an hour ahead of it, as after the calendar clock
    // was stepped back an hour: `exp` is read against the server's Date, the lifetime counted on the token clock.
    const now = Math.ceil(Date.now() / 1000);
    const clocks = { wallClock: () => now * 1000, now: () => now * 1000 + 3_600_000 };
    const fetched = async (claims: { exp: number; iat?: number }, expiresIn?: number) => {
      const body = JSON.stringify({ access_token: jwt(claims), token_type: 'bearer', expires_in: expiresIn });
      endpoint.fail({ kind: 'body', body, date: new Date(now * 1000).toUTCString() });
      return client(secretCredentials(), {}, 2_000, clocks).fetchToken();
    };
    const lifetime = async (claims: { exp: number; iat?: number }, expiresIn?: number) => {
      const token = await fetched(claims, expiresIn);
      return [(token.expiresAt - token.issuedAt) / 1000, token.lifetimeSource];
    };
    // expires_in overstating the token's own lifetime: the JWT wins; XSUAA's usual one second less: expires_in.
    expect(await lifetime({ iat: now, exp: now + 60 }, 3600)).toEqual([60, 'jwt']);
    expect(await lifetime({ iat: now, exp: now + 43_200 }, 43_199)).toEqual([43_199, 'expires_in']);
    // A short token: a slack of a tenth of it (3 s), so that 4 s more than the JWT's 30 s do not count.
    expect(await lifetime({ iat: now, exp: now + 30 }, 34)).toEqual([30, 'jwt']);
    // The server's Date an hour behind its own iat: still the token's hour, not two.
    expect(await lifetime({ iat: now + 3600, exp: now + 7200 })).toEqual([3600, 'jwt']);
    // A token issued earlier (handed out again): what is left by the server's clock, the safe side.
    const reused = await fetched({ iat: now - 3000, exp: now + 600 });
    expect([reused.issuedAt, reused.expiresAt, reused.lifetimeSource]).toEqual([clocks.now(), clocks.now() + 600_000, 'jwt']);
    // A Date ahead by more than the lifetime: every token would look expired; the token's own hour counts.
    expect(await lifetime({ iat: now - 7200, exp: now - 3600 })).toEqual([3600, 'jwt']);
    // Without iat, exp against the server's clock, while it is still ahead.
    const alone = await fetched({ exp: now + 600 });
    expect([alone.expiresAt - alone.issuedAt, alone.lifetimeSource]).toEqual([600_000, 'jwt']);
    expect(await lifetime({ exp: now - 5 })).toEqual([300, 'default']);
  });

  it("a JWT's exp is read against the token server's Date, so a local clock ahead by most of a lifetime does not shorten tokens", async () => {
    const jwt = (claims: { exp: number; iat: number }) =>
      [{ alg: 'none' }, claims].map((part) => Buffer.from(JSON.stringify(part)).toString('base64url')).join('.') + '.sig';
    const now = Math.ceil(Date.now() / 1000);
    // The local calendar clock 3590 s ahead of the token server's (a hardware clock kept in local time, UTC+1).
    const ahead = { wallClock: () => (now + 3590) * 1000 };
    const lifetime = async (date: string | null, expiresIn?: number) => {
      const body = JSON.stringify({ access_token: jwt({ iat: now, exp: now + 3600 }), token_type: 'bearer', expires_in: expiresIn });
      endpoint.fail({ kind: 'body', body, date });
      const token = await client(secretCredentials(), {}, 2_000, ahead).fetchToken();
      return [(token.expiresAt - token.issuedAt) / 1000, token.lifetimeSource];
    };
    const serverDate = new Date(now * 1000).toUTCString();
    expect(await lifetime(serverDate)).toEqual([3600, 'jwt']);
    expect(await lifetime(serverDate, 3600)).toEqual([3600, 'expires_in']);
    // Without a Date the local clock is all there is: what is left by it, the safe side (10 s).
    expect(await lifetime(null)).toEqual([10, 'jwt']);
  });

  it('a 503 with Retry-After is waited out like a 429, and one beyond the limit ends the fetch and is passed on', async () => {
    endpoint.fail({ kind: 'status', status: 503, headers: { 'retry-after': '1' } });
    const started = Date.now();
    await client(secretCredentials()).fetchToken();
    expect(Date.now() - started).toBeGreaterThanOrEqual(950);
    expect(endpoint.requests).toHaveLength(2);
    endpoint.fail({ kind: 'status', status: 503, headers: { 'retry-after': '60' } });
    const err = await failure(client(secretCredentials()).fetchToken());
    expect([err.code, err.retryAfter]).toEqual(['TOKEN_SERVER_ERROR', 60]);
    expect(endpoint.requests).toHaveLength(3);
    // Only a 503's: a 500 says nothing about when to come back.
    endpoint.fail({ kind: 'status', status: 500, headers: { 'retry-after': '60' } });
    await client(secretCredentials()).fetchToken();
    expect(endpoint.requests).toHaveLength(5);
  });

  it("a Retry-After date is read against the token server's Date, like a JWT's exp: a local clock an hour off neither waits for nothing nor for an hour", async () => {
    const now = Date.now();
    const in60s = new Date(now + 60_000).toUTCString();
    for (const skew of [3_600_000, -3_600_000]) {
      for (const status of [429, 503]) {
        const before = endpoint.requests.length;
        endpoint.fail({ kind: 'status', status, headers: { 'retry-after': in60s, date: new Date(now).toUTCString() } });
        const err = await failure(client(secretCredentials(), {}, 2_000, { wallClock: () => now + skew }).fetchToken());
        expect(err.retryAfter).toBeGreaterThanOrEqual(59);
        expect(err.retryAfter).toBeLessThanOrEqual(60);
        expect(endpoint.requests.length - before).toBe(1); // not asked again at once
      }
    }
  });

  it('a 429 with Retry-After 0 or a non-integer waits the normal 429 backoff, not 0 ms', async () => {
    for (const retryAfter of ['0', '1.5', '-1']) {
      const waits: number[] = [];
      const dispatcher = new Agent({ connect: { ca: pki.ca } });
      const c = new TokenClient({
        credentials: secretCredentials(),
        settings: SETTINGS,
        dispatcher,
        attemptTimeoutMs: 2_000,
        retry: FAST_RETRY,
        // The wait is recorded, not slept.
        sleep: async (ms) => void waits.push(ms),
      });
      clients.push(c);
      endpoint.fail({ kind: 'status', status: 429, headers: { 'retry-after': retryAfter } });
      await c.fetchToken();
      expect({ retryAfter, waits }).toEqual({ retryAfter, waits: [1_000] });
    }
  });

  it('a connection the sidecar cannot open for want of file descriptors (EMFILE) is said to be its own limit, not the token server', async () => {
    // The connector fails as net.connect does when the process is out of descriptors.
    const dispatcher = new Agent({ connect: (_options, callback) => callback(Object.assign(new Error('connect EMFILE'), { code: 'EMFILE', errno: -24, syscall: 'connect' }), null) });
    const c = new TokenClient({ credentials: secretCredentials(), settings: SETTINGS, dispatcher, attemptTimeoutMs: 2_000, retry: { ...FAST_RETRY, maxAttempts: 1 } });
    clients.push(c);
    const err = await failure(c.fetchToken());
    expect(err.code).toBe('TOKEN_UNREACHABLE');
    const descriptors = `token server ${new URL(endpoint.tokenUrl).host} not reached: the sidecar is out of file descriptors (EMFILE) — raise its open-file limit (ulimit -n, docker run --ulimit nofile=N) or lower --max-connections`;
    expect(err.message).toBe(descriptors);
    // The same when it was the connection to an HTTPS proxy that could not be opened: the proxy is not to blame.
    const viaProxy = new Agent({
      connect: (_options, callback) => {
        const atProxy = Object.assign(new Error('connect EMFILE'), { code: 'EMFILE' });
        markProxyConnectFailure(atProxy, 'proxy.corp:3128');
        callback(atProxy, null);
      },
    });
    const p = new TokenClient({ credentials: secretCredentials(), settings: SETTINGS, dispatcher: viaProxy, attemptTimeoutMs: 2_000, retry: { ...FAST_RETRY, maxAttempts: 1 } });
    clients.push(p);
    expect((await failure(p.fetchToken())).message).toBe(descriptors);
    expect(endpoint.requests).toHaveLength(0);
  });

  it("says it is waiting on the server while it sleeps a Retry-After the server asked for, and only then", async () => {
    const seen: Array<{ ms: number; waitingOnServer: boolean }> = [];
    const dispatcher = new Agent({ connect: { ca: pki.ca } });
    const c: TokenClient = new TokenClient({
      credentials: secretCredentials(),
      settings: SETTINGS,
      dispatcher,
      attemptTimeoutMs: 2_000,
      retry: FAST_RETRY,
      random: () => 1,
      sleep: async (ms) => void seen.push({ ms, waitingOnServer: c.waitingOnServer }),
    });
    clients.push(c);
    endpoint.fail({ kind: 'status', status: 429, headers: { 'retry-after': '1' } });
    await c.fetchToken();
    endpoint.fail({ kind: 'status', status: 503, headers: { 'retry-after': '2' } });
    await c.fetchToken();
    // A 500 is retried after the client's own backoff: no wait the server asked for.
    endpoint.fail({ kind: 'status', status: 500 });
    await c.fetchToken();
    expect(seen).toEqual([
      { ms: 1_000, waitingOnServer: true },
      { ms: 2_000, waitingOnServer: true },
      { ms: FAST_RETRY.baseDelayMs, waitingOnServer: false },
    ]);
    expect(c.waitingOnServer).toBe(false);
  });

  it('abandon() ends an attempt in flight and a retry wait at once, and refuses later fetches', async () => {
    // Hanging: without abandon() this attempt would run for a minute.
    endpoint.fail({ kind: 'hang' });
    const hanging = client(secretCredentials(), {}, 60_000);
    const inFlight = failure(hanging.fetchToken());
    await expect.poll(() => endpoint.requests.length, { interval: 5 }).toBe(1);
    hanging.abandon();
    const err = await inFlight;
    expect([err.code, err.message]).toEqual(['TOKEN_UNREACHABLE', `token request to ${new URL(endpoint.tokenUrl).host} abandoned: the sidecar is stopping`]);
    expect((await failure(hanging.fetchToken())).message).toContain('abandoned');
    expect(endpoint.requests).toHaveLength(1);

    // Waiting out a Retry-After (2 s, the most FAST_RETRY waits): abandon() ends the wait, no second attempt.
    endpoint.fail({ kind: 'status', status: 429, headers: { 'retry-after': '2' } });
    const waiting = client(secretCredentials());
    const started = Date.now();
    const retrying = failure(waiting.fetchToken());
    await expect.poll(() => endpoint.requests.length, { interval: 5 }).toBe(2);
    waiting.abandon();
    expect((await retrying).message).toContain('abandoned');
    expect(Date.now() - started).toBeLessThan(1_900);
    expect(endpoint.requests).toHaveLength(2);
  });

  it('abandon() ends a fetch whose request is still connecting at once, and close() then does not wait for the connect', async () => {
    // Takes the connection and never answers TLS; the connect limit (a minute) is far beyond the test's own timeout.
    const stuck = new Set<Socket>();
    const tcp = createServer((socket) => {
      stuck.add(socket);
      socket.on('error', () => undefined);
    });
    const port = await listen(tcp);
    try {
      const c = new TokenClient({
        credentials: secretCredentials({ tokenUrl: `https://127.0.0.1:${port}/oauth/token` }),
        settings: SETTINGS,
        dispatcher: new Agent({ connect: { ca: pki.ca, timeout: 60_000 } }),
        attemptTimeoutMs: 60_000,
        connectTimeoutMs: 60_000,
        retry: FAST_RETRY,
      });
      const fetching = failure(c.fetchToken());
      await expect.poll(() => stuck.size, { interval: 5 }).toBe(1);
      c.abandon();
      expect((await fetching).message).toContain('abandoned: the sidecar is stopping');
      await c.close();
    } finally {
      for (const socket of stuck) socket.destroy();
      await new Promise<void>((resolve) => tcp.close(() => resolve()));
    }
  });

  it('a hanging token server times out as TOKEN_TIMEOUT', async () => {
    endpoint.fail({ kind: 'hang' }, { kind: 'hang' }, { kind: 'hang' });
    const err = await failure(client(secretCredentials(), {}, 300).fetchToken());
    expect(err.code).toBe('TOKEN_TIMEOUT');
    expect(endpoint.requests).toHaveLength(3);
  });

  it('a connection that never completes its TLS handshake: TOKEN_TIMEOUT naming the connect limit, not the attempt\'s', async () => {
    // Accepts TCP, never speaks TLS.
    const silent = createServer((socket) => socket.on('error', () => undefined));
    const sockets: Socket[] = [];
    silent.on('connection', (socket) => sockets.push(socket));
    const port = await listen(silent);
    const dispatcher = new Agent({ connect: { ca: pki.ca, timeout: 300 } });
    const c = new TokenClient({
      credentials: secretCredentials({ tokenUrl: `https://127.0.0.1:${port}/oauth/token` }),
      settings: SETTINGS,
      dispatcher,
      attemptTimeoutMs: 5_000,
      connectTimeoutMs: 300,
      retry: { ...FAST_RETRY, maxAttempts: 1 },
    });
    clients.push(c);
    // The attempt's bound equal to the connect limit (--token-timeout ≤ 5 s): it runs out first, but undici ends the
    // connection being made only at its own limit, and it is that limit that ran out.
    const bounded = new TokenClient({
      credentials: secretCredentials({ tokenUrl: `https://127.0.0.1:${port}/oauth/token` }),
      settings: SETTINGS,
      dispatcher: new Agent({ connect: { ca: pki.ca, timeout: 300 } }),
      attemptTimeoutMs: 300,
      connectTimeoutMs: 300,
      retry: { ...FAST_RETRY, maxAttempts: 1 },
    });
    clients.push(bounded);
    try {
      const err = await failure(c.fetchToken());
      expect(err.code).toBe('TOKEN_TIMEOUT');
      expect(err.message).toContain('no connection (TCP and TLS) within 300 ms');
      const same = await failure(bounded.fetchToken());
      expect([same.code, same.message]).toEqual(['TOKEN_TIMEOUT', `token server 127.0.0.1:${port}: no connection (TCP and TLS) within 300 ms`]);
    } finally {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => silent.close(() => resolve()));
    }
  });

  it('a malformed answer (a gateway in front of the token server) is a final TOKEN_RESPONSE_INVALID saying so, asked once, not "unreachable"', async () => {
    const token = JSON.stringify({ access_token: 'tok-9-malformed', token_type: 'bearer', expires_in: 300 });
    const answers = {
      'obs-fold': `HTTP/1.1 200 OK\r\nX-Fold: a\r\n b\r\nContent-Length: ${token.length}\r\n\r\n${token}`,
      'two lengths': `HTTP/1.1 200 OK\r\nContent-Length: ${token.length}\r\nContent-Length: ${token.length + 1}\r\n\r\n${token}`,
      'bare LF': `HTTP/1.1 200 OK\nContent-Length: ${token.length}\n\n${token}`,
      'a head over 16 KiB': `HTTP/1.1 200 OK\r\nX-Big: ${'b'.repeat(70_000)}\r\nContent-Length: ${token.length}\r\n\r\n${token}`,
    };
    for (const [what, bytes] of Object.entries(answers)) {
      endpoint.requests.length = 0;
      // One such answer: a retry would meet a good one and succeed.
      endpoint.fail({ kind: 'raw', bytes });
      const err = await failure(client(secretCredentials()).fetchToken());
      expect({ what, code: err.code }).toEqual({ what, code: 'TOKEN_RESPONSE_INVALID' });
      expect(err.message).toMatch(new RegExp(`^token server 127\\.0\\.0\\.1:\\d+ answered with a malformed response \\([A-Za-z_]+\\) — check tokenurl of service key /keys/test\\.json, and what answers for it$`));
      expect(err.retryAfter).toBeUndefined();
      expect(endpoint.requests).toHaveLength(1);
      expectNoSecrets(err.message);
    }
  });

  it('a 200 whose body the connection cuts short is retried like a reset, not taken for a malformed answer', async () => {
    const token = JSON.stringify({ access_token: 'tok-9-cut', token_type: 'bearer', expires_in: 300 });
    const cuts = {
      'Content-Length, Connection: close': `HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: ${token.length}\r\n\r\n${token.slice(0, 10)}`,
      'chunked, Connection: close': `HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n${token.length.toString(16)}\r\n${token.slice(0, 10)}`,
      'HTTP/1.0 with Content-Length': `HTTP/1.0 200 OK\r\nContent-Length: ${token.length}\r\n\r\n${token.slice(0, 10)}`,
    };
    for (const [what, bytes] of Object.entries(cuts)) {
      endpoint.requests.length = 0;
      endpoint.fail({ kind: 'raw', bytes });
      const fetched = await client(secretCredentials()).fetchToken().then((t) => t.value.startsWith('tok-'), (e: unknown) => (e as SidecarError).message);
      expect({ what, fetched, requests: endpoint.requests.length }).toEqual({ what, fetched: true, requests: 2 });
    }
  });

  it('a reset connection is retried', async () => {
    endpoint.fail({ kind: 'reset' });
    await client(secretCredentials()).fetchToken();
    expect(endpoint.requests).toHaveLength(2);
  });

  it('an untrusted server certificate is TOKEN_UNREACHABLE with a --ca hint', async () => {
    const untrusting = createTokenClient({ credentials: secretCredentials(), settings: SETTINGS, network: { ca: [] }, attemptTimeoutMs: 2_000, retry: FAST_RETRY });
    clients.push(untrusting);
    const err = await failure(untrusting.fetchToken());
    expect(err.code).toBe('TOKEN_UNREACHABLE');
    expect(err.message).toContain('--ca');
  });

  it('an HTTPS proxy that refuses connections is named, not the token server it never reached', async () => {
    const port = await closedPort();
    const proxied = createTokenClient({
      credentials: secretCredentials(),
      settings: SETTINGS,
      network: { ca: [pki.ca], httpsProxy: `http://user:pw@127.0.0.1:${port}` },
      attemptTimeoutMs: 2_000,
      retry: FAST_RETRY,
    });
    clients.push(proxied);
    const err = await failure(proxied.fetchToken());
    expect([err.code, err.message]).toEqual([
      'TOKEN_UNREACHABLE',
      `token server ${new URL(endpoint.tokenUrl).host}: the HTTPS proxy 127.0.0.1:${port} refused the connection (ECONNREFUSED) — check HTTPS_PROXY`,
    ]);
  });

  it('an HTTPS proxy that never answers is named also when the attempt bound is the connect limit (--token-timeout ≤ 5 s)', { timeout: 15_000 }, async () => {
    const sockets = new Set<Socket>();
    const mute = createServer((socket) => {
      sockets.add(socket);
      socket.on('error', () => undefined);
    });
    const port = await listen(mute);
    try {
      // http://: the CONNECT is taken and never answered; https://: the TLS handshake with the proxy never starts.
      for (const [scheme, failed] of [
        ['http', 'took the CONNECT but did not answer it in time (UND_ERR_HEADERS_TIMEOUT) — it may not reach the host, or needs longer than the connect limit'],
        ['https', 'did not answer in time (UND_ERR_CONNECT_TIMEOUT) — check HTTPS_PROXY'],
      ]) {
        const proxied = createTokenClient({
          credentials: secretCredentials(),
          settings: SETTINGS,
          network: { ca: [pki.ca], httpsProxy: `${scheme}://localhost:${port}` },
          attemptTimeoutMs: 1_000,
          retry: { ...FAST_RETRY, maxAttempts: 1 },
        });
        clients.push(proxied);
        const err = await failure(proxied.fetchToken());
        expect([err.code, err.message]).toEqual([
          'TOKEN_TIMEOUT',
          `token server ${new URL(endpoint.tokenUrl).host}: the HTTPS proxy localhost:${port} ${failed}`,
        ]);
      }
    } finally {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => mute.close(resolve));
    }
  });

  it('a server that is down is TOKEN_UNREACHABLE, and it recovers when back', async () => {
    await endpoint.stop();
    try {
      const err = await failure(client(secretCredentials()).fetchToken());
      expect(err.code).toBe('TOKEN_UNREACHABLE');
      expect(err.message).toContain('ECONNREFUSED');
    } finally {
      await endpoint.start();
    }
    expect((await client(secretCredentials()).fetchToken()).value).toMatch(/^tok-/);
  });
});

describe('token provider over a real token endpoint', () => {
  it('200 concurrent callers on a cold cache cause exactly one token request', async () => {
    const provider = new TokenProvider();
    const c = client(secretCredentials());
    const before = endpoint.issued;
    const tokens = await Promise.all(Array.from({ length: 200 }, () => provider.getToken(c)));
    expect(endpoint.issued - before).toBe(1);
    expect(new Set(tokens.map((t) => t.value)).size).toBe(1);
  });

  it('refreshes ahead of expiry with a short token lifetime, callers never waiting', async () => {
    endpoint.expiresIn = 2;
    try {
      const reasons: string[] = [];
      let refreshed!: () => void;
      const refreshDone = new Promise<void>((resolve) => (refreshed = resolve));
      // The provider's clock runs ahead of the wall clock so the refresh point comes without sleeping.
      let skew = 0;
      const provider = new TokenProvider({
        now: () => Date.now() + skew,
        onEvent: (e) => {
          if (e.type === 'fetch') reasons.push(e.reason);
          if (e.type === 'fetched' && reasons.length === 2) refreshed();
        },
      });
      const c = client(secretCredentials());
      const first = await provider.getToken(c);
      skew = 1_700; // past the latest refresh point (75 ± 5 % of 2 s), before the 10 % safety margin
      expect(await provider.getToken(c)).toBe(first); // served at once while refreshing
      await refreshDone;
      await new Promise((resolve) => setImmediate(resolve)); // lru-cache stores the value after the event
      const second = await provider.getToken(c);
      expect(reasons).toEqual(['cold', 'refresh-ahead']);
      expect(second.value).not.toBe(first.value);
      expect(endpoint.requests).toHaveLength(2);
    } finally {
      endpoint.expiresIn = 3600;
    }
  });
});

describe('token lifetime at its edges', () => {
  it('an expires_in of 0 is no lifetime: the default stands in, not a token already due', async () => {
    endpoint.fail({ kind: 'body', body: '{"access_token":"tok-0-x","token_type":"bearer","expires_in":0}' });
    const token = await client(secretCredentials()).fetchToken();
    expect([token.expiresAt - token.issuedAt, token.lifetimeSource]).toEqual([300_000, 'default']);
  });

  it("a JWT whose iat equals its exp has no lifetime of its own: its exp against the server's Date counts", async () => {
    const now = Math.ceil(Date.now() / 1000);
    const claims = { iat: now + 600, exp: now + 600 };
    const jwt = [{ alg: 'none' }, claims].map((part) => Buffer.from(JSON.stringify(part)).toString('base64url')).join('.') + '.sig';
    endpoint.fail({ kind: 'body', body: JSON.stringify({ access_token: jwt, token_type: 'bearer' }), date: new Date(now * 1000).toUTCString() });
    const token = await client(secretCredentials(), {}, 2_000, { wallClock: () => now * 1000, now: () => now * 1000 }).fetchToken();
    expect([token.expiresAt - token.issuedAt, token.lifetimeSource]).toEqual([600_000, 'jwt']);
  });
});

describe('token cache key', () => {
  it('tells apart what is asked for: two routes on one service key with different scopes do not share a token', () => {
    const key = (settings: Partial<TokenRequestSettings> = {}) => client(secretCredentials(), settings).cacheKey;
    const base = key();
    expect(key()).toBe(base);
    for (const settings of [{ scope: 'read' }, { resource: 'urn:r' }, { audience: 'aud' }, { params: { token_format: 'jwt' } }]) {
      expect(key(settings), JSON.stringify(settings)).not.toBe(base);
    }
  });
});
