import { describe, expect, it } from 'vitest';
import { SidecarError } from '../../src/errors.js';
import { Metrics } from '../../src/metrics.js';
import type { RouteTable } from '../../src/routes.js';
import type { AccessToken } from '../../src/token-client.js';
import { TokenProvider, type TokenSource } from '../../src/token-provider.js';

describe('oauth_sidecar_token_expiry_seconds', () => {
  it('counts down to the token’s expiry, inside its safety margin too, and is absent once it has expired', async () => {
    const clock = { now: 1_000_000 };
    const source: TokenSource = {
      cacheKey: 'key-1',
      fetchToken: async (): Promise<AccessToken> => ({
        value: 'token-1',
        issuedAt: clock.now,
        expiresAt: clock.now + 100_000,
        scopes: [],
        lifetimeSource: 'expires_in',
      }),
    };
    const tokens = new TokenProvider({ now: () => clock.now });
    await tokens.getToken(source);
    const table = { routes: [{ name: 'orders', tokenClient: source, credentials: { kind: 'client-secret' } }] } as unknown as RouteTable;
    // The calendar clock (for certificate expiry) stepped an hour ahead: token expiry is counted on the token clock.
    const calendar = () => clock.now + 3_600_000;
    const metrics = new Metrics({ routes: () => table, tokens, credentialErrors: () => new Map(), now: calendar, defaultMetrics: false });
    const expiry = async (): Promise<string | undefined> =>
      /^oauth_sidecar_token_expiry_seconds\{route="orders"\} (\S+)$/m.exec((await metrics.render()).body)?.[1];

    expect(await expiry()).toBe('100');
    clock.now += 95_000; // inside the safety margin (10 %): no longer handed out, but not expired
    expect(tokens.peek(source)).toBeUndefined();
    expect(await expiry()).toBe('5');
    clock.now += 5_000;
    expect(await expiry()).toBeUndefined();
  });
});

describe('oauth_sidecar_answers_cut_total', () => {
  it('counts answers the sidecar cut after their head went out, whatever their status, and not sender aborts', async () => {
    const table = { routes: [] } as unknown as RouteTable;
    const metrics = new Metrics({ routes: () => table, tokens: new TokenProvider(), credentialErrors: () => new Map(), defaultMetrics: false });
    const record = { requestId: 'r', route: 'orders', method: 'GET', path: '/x', upstreamStatus: undefined, upstreamMs: undefined, durationMs: 1, bytesIn: 0, bytesOut: 10, retried: undefined };
    for (const status of [200, 404, 500]) {
      metrics.requestStarted();
      metrics.requestFinished({ ...record, status, error: 'UPSTREAM_UNREACHABLE', aborted: false, cut: true });
    }
    metrics.requestStarted();
    metrics.requestFinished({ ...record, status: 200, error: undefined, aborted: true, cut: true }); // the sender left first
    metrics.requestStarted();
    metrics.requestFinished({ ...record, status: 200, error: undefined, aborted: false }); // complete
    metrics.requestStarted();
    metrics.requestFinished({ ...record, status: 400, error: 'REQUEST_REFUSED', aborted: false }); // refused, not cut
    const body = (await metrics.render()).body;
    expect(body).toMatch(/^oauth_sidecar_answers_cut_total\{route="orders",error="UPSTREAM_UNREACHABLE"\} 3$/m);
    expect(body).not.toMatch(/^oauth_sidecar_answers_cut_total\{route="orders",error="REQUEST_REFUSED"\}/m);
    expect(body).toMatch(/^oauth_sidecar_client_aborts_total\{route="orders"\} 1$/m);
  });
});

describe('Metrics.render pacing (a flood of scrapes on the admin port)', () => {
  function paced() {
    const table = { routes: [] } as unknown as RouteTable;
    const metrics = new Metrics({ routes: () => table, tokens: new TokenProvider(), credentialErrors: () => new Map(), defaultMetrics: false });
    const starts: number[] = [];
    const real = metrics.registry.metrics.bind(metrics.registry);
    metrics.registry.metrics = async () => {
      starts.push(performance.now());
      const until = performance.now() + 2; // a render that costs 2 ms of the event loop
      while (performance.now() < until);
      return real();
    };
    return { metrics, starts };
  }
  const requests = (body: string) => Number(/^oauth_sidecar_requests_in_flight (\d+)$/m.exec(body)?.[1]);

  it('serves scrapes arriving together from one render, started after they arrived', async () => {
    const { metrics, starts } = paced();
    metrics.requestStarted();
    const answers = await Promise.all(Array.from({ length: 40 }, () => metrics.render()));
    expect(starts).toHaveLength(1);
    expect(new Set(answers.map((a) => a.body)).size).toBe(1);
    expect(requests(answers[0]!.body)).toBe(1);
  });

  it('never answers with a render older than the scrape, and spaces renders by ten times their cost', async () => {
    const { metrics, starts } = paced();
    expect(requests((await metrics.render()).body)).toBe(0);
    metrics.requestStarted();
    // Right after a render: this one waits for the pace, and still sees what happened before it was asked for.
    const second = metrics.render();
    metrics.requestStarted(); // before the render starts: seen too
    expect(requests((await second).body)).toBe(2);
    expect(starts).toHaveLength(2);
    expect(starts[1]! - starts[0]!).toBeGreaterThanOrEqual(2 + 10 * 2);
  });

  it('a scrape arriving while a render runs gets the next one, not the one under way', async () => {
    const { metrics, starts } = paced();
    const first = metrics.render();
    await Promise.resolve(); // the first render has started (its wait is none)
    await Promise.resolve();
    metrics.requestStarted();
    const second = metrics.render();
    expect(requests((await first).body)).toBe(0);
    expect(requests((await second).body)).toBe(1);
    expect(starts).toHaveLength(2);
  });
});

