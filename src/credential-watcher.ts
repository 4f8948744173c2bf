/**
 * Keeps one route's credentials current while the files behind them rotate.
 *
 * Why directories and a poll: the kubelet's AtomicWriter
 * (kubernetes/kubernetes `pkg/volume/util/atomic_writer.go`) never rewrites a
 * mounted Secret file. It writes a new `..<timestamp>` directory, points a
 * `..data_tmp` symlink at it and `rename()`s that over `..data`; the visible
 * files are symlinks into `..data/`. A watch on a file therefore sees one
 * delete and then silence (kubernetes/kubernetes#111947, #112677), while a
 * watch on the mount directory keeps reporting every swap. One swap is a burst
 * of events (new directory, symlink, rename, removal), hence the debounce; the
 * swap can also surface as an unexpected event type, or `fs.watch` can fail
 * (jimmidyson/configmap-reload#190, inotify limits), hence the poll.
 *
 * A reload re-reads and validates everything through `loadCredentials` and
 * compares a SHA-256 fingerprint of what authenticates; only a real change is
 * handed to `onChange`. Invalid content (half-written, mismatched key pair,
 * expired certificate) goes to `onError` and the previous credentials stay.
 * The module never logs: the caller decides what to tell the operator.
 */

import { createHash } from 'node:crypto';
import { watch as fsWatch } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { watchTargets } from './credential-source.js';
import { loadCredentials, type CredentialSpec, type Credentials, type LoadedCredentials } from './credentials.js';

/** Backstop poll: the swap may be missed or the watch may fail; kubelet propagation takes a minute anyway. */
export const DEFAULT_POLL_INTERVAL_MS = 30_000;
/** Long enough to coalesce one AtomicWriter swap (or a truncate-then-write) into one reload. */
export const DEFAULT_DEBOUNCE_MS = 250;
/** A directory that never stops changing still gets a reload after this many debounce periods. */
const MAX_DEBOUNCE_PERIODS = 4;
/** The largest delay `setTimeout`/`setInterval` accept. */
const MAX_TIMER_MS = 2_147_483_647;

/** What the watcher needs of an `fs.FSWatcher`. */
export interface DirectoryWatch {
  on(event: 'error', listener: (err: Error) => void): unknown;
  close(): void;
}

/** Starts a non-recursive watch on a directory; `fs.watch` unless a test injects another. */
export type WatchFactory = (dir: string, onEvent: () => void) => DirectoryWatch;

export interface CredentialWatcherOptions {
  /** The credentials in use now, as loaded at startup; the first fingerprint. */
  initial: LoadedCredentials;
  /** Reload at this interval whatever the watches report. Default 30 s. */
  pollIntervalMs?: number;
  /** Quiet time after the last directory event before reloading. Default 250 ms. */
  debounceMs?: number;
  /**
   * A validated change. Awaited before the next reload; the new credentials
   * become `current` only when it resolves. If it throws, the error goes to
   * `onError` and the change is offered again at the next reload. It must
   * not await `reloadNow()`: that reload waits for it.
   */
  onChange: (loaded: LoadedCredentials) => void | Promise<void>;
  /** A reload failed (usually a `ConfigError`); the previous credentials stay current. */
  onError: (err: unknown) => void;
  /**
   * A directory could not be watched (or its watch failed later); `dir` is
   * undefined when the directories could not even be listed. Polling goes on.
   */
  onWatchError?: (err: unknown, dir: string | undefined) => void;
  /** Reads and validates the credentials; injectable for tests. */
  load?: typeof loadCredentials;
  /** Clock for the certificate expiry checks of each reload. */
  now?: () => Date;
  /** Directory watch factory; injectable for tests. */
  watch?: WatchFactory;
}

/**
 * SHA-256 over everything used to authenticate: kind, client id, token URL,
 * URL, and the secret or the certificate chain and key. Never the `source`
 * label or the notices, so moving a key without changing it is no change.
 */
export function credentialFingerprint(credentials: Credentials): string {
  const { kind, clientId, tokenUrl, url } = credentials;
  const material =
    credentials.kind === 'client-secret'
      ? [kind, clientId, tokenUrl, url ?? null, credentials.clientSecret]
      : [kind, clientId, tokenUrl, url ?? null, credentials.certificate, credentials.key];
  return createHash('sha256').update(JSON.stringify(material)).digest('hex');
}

const defaultWatch: WatchFactory = (dir, onEvent) => fsWatch(dir, { persistent: false }, onEvent);

export class CredentialWatcher {
  readonly #spec: CredentialSpec;
  readonly #options: CredentialWatcherOptions;
  readonly #load: typeof loadCredentials;
  readonly #debounceMs: number;
  readonly #pollIntervalMs: number;
  readonly #watches = new Map<string, DirectoryWatch>();

  #current: LoadedCredentials;
  #fingerprint: string;
  #lastError: unknown = undefined;
  #closed = false;

  #pollTimer: NodeJS.Timeout | undefined;
  #debounceTimer: NodeJS.Timeout | undefined;
  /** When the oldest event not yet reloaded arrived (`performance.now()`). */
  #pendingSince: number | undefined;
  /** The running reload loop; at most one at a time. */
  #running: Promise<void> | undefined;
  /** Something may have changed since the running reload read the files. */
  #dirty = false;

