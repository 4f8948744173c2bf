/**
 * The operator's small files read at the edge — a config file, CA bundles, the basic-auth user list — as text,
 * only up to a size none of them reaches. A regular file, or a pipe that delivers its text and ends (`--config
 * <(envsubst < routes.yaml)`, `--ca /dev/stdin`): a pipe is read without blocking, so a FIFO nobody writes to, or
 * one that stays silent, is an error after a few seconds, not a startup that hangs with nothing said. Devices
 * (`/dev/zero`) are refused. Service keys have their own, tighter reader (`credential-source`).
 */
import { isUtf8 } from 'node:buffer';
import { closeSync, constants, openSync, readFileSync, readSync, statSync, type Stats } from 'node:fs';
import { open, readFile, stat } from 'node:fs/promises';
import { setTimeout as delay } from 'node:timers/promises';

/** Larger than any config file, CA bundle (Mozilla's is ~220 KB) or user list. */
export const MAX_TEXT_FILE_BYTES = 4 * 1024 * 1024;
/** A pipe silent for this long is given up: a FIFO nobody writes to, a command that hangs. */
export const PIPE_SILENCE_MS = 5_000;
const PIPE_POLL_MS = 10;

/** The file exists but is not one to read: its message says why. */
export class FileRefused extends Error {}

export interface TextFileLimits {
  /** Bytes at most (default `MAX_TEXT_FILE_BYTES`). */
  bytes?: number;
  /** A pipe silent for this long is given up (default `PIPE_SILENCE_MS`). */
  silenceMs?: number;
  /**
   * PEM only: text outside the blocks has no encoding (RFC 7468 §5.2), and a bundle with a Latin-1 comment works
   * with OpenSSL and node, so only UTF-16 (NUL bytes) is refused.
   */
  pem?: boolean;
}

export function readTextFileSync(path: string, { bytes = MAX_TEXT_FILE_BYTES, silenceMs = PIPE_SILENCE_MS, pem = false }: TextFileLimits = {}): string {
  if (!isPipe(statSync(path), bytes)) return utf8(readFileSync(path), pem);
  const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const text = new Collected(bytes, silenceMs);
    const pause = new Int32Array(new SharedArrayBuffer(4));
    for (;;) {
      const n = tryRead((buffer) => readSync(fd, buffer, 0, buffer.length, null), text);
      if (n === 0) return utf8(text.done(), pem);
      if (n === undefined) Atomics.wait(pause, 0, 0, PIPE_POLL_MS);
    }
  } finally {
    closeSync(fd);
  }
}

export async function readTextFile(path: string, { bytes = MAX_TEXT_FILE_BYTES, silenceMs = PIPE_SILENCE_MS, pem = false }: TextFileLimits = {}): Promise<string> {
  if (!isPipe(await stat(path), bytes)) return utf8(await readFile(path), pem);
  const file = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const text = new Collected(bytes, silenceMs);
    for (;;) {
      // A non-blocking read returns at once, with what is there or EAGAIN: only the wait between reads is async.
      const n = tryRead((buffer) => readSync(file.fd, buffer, 0, buffer.length, null), text);
      if (n === 0) return utf8(text.done(), pem);
      if (n === undefined) await delay(PIPE_POLL_MS);
    }
  } finally {
    await file.close();
  }
}

/** `text` without a leading byte order mark: Windows editors and some servers write one, and it is no content (RFC 8259 §8.1). */
export function withoutBom(text: string): string {
  return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
}

/** What a file saved as UTF-16 is told (see `notUtf8`). */
export const NOT_UTF8 = "holds NUL bytes: saved as UTF-16 (PowerShell's > writes that)? Save it as UTF-8";

/**
 * Why `text` is no UTF-8 text, or undefined: UTF-16 (what PowerShell's `>` and Notepad's "Unicode" write) puts a
 * NUL byte beside every ASCII character, which no config file, PEM, key or user list holds.
 */
export function notUtf8(text: string): string | undefined {
  return text.includes('\u0000') ? NOT_UTF8 : undefined;
}

/** What a certificate saved as DER (Windows' default `.cer` export) is told, instead of the UTF-16 guess its NUL bytes would get. */
export const DER_NOT_PEM = 'is DER (binary), not PEM text: convert it with `openssl x509 -inform der -in FILE -out FILE.pem`';

