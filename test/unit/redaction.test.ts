/** The text filter every token server's or upstream's words pass through before a log or an answer. */
import { describe, expect, it } from 'vitest';
import { redact, REDACTED, secretForms, withoutCredentials } from '../../src/redaction.js';

const CLIENT_ID = 'sb-fake!b1|it-rt-acme!b196';
/** `!`, `~`, `(`, `)` and a space: encodeURIComponent and form encoding (URLSearchParams) write it differently. */
const SECRET = 'FAKE$sec=ret+a!b~c(d) e/f';
const formEncoded = (value: string) => new URLSearchParams({ v: value }).toString().slice(2);

describe('redact', () => {
  it('removes the client secret in each form it travels in (raw, URI-, form-encoded, in either Basic header), every time it occurs', () => {
    const forms = secretForms(CLIENT_ID, SECRET);
    const shapes = [
      SECRET,
      encodeURIComponent(SECRET),
      new URLSearchParams({ s: SECRET }).toString().slice(2),
      Buffer.from(`${CLIENT_ID}:${SECRET}`).toString('base64'),
      Buffer.from(`${formEncoded(CLIENT_ID)}:${formEncoded(SECRET)}`).toString('base64'), // RFC 6749 §2.3.1
    ];
    expect(new Set(shapes).size).toBe(shapes.length);
    for (const shape of shapes) {
      expect(redact(`echoed ${shape} and again ${shape}.`, forms), shape).toBe(`echoed ${REDACTED} and again ${REDACTED}.`);
    }
  });

  it('also removes credential-shaped text it was not told about', () => {
    expect(redact('the upstream said: bearer tok-12345678', [])).toBe(`the upstream said: Bearer ${REDACTED}`);
  });
});

describe('withoutCredentials', () => {
  it('replaces Bearer (any case) and Basic credentials, and a JWT or the start of one', () => {
    expect(withoutCredentials('Authorization: BEARER tok-12345678 end')).toBe(`Authorization: Bearer ${REDACTED} end`);
    expect(withoutCredentials('Authorization: Basic dXNlcjpwYXNzd29yZA== end')).toBe(`Authorization: Basic ${REDACTED} end`);
    expect(withoutCredentials('got eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln end')).toBe(`got ${REDACTED} end`);
    expect(withoutCredentials('cut off at eyJhbGciOiJSUzI1')).toBe(`cut off at ${REDACTED}`);
    expect(withoutCredentials('nothing secret here')).toBe('nothing secret here');
  });
});
