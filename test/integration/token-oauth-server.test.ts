import { X509Certificate } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CertificateCredentials, SecretCredentials } from '../../src/credentials.js';
import { SidecarError } from '../../src/errors.js';
import { createTokenClient, type TokenClient, type TokenRequestSettings } from '../../src/token-client.js';
import { startConnectProxy, type ConnectProxy } from '../helpers/connect-proxy.js';
import { startOAuthServer, type OAuthServer } from '../helpers/oauth-server.js';
import { createPki, type Pki } from '../helpers/pki.js';

// SAP-shaped ids and a secret with every character RFC 6749 §2.3.1 encoding must handle.
const BASIC = { id: 'sb-11111111-2222!b123456|it-rt-acme-dev!b196', secret: 'a!b|c$d=e%f+g:h' };
const POST = { id: 'sb-post!b1|it!b196', secret: 'p%s+:w$=' };
const CERT_ID = 'sb-cert!b3|it-rt-acme!b196';

let pki: Pki;
let oauth: OAuthServer;
let proxy: ConnectProxy;
const clients: TokenClient[] = [];

beforeAll(async () => {
  pki = await createPki();
  oauth = await startOAuthServer(pki, {
    clients: [
      { clientId: BASIC.id, secret: BASIC.secret, authMethod: 'client_secret_basic' },
      { clientId: POST.id, secret: POST.secret, authMethod: 'client_secret_post' },
      { clientId: CERT_ID, authMethod: 'tls_client_auth', subjectDn: 'CN=sidecar-client, O=Test, C=DE' },
    ],
  });
  proxy = await startConnectProxy({ credentials: 'corp:pr0xy' });
});

afterAll(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await Promise.all([oauth?.close(), proxy?.close()]);
});

function secret(id: string, clientSecret: string): SecretCredentials {
  return { kind: 'client-secret', clientId: id, clientSecret, tokenUrl: oauth.tokenUrl, url: undefined, source: '/keys/k.json' };
}

function cert(chain: string, key: string): CertificateCredentials {
  const leaf = new X509Certificate(chain);
  return {
    kind: 'certificate',
    clientId: CERT_ID,
    tokenUrl: oauth.tokenUrl,
    url: undefined,
    source: '/keys/c.json',
    certificate: chain,
    key,
    fingerprint: leaf.fingerprint256,
    notAfter: new Date(leaf.validTo),
  };
}

function client(credentials: SecretCredentials | CertificateCredentials, settings: Partial<TokenRequestSettings> = {}, httpsProxy?: string): TokenClient {
  const c = createTokenClient({
    credentials,
    settings: { auth: 'basic', params: {}, ...settings },
    network: { ca: [pki.ca], httpsProxy },
    attemptTimeoutMs: 5_000,
    retry: { maxAttempts: 1, baseDelayMs: 1, maxDelayMs: 1, maxRetryAfterMs: 0 },
  });
  clients.push(c);
  return c;
}

async function rejection(promise: Promise<unknown>): Promise<SidecarError> {
  const err = await promise.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(SidecarError);
  return err as SidecarError;
}

describe('token client against a real OAuth 2.0 server (oidc-provider)', () => {
  it('client_secret_basic with a secret full of !|$=%+: characters', async () => {
    const token = await client(secret(BASIC.id, BASIC.secret)).fetchToken();
    expect(await oauth.verify(token.value)).toMatchObject({ client_id: BASIC.id });
    expect(oauth.lastRequest).toMatchObject({ authMethod: 'client_secret_basic', status: 200 });
    expect(token.lifetimeSource).toBe('expires_in');
  });

  it('client_secret_post', async () => {
    const token = await client(secret(POST.id, POST.secret), { auth: 'post' }).fetchToken();
    expect(await oauth.verify(token.value)).toMatchObject({ client_id: POST.id });
    expect(oauth.lastRequest).toMatchObject({ authMethod: 'client_secret_post', params: { client_id: POST.id, grant_type: 'client_credentials' } });
  });

  it('mTLS (tls_client_auth) with a leaf + intermediate chain and a PKCS#1 key', async () => {
    expect(pki.client.keyPkcs1).toContain('BEGIN RSA PRIVATE KEY');
    const token = await client(cert(pki.client.chain, pki.client.keyPkcs1)).fetchToken();
    expect(await oauth.verify(token.value)).toMatchObject({ client_id: CERT_ID });
    // tls_client_auth: the server saw neither a Basic header nor a client_secret in the body.
    expect(oauth.lastRequest).toMatchObject({ authMethod: 'tls_client_auth', certAuthorized: true });
  });

  it('a wrong secret is TOKEN_REJECTED with the OAuth error, and no secret in the message', async () => {
    const err = await rejection(client(secret(BASIC.id, 'wrong!|$=%+:')).fetchToken());
    expect(err.code).toBe('TOKEN_REJECTED');
    expect(err.message).toMatch(/401 invalid_client/);
    expect(err.message).not.toContain('wrong!|$=%+:');
  });

  it('a rogue certificate (same subject, untrusted CA) is rejected', async () => {
    const err = await rejection(client(cert(pki.rogue.chain, pki.rogue.key)).fetchToken());
    expect(err.code).toBe('TOKEN_REJECTED');
    expect(oauth.lastRequest?.certAuthorized).toBe(false);
  });

  it('goes through an HTTPS_PROXY with credentials, and mTLS still works inside the tunnel', async () => {
    const via = `http://corp:pr0xy@${proxy.url.slice('http://'.length)}`;
    const before = proxy.tunnels.length;
    const basic = await client(secret(BASIC.id, BASIC.secret), {}, via).fetchToken();
    expect(await oauth.verify(basic.value)).toMatchObject({ client_id: BASIC.id });
    const mtls = await client(cert(pki.client.chain, pki.client.keyPkcs1), {}, via).fetchToken();
    expect(await oauth.verify(mtls.value)).toMatchObject({ client_id: CERT_ID });
    expect(oauth.lastRequest).toMatchObject({ authMethod: 'tls_client_auth', certAuthorized: true });
    expect(proxy.tunnels.length - before).toBe(2);
    expect(proxy.tunnels.at(-1)).toBe(`127.0.0.1:${oauth.port}`);
  });

  it('a proxy that refuses the credentials is reported as a proxy problem', async () => {
    const err = await rejection(client(secret(BASIC.id, BASIC.secret), {}, proxy.url).fetchToken());
    expect(err.code).toBe('TOKEN_UNREACHABLE');
    expect(err.message).toMatch(/proxy/i);
  });
});
