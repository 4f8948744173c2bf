import { describe, expect, it } from 'vitest';
import { headRefusal, onlyChunked } from '../../src/request-head.js';

/** A head as node's parser hands it over: `raw` in order, `headers` as node folds them (first Host wins). */
function head(raw: string[], httpVersion = '1.1'): { headers: Record<string, string>; rawHeaders: string[]; httpVersion: string } {
  const headers: Record<string, string> = {};
  for (let i = 0; i < raw.length; i += 2) headers[raw[i]!.toLowerCase()] ??= raw[i + 1]!;
  return { headers, rawHeaders: raw, httpVersion };
}

const HOST = ['Host', 'localhost'];

describe('request head', () => {
  it('takes an ordinary head, every token character in a field name, and visible ASCII a parser lets through in the target', () => {
    expect(headRefusal(head([...HOST, "X-a!#$%&'*+-.^_`|~09Zz", 'v']), '/http/x?a=1&b=%20')).toBeUndefined();
    // Not in RFC 3986's set, but visible ASCII that node's parsers pass and undici sends as is.
    expect(headRefusal(head(HOST), '/http/a"b{c}|d\\e<f>^`')).toBeUndefined();
    expect(headRefusal(head([]), '/x')).toMatch(/must carry a Host/);
    expect(headRefusal(head([], '1.0'), '/x')).toBeUndefined();
  });

  // What node 20.19.0 and 20.19.1 (llhttp 8) pass on, and newer parsers refuse.
  it.each([
    ['a space in a field name', 'Bad Name'],
    ['an empty field name', ''],
    ['whitespace before the colon', 'X-A '],
    ['a TAB in a field name', 'X\tA'],
    ['a separator in a field name', 'X(y)'],
    ['a non-ASCII byte in a field name', 'X\u00ff'],
  ])('refuses %s', (_name, field) => {
    expect(headRefusal(head([...HOST, field, 'v']), '/x')).toMatch(/^a header field name that is not a token/);
  });

  it.each([
    ['a raw byte over 0x7e', '/http/caf\u00c3\u00a9'],
    ['DEL', '/a\u007fb'],
    ['a TAB', '/a\tb'],
    ['a space', '/a b'],
    ['a control byte', '/a\u0001b'],
  ])('refuses a target with %s', (_name, target) => {
    expect(headRefusal(head(HOST), target)).toMatch(/^a request target with a byte outside visible ASCII/);
  });

  it('refuses framing that cannot be trusted, a second Host and a fragment', () => {
    expect(headRefusal(head([...HOST, 'Transfer-Encoding', 'gzip, chunked']), '/x')).toBe('unsupported Transfer-Encoding');
    expect(headRefusal(head(['Transfer-Encoding', 'chunked'], '1.0'), '/x')).toMatch(/HTTP\/1\.0 request/);
    expect(headRefusal(head([...HOST, 'Transfer-Encoding', ' Chunked ']), '/x')).toBeUndefined();
    expect(headRefusal(head([...HOST, 'Content-Length', '9007199254740992']), '/x')).toMatch(/Content-Length over 9007199254740991/);
    expect(headRefusal(head([...HOST, 'Content-Length', '9007199254740991']), '/x')).toBeUndefined();
    expect(headRefusal(head([...HOST, 'HOST', 'other']), '/x')).toBe('more than one Host header');
    expect(headRefusal(head(HOST), '/x#frag')).toMatch(/fragment/);
  });

  it('takes chunked alone as a transfer coding', () => {
    expect(onlyChunked('chunked')).toBe(true);
    expect(onlyChunked(' CHUNKED')).toBe(true);
    expect(onlyChunked('gzip')).toBe(false);
    expect(onlyChunked(['chunked', 'chunked'])).toBe(false);
  });
});
