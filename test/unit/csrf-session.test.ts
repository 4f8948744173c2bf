/**
 * `csrf-session`: the session a fetch response describes, and the `cookie`
 * header a request carries beside it. Pure logic; the proxy tests drive the
 * whole CSRF exchange against a real upstream.
 */
import { describe, expect, it } from 'vitest';
import { CsrfSession, csrfFromResponse, isCsrfRequired, isModifying, mergeCookies, parseCookieDate, type CsrfCredentials } from '../../src/csrf-session.js';

describe('csrfFromResponse', () => {
  it('builds the cookie header from the Set-Cookie pairs, byte for byte', () => {
    const session = csrfFromResponse({ 'x-csrf-token': 't1', 'set-cookie': ['JSESSIONID=s1; Path=/; HttpOnly', '__VCAP_ID__=a%2Fb; Path=/'] });
    expect(session).toEqual({ token: 't1', cookie: 'JSESSIONID=s1; __VCAP_ID__=a%2Fb' });
  });

  it('keeps the cookies the fetch was sent with when the server set none (the session it still accepts)', () => {
    expect(csrfFromResponse({ 'x-csrf-token': 't2' }, 'JSESSIONID=s1; __VCAP_ID__=a')).toEqual({ token: 't2', cookie: 'JSESSIONID=s1; __VCAP_ID__=a' });
  });

  it('replaces only the cookies the server set anew', () => {
    const session = csrfFromResponse({ 'x-csrf-token': 't3', 'set-cookie': 'JSESSIONID=s2; Path=/' }, 'JSESSIONID=s1; __VCAP_ID__=a');
    expect(session).toEqual({ token: 't3', cookie: '__VCAP_ID__=a; JSESSIONID=s2' });
  });

  it('a Set-Cookie that has already expired removes its cookie, also one the fetch was sent with (RFC 6265 §5.3)', () => {
    const now = Date.parse('2026-06-01T12:00:00Z');
    const headers = {
      'x-csrf-token': 't5',
      'set-cookie': [
        'JSESSIONID=s3; Path=/; HttpOnly',
        'saplb_*=; Max-Age=0; Path=/',
        'legacy=deleted; Expires=Thu, 01 Jan 1970 00:00:01 GMT',
        'later=x; Expires=Mon, 01 Jun 2026 12:00:01 GMT',
        'kept=y; Max-Age=60; Expires=Thu, 01 Jan 1970 00:00:01 GMT', // Max-Age wins
        'odd=z; Max-Age=soon', // not a number: ignored, not an expiry
      ],
    };
    expect(csrfFromResponse(headers, 'saplb_*=(J2EE1)1; legacy=v; theme=dark', now)).toEqual({ token: 't5', cookie: 'theme=dark; JSESSIONID=s3; later=x; kept=y; odd=z' });
    // The last Set-Cookie of a name wins: removed, then set again.
    expect(csrfFromResponse({ 'x-csrf-token': 't6', 'set-cookie': ['a=; Max-Age=0', 'a=2'] }, 'a=1', now)).toEqual({ token: 't6', cookie: 'a=2' });
    expect(csrfFromResponse({ 'x-csrf-token': 't7', 'set-cookie': 'a=; Max-Age=-1' }, 'a=1', now)).toEqual({ token: 't7', cookie: undefined });
  });

  it("reads a cookie's Expires against the answer's Date, not a local clock that is off", () => {
    // The local clock an hour ahead of the server's: the session cookie has 30 minutes left by the server's.
    const localNow = Date.parse('2026-06-01T13:00:00Z');
    const headers = (date?: string) => ({
      'x-csrf-token': 't8',
      'set-cookie': ['JSESSIONID=s8; Path=/; Expires=Mon, 01 Jun 2026 12:30:00 GMT', 'gone=x; Expires=Mon, 01 Jun 2026 11:59:00 GMT'],
      ...(date === undefined ? {} : { date }),
    });
    expect(csrfFromResponse(headers('Mon, 01 Jun 2026 12:00:00 GMT'), undefined, localNow)).toEqual({ token: 't8', cookie: 'JSESSIONID=s8' });
    // Without a Date (or one that is no date), the local clock is all there is.
    expect(csrfFromResponse(headers(), undefined, localNow)).toEqual({ token: 't8', cookie: undefined });
    expect(csrfFromResponse(headers('yesterday'), undefined, localNow)).toEqual({ token: 't8', cookie: undefined });
  });

  it('tells cookies apart by name and path, and removes only the one an expired Set-Cookie names', () => {
    const now = Date.parse('2026-06-01T12:00:00Z');
    const answer = (...setCookie: string[]) => csrfFromResponse({ 'x-csrf-token': 't', 'set-cookie': setCookie }, undefined, now)?.cookie;
    expect(answer('JSESSIONID=new; Path=/', 'JSESSIONID=; Path=/old; Max-Age=0')).toBe('JSESSIONID=new');
    expect(answer('a=1; Path=/', 'a=2; Path=/http')).toBe('a=1; a=2');
    expect(answer('a=1; Path=/', 'a=2; Path=/')).toBe('a=2');
    // What is no cookie-date is ignored (RFC 6265 §5.2.1), not read as a date long past: the cookie stays.
    for (const expires of ['0', '-1', 'never', 'Thu, 31 Apr 2030 00:00:00 GMT']) expect([expires, answer(`JSESSIONID=abc; Path=/; Expires=${expires}`)]).toEqual([expires, 'JSESSIONID=abc']);
    expect(answer('JSESSIONID=abc; Expires=Fri, 01-Jan-60 00:00:00 GMT')).toBe('JSESSIONID=abc'); // 2060, not 1960
    expect(answer('JSESSIONID=abc; Expires=Sun, 06-Nov-94 08:49:37 GMT')).toBeUndefined(); // 1994
  });

  it('is no session without a token, or when the answer only says Required', () => {
    expect(csrfFromResponse({ 'set-cookie': 'JSESSIONID=s1' })).toBeUndefined();
    expect(csrfFromResponse({ 'x-csrf-token': 'Required' })).toBeUndefined();
    expect(csrfFromResponse({ 'x-csrf-token': 't4' })).toEqual({ token: 't4', cookie: undefined });
  });
});

