import { execFileSync } from 'node:child_process';
import { createReadStream, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { createLoggers, isoTimeOf, LOG_BUFFER_BYTES } from '../../src/logger.js';

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
    const { log } = createLoggers({ level: 'info', stream });
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

describe('log output that fails (a full disk under `serve >> file`)', () => {
  it('drops and counts every line from the failure on, says so once, and never throws or retries for ever', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'oauth-sidecar-log-'));
    const notes = join(dir, 'stderr');
    const noteFd = openSync(notes, 'w');
    const loggers = createLoggers({ level: 'info', fd: openSync('/dev/full', 'w'), noteFd });
    const destination = (loggers.log as unknown as Record<symbol, NodeJS.EventEmitter & { flushSync(): void; end(): void }>)[pino.symbols.streamSym]!;
    const failed = new Promise((resolve) => destination.once('error', resolve));
    for (let i = 0; i < 5; i++) loggers.log.info({ i }, 'before the failure'); // one write under way, the rest queued
    await failed; // ENOSPC: without a listener of the sidecar's, an uncaught exception
    await new Promise((resolve) => setImmediate(resolve)); // pino's filter emits it once more, a listener later
    // The lines sonic-boom held when the write failed are counted too.
    expect(loggers.dropped!.lines).toBe(5);
    const before = loggers.dropped!.lines;
    for (let i = 0; i < 10; i++) loggers.log.info({ i }, 'after the failure');
    const record = { requestId: 'r', route: undefined, method: 'GET', path: '/x', status: 200, upstreamStatus: undefined, upstreamMs: undefined, durationMs: 1, bytesIn: 0, bytesOut: 0, error: undefined, retried: undefined, aborted: false };
    loggers.access.write(record);
    loggers.access.flush();
    expect(loggers.dropped!.lines - before).toBe(11);
    // What pino's exit hook calls: returns at once (sonic-boom alone retries a failed write every 100 ms for ever).
    destination.flushSync();
    destination.end();
    expect(readFileSync(notes, 'utf8')).toBe('oauth-sidecar: the log output failed (ENOSPC); log lines are dropped from now on and counted in oauth_sidecar_log_lines_dropped_total\n');
    rmSync(dir, { recursive: true, force: true });
  });
});

describe('log output nobody reads', () => {
  it('drops and counts lines once LOG_BUFFER_BYTES wait unwritten, instead of growing without bound', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'oauth-sidecar-log-'));
    const fifo = join(dir, 'out');
    execFileSync('mkfifo', [fifo]);
    const writeFd = openSync(fifo, 'r+'); // a pipe whose reader never reads (a stuck log driver)
    const loggers = createLoggers({ level: 'info', fd: writeFd });
    const line = 'x'.repeat(10_000);
    const lines = Math.ceil((2 * LOG_BUFFER_BYTES) / line.length);
    for (let i = 0; i < lines; i++) loggers.log.info({ line }, 'flood');
    // What the pipe took (64 KiB) and the buffer (16 MiB) hold ~1,700 of these lines; the rest are dropped.
    expect(loggers.dropped!.lines).toBeGreaterThan(lines / 3);
    expect(loggers.dropped!.lines).toBeLessThan(lines);
    // Read it empty, so that the write under way ends, then close.
    const reader = createReadStream(fifo, { fd: openSync(fifo, 'r') });
    reader.resume();
    // The destination writes what it holds, then closes its file descriptor.
    const destination = (loggers.log as unknown as Record<symbol, NodeJS.EventEmitter & { end(): void }>)[pino.symbols.streamSym]!;
    const closed = new Promise((resolve) => destination.once('close', resolve));
    destination.end();
    await closed;
    reader.destroy();
    rmSync(dir, { recursive: true, force: true });
  });
});

describe('pretty log output that fails', () => {
  it('counts dropped records, not the text lines of a record: one line per record, as in JSON', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'oauth-sidecar-log-'));
    const notes = join(dir, 'stderr');
    const noteFd = openSync(notes, 'w');
    const loggers = createLoggers({ level: 'info', fd: openSync('/dev/full', 'w'), noteFd, pretty: true });
    for (let i = 0; i < 5; i++) loggers.log.info({ i, text: 'two\nlines', nested: { a: 1, b: [1, 2] } }, 'before the failure');
    await expect.poll(() => readFileSync(notes, 'utf8')).toContain('the log output failed (ENOSPC)');
    expect(loggers.dropped!.lines).toBe(5);
    for (let i = 0; i < 10; i++) loggers.log.info({ i, nested: { a: 1 } }, 'after the failure');
    expect(loggers.dropped!.lines).toBe(15);
    rmSync(dir, { recursive: true, force: true });
  });
});

describe('log redaction', () => {
  it('censors the rest of its list too: access tokens, tokens, passwords, proxy credentials', () => {
    const lines: string[] = [];
    const stream = new Writable({ write: (chunk: Buffer, _encoding, done) => (lines.push(chunk.toString()), done()) });
    const { log } = createLoggers({ level: 'info', stream });
    log.info(
      {
        access_token: 'FAKE-at',
        token: 'FAKE-token',
        password: 'FAKE-password',
        clientSecret: 'FAKE-client-secret',
        req: { headers: { 'proxy-authorization': 'Basic FAKE-pa', 'Proxy-Authorization': 'Basic FAKE-PA' } },
      },
      'probe',
    );
    expect(lines.join('')).toContain('probe');
    expect(lines.join('')).not.toMatch(/FAKE-/);
  });

  it('censors in the pretty format (--log-format pretty) as in JSON', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'oauth-sidecar-log-'));
    try {
      const file = join(dir, 'out');
      const { log } = createLoggers({ level: 'info', pretty: true, fd: openSync(file, 'w') });
      log.info({ clientsecret: 'FAKE-client-secret', req: { headers: { authorization: 'Bearer FAKE-low' } } }, 'probe');
      await expect.poll(() => readFileSync(file, 'utf8')).toContain('probe'); // an asynchronous destination
      expect(readFileSync(file, 'utf8')).not.toMatch(/FAKE-/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
