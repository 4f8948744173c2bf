/**
 * pino logger with redaction as a second line of defence: the sidecar never
 * puts a secret, key or token into a log object on purpose, and these paths
 * censor them should one slip in (headers, cookies, credentials, tokens).
 * Redaction does not reach message strings, so messages are built from
 * non-secret values only (see `errors.ts`).
 */
import { writeSync } from 'node:fs';
import { createRequire } from 'node:module';
import { pino, type DestinationStream, type Logger } from 'pino';
import { jsonAccessLog, pinoAccessLog, type AccessLog } from './access-log.js';
import type { LogLevel } from './config.js';

export type { Logger };

/** Matched as written (pino's paths are exact): header names as node gives them (lower case) and as usually capitalised. */
const SECRET_KEYS = [
  'authorization',
  'Authorization',
  'proxy-authorization',
  'Proxy-Authorization',
  'cookie',
  'Cookie',
  'set-cookie',
  'Set-Cookie',
  'x-csrf-token',
  'X-CSRF-Token',
  'secret',
  'clientSecret',
  'clientsecret',
  'client_secret',
  'key',
  'privateKey',
  'password',
  'access_token',
  'accessToken',
  'token',
];

/** Paths at the top level, one level down and in request/response headers. */
export const REDACT_PATHS = [
  ...SECRET_KEYS.map((k) => `["${k}"]`),
  ...SECRET_KEYS.map((k) => `*["${k}"]`),
  ...SECRET_KEYS.map((k) => `*.headers["${k}"]`),
];

export interface LoggerOptions {
  level: LogLevel;
  /** Human-readable lines (pino-pretty) instead of JSON. */
  pretty?: boolean;
  /** File descriptor: 1 (stdout) for `serve`, 2 (stderr) when stdout carries a result. */
  fd?: number;
  /** Where a failure of the log output itself is reported (default 2, stderr). */
  noteFd?: number;
  /** Test hook: write log lines here instead. */
  stream?: DestinationStream;
}

/** One line to `fd` (stderr), synchronously; nothing if that fails too (it may be the same full disk). */
function note(fd: number, text: string): void {
  try {
    writeSync(fd, text);
  } catch {
    // nowhere left to say it
  }
}

export interface Loggers {
  /** Everything but the access lines: redacted. */
  log: Logger;
  /** One line per request, built from non-secret values only (see `access-log.ts`). Same destination as `log`. */
  access: AccessLog;
  /** Lines dropped because the output was not being read (see `LOG_BUFFER_BYTES`), or failed. */
  dropped?: { readonly lines: number };
}

/**
 * What the log may hold unwritten. Output nobody reads (a stuck log driver, a pipe into a stalled tool) would
 * otherwise grow the process at the request rate until it is killed; beyond this, lines are dropped and counted
 * (`oauth_sidecar_log_lines_dropped_total`) instead.
 */
export const LOG_BUFFER_BYTES = 16 * 1024 * 1024;

/**
 * pino's ISO timestamp (`,"time":"…"`). Under load many access lines share a millisecond and all of a
 * second share everything up to the milliseconds, while `toISOString` costs about 0.7 µs: it runs once
 * per second, and the milliseconds are appended.
 */
let lastMs = Number.NaN;
let lastTime = '';
let lastSecond = Number.NaN;
let secondPrefix = '';
function isoTime(): string {
  return isoTimeOf(Date.now());
}

/** `,"time":"<now as ISO 8601>"`, from the cache when `now` is the last millisecond asked for. Exported for tests. */
export function isoTimeOf(now: number): string {
  if (now === lastMs) return lastTime;
  lastMs = now;
  const ms = now % 1000;
  const second = now - ms;
  if (second !== lastSecond) {
    lastSecond = second;
    secondPrefix = `,"time":"${new Date(second).toISOString().slice(0, 20)}`; // …T19:53:12.
  }
  lastTime = `${secondPrefix}${ms < 10 ? '00' : ms < 100 ? '0' : ''}${ms}Z"`;
  return lastTime;
}

