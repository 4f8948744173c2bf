/**
 * The access log: one JSON line per request, in the same shape pino writes
 * (`level`, `time`, `name`, the fields, `msg: "request"`), 5xx answers and
 * answers cut by an upstream failure after they began at `warn`, everything
 * else at `info`.
 *
 * The line is built here rather than by pino: every field comes from the
 * sidecar's own `RequestRecord` (no headers, no query, nothing secret), so it
 * needs neither redaction nor generic serialization, and pino's per-line cost
 * was the largest single overhead of a proxied request in the benchmark. Lines
 * go to the same destination as the other logs, in batches: handing each line
 * to pino's destination on its own cost more than building it (sonic-boom
 * measures its whole pending buffer on every write), so lines gather here and
 * go out once 64 KiB have gathered or 250 ms after the first of them. Each
 * hand-over is one asynchronous write (a thread-pool round trip), which under
 * load, with the proxy on one CPU, held the main thread ~100 µs for 16 KiB and
 * ~145 µs for 64 KiB: 64 KiB batches cost ~0.55 instead of ~1.5-1.8 µs per
 * request (CPU profiles under node 20 and 24, against 16 KiB batches). With
 * pretty output (a person at a terminal) the lines go through the pino logger
 * instead.
 */
import { pino } from 'pino';
import type { LogLevel } from './config.js';
import type { Logger } from './logger.js';
import type { RequestRecord } from './proxy.js';

export interface AccessLog {
  write(record: RequestRecord): void;
  flush(): void;
}

export interface JsonAccessLogOptions {
  level: LogLevel;
  /** Where the lines go: the logs' own destination. */
  destination: { write(line: string): unknown; flush?: () => unknown };
  /** `,"time":…` exactly as the pino loggers write it. */
  time: () => string;
  /** The `name` field of every line. */
  name: string;
  /** Lines are handed to the destination once this many characters have gathered (0: every line at once)… */
  batchChars?: number;
  /** …or this long after the first of them. */
  batchMs?: number;
}

export const ACCESS_BATCH_CHARS = 64 * 1024;
export const ACCESS_BATCH_MS = 250;

export function jsonAccessLog(options: JsonAccessLogOptions): AccessLog {
  const { destination, time } = options;
  const levels = pino.levels.values;
  const threshold = levels[options.level] ?? Number.POSITIVE_INFINITY; // 'silent' has no value
  const infoOn = threshold <= levels['info']!;
  const warnOn = threshold <= levels['warn']!;
  const name = JSON.stringify(options.name);
  const batchChars = options.batchChars ?? ACCESS_BATCH_CHARS;
  const batchMs = options.batchMs ?? ACCESS_BATCH_MS;
  let pending = '';
  let timer: NodeJS.Timeout | undefined;
  const handOver = (): void => {
    if (timer !== undefined) {
      clearTimeout(timer);
      timer = undefined;
    }
    if (pending === '') return;
    const lines = pending;
    pending = '';
    destination.write(lines);
  };
  return {
    write(r) {
      const warn = isWarning(r);
      if (warn ? !warnOn : !infoOn) return;
      let line = `{"level":"${warn ? 'warn' : 'info'}"${time()},"name":${name},"requestId":${quoted(r.requestId)}`;
      if (r.route !== undefined) line += `,"route":${quoted(r.route)}`;
      line += `,"method":${quoted(r.method)},"path":${quoted(r.path)},"status":${r.status}`;
      if (r.upstreamStatus !== undefined) line += `,"upstreamStatus":${r.upstreamStatus}`;
      line += `,"durationMs":${tenths(r.durationMs)},"bytesIn":${r.bytesIn},"bytesOut":${r.bytesOut}`;
      if (r.error) line += `,"error":${quoted(r.error)}`;
      if (r.retried) line += `,"retried":${quoted(r.retried)}`;
      if (r.reason) line += `,"reason":${quoted(r.reason)}`;
      if (r.aborted) line += ',"aborted":true';
      pending += `${line},"msg":"request"}\n`;
      if (pending.length >= batchChars) handOver();
      else if (timer === undefined) {
        timer = setTimeout(handOver, batchMs);
        timer.unref(); // a pending batch never keeps the process alive: `flush` writes it on the way out
      }
    },
    flush: () => {
      handOver();
      destination.flush?.();
    },
  };
}

/** The same lines through a pino logger (pretty output for people). */
export function pinoAccessLog(logger: Logger): AccessLog {
  return {
    write(r) {
      logger[isWarning(r) ? 'warn' : 'info'](
        {
          requestId: r.requestId,
          route: r.route,
          method: r.method,
          path: r.path,
          status: r.status,
          upstreamStatus: r.upstreamStatus,
          durationMs: roundedMs(r.durationMs),
          bytesIn: r.bytesIn,
          bytesOut: r.bytesOut,
          ...(r.error && { error: r.error }),
          ...(r.retried && { retried: r.retried }),
          ...(r.reason && { reason: r.reason }),
          ...(r.aborted && { aborted: true }),
        },
        'request',
      );
    },
    flush: () => logger.flush(),
  };
}

/** Tenths of a millisecond. */
function roundedMs(ms: number): number {
  return Math.round(ms * 10) / 10;
}

/**
 * `roundedMs` as JSON, written as in `JSON.stringify` ("12.3", "4", "0.5") from integers: a
 * fractional number's shortest-form conversion costs more than the rest of the line's numbers.
 */
export function tenths(ms: number): string {
  const t = Math.round(ms * 10);
  const digit = t % 10;
  return digit === 0 ? `${t / 10}` : `${(t - digit) / 10}.${digit}`;
}

/** What `JSON.stringify` would escape in a string (RFC 8259 §7, plus lone surrogates). */
const NEEDS_ESCAPE = /["\\\u0000-\u001f\ud800-\udfff]/;

/** `JSON.stringify(text)`, without its cost for the common case: ids, routes, methods and paths rarely need escaping. */
export function quoted(text: string): string {
  return NEEDS_ESCAPE.test(text) ? JSON.stringify(text) : `"${text}"`;
}

/**
 * A 5xx, or an answer an upstream failure cut after it began (its status is the upstream's, its error an
 * `UPSTREAM_*` code, which the sidecar's own answers carry only with a 5xx).
 */
function isWarning(r: RequestRecord): boolean {
  return r.status >= 500 || (r.error !== undefined && r.error.startsWith('UPSTREAM_'));
}
