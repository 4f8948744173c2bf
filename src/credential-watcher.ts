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
 * Why the watches are recomputed: a watch follows its directory's inode, not
 * its path. Once the directory is deleted and recreated or renamed away, or
 * a link on the way to it (`current → v2`) is swapped, the watch is on the
 * wrong directory or on none, silently. Each reload (every event and every
 * poll) therefore recomputes `watchTargets`, and re-creates a watch whose
 * directory left, whose path now names another directory, or that failed.
 *
 * A reload re-reads and validates everything through `loadCredentials` and
 * compares a SHA-256 fingerprint of what authenticates; only a real change is
 * handed to `onChange`. Invalid content (half-written, mismatched key pair,
 * expired certificate) goes to `onError` and the previous credentials stay.
 * The module never logs: the caller decides what to tell the operator.
 */

import { createHash } from 'node:crypto';
import { watch as fsWatch } from 'node:fs';
import { stat } from 'node:fs/promises';
import { basename } from 'node:path';
import { performance } from 'node:perf_hooks';
import { MAX_TIMER_MS } from './config.js';
import { watchTargets } from './credential-source.js';
import { loadCredentials, type CredentialNotice, type CredentialSpec, type Credentials, type LoadedCredentials } from './credentials.js';

/** Backstop poll: the swap may be missed or the watch may fail; kubelet propagation takes a minute anyway. */
export const DEFAULT_POLL_INTERVAL_MS = 30_000;
/** Long enough to coalesce one AtomicWriter swap (or a truncate-then-write) into one reload. */
export const DEFAULT_DEBOUNCE_MS = 250;
/** A directory that never stops changing still gets a reload after this many debounce periods. */
const MAX_DEBOUNCE_PERIODS = 4;

/** What the watcher needs of an `fs.FSWatcher`. */
export interface DirectoryWatch {
  on(event: 'error', listener: (err: Error) => void): unknown;
  close(): void;
}

/**
 * Starts a non-recursive watch on a directory; `fs.watch` unless a test injects another. `onEvent` gets the name
 * of the entry that changed when the platform tells it: the directory's own name means it left its place.
 */
export type WatchFactory = (dir: string, onEvent: (filename?: string | null) => void) => DirectoryWatch;

export interface CredentialWatcherOptions {
  /** The credentials in use now, as loaded at startup; the first fingerprint. */
  initial: LoadedCredentials;
  /** Reload at this interval whatever the watches report. Default 30 s. */
  pollIntervalMs?: number;
  /**
   * The first poll comes this long after start instead of a whole interval, the later ones an interval apart: the
   * sidecar spreads its routes' polls over the interval, so that hundreds of keys are not all checked in one tick
   * (each check parses and validates a key: ~2 ms of the event loop for a certificate key). Default 0.
   */
  pollPhaseMs?: number;
  /** Quiet time after the last directory event before reloading. Default 250 ms. */
  debounceMs?: number;
  /**
   * A validated change. Awaited before the next reload; the new credentials
   * become `current` only when it resolves. If it throws, the error goes to
   * `onError` and the same change is offered again at the next poll or
   * `reloadNow()` — not on every directory event, which a busy file beside
   * the key makes many times a second (each offer is a token request). It
   * must not await `reloadNow()`: that reload waits for it.
   */
  onChange: (loaded: LoadedCredentials) => void | Promise<void>;
  /** A reload failed (usually a `ConfigError`); the previous credentials stay current. */
  onError: (err: unknown) => void;
  /**
   * A directory could not be watched (or its watch failed later); `dir` is
   * undefined when the directories could not even be listed. Polling goes on,
   * and each reload tries again (a watch that failed later: the next reload,
   * not at once); the same failure is reported once, until a watch on that
   * directory has delivered an event.
   */
  onWatchError?: (err: unknown, dir: string | undefined) => void;
  /**
   * A reload of the credentials in use (unchanged) found notices it had not found before: the client
   * certificate now within its expiry warning, or a day closer to it. Each notice once, as it first appears.
   */
  onNotices?: (notices: CredentialNotice[]) => void;
  /** A reload after failed ones found the credentials in use again (a broken file restored): the failure is over. */
  onRecovered?: () => void;
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

const defaultWatch: WatchFactory = (dir, onEvent) => fsWatch(dir, { persistent: false }, (_event, filename) => onEvent(filename));

/** A live watch and what it was set up on. */
interface Watched {
  watch: DirectoryWatch;
  /** `dev:ino` of the directory when the watch was set up; undefined if it could not be read. */
  identity: string | undefined;
  /** The directory itself was renamed or removed: the watch follows it no longer, or to elsewhere. */
  left: boolean;
}

/** The `#failing` key of a failure to compute the targets at all. */
const NO_TARGETS = '';

export class CredentialWatcher {
  readonly #spec: CredentialSpec;
  readonly #options: CredentialWatcherOptions;
  readonly #load: typeof loadCredentials;
  readonly #debounceMs: number;
  readonly #pollIntervalMs: number;
  readonly #pollPhaseMs: number;
  readonly #watches = new Map<string, Watched>();
  /** The failure last reported per directory (`NO_TARGETS` for the list), so a retry failing alike stays quiet. */
  readonly #failing = new Map<string, string>();
  /** Target updates, one at a time. */
  #retargeting: Promise<boolean> = Promise.resolve(false);

