import { describe, expect, it } from 'vitest';
import { MAX_RETRY_AFTER_S, parseRetryAfter } from '../../src/token-client.js';

const NOW = Date.parse('2025-06-01T12:00:00Z');

describe('parseRetryAfter (RFC 9110 §10.2.3)', () => {
  it('gives undefined, so that the normal backoff applies, for zero, a past date and anything not RFC 9110; real waits still count', () => {
    const none = ['0', '00', '1.5', '-1', '+5', '1e3', 'Sun, 01 Jun 2025 11:59:00 GMT', 'soon', '', undefined];
    expect(none.map((value) => [value, parseRetryAfter(value, NOW)])).toEqual(none.map((value) => [value, undefined]));
    expect(parseRetryAfter('120', NOW)).toBe(120);
    expect(parseRetryAfter(' 7 ', NOW)).toBe(7);
    expect(parseRetryAfter(['3', '9'], NOW)).toBe(3);
    expect(parseRetryAfter('Sun, 01 Jun 2025 12:00:30 GMT', NOW)).toBe(30);
  });

  it('reads the obsolete RFC 850 and asctime dates as GMT, whatever the local time zone (RFC 9110 §5.6.7)', () => {
    const zone = process.env['TZ'];
    try {
      for (const tz of ['UTC', 'America/New_York', 'Asia/Tokyo']) {
        process.env['TZ'] = tz; // node applies a changed TZ to Date at once
        const seen = ['Sunday, 01-Jun-25 12:00:30 GMT', 'Sun Jun  1 12:00:30 2025', 'Sun Jun 01 12:00:30 2025'].map((value) => [tz, value, parseRetryAfter(value, NOW)]);
        expect(seen).toEqual(seen.map(([, value]) => [tz, value, 30]));
      }
    } finally {
      if (zone === undefined) delete process.env['TZ'];
      else process.env['TZ'] = zone;
    }
  });

  it('believes a wait of at most MAX_RETRY_AFTER_S, in seconds or as a date', () => {
    expect(parseRetryAfter(String(MAX_RETRY_AFTER_S), NOW)).toBe(MAX_RETRY_AFTER_S);
    for (const value of [String(MAX_RETRY_AFTER_S + 1), '999999999', '1'.repeat(30), 'Fri, 31 Dec 9999 23:59:59 GMT']) {
      expect([value, parseRetryAfter(value, NOW)]).toEqual([value, MAX_RETRY_AFTER_S]);
    }
  });
});
