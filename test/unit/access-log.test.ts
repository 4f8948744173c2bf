import { describe, expect, it } from 'vitest';
import { jsonAccessLog } from '../../src/access-log.js';
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
  const log = jsonAccessLog({ level, destination: { write: (line: string) => lines.push(line) }, time: () => ',"time":"2026-01-01T00:00:00.000Z"', name: 'oauth-sidecar' });
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
});
