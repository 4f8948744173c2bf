import { describe, expect, it } from 'vitest';
import { endpointUrl } from '../../src/endpoint-url.js';
import { PORT_ZERO_PROBLEM } from '../../src/errors.js';

describe('endpointUrl', () => {
  it.each([
    ['https://tenant.it-cpi018-rt.cfapps.eu10-003.hana.ondemand.com', 'upstream'],
    ['https://tenant.authentication.eu10.hana.ondemand.com/oauth/token', 'token'],
    ['http://127.0.0.1:8443/base', 'upstream'],
    ['http://localhost:9000/oauth/token', 'token'],
    ['http://[::1]:9000/oauth/token', 'token'],
    ['https://auth.example/oauth/token?tenant=a', 'token'], // a token URL's query is sent with it
  ] as const)('takes %s as a %s URL', (value, use) => {
    const { url, problem } = endpointUrl(value, use);
    expect(problem).toBeUndefined();
    expect(url?.href.startsWith(value.replace(/\/?$/, ''))).toBe(true);
  });

  it.each([
    ['not a url', 'is not a URL'],
    ['https://host.example:99999', 'is not a URL'],
    ['http://host.example/base', 'must be an https URL (http only for 127.0.0.1, localhost or ::1)'],
    ['http://127.0.0.2/base', 'must be an https URL (http only for 127.0.0.1, localhost or ::1)'],
    ['ftp://host.example/base', 'must be an https URL (http only for 127.0.0.1, localhost or ::1)'],
    ['https://user:TOPSECRET@host.example/', 'must not carry a user name or password (credentials come from the service key)'],
    ['https://host.example:0/', PORT_ZERO_PROBLEM],
  ])('refuses %s for either use, without echoing it', (value, message) => {
    for (const use of ['upstream', 'token'] as const) {
      const { url, problem } = endpointUrl(value, use);
      expect(url).toBeUndefined();
      expect(problem).toBe(message);
      expect(problem).not.toContain('TOPSECRET');
    }
  });

  it('refuses a query or a fragment in an upstream, where the request brings its own query', () => {
    for (const value of ['https://host.example/base?sig=FAKE-signed', 'https://host.example/base#part']) {
      expect(endpointUrl(value, 'upstream').problem).toBe("must not carry a query or a fragment: each request's own query is what goes upstream");
      expect(endpointUrl(value, 'token').problem).toBeUndefined();
    }
  });
});
