import { describe, expect, it } from 'vitest';
import { classifyNetworkError, markProxyConnectFailure, proxyConnectFailureText, proxyEndpoint, trustAdvice } from '../../src/network-error.js';

function failed(code: string): Error {
  return Object.assign(new Error(`connect ${code}`), { code });
}

describe('network errors', () => {
  it('a certificate not issued for TLS servers (INVALID_PURPOSE) gets no advice to add a CA', () => {
    const advice = trustAdvice('INVALID_PURPOSE');
    expect(advice).toContain('not issued for TLS servers');
    expect(advice).toContain('a TLS-inspecting proxy');
    expect(advice).toContain('a CA would not help');
    expect(advice).not.toContain('--ca');
    expect(classifyNetworkError(failed('INVALID_PURPOSE')).failure).toBe('tls-trust');
    expect(trustAdvice('UNABLE_TO_GET_ISSUER_CERT_LOCALLY')).toBe('add the issuing CA with --ca');
  });

  it('a broken pipe is a reset like ECONNRESET (the keep-alive race a GET is sent again for), also inside undici\'s wrappers', () => {
    for (const code of ['ECONNRESET', 'EPIPE']) {
      expect(classifyNetworkError(failed(code))).toEqual({ failure: 'reset', code });
      const wrapped = Object.assign(new Error('other side closed'), { code: 'UND_ERR_SOCKET', cause: failed(code) });
      expect(classifyNetworkError(new Error('fetch failed', { cause: wrapped }))).toEqual({ failure: 'reset', code });
    }
  });

  it.each(['CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID'])('a certificate outside its validity (%s) is a trust failure, with advice about the clock, not a CA', (code) => {
    expect(classifyNetworkError(failed(code))).toEqual({ failure: 'tls-trust', code });
    expect(trustAdvice(code)).toContain('clock');
  });

  it('tells the sidecar running out of file descriptors from a failure of the peer, also wrapped by undici', () => {
    expect(classifyNetworkError(failed('EMFILE'))).toEqual({ failure: 'descriptors', code: 'EMFILE' });
    expect(classifyNetworkError(new Error('fetch failed', { cause: failed('ENFILE') }))).toEqual({ failure: 'descriptors', code: 'ENFILE' });
  });

  it('tells a failed connection to the proxy (as the dispatcher marks it) from one to the target, also wrapped', () => {
    const atProxy = failed('ECONNREFUSED');
    markProxyConnectFailure(atProxy, 'proxy.corp:3128');
    expect(classifyNetworkError(atProxy)).toEqual({ failure: 'refused', code: 'ECONNREFUSED', proxy: 'proxy.corp:3128' });
    expect(classifyNetworkError(new Error('fetch failed', { cause: atProxy }))).toMatchObject({ failure: 'refused', proxy: 'proxy.corp:3128' });
    expect(classifyNetworkError(failed('ECONNREFUSED'))).toEqual({ failure: 'refused', code: 'ECONNREFUSED' });
  });

  it('gives the proxy as host:port with its default port, never its credentials', () => {
    expect(proxyEndpoint('http://user:pa55@proxy.corp:3128')).toBe('proxy.corp:3128');
    expect(proxyEndpoint('http://proxy.corp')).toBe('proxy.corp:80');
    expect(proxyEndpoint('https://proxy.corp/')).toBe('proxy.corp:443');
    expect(proxyEndpoint('http://[::1]:8080')).toBe('[::1]:8080');
    expect(proxyEndpoint('not a url')).toBeUndefined();
  });

  it('words a proxy failure for the message of the upstream or token server it was on the way to', () => {
    expect(proxyConnectFailureText('proxy.corp:3128', 'refused', 'ECONNREFUSED')).toBe('the HTTPS proxy proxy.corp:3128 refused the connection (ECONNREFUSED) — check HTTPS_PROXY');
    expect(proxyConnectFailureText('proxy.corp:3128', 'dns', 'ENOTFOUND')).toBe('the HTTPS proxy proxy.corp:3128 does not resolve (ENOTFOUND) — check HTTPS_PROXY');
    expect(proxyConnectFailureText('proxy.corp:3128', 'timeout', 'UND_ERR_CONNECT_TIMEOUT')).toBe(
      'the HTTPS proxy proxy.corp:3128 did not answer in time (UND_ERR_CONNECT_TIMEOUT) — check HTTPS_PROXY',
    );
  });

  it("an https:// proxy's certificate: the TLS error inside undici's wrapper decides, with advice that fits its code", () => {
    const inner = failed('ERR_TLS_CERT_ALTNAME_INVALID');
    markProxyConnectFailure(inner, 'proxy.corp:8443');
    const wrapped = Object.assign(new Error('secure proxy connection failed', { cause: inner }), { code: 'UND_ERR_PRX_TLS' });
    const classified = classifyNetworkError(wrapped);
    expect(classified).toEqual({ failure: 'tls-trust', code: 'ERR_TLS_CERT_ALTNAME_INVALID', proxy: 'proxy.corp:8443' });
    expect(proxyConnectFailureText('proxy.corp:8443', classified.failure, classified.code)).toBe(
      'the certificate of the HTTPS proxy proxy.corp:8443 is not trusted (ERR_TLS_CERT_ALTNAME_INVALID) — the certificate does not name the proxy: check the host in HTTPS_PROXY',
    );
    expect(proxyConnectFailureText('p:1', 'tls-trust', 'INVALID_PURPOSE')).toContain('not issued for TLS servers: check the host in HTTPS_PROXY (a CA would not help)');
    expect(proxyConnectFailureText('p:1', 'tls-trust', 'SELF_SIGNED_CERT_IN_CHAIN')).toContain('NODE_EXTRA_CA_CERTS, not --ca');
  });
});