/** An ASN.1 SEQUENCE with a long-form length (RFC 5280 §4.1 in DER): what every DER certificate begins with. */
function isDerSequence(bytes: Buffer): boolean {
  return bytes[0] === 0x30 && bytes[1] !== undefined && bytes[1] >= 0x81 && bytes[1] <= 0x84;
}

/** What a file in a legacy 8-bit encoding is told (see `utf8`). */
export const NOT_UTF8_TEXT = 'is not UTF-8 text: saved as Windows-1252 ("ANSI") or Latin-1? Save it as UTF-8';

/**
 * The file's bytes as text, refused unless they are UTF-8 (RFC 3629): decoding would turn a Windows-1252 `ü` into
 * U+FFFD, and a password with it in the user list could then never match, with nothing said. `pem`: see `TextFileLimits`.
 */
function utf8(bytes: Buffer, pem: boolean): string {
  if (pem && isDerSequence(bytes)) throw new FileRefused(DER_NOT_PEM);
  const text = bytes.toString('utf8');
  const why = notUtf8(text) ?? (pem || isUtf8(bytes) ? undefined : NOT_UTF8_TEXT);
  if (why !== undefined) throw new FileRefused(why);
  return text;
}

/** Why `what` (e.g. "config file") could not be read, for a configuration problem: never its content. */
export function readFailure(err: unknown, what: string): string {
  if (err instanceof FileRefused) return `${what} ${err.message}`;
  const code = (err as NodeJS.ErrnoException)?.code;
  if (code === 'ENOENT') return `${what} does not exist`;
  if (code === 'EACCES' || code === 'EPERM') return `${what} cannot be read: permission denied`;
  if (code === 'EISDIR') return `${what} is a directory, not a file`;
  return `cannot read ${what} (${code ?? 'error'})`;
}

/** True for a pipe (read by `Collected`), false for a regular file within `limit`; anything else is refused. */
function isPipe(info: Stats, limit: number): boolean {
  if (info.isFIFO()) return true;
  if (!info.isFile()) throw new FileRefused('is not a regular file or a pipe');
  if (info.size > limit) throw new FileRefused(`is larger than ${limit} bytes (${info.size})`);
  return false;
}

/** One read of a non-blocking pipe into `text`: bytes read (0 at its end), or undefined for nothing yet. */
function tryRead(read: (buffer: Buffer) => number, text: Collected): number | undefined {
  try {
    return text.add(read(text.buffer));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
    return text.silent();
  }
}

/** A pipe's text as it comes, bounded in size and in silence. */
class Collected {
  readonly buffer = Buffer.alloc(64 * 1024);
  readonly #chunks: Buffer[] = [];
  #size = 0;
  #silentSince: number | undefined;

  constructor(
    private readonly limit: number,
    private readonly silenceMs: number,
  ) {}

  /**
   * `n` bytes were read into `buffer`: returns `n`, or undefined for an end before anything came (a FIFO whose
   * writer has not opened it yet reads as ended: waited for like silence).
   */
  add(n: number): number | undefined {
    if (n === 0 && this.#size === 0) return this.silent();
    this.#silentSince = undefined;
    this.#size += n;
    if (this.#size > this.limit) throw new FileRefused(`is a pipe that gave more than ${this.limit} bytes`);
    if (n > 0) this.#chunks.push(Buffer.from(this.buffer.subarray(0, n)));
    return n;
  }

  /** Nothing to read yet: undefined, until the silence has lasted too long. */
  silent(): undefined {
    const now = performance.now();
    this.#silentSince ??= now;
    if (now - this.#silentSince > this.silenceMs) {
      const why = this.#size === 0 ? ' (nobody wrote to it, or what did wrote nothing)' : '';
      throw new FileRefused(`is a pipe that gave nothing for ${this.silenceMs / 1000} s${why}`);
    }
    return undefined;
  }

  done(): Buffer {
    return Buffer.concat(this.#chunks);
  }
}

/** Where a `JSON.parse` error is, as ` (line L, column C)`, or `''`: never the text there (it may hold a secret). */
export function jsonPosition(text: string, err: unknown): string {
  const match = /at position (\d+)/.exec(err instanceof Error ? err.message : '');
  if (!match) return '';
  const before = text.slice(0, Number(match[1]));
  const line = before.split('\n').length;
  const column = before.length - before.lastIndexOf('\n');
  return ` (line ${line}, column ${column})`;
}
