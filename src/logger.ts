/**
 * pino logger with redaction as a second line of defence: the sidecar never
 * puts a secret, key or token into a log object on purpose, and these paths
 * censor them should one slip in (headers, cookies, credentials, tokens).
 * Redaction does not reach message strings, so messages are built from
 * non-secret values only (see `errors.ts`).
 */
import { pino, type DestinationStream, type Logger } from 'pino';
import type { LogLevel } from './config.js';

export type { Logger };

const SECRET_KEYS = [
  'authorization',
  'proxy-authorization',
  'cookie',
  'set-cookie',
  'x-csrf-token',
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

/** Log output is written when this much has gathered… */
export const LOG_BATCH_BYTES = 8 * 1024;
/** …or after this long, whichever comes first. */
export const LOG_FLUSH_MS = 250;

export interface LoggerOptions {
  level: LogLevel;
  /** Human-readable lines (pino-pretty, in a worker thread) instead of JSON. */
  pretty?: boolean;
  /** File descriptor: 1 (stdout) for `serve`, 2 (stderr) when stdout carries a result. */
  fd?: 1 | 2;
  /** Test hook: write log lines here instead. */
  stream?: DestinationStream;
}

export function createLogger(options: LoggerOptions): Logger {
  return createLoggers(options).log;
}

export interface Loggers {
  /** Everything else: redacted. */
  log: Logger;
  /**
   * One line per request. Its fields are built by the sidecar from non-secret values only (no headers,
   * no query), so it skips redaction, which re-walks every path on every line and cost about half of the
   * proxy's CPU per request in the benchmark. Same destination as `log`.
   */
  access: Logger;
}

export function createLoggers(options: LoggerOptions): Loggers {
  const base = {
    level: options.level,
    base: { name: 'oauth-sidecar' },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  if (options.pretty && !options.stream) {
    // Redaction runs before the transport, so pretty output is redacted too. Pretty is for people, not throughput.
    const log = pino({
      ...base,
      redact: { paths: REDACT_PATHS, censor: '[REDACTED]' },
      transport: { target: 'pino-pretty', options: { destination: options.fd ?? 1, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname,name' } },
    });
    return { log, access: log };
  }
  // Lines are written in batches (8 KiB, or every 250 ms when traffic is light): one write per line cost
  // about a tenth of the proxy's CPU per request in the benchmark. pino flushes what is left on exit.
  const destination = options.stream ?? pino.destination({ fd: options.fd ?? 1, sync: false, minLength: LOG_BATCH_BYTES, periodicFlush: LOG_FLUSH_MS });
  const formatters = { level: (label: string) => ({ level: label }) };
  return {
    log: pino({ ...base, formatters, redact: { paths: REDACT_PATHS, censor: '[REDACTED]' } }, destination),
    access: pino({ ...base, formatters }, destination),
  };
}
