import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger, isoTimeOf } from '../../src/logger.js';

describe('log timestamps', () => {
  it('write the time exactly as toISOString does, across milliseconds, seconds, days and years', () => {
    const starts = [Date.UTC(2026, 10, 29, 19, 53, 12, 0), Date.UTC(2026, 11, 31, 23, 59, 59, 990), Date.UTC(2024, 1, 29, 0, 0, 0, 0)];
    for (const start of starts) {
      for (let t = start; t < start + 2_500; t += 7) {
        expect(isoTimeOf(t)).toBe(`,"time":"${new Date(t).toISOString()}"`);
        expect(isoTimeOf(t)).toBe(`,"time":"${new Date(t).toISOString()}"`); // from the cache
      }
    }
    // Back in time (clock adjusted): still right.
    expect(isoTimeOf(starts[1]!)).toBe(`,"time":"${new Date(starts[1]!).toISOString()}"`);
    expect(isoTimeOf(starts[0]! + 5)).toBe(`,"time":"${new Date(starts[0]! + 5).toISOString()}"`);
  });
});

describe('log redaction (the second line of defence)', () => {
  it('censors secrets under their usual names, header names in either case, at the top, one level down and in headers', () => {
    const lines: string[] = [];
    const stream = new Writable({ write: (chunk: Buffer, _encoding, done) => (lines.push(chunk.toString()), done()) });
    const log = createLogger({ level: 'info', stream });
    log.info(
      {
        secret: 'FAKE-plain-secret',
        clientsecret: 'FAKE-client-secret',
        credentials: { secret: 'FAKE-nested', key: 'FAKE-PRIVATE-KEY' },
        req: { headers: { Authorization: 'Bearer FAKE-cap', authorization: 'Bearer FAKE-low', Cookie: 'JSESSIONID=FAKE-1', 'X-CSRF-Token': 'FAKE-csrf', accept: 'text/xml' } },
      },
      'probe',
    );
    const line = lines.join('');
    expect(line).not.toMatch(/FAKE-/);
    expect(line).toContain('"accept":"text/xml"');
  });
});