  private constructor(spec: CredentialSpec, options: CredentialWatcherOptions) {
    this.#spec = spec;
    this.#options = options;
    this.#load = options.load ?? loadCredentials;
    this.#debounceMs = timerOption('debounceMs', options.debounceMs ?? DEFAULT_DEBOUNCE_MS, 0);
    this.#pollIntervalMs = timerOption('pollIntervalMs', options.pollIntervalMs ?? DEFAULT_POLL_INTERVAL_MS, 1);
    this.#current = options.initial;
    this.#fingerprint = credentialFingerprint(options.initial.credentials);
  }

  /**
   * Watches every directory of `watchTargets(spec)` and starts the poll.
   * Never fails for watch problems: those go to `onWatchError` and polling
   * alone keeps the credentials current.
   */
  static async start(spec: CredentialSpec, options: CredentialWatcherOptions): Promise<CredentialWatcher> {
    const watcher = new CredentialWatcher(spec, options);
    await watcher.#arm();
    return watcher;
  }

  /** The credentials in use: the initial ones or the last change `onChange` accepted (set once it returns). */
  get current(): LoadedCredentials {
    return this.#current;
  }

  /** Why the last reload failed; undefined once a later reload succeeds. */
  get lastError(): unknown {
    return this.#lastError;
  }

  /** Directories with a live watch (fewer than the targets after a watch failure). */
  get watching(): readonly string[] {
    return [...this.#watches.keys()];
  }

  /**
   * Reloads now, bypassing the debounce (SIGHUP, tests). If a reload is
   * running, one more runs after it; the promise settles when the files as
   * they are now have been compared. Never rejects: failures go to `onError`.
   */
  reloadNow(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#dirty = true;
    this.#running ??= this.#drain();
    return this.#running;
  }

  /** Stops all watches and timers; no callback fires afterwards, even from a reload in flight. Idempotent. */
  close(): void {
    this.#closed = true;
    clearInterval(this.#pollTimer);
    clearTimeout(this.#debounceTimer);
    this.#pollTimer = undefined;
    this.#debounceTimer = undefined;
    for (const watch of this.#watches.values()) closeQuietly(watch);
    this.#watches.clear();
  }

  async #arm(): Promise<void> {
    let dirs: string[] = [];
    try {
      dirs = await watchTargets(this.#spec);
    } catch (err) {
      this.#watchFailed(err, undefined);
    }
    for (const dir of dirs) this.#watchDirectory(dir);
    this.#pollTimer = setInterval(() => this.#schedule(), this.#pollIntervalMs).unref();
  }

  #watchDirectory(dir: string): void {
    const factory = this.#options.watch ?? defaultWatch;
    let watch: DirectoryWatch;
    try {
      // Any event counts, whatever its type or name: the fingerprint makes spurious reloads harmless.
      watch = factory(dir, () => this.#schedule());
    } catch (err) {
      this.#watchFailed(err, dir);
      return;
    }
    watch.on('error', (err) => {
      if (this.#watches.get(dir) !== watch) return;
      this.#watches.delete(dir);
      closeQuietly(watch);
      this.#watchFailed(err, dir);
    });
    this.#watches.set(dir, watch);
  }

  #watchFailed(err: unknown, dir: string | undefined): void {
    if (this.#closed) return;
    callQuietly(() => this.#options.onWatchError?.(err, dir));
  }

  /** Trailing debounce, capped so that a directory that never goes quiet still gets reloaded. */
  #schedule(): void {
    if (this.#closed) return;
    const now = performance.now();
    this.#pendingSince ??= now;
    const deadline = this.#pendingSince + this.#debounceMs * MAX_DEBOUNCE_PERIODS;
    clearTimeout(this.#debounceTimer);
    this.#debounceTimer = setTimeout(
      () => {
        this.#debounceTimer = undefined;
        this.#pendingSince = undefined;
        void this.reloadNow();
      },
      Math.max(0, Math.min(this.#debounceMs, deadline - now)),
    ).unref();
  }

  /** Reloads until no change is pending; cleared synchronously at the end, so loops never overlap. */
  async #drain(): Promise<void> {
    try {
      while (this.#dirty && !this.#closed) {
        this.#dirty = false;
        await this.#reloadOnce();
      }
    } finally {
      this.#running = undefined;
    }
  }

  async #reloadOnce(): Promise<void> {
    let loaded: LoadedCredentials;
    try {
      loaded = await this.#load(this.#spec, this.#options.now ? { now: this.#options.now() } : {});
    } catch (err) {
      this.#failed(err);
      return;
    }
    if (this.#closed) return;
    const fingerprint = credentialFingerprint(loaded.credentials);
    if (fingerprint === this.#fingerprint) {
      this.#lastError = undefined; // back to what is in use
      return;
    }
    // The last error stays until the change is applied: readiness must not report a retry as recovered.
    try {
      await this.#options.onChange(loaded);
    } catch (err) {
      this.#failed(err);
      return;
    }
    this.#lastError = undefined;
    this.#current = loaded;
    this.#fingerprint = fingerprint;
  }

  #failed(err: unknown): void {
    if (this.#closed) return;
    this.#lastError = err;
    callQuietly(() => this.#options.onError(err));
  }
}

function timerOption(name: string, value: number, min: number): number {
  if (!Number.isFinite(value) || value < min || value > MAX_TIMER_MS) {
    throw new RangeError(`"${name}" must be a number of milliseconds from ${min} to ${MAX_TIMER_MS}`);
  }
  return value;
}

function closeQuietly(watch: DirectoryWatch): void {
  try {
    watch.close();
  } catch {
    /* already closed */
  }
}

/** A throwing callback must not become an unhandled rejection in a timer-driven reload. */
function callQuietly(callback: () => void): void {
  try {
    callback();
  } catch {
    /* the caller's bug; nothing here can report it without logging */
  }
}