export function createLoggers(options: LoggerOptions): Loggers {
  const base = {
    level: options.level,
    base: { name: 'oauth-sidecar' },
    timestamp: isoTime,
  };
  const dropped = { lines: 0 };
  const redact = { paths: REDACT_PATHS, censor: '[REDACTED]' };
  if (options.pretty && !options.stream) {
    // Formatted on the main thread into the same guarded output as JSON (not pino's transport worker, whose own
    // output has none of that guard: a reader gone left a process that neither logged nor stopped). Redaction
    // runs before, so pretty output is redacted too. Pretty is for people, not throughput.
    const out = guardedDestination(options, dropped);
    // Loaded only here: JSON output (the default off a terminal) does without it and its dependencies.
    const { prettyFactory } = createRequire(import.meta.url)('pino-pretty') as typeof import('pino-pretty');
    // One line per record, as in JSON: `oauth_sidecar_log_lines_dropped_total` counts records either way.
    const prettify = prettyFactory({ translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname,name', singleLine: true });
    const pretty = { write: (line: string) => out.write(prettify(line)), flush: (done?: (err?: Error) => void) => out.flush(done) };
    const log = pino({ ...base, redact }, pretty);
    return { log, access: pinoAccessLog(log), dropped };
  }
  const destination = options.stream ?? guardedDestination(options, dropped);
  const formatters = { level: (label: string) => ({ level: label }) };
  return {
    log: pino({ ...base, formatters, redact }, destination),
    // The test hook sees every access line at once; real output is batched (see `access-log.ts`).
    access: jsonAccessLog({ level: options.level, destination, time: isoTime, name: base.base.name, ...(options.stream && { batchChars: 0 }) }),
    dropped,
  };
}

/**
 * The output (stdout, or stderr for `token` and `check`), written asynchronously, holding at most
 * `LOG_BUFFER_BYTES`; what it cannot take is dropped and counted in `dropped`.
 */
function guardedDestination(options: LoggerOptions, dropped: { lines: number }): DestinationStream & { flush(done?: (err?: Error) => void): void } {
  const countDropped = (data: string): void => {
    for (let i = data.indexOf('\n'); i !== -1; i = data.indexOf('\n', i + 1)) dropped.lines++;
  };
  const boom = pino.destination({ fd: options.fd ?? 1, sync: false, maxLength: LOG_BUFFER_BYTES });
  boom.on('drop', countDropped);
  // The output failed for good (a full disk under `serve >> file`, a reader gone): every line from here on is
  // dropped and counted, and the proxy serves on. Left to pino, any error but EPIPE would end the process —
  // and its exit hook would then retry the failed write for ever (sonic-boom's flushSync), a process that
  // neither serves nor stops. (pino silences the stream itself on EPIPE, uncounted: this counts then too.)
  let failed = false;
  boom.on('error', (err: NodeJS.ErrnoException) => {
    if (failed) return; // pino's filter passes an error on by emitting it again
    failed = true;
    // What sonic-boom (4.x) still holds: the write that failed and those queued behind it. Its own fields; if a
    // later version names them otherwise, those lines go uncounted.
    const held = boom as unknown as { _writingBuf?: unknown; _bufs?: unknown };
    for (const data of [held._writingBuf, ...(Array.isArray(held._bufs) ? held._bufs : [])]) if (typeof data === 'string') countDropped(data);
    Object.assign(boom, {
      write: (data: string) => (countDropped(data), true),
      flush: (done?: (err?: Error) => void) => done?.(),
      flushSync: () => undefined,
      end: () => undefined,
    });
    note(options.noteFd ?? 2, `oauth-sidecar: the log output failed (${err.code ?? 'error'}); log lines are dropped from now on and counted in oauth_sidecar_log_lines_dropped_total\n`);
  });
  return boom;
}
