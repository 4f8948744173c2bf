import { afterEach, describe, expect, it, vi } from 'vitest';
import { pino } from 'pino';
import { jsonAccessLog, pinoAccessLog, quoted, tenths } from '../../src/access-log.js';
import type { RequestRecord } from '../../src/proxy.js';

const record: RequestRecord = {
  requestId: 'req-1',
  route: 'default',
  method: 'GET',
  path: '/http/orders',
  status: 200,
  upstreamStatus: 200,
  upstreamMs: 1.5,
  durationMs: 2.345,
  bytesIn: 0,
  bytesOut: 39,
  error: undefined,
  retried: undefined,
  aborted: false,
};

function capture(level: Parameters<typeof jsonAccessLog>[0]['level']) {
  const lines: string[] = [];
  const log = jsonAccessLog({ level, destination: { write: (line: string) => lines.push(line) }, time: () => ',"time":"2026-01-01T00:00:00.000Z"', name: 'oauth-sidecar', batchChars: 0 });
  return { log, lines };
}

describe('access log', () => {
  it('writes one JSON line in the shape of the pino logs', () => {
    const { log, lines } = capture('info');
    log.write(record);
    expect(lines).toHaveLength(1);
    expect(lines[0]!.endsWith('\n')).toBe(true);
    expect(JSON.parse(lines[0]!)).toEqual({
      level: 'info',
      time: '2026-01-01T00:00:00.000Z',
      name: 'oauth-sidecar',
      requestId: 'req-1',
      route: 'default',
      method: 'GET',
      path: '/http/orders',
      status: 200,
      upstreamStatus: 200,
      durationMs: 2.3,
      bytesIn: 0,
      bytesOut: 39,
      msg: 'request',
    });
  });

  it('logs 5xx at warn with the error, retries and aborts, and leaves out what is unknown', () => {
    const { log, lines } = capture('info');
    log.write({ ...record, route: undefined, upstreamStatus: undefined, status: 502, error: 'UPSTREAM_UNREACHABLE', retried: '401-refresh+reconnect', aborted: true });
    const line = JSON.parse(lines[0]!) as Record<string, unknown>;
    expect(line).toMatchObject({ level: 'warn', status: 502, error: 'UPSTREAM_UNREACHABLE', retried: '401-refresh+reconnect', aborted: true });
    expect(line).not.toHaveProperty('route');
    expect(line).not.toHaveProperty('upstreamStatus');
    expect(line).not.toHaveProperty('reason');
  });

  it("carries the reason of the sidecar's own 5xx, as the sender's answer says it, in both outputs", () => {
    const reason = 'upstream cpi.example:443: the HTTPS proxy 127.0.0.1:9 refused the connection (ECONNREFUSED) — check HTTPS_PROXY';
    const failed = { ...record, status: 502, error: 'UPSTREAM_UNREACHABLE', reason };
    const { log, lines } = capture('info');
    log.write(failed);
    expect(JSON.parse(lines[0]!)).toMatchObject({ level: 'warn', error: 'UPSTREAM_UNREACHABLE', reason });
    const chunks: string[] = [];
    const pretty = pinoAccessLog(pino({ level: 'info' }, { write: (chunk: string) => void chunks.push(chunk) }));
    pretty.write(failed);
    expect(JSON.parse(chunks[0]!)).toMatchObject({ level: 40, error: 'UPSTREAM_UNREACHABLE', reason });
  });

  it("logs a 500 (the upstream's own, passed on) at warn in both outputs, the pretty one with retried and aborted too", () => {
    const failed = { ...record, status: 500, upstreamStatus: 500, retried: 'reconnect', aborted: true };
    const { log, lines } = capture('info');
    log.write(failed);
    expect(JSON.parse(lines[0]!)).toMatchObject({ level: 'warn', status: 500, retried: 'reconnect', aborted: true });
    const chunks: string[] = [];
    const pretty = pinoAccessLog(pino({ level: 'info' }, { write: (chunk: string) => void chunks.push(chunk) }));
    pretty.write(failed);
    expect(JSON.parse(chunks[0]!)).toMatchObject({ level: 40, status: 500, retried: 'reconnect', aborted: true });
  });

  it('logs an answer an upstream failure cut at warn, and a sender refusal at info', () => {
    const { log, lines } = capture('info');
    log.write({ ...record, status: 200, error: 'UPSTREAM_TIMEOUT' });
    log.write({ ...record, status: 404, upstreamStatus: 404, error: 'UPSTREAM_UNREACHABLE' });
    log.write({ ...record, status: 404, upstreamStatus: undefined, error: 'ROUTE_NOT_FOUND' });
    log.write({ ...record, status: 401, upstreamStatus: undefined, error: 'SENDER_UNAUTHORIZED' });
    expect(lines.map((l) => (JSON.parse(l) as { level: string }).level)).toEqual(['warn', 'warn', 'info', 'info']);
  });

  it('escapes whatever a sender put into the path or request id', () => {
    const { log, lines } = capture('info');
    const path = '/a"b\\c\u0001\u00e9\u2028';
    log.write({ ...record, path, requestId: 'x"}{\\' });
    const line = JSON.parse(lines[0]!) as Record<string, unknown>;
    expect(line['path']).toBe(path);
    expect(line['requestId']).toBe('x"}{\\');
    expect(lines[0]!.split('\n')).toHaveLength(2);
  });

  it('honours the log level: warn keeps only 5xx lines, error and silent none', () => {
    for (const [level, expected] of [['trace', 2], ['info', 2], ['warn', 1], ['error', 0], ['silent', 0]] as const) {
      const { log, lines } = capture(level);
      log.write(record);
      log.write({ ...record, status: 503 });
      expect(lines, level).toHaveLength(expected);
    }
  });

  describe('batches', () => {
    afterEach(() => {
      vi.useRealTimers();
    });

    function batched(batchChars: number) {
      const writes: string[] = [];
      const flushes: number[] = [];
      const log = jsonAccessLog({
        level: 'info',
        destination: { write: (chunk: string) => writes.push(chunk), flush: () => flushes.push(writes.length) },
        time: () => ',"time":"2026-01-01T00:00:00.000Z"',
        name: 'oauth-sidecar',
        batchChars,
        batchMs: 250,
      });
      return { log, writes, flushes };
    }

    it('hands lines over once enough have gathered, whole lines only', () => {
      const { log, writes } = batched(1_000);
      const lineLength = 230; // about; the exact split point does not matter
      for (let i = 0; i < 10; i++) log.write({ ...record, requestId: `r${i}` });
      expect(writes.length).toBeGreaterThanOrEqual(1);
      expect(writes.length).toBeLessThan(10);
      for (const chunk of writes) {
        expect(chunk.length).toBeGreaterThanOrEqual(1_000 - lineLength);
        expect(chunk.endsWith('\n')).toBe(true);
        for (const line of chunk.trimEnd().split('\n')) expect(JSON.parse(line)).toMatchObject({ msg: 'request' });
      }
    });

    it('hands a small batch over after the delay, and flush writes what is pending at once', () => {
      vi.useFakeTimers();
      const { log, writes, flushes } = batched(16 * 1024);
      log.write(record);
      log.write({ ...record, requestId: 'second' });
      expect(writes).toHaveLength(0);
      vi.advanceTimersByTime(249);
      expect(writes).toHaveLength(0);
      vi.advanceTimersByTime(1);
      expect(writes).toHaveLength(1);
      expect(writes[0]!.trimEnd().split('\n').map((l) => (JSON.parse(l) as { requestId: string }).requestId)).toEqual(['req-1', 'second']);

      log.write({ ...record, requestId: 'last' });
      log.flush();
      expect(writes).toHaveLength(2);
      expect(JSON.parse(writes[1]!)).toMatchObject({ requestId: 'last' });
      expect(flushes.at(-1)).toBe(2); // the destination is flushed after the pending lines were handed over
      vi.advanceTimersByTime(1_000);
      expect(writes).toHaveLength(2); // no stray timer writes an empty batch
    });
  });
});

describe('access log field writers', () => {
  it('quoted() gives exactly JSON.stringify for every kind of character', () => {
    const samples = ['', 'plain', '/http/a b', 'quo"te', 'back\\slash', 'tab\there', 'nl\n', '\u0000\u001f\u007f', 'ümlaut ÿ', '€ 𝄞', '\ud800 lone', 'x\udfff'];
    for (let c = 0; c <= 0xffff; c++) samples.push(`a${String.fromCharCode(c)}b`); // every UTF-16 code unit
    expect(samples.filter((s) => quoted(s) !== JSON.stringify(s))).toEqual([]);
  });

  it('tenths() writes a duration as JSON.stringify writes it rounded to a tenth', () => {
    const values = [0, 0.04, 0.05, 0.06, 0.95, 1, 1.25, 2.345, 9.99, 10, 123.45, 59_999.96, 3_600_000.04];
    for (let v = 0; v < 50; v += 0.0137) values.push(v);
    for (const v of values) expect(tenths(v)).toBe(JSON.stringify(Math.round(v * 10) / 10));
  });
});