  #current: LoadedCredentials;
  #fingerprint: string;
  /** The change `onChange` refused last, and why; offered again only when `#offerRefused` (a poll, `reloadNow`). */
  #refused: { fingerprint: string; error: unknown } | undefined;
  /** The notices of the credentials in use already reported (by whoever applied them, or `onNotices`). */
  #noticed: Set<string>;
  #offerRefused = false;
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
    this.#pollPhaseMs = timerOption('pollPhaseMs', options.pollPhaseMs ?? 0, 0);
    this.#current = options.initial;
    this.#fingerprint = credentialFingerprint(options.initial.credentials);
    this.#noticed = new Set(options.initial.notices.map((n) => n.message));
  }

  /**
   * Watches every directory of `watchTargets(spec)`, starts the poll and compares the files once (a change since
   * `initial` was read goes to `onChange` before this resolves). Never fails for watch problems: those go to
   * `onWatchError` and polling alone keeps the credentials current.
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

  /** Real directories with a live watch (fewer than the targets after a watch failure). */
  get watching(): readonly string[] {
    return [...this.#watches.keys()];
  }

  /**
   * Reloads now, bypassing the debounce (tests), offering a refused change again. If a reload is
   * running, one more runs after it; the promise settles when the files as
   * they are now have been compared. Never rejects: failures go to `onError`.
   */
  reloadNow(): Promise<void> {
    return this.#reload({ offerRefused: true });
  }

  /** `offerRefused`: a poll or `reloadNow`, which offer a refused change again (a directory event does not). */
  #reload({ offerRefused }: { offerRefused: boolean }): Promise<void> {
    if (this.#closed) return Promise.resolve();
    if (offerRefused) this.#offerRefused = true;
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
    for (const { watch } of this.#watches.values()) closeQuietly(watch);
    this.#watches.clear();
  }

  async #arm(): Promise<void> {
    await this.#retarget();
    if (this.#closed) return;
    // Each poll is a reload, and each reload recomputes the targets.
    const poll = (): void => this.#schedule({ offerRefused: true });
    if (this.#pollPhaseMs === 0) this.#pollTimer = setInterval(poll, this.#pollIntervalMs).unref();
    else {
      // `close` clears either timer (node's clearInterval ends a timeout too).
      this.#pollTimer = setTimeout(() => {
        if (this.#closed) return;
        this.#pollTimer = setInterval(poll, this.#pollIntervalMs).unref();
        poll();
      }, this.#pollPhaseMs).unref();
    }
    // A change written after `initial` was read and before the watches were up raised no event: one reload
    // compares the files as they are now (unchanged, it reports nothing) instead of the first poll. Awaited, so
    // that once `start` resolves the files have been compared with the watches up.
    await this.#reload({ offerRefused: false });
  }

  /** Brings the watches in line with `watchTargets` now; true if a watch was set up. Never rejects. */
  #retarget(): Promise<boolean> {
    const next = this.#retargeting
      .then(() => this.#updateWatches())
      .catch((err: unknown) => {
        this.#watchFailed(err, undefined); // a bug; the chain must go on
        return false;
      });
    this.#retargeting = next;
    return next;
  }

  async #updateWatches(): Promise<boolean> {
    if (this.#closed) return false;
    let targets: string[];
    try {
      targets = await watchTargets(this.#spec);
    } catch (err) {
      this.#watchFailed(err, undefined);
      return false; // the watches there are stay
    }
    this.#failing.delete(NO_TARGETS);
    const wanted = new Set(targets);
    for (const dir of this.#watches.keys()) if (!wanted.has(dir)) this.#unwatch(dir);
    for (const dir of this.#failing.keys()) if (dir !== NO_TARGETS && !wanted.has(dir)) this.#failing.delete(dir);
    let added = false;
    for (const dir of targets) {
      // Read before the watch is set up: if the directory is replaced in between, the next update sees it.
      const identity = await directoryIdentity(dir);
      if (this.#closed) return false;
      const watched = this.#watches.get(dir);
      if (watched && !watched.left && watched.identity === identity) continue;
      if (watched) this.#unwatch(dir);
      added = this.#watchDirectory(dir, identity) || added;
    }
    return added;
  }

  #watchDirectory(dir: string, identity: string | undefined): boolean {
    const factory = this.#options.watch ?? defaultWatch;
    const name = basename(dir);
    let entry: Watched | undefined;
    try {
      // Any event counts, whatever its type or name: the fingerprint makes spurious reloads harmless.
      const watch = factory(dir, (filename) => {
        if (entry && this.#watches.get(dir) === entry) {
          this.#failing.delete(dir); // it works: a failure after this is news again
          if (filename === name) entry.left = true;
        }
        this.#schedule();
      });
      entry = { watch, identity, left: false };
    } catch (err) {
      this.#watchFailed(err, dir);
      return false;
    }
    entry.watch.on('error', (err) => {
      if (this.#watches.get(dir) !== entry) return;
      this.#unwatch(dir);
      this.#watchFailed(err, dir);
      // Set up again by the next reload (a file event elsewhere, or the poll): not at once, so that a watch
      // that keeps failing costs one attempt per poll, not a loop.
    });
    this.#watches.set(dir, entry);
    return true;
  }

  #unwatch(dir: string): void {
    const watched = this.#watches.get(dir);
    this.#watches.delete(dir);
    if (watched) closeQuietly(watched.watch);
  }

  #watchFailed(err: unknown, dir: string | undefined): void {
    if (this.#closed) return;
    const key = dir ?? NO_TARGETS;
    const reason = failureReason(err);
    if (this.#failing.get(key) === reason) return;
    this.#failing.set(key, reason);
    callQuietly(() => this.#options.onWatchError?.(err, dir));
  }

  /** Trailing debounce, capped so that a directory that never goes quiet still gets reloaded. */
  #schedule({ offerRefused = false } = {}): void {
    if (this.#closed) return;
    // Kept until the reload runs: a poll coalesced with directory events still offers a refused change again.
    if (offerRefused) this.#offerRefused = true;
    const now = performance.now();
    this.#pendingSince ??= now;
    const deadline = this.#pendingSince + this.#debounceMs * MAX_DEBOUNCE_PERIODS;
    clearTimeout(this.#debounceTimer);
    this.#debounceTimer = setTimeout(
      () => {
        this.#debounceTimer = undefined;
        this.#pendingSince = undefined;
        void this.#reload({ offerRefused: false });
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
    let result: { loaded: LoadedCredentials } | { err: unknown };
    try {
      result = { loaded: await this.#load(this.#spec, this.#options.now ? { now: this.#options.now() } : {}) };
    } catch (err) {
      result = { err };
    }
    // After the read: anything written before a new watch was up is read by the one more reload it asks for.
    if (await this.#retarget()) this.#dirty = true;
    if ('err' in result) {
      // The same failure as at the last reload (a certificate in use that has expired, a broken file left as it
      // is): still reported by `lastError` (readiness), but logged and counted once, not at every poll.
      if (this.#lastError !== undefined && messageOf(this.#lastError) === messageOf(result.err)) {
        this.#lastError = result.err;
        return;
      }
      this.#failed(result.err);
      return;
    }
    const { loaded } = result;
    if (this.#closed) return;
    const fingerprint = credentialFingerprint(loaded.credentials);
    if (fingerprint === this.#fingerprint) {
      if (this.#lastError !== undefined) callQuietly(() => this.#options.onRecovered?.());
      this.#lastError = undefined; // back to what is in use
      this.#refused = undefined; // written again later, the refused change is news again
      // A certificate left in place runs into its expiry warning while the sidecar runs (months, behind a
      // restart policy): said when it starts, and each day after, not only at a start or a rotation.
      const news = loaded.notices.filter((n) => !this.#noticed.has(n.message));
      this.#noticed = new Set(loaded.notices.map((n) => n.message));
      if (news.length > 0) callQuietly(() => this.#options.onNotices?.(news));
      return;
    }
    // Refused before, and nothing asked for another offer: kept for the next poll, its refusal reported again
    // (the files may have been broken in between, and readiness must not go on naming that).
    if (fingerprint === this.#refused?.fingerprint && !this.#offerRefused) {
      this.#lastError = this.#refused.error;
      return;
    }
    this.#offerRefused = false;
    // The last error stays until the change is applied: readiness must not report a retry as recovered.
    try {
      await this.#options.onChange(loaded);
    } catch (err) {
      this.#refused = { fingerprint, error: err };
      this.#failed(err);
      return;
    }
    this.#refused = undefined;
    this.#lastError = undefined;
    this.#current = loaded;
    this.#fingerprint = fingerprint;
    this.#noticed = new Set(loaded.notices.map((n) => n.message));
  }

  #failed(err: unknown): void {
    if (this.#closed) return;
    this.#lastError = err;
    callQuietly(() => this.#options.onError(err));
  }
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function timerOption(name: string, value: number, min: number): number {
  if (!Number.isFinite(value) || value < min || value > MAX_TIMER_MS) {
    throw new RangeError(`"${name}" must be a number of milliseconds from ${min} to ${MAX_TIMER_MS}`);
  }
  return value;
}

/** `dev:ino`: the directory a path names now, to tell a replaced one from the one watched. */
async function directoryIdentity(dir: string): Promise<string | undefined> {
  try {
    const { dev, ino } = await stat(dir);
    return `${dev}:${ino}`;
  } catch {
    return undefined;
  }
}

/** What makes two watch failures the same failure. */
function failureReason(err: unknown): string {
  return err instanceof Error ? `${(err as NodeJS.ErrnoException).code ?? err.name}: ${err.message}` : String(err);
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