describe('token fetch and certificate expiry metrics', () => {
  it('token_fetches_total counts outcomes, not attempts, per route: success, or the error code', async () => {
    const tokens = new TokenProvider();
    const metrics = new Metrics({ routes: () => ({ routes: [] }) as unknown as RouteTable, tokens, credentialErrors: () => new Map(), defaultMetrics: false });
    const token = { value: 't', issuedAt: 0, expiresAt: 1, scopes: [], lifetimeSource: 'expires_in' } as AccessToken;
    metrics.tokenEvent({ type: 'fetch', key: 'k', reason: 'cold' }, ['orders']);
    metrics.tokenEvent({ type: 'fetched', key: 'k', token, durationMs: 1 }, ['orders']);
    metrics.tokenEvent({ type: 'fetch', key: 'k', reason: 'refresh-ahead' }, ['orders']);
    metrics.tokenEvent({ type: 'fetch-failed', key: 'k', error: new SidecarError('TOKEN_RATE_LIMITED', '429'), durationMs: 1, retryInMs: 1_000 }, ['orders']);
    metrics.tokenEvent({ type: 'fetch-failed', key: 'k', error: new Error('bug'), durationMs: 1, retryInMs: 1_000 }, ['orders']);
    // Two routes with one client share the fetch; each counts it.
    metrics.tokenEvent({ type: 'fetched', key: 'shared', token, durationMs: 1 }, ['a', 'b']);
    // Every route it was for replaced meanwhile (a rotation): still counted.
    metrics.tokenEvent({ type: 'fetch-failed', key: 'gone', error: new SidecarError('TOKEN_UNREACHABLE', 'down'), durationMs: 1, retryInMs: 1_000 }, []);
    const body = (await metrics.render()).body;
    expect(body).toMatch(/^oauth_sidecar_token_fetches_total\{route="orders",outcome="success"\} 1$/m);
    expect(body).toMatch(/^oauth_sidecar_token_fetches_total\{route="orders",outcome="TOKEN_RATE_LIMITED"\} 1$/m);
    expect(body).toMatch(/^oauth_sidecar_token_fetches_total\{route="orders",outcome="INTERNAL"\} 1$/m);
    expect(body).toMatch(/^oauth_sidecar_token_fetches_total\{route="a",outcome="success"\} 1$/m);
    expect(body).toMatch(/^oauth_sidecar_token_fetches_total\{route="b",outcome="success"\} 1$/m);
    expect(body).toMatch(/^oauth_sidecar_token_fetches_total\{route="none",outcome="TOKEN_UNREACHABLE"\} 1$/m);
    expect(body.match(/^oauth_sidecar_token_fetches_total\{/gm)).toHaveLength(6);
  });

  it('client_certificate_expiry_seconds covers External Certificate keys as well as Certificate keys', async () => {
    const now = 1_000_000_000_000;
    const route = (name: string, kind: string) => ({ name, tokenClient: { cacheKey: name }, credentials: { kind, notAfter: new Date(now + 86_400_000) } });
    const table = { routes: [route('sap', 'certificate'), route('own', 'external-certificate'), route('plain', 'client-secret')] } as unknown as RouteTable;
    const metrics = new Metrics({ routes: () => table, tokens: new TokenProvider(), credentialErrors: () => new Map(), now: () => now, defaultMetrics: false });
    const body = (await metrics.render()).body;
    expect(body).toMatch(/^oauth_sidecar_client_certificate_expiry_seconds\{route="sap"\} 86400$/m);
    expect(body).toMatch(/^oauth_sidecar_client_certificate_expiry_seconds\{route="own"\} 86400$/m);
    expect(body).not.toMatch(/client_certificate_expiry_seconds\{route="plain"\}/);
  });
});