describe('parseCookieDate (RFC 6265 §5.1.1)', () => {
  it('reads the forms servers send, two-digit years as §5.1.1 maps them, and refuses what is no date', () => {
    const utc = (iso: string) => Date.parse(iso);
    expect(parseCookieDate('Wed, 09 Jun 2021 10:18:14 GMT')).toBe(utc('2021-06-09T10:18:14Z'));
    expect(parseCookieDate('Wednesday, 09-Jun-21 10:18:14 GMT')).toBe(utc('2021-06-09T10:18:14Z'));
    expect(parseCookieDate('Wed Jun  9 10:18:14 2021')).toBe(utc('2021-06-09T10:18:14Z'));
    expect(parseCookieDate('Thu, 01-Jan-70 00:00:01 GMT')).toBe(1_000);
    expect(parseCookieDate('Sat, 01-Jan-69 00:00:00 GMT')).toBe(utc('2069-01-01T00:00:00Z'));
    for (const text of ['0', '-1', '', 'tomorrow', '2021-06-09', 'Wed, 09 Jun 2021', 'Wed, 32 Jun 2021 10:18:14 GMT', 'Wed, 09 Jun 1600 10:18:14 GMT', 'Wed, 09 Jun 2021 24:00:00 GMT']) {
      expect([text, parseCookieDate(text)]).toEqual([text, undefined]);
    }
  });
});

describe('mergeCookies', () => {
  it("drops the sender's pairs that the session sets, keeps the others in order, session last", () => {
    expect(mergeCookies('JSESSIONID=old; theme=dark; __VCAP_ID__=x', 'JSESSIONID=s2; __VCAP_ID__=y')).toBe('theme=dark; JSESSIONID=s2; __VCAP_ID__=y');
  });

  it('copes with odd spacing, empty pairs and nothing to keep', () => {
    expect(mergeCookies(' a=1 ;;b=2', 'b=3')).toBe('a=1; b=3');
    expect(mergeCookies('JSESSIONID=old', 'JSESSIONID=s2')).toBe('JSESSIONID=s2');
    expect(mergeCookies('a=1', '')).toBe('a=1');
  });
});

describe('CsrfSession.renew', () => {
  const one: CsrfCredentials = { token: 't1', cookie: 'JSESSIONID=s1' };
  const two: CsrfCredentials = { token: 't2', cookie: 'JSESSIONID=s2' };

  it('shares one fetch between concurrent callers, and hands a later caller with the stale session the new one', async () => {
    const session = new CsrfSession();
    let fetches = 0;
    const fetch = async (): Promise<CsrfCredentials> => {
      fetches++;
      return one;
    };
    expect(await Promise.all([session.renew(undefined, fetch), session.renew(undefined, fetch)])).toEqual([one, one]);
    expect(await session.renew(undefined, fetch)).toBe(one);
    expect(fetches).toBe(1);
  });

  it('fetches for a stale session when there is no current one: a failed fetch, or the new session of a rotated route', async () => {
    const failed = new CsrfSession();
    await failed.renew(undefined, async () => one);
    expect(await failed.renew(one, async () => undefined)).toBeUndefined();
    expect(await failed.renew(one, async () => two)).toBe(two);
    const rotated = new CsrfSession();
    expect(await rotated.renew(one, async () => two)).toBe(two);
    expect(rotated.current).toBe(two);
  });

  it('hands a caller with an older session the fetch under way, not the session that fetch is replacing', async () => {
    // B was sent before `one` was set; A was refused with `one` and is fetching `two` when B's own refusal comes.
    const session = new CsrfSession();
    await session.renew(undefined, async () => one);
    let finish!: (credentials: CsrfCredentials) => void;
    const forA = session.renew(one, () => new Promise<CsrfCredentials>((resolve) => (finish = resolve)));
    const forB = session.renew(undefined, async () => {
      throw new Error('B must share the fetch under way');
    });
    finish(two);
    expect(await forA).toBe(two);
    expect(await forB).toBe(two);
  });
});

describe('which requests carry the session', () => {
  it('only modifying methods: GET, HEAD, OPTIONS and TRACE never do', () => {
    expect(['GET', 'HEAD', 'OPTIONS', 'TRACE'].filter(isModifying)).toEqual([]);
    expect(['POST', 'PUT', 'PATCH', 'DELETE'].every(isModifying)).toBe(true);
  });

  it('only a 403 with X-CSRF-Token: Required (any case) asks for a session', () => {
    expect(isCsrfRequired(403, { 'x-csrf-token': 'required' })).toBe(true);
    expect(isCsrfRequired(401, { 'x-csrf-token': 'Required' })).toBe(false);
    expect(isCsrfRequired(403, {})).toBe(false);
    expect(isCsrfRequired(403, { 'x-csrf-token': ['Required', 'Required'] })).toBe(false);
  });
});
