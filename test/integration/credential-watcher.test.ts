/** Credential rotation on real files: flat keys, kubelet AtomicWriter swaps, certificate pairs, polling, close. */

import { EventEmitter } from 'node:events';
import { watch as fsWatch, type FSWatcher } from 'node:fs';
import { mkdir, mkdtemp, readdir, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  credentialFingerprint,
  CredentialWatcher,
  type CredentialWatcherOptions,
  type DirectoryWatch,
  type WatchFactory,
} from '../../src/credential-watcher.js';
import {
  loadCredentials,
  type CertificateCredentials,
  type CredentialSpec,
  type LoadedCredentials,
  type SecretCredentials,
} from '../../src/credentials.js';
import { ConfigError } from '../../src/errors.js';
import { unitCerts } from '../helpers/unit-certs.js';

const certs = await unitCerts();
const CLIENT_ID = 'sb-fake-0000!b1|it-rt-acme-dev!b196';
const TOKEN_URL = 'https://acme-dev.authentication.eu10.hana.ondemand.com/oauth/token';
const URL_ = 'https://acme-dev.it-cpi000-rt.cfapps.eu10-000.hana.ondemand.com';
const OLD_SECRET = 'old-FAKE-secret$0000=';
const NEW_SECRET = 'new-FAKE-secret$1111=';
/** Short enough for fast tests, long enough to coalesce one swap. */
const DEBOUNCE_MS = 20;
const DAY_MS = 86_400_000;

const dirs: string[] = [];
const watchers: CredentialWatcher[] = [];
afterEach(async () => {
  for (const w of watchers.splice(0)) w.close();
  await Promise.all(dirs.splice(0).map((dir) => rm(dir, { recursive: true, force: true })));
});

/** What fs.watch throws once inotify's watch limit is reached. */
const ENOSPC_ERROR = Object.assign(new Error('ENOSPC: System limit for number of file watchers reached'), { code: 'ENOSPC' });

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'credential-watcher-'));
  dirs.push(dir);
  return dir;
}

function secretKey(overrides: Record<string, unknown> = {}): string {
  return JSON.stringify({ clientid: CLIENT_ID, clientsecret: OLD_SECRET, url: URL_, tokenurl: TOKEN_URL, ...overrides });
}

/** A flat service key file in a new temporary directory. */
async function keyFile(text = secretKey()): Promise<string> {
  const path = join(await tempDir(), 'key.json');
  await writeFile(path, text);
  return path;
}

let tmpCounter = 0;
/** Write-temp-then-rename, as editors and `kubectl cp`-style tools replace a file atomically. */
async function replaceFile(path: string, text: string): Promise<void> {
  const tmp = `${path}.tmp-${++tmpCounter}`;
  await writeFile(tmp, text);
  await rename(tmp, path);
}

/**
 * A Secret volume written exactly as the kubelet's AtomicWriter does
 * (`pkg/volume/util/atomic_writer.go`): payload in `..<timestamp>`, `..data`
 * pointing at it, visible files as symlinks into `..data/`.
 */
class KubeletVolume {
  private generation = 0;
  private current: string | undefined;

  private constructor(readonly dir: string) {}

  /** In a new temporary directory, or in `dir` (created), such as a binding under a binding root. */
  static async create(files: Record<string, string>, dir?: string): Promise<KubeletVolume> {
    if (dir !== undefined) await mkdir(dir);
    const volume = new KubeletVolume(dir ?? (await tempDir()));
    await volume.update(files);
    return volume;
  }

  async update(files: Record<string, string>): Promise<void> {
    this.generation += 1;
    const tsDir = `..2026_01_01_00_${String(this.generation - 1).padStart(2, '0')}_00.${String(this.generation).padStart(9, '0')}`;
    await mkdir(join(this.dir, tsDir));
    for (const [name, text] of Object.entries(files)) {
      // `sub/key.json` (an `items: path:` entry): the volume shows `sub` as a link to `..data/sub`.
      await mkdir(dirname(join(this.dir, tsDir, name)), { recursive: true });
      await writeFile(join(this.dir, tsDir, name), text);
    }
    await symlink(tsDir, join(this.dir, '..data_tmp'));
    await rename(join(this.dir, '..data_tmp'), join(this.dir, '..data'));
    const visible = (await readdir(this.dir)).filter((n) => !n.startsWith('..'));
    const tops = [...new Set(Object.keys(files).map((name) => name.split('/')[0]!))];
    for (const name of tops) {
      if (!visible.includes(name)) await symlink(join('..data', name), join(this.dir, name));
    }
    for (const name of visible) if (!tops.includes(name)) await rm(join(this.dir, name));
    if (this.current) await rm(join(this.dir, this.current), { recursive: true });
    this.current = tsDir;
  }
}

/** Records callbacks; `until` resolves as soon as a condition on them holds (no fixed sleeps). */
function recorder() {
  const changes: LoadedCredentials[] = [];
  const errors: unknown[] = [];
  const watchErrors: Array<{ err: unknown; dir: string | undefined }> = [];
  const waiters = new Set<() => void>();
  const notify = () => {
    for (const w of [...waiters]) w();
  };
  return {
    changes,
    errors,
    watchErrors,
    onChange: (loaded: LoadedCredentials) => {
      changes.push(loaded);
      notify();
    },
    onError: (err: unknown) => {
      errors.push(err);
      notify();
    },
    onWatchError: (err: unknown, dir: string | undefined) => {
      watchErrors.push({ err, dir });
      notify();
    },
    until(condition: () => boolean): Promise<void> {
      return new Promise((resolve) => {
        const check = () => {
          if (!condition()) return;
          waiters.delete(check);
          resolve();
        };
        waiters.add(check);
        check();
      });
    },
    notify,
  };
}
type Recorder = ReturnType<typeof recorder>;

/** `loadCredentials`, counting calls and completions (in `into()`'s counts, when given) so tests can await a reload. */
function countingLoad(rec: Recorder, into?: () => { started: number; finished: number }) {
  const own = { started: 0, finished: 0 };
  const load: typeof loadCredentials = async (spec, opts) => {
    const counts = into?.() ?? own;
    counts.started += 1;
    try {
      return await loadCredentials(spec, opts);
    } finally {
      counts.finished += 1;
      rec.notify();
    }
  };
  return { load, counts: own };
}

async function startWatcher(
  spec: CredentialSpec,
  rec: Recorder,
  options: Partial<CredentialWatcherOptions> = {},
): Promise<CredentialWatcher> {
  const initial = options.initial ?? (await loadCredentials(spec));
  const watcher = await CredentialWatcher.start(spec, {
    debounceMs: DEBOUNCE_MS,
    onChange: rec.onChange,
    onError: rec.onError,
    onWatchError: rec.onWatchError,
    ...options,
    initial,
  });
  watchers.push(watcher);
  return watcher;
}

/**
 * `current` moves only once `onChange` has returned; this waits for the reload
 * in flight (and runs one more, which finds nothing new).
 */
async function applied(watcher: CredentialWatcher): Promise<LoadedCredentials> {
  await watcher.reloadNow();
  return watcher.current;
}

function secretOf(loaded: LoadedCredentials | undefined): string | undefined {
  return (loaded?.credentials as SecretCredentials | undefined)?.clientSecret;
}

function lastChange(rec: Recorder): LoadedCredentials | undefined {
  return rec.changes.at(-1);
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** A promise with its resolve function exposed. */
function deferred<T>() {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

/** A fake `fs.FSWatcher`: tests fire events and errors by hand. */
class FakeWatch extends EventEmitter implements DirectoryWatch {
  closed = false;
  constructor(
    readonly dir: string,
    readonly fire: () => void,
  ) {
    super();
  }
  close(): void {
    this.closed = true;
  }
}

function fakeWatchFactory(): { factory: WatchFactory; watches: FakeWatch[] } {
  const watches: FakeWatch[] = [];
  return {
    watches,
    factory: (dir, onEvent) => {
      const w = new FakeWatch(dir, onEvent);
      watches.push(w);
      return w;
    },
  };
}

describe('CredentialWatcher on a flat service key file', () => {
  it('reports a file rewritten in place, then one replaced by rename', async () => {
    const dir = await tempDir();
    const path = join(dir, 'key.json');
    await writeFile(path, secretKey());
    const rec = recorder();
    const watcher = await startWatcher({ source: { kind: 'path', path } }, rec);
    expect(watcher.watching).toEqual([dir]);

    await writeFile(path, secretKey({ clientsecret: NEW_SECRET }));
    await rec.until(() => secretOf(lastChange(rec)) === NEW_SECRET);
    expect(secretOf(await applied(watcher))).toBe(NEW_SECRET);

    await replaceFile(path, secretKey({ clientsecret: 'third-FAKE-secret' }));
    await rec.until(() => secretOf(lastChange(rec)) === 'third-FAKE-secret');
    expect(secretOf(await applied(watcher))).toBe('third-FAKE-secret');
    expect(watcher.lastError).toBeUndefined();
  });

  it('reports a change written between the initial load and the start of its watches, without waiting for a poll', async () => {
    const path = await keyFile();
    const spec: CredentialSpec = { source: { kind: 'path', path } };
    const initial = await loadCredentials(spec);
    await writeFile(path, secretKey({ clientsecret: NEW_SECRET })); // no watch yet: no event will tell
    const rec = recorder();
    const { load, counts } = countingLoad(rec);
    await startWatcher(spec, rec, { initial, load, pollIntervalMs: 600_000 });
    await rec.until(() => secretOf(lastChange(rec)) === NEW_SECRET);
    expect(counts.started, 'one reload at start, no poll').toBe(1);
  });

  it('with a poll phase, polls first after the phase and then an interval apart (routes spread over the interval)', async () => {
    const path = await keyFile();
    const rec = recorder();
    const { load, counts } = countingLoad(rec);
    await startWatcher({ source: { kind: 'path', path } }, rec, { load, pollIntervalMs: 600_000, pollPhaseMs: 50 });
    // The start's reload, then the first poll after the phase: without it, a whole interval (10 min) away.
    await rec.until(() => counts.finished === 2);
    expect(rec.changes).toEqual([]);
    expect(rec.errors).toEqual([]);
  });

  it('reports nothing at start when the files are as they were loaded', async () => {
    const path = await keyFile();
    const rec = recorder();
    const { load, counts } = countingLoad(rec);
    const watcher = await startWatcher({ source: { kind: 'path', path } }, rec, { load, pollIntervalMs: 600_000 });
    await rec.until(() => counts.finished === 1); // the start's reload compared the files
    expect(rec.changes).toEqual([]);
    expect(rec.errors).toEqual([]);
    expect(watcher.lastError).toBeUndefined();
  });

  it('ignores content rewritten identically', async () => {
    const path = await keyFile();
    const rec = recorder();
    const { load, counts } = countingLoad(rec);
    const watcher = await startWatcher({ source: { kind: 'path', path } }, rec, { load });
    const initial = watcher.current;

    await writeFile(path, secretKey());
    await rec.until(() => counts.finished >= 1); // the event-driven reload ran
    await watcher.reloadNow(); // and one that certainly read the final content
    expect(rec.changes).toEqual([]);
    expect(watcher.current).toBe(initial);
    expect(watcher.lastError).toBeUndefined();
  });

  it('keeps the old credentials on invalid content and recovers on a valid rewrite', async () => {
    const path = await keyFile();
    const rec = recorder();
    const watcher = await startWatcher({ source: { kind: 'path', path } }, rec);
    const initial = watcher.current;

    await replaceFile(path, secretKey({ clientsecret: undefined }));
    await rec.until(() => rec.errors.length >= 1);
    const missing = rec.errors[0];
    expect(missing).toBeInstanceOf(ConfigError);
    expect((missing as ConfigError).problems).toEqual([expect.objectContaining({ field: 'clientsecret', source: path })]);
    expect(watcher.lastError).toBe(missing);
    expect(watcher.current).toBe(initial);

    // Half-written: the writer was interrupted mid-file.
    const text = secretKey({ clientsecret: NEW_SECRET });
    await replaceFile(path, text.slice(0, text.length / 2));
    await rec.until(() => rec.errors.some((e) => /is not valid JSON/.test(errorText(e))));
    expect(watcher.lastError).toBeInstanceOf(ConfigError);
    expect(errorText(watcher.lastError)).not.toContain(NEW_SECRET);
    expect(watcher.current).toBe(initial);
    expect(rec.changes).toEqual([]);

    await replaceFile(path, text);
    await rec.until(() => rec.changes.length === 1);
    expect(secretOf(lastChange(rec))).toBe(NEW_SECRET);
    expect(await applied(watcher)).toBe(lastChange(rec));
    expect(watcher.lastError).toBeUndefined();
  });

  it('a new key without url, for a route without an upstream of its own, is a broken key: refused at load, reported once', async () => {
    const path = await keyFile();
    const rec = recorder();
    const watcher = await startWatcher({ source: { kind: 'path', path }, needsUrl: true }, rec);
    const initial = watcher.current;
    await replaceFile(path, secretKey({ clientsecret: NEW_SECRET, url: undefined }));
    await rec.until(() => rec.errors.length >= 1);
    // Never offered as a change (the route could not be built from it), and every later check finds it alike.
    await watcher.reloadNow();
    await watcher.reloadNow();
    expect(rec.changes).toEqual([]);
    expect(rec.errors).toHaveLength(1);
    expect((rec.errors[0] as ConfigError).problems).toEqual([{ source: path, field: 'url', message: expect.stringMatching(/^is missing, .*--upstream/) }]);
    expect(errorText(watcher.lastError)).toMatch(/url: is missing, /);
    expect(watcher.current).toBe(initial);
  });
});

describe('CredentialWatcher on a Kubernetes secret volume', () => {
  const files = (secret: string) => ({ clientid: CLIENT_ID, clientsecret: secret, tokenurl: TOKEN_URL, url: URL_ });

  it('reports an AtomicWriter swap of ..data exactly once', async () => {
    const volume = await KubeletVolume.create(files(OLD_SECRET));
    const rec = recorder();
    const { load, counts } = countingLoad(rec);
    const watcher = await startWatcher({ source: { kind: 'path', path: volume.dir } }, rec, { load });
    expect(secretOf(watcher.current)).toBe(OLD_SECRET);
    expect(watcher.watching).toEqual([volume.dir]);

    await volume.update(files(NEW_SECRET));
    await rec.until(() => rec.changes.length >= 1);
    expect(secretOf(lastChange(rec))).toBe(NEW_SECRET);
    expect(lastChange(rec)?.credentials.source).toBe(volume.dir);
    expect(counts.started).toBeGreaterThanOrEqual(1);

    // A second rotation, whose events come after all of the first swap's (old directory removed): once it
    // is reported, whatever the rest of the first burst caused has been reported before it. It also shows
    // that the directory watch survives the swap.
    await volume.update(files('third-FAKE-secret'));
    await rec.until(() => secretOf(lastChange(rec)) === 'third-FAKE-secret');
    expect(secretOf(await applied(watcher))).toBe('third-FAKE-secret'); // and a reload of unchanged content reports nothing
    expect(rec.changes.map(secretOf), 'each swap reported exactly once').toEqual([NEW_SECRET, 'third-FAKE-secret']);
    expect(rec.errors).toEqual([]);
  });

  it('a key in a subdirectory of the volume (sub → ..data/sub): every swap is seen by a watch, not only the first', async () => {
    const key = (secret: string) => ({ 'sub/key.json': JSON.stringify({ clientid: CLIENT_ID, clientsecret: secret, tokenurl: TOKEN_URL, url: URL_ }) });
    const volume = await KubeletVolume.create(key(OLD_SECRET));
    const rec = recorder();
    // Polling far away: only the watches can see the swaps within the test.
    const watcher = await startWatcher({ source: { kind: 'path', path: join(volume.dir, 'sub', 'key.json') } }, rec, { pollIntervalMs: 600_000 });
    expect(watcher.watching).toContain(volume.dir);
    for (const [i, secret] of [NEW_SECRET, 'third-FAKE-secret', 'fourth-FAKE-secret'].entries()) {
      await volume.update(key(secret));
      await rec.until(() => rec.changes.length >= i + 1);
      expect(secretOf(await applied(watcher))).toBe(secret);
    }
  });

  it('reports a rotated Certificate key (certificate and key in the oauth entry)', async () => {
    const oauth = (certificate: string, key: string) =>
      JSON.stringify({ clientid: CLIENT_ID, certificate, key, tokenurl: TOKEN_URL, url: URL_ });
    const volume = await KubeletVolume.create({ oauth: oauth(certs.chainPem, certs.leafKeyPkcs1), type: 'it-rt' });
    const rec = recorder();
    const watcher = await startWatcher({ source: { kind: 'path', path: volume.dir } }, rec);
    const before = watcher.current.credentials as CertificateCredentials;
    expect(before.kind).toBe('certificate');

    await volume.update({ oauth: oauth(certs.ecLeafPem, certs.ecKeySec1), type: 'it-rt' });
    await rec.until(() => rec.changes.length >= 1);
    const after = lastChange(rec)?.credentials as CertificateCredentials;
    expect(after.kind).toBe('certificate');
    expect(after.fingerprint).not.toBe(before.fingerprint);
    expect(after.key).toContain('PRIVATE KEY');
    expect(after.key).not.toBe(before.key);
    expect((await applied(watcher)).credentials).toBe(after);
  });

  it('reports a rotated kubernetes.io/tls pair of an External Certificate key', async () => {
    const keyDir = await tempDir();
    const keyPath = join(keyDir, 'key.json');
    await writeFile(keyPath, JSON.stringify({ clientid: CLIENT_ID, tokenurl: TOKEN_URL, url: URL_, certificate: certs.leafPem }));
    const tls = await KubeletVolume.create({ 'tls.crt': certs.chainPem, 'tls.key': certs.leafKeyPkcs8 });
    const spec: CredentialSpec = { source: { kind: 'path', path: keyPath }, clientCert: { kind: 'tls-dir', dir: tls.dir } };
    const rec = recorder();
    const watcher = await startWatcher(spec, rec);
    expect([...watcher.watching].sort()).toEqual([keyDir, tls.dir].sort());
    const before = watcher.current.credentials as CertificateCredentials;

    await tls.update({ 'tls.crt': certs.ecLeafPem, 'tls.key': certs.ecKeySec1 });
    await rec.until(() => rec.changes.length >= 1);
    const after = lastChange(rec)?.credentials as CertificateCredentials;
    expect(after.kind).toBe('external-certificate');
    expect(after.fingerprint).not.toBe(before.fingerprint);
  });

  it('rejects a certificate replaced before its key, then accepts the matching key', async () => {
    const dir = await tempDir();
    const certFile = join(dir, 'client.crt');
    const keyFile = join(dir, 'client.key');
    const keyPath = join(await tempDir(), 'key.json');
    await writeFile(keyPath, JSON.stringify({ clientid: CLIENT_ID, tokenurl: TOKEN_URL }));
    await writeFile(certFile, certs.chainPem);
    await writeFile(keyFile, certs.leafKeyPkcs8);
    const spec: CredentialSpec = { source: { kind: 'path', path: keyPath }, clientCert: { kind: 'files', certFile, keyFile } };
    const rec = recorder();
    const watcher = await startWatcher(spec, rec);
    const initial = watcher.current;

    await replaceFile(certFile, certs.ecLeafPem);
    await rec.until(() => rec.errors.some((e) => /does not match the certificate/.test(errorText(e))));
    expect(watcher.current).toBe(initial);
    expect(errorText(watcher.lastError)).not.toContain('PRIVATE KEY');

    await replaceFile(keyFile, certs.ecKeySec1);
    await rec.until(() => rec.changes.length >= 1);
    expect(((await applied(watcher)).credentials as CertificateCredentials).fingerprint).not.toBe(
      (initial.credentials as CertificateCredentials).fingerprint,
    );
    expect(watcher.lastError).toBeUndefined();
  });

  it('reports a certificate that has expired since the last load, keeping it current', async () => {
    const volume = await KubeletVolume.create({
      oauth: JSON.stringify({ clientid: CLIENT_ID, certificate: certs.chainPem, key: certs.leafKeyPkcs1, tokenurl: TOKEN_URL }),
    });
    let clock = new Date();
    const rec = recorder();
    const watcher = await startWatcher({ source: { kind: 'path', path: volume.dir } }, rec, { now: () => clock });
    const initial = watcher.current;

    clock = new Date(Date.now() + 400 * DAY_MS);
    await watcher.reloadNow();
    expect(rec.errors).toHaveLength(1);
    expect(errorText(watcher.lastError)).toMatch(/expired on/);
    expect(watcher.current).toBe(initial);
    expect(rec.changes).toEqual([]);
    // Every poll after finds the same: still reported (readiness), but logged and counted once, not each time.
    await watcher.reloadNow();
    await watcher.reloadNow();
    expect(rec.errors).toHaveLength(1);
    expect(errorText(watcher.lastError)).toMatch(/expired on/);
  });
});

describe('CredentialWatcher expiry notices of the credentials in use', () => {
  it('reports the expiry warning once when the certificate in use enters it, and again each day closer', async () => {
    const volume = await KubeletVolume.create({
      oauth: JSON.stringify({ clientid: CLIENT_ID, certificate: certs.chainPem, key: certs.leafKeyPkcs1, tokenurl: TOKEN_URL }),
    });
    const spec: CredentialSpec = { source: { kind: 'path', path: volume.dir } };
    const { notAfter } = (await loadCredentials(spec)).credentials as { notAfter: Date };
    let clock = new Date(notAfter.getTime() - 40 * DAY_MS);
    const rec = recorder();
    const notices: string[] = [];
    const watcher = await startWatcher(spec, rec, {
      initial: await loadCredentials(spec, { now: clock }),
      now: () => clock,
      onNotices: (found) => notices.push(...found.map((n) => `${n.level} ${n.message}`)),
    });
    // Its notices at start (the token URL's mTLS host, an info) were the starter's to report, not the watcher's.
    expect(watcher.current.notices.map((n) => n.message)).not.toContainEqual(expect.stringMatching(/expires/));
    await watcher.reloadNow();
    expect(notices).toEqual([]);

    clock = new Date(notAfter.getTime() - 20 * DAY_MS);
    await watcher.reloadNow();
    expect(notices).toEqual([expect.stringMatching(/^warn the client certificate in oauth\.certificate \(.+\) expires on .+, in 20 days$/)]);
    await watcher.reloadNow();
    await watcher.reloadNow();
    expect(notices).toHaveLength(1);

    clock = new Date(notAfter.getTime() - 19 * DAY_MS);
    await watcher.reloadNow();
    expect(notices).toHaveLength(2);
    expect(notices[1]).toMatch(/, in 19 days$/);
    expect(rec.changes).toEqual([]);
    expect(rec.errors).toEqual([]);
  });
});

describe('CredentialWatcher re-watching: a watch follows an inode, the key a path', () => {
  // Polling ten minutes away: within a test only a watch can report a change.
  const WATCH_ONLY = { pollIntervalMs: 600_000 };
  const fields = (secret: string) => ({ clientid: CLIENT_ID, clientsecret: secret, tokenurl: TOKEN_URL, url: URL_ });
  const ROUNDS = ['second-FAKE-secret', 'third-FAKE-secret', 'fourth-FAKE-secret'];

  it('a key directory deleted and recreated, or renamed away and replaced: every change is seen', async () => {
    const root = await tempDir();
    const keyDir = join(root, 'key');
    const writeKeyDir = (dir: string, secret: string) => Promise.all(Object.entries(fields(secret)).map(([n, v]) => writeFile(join(dir, n), v)));
    await mkdir(keyDir);
    await writeKeyDir(keyDir, OLD_SECRET);
    const rec = recorder();
    const watcher = await startWatcher({ source: { kind: 'path', path: keyDir } }, rec, WATCH_ONLY);
    for (const [i, secret] of ROUNDS.entries()) {
      if (i % 2 === 0) {
        await rm(keyDir, { recursive: true });
        await mkdir(keyDir);
        await writeKeyDir(keyDir, secret);
      } else {
        const next = join(root, `key-${i}`);
        await mkdir(next);
        await writeKeyDir(next, secret);
        await rename(keyDir, join(root, `old-${i}`));
        await rename(next, keyDir);
      }
      await rec.until(() => secretOf(lastChange(rec)) === secret);
    }
    expect(secretOf(await applied(watcher))).toBe(ROUNDS.at(-1));
  });

  it('a key file whose directory is deleted and recreated: every change is seen', async () => {
    const root = await tempDir();
    const dir = join(root, 'd');
    const path = join(dir, 'key.json');
    await mkdir(dir);
    await writeFile(path, secretKey());
    const rec = recorder();
    const watcher = await startWatcher({ source: { kind: 'path', path } }, rec, WATCH_ONLY);
    for (const secret of ROUNDS) {
      await rm(dir, { recursive: true });
      await mkdir(dir);
      await writeFile(path, secretKey({ clientsecret: secret }));
      await rec.until(() => secretOf(lastChange(rec)) === secret);
    }
    expect(secretOf(await applied(watcher))).toBe(ROUNDS.at(-1));
  });

  it('a key behind a `current → vN` directory link swapped by rename (ln -sfn), then edited in place', async () => {
    const root = await tempDir();
    const version = async (n: number, secret: string) => {
      await mkdir(join(root, `v${n}`));
      await writeFile(join(root, `v${n}`, 'key.json'), secretKey({ clientsecret: secret }));
    };
    await version(0, OLD_SECRET);
    await symlink('v0', join(root, 'current'));
    const rec = recorder();
    const watcher = await startWatcher({ source: { kind: 'path', path: join(root, 'current', 'key.json') } }, rec, WATCH_ONLY);
    expect([...watcher.watching].sort()).toEqual([root, join(root, 'v0')].sort());
    for (const [i, secret] of ROUNDS.entries()) {
      await version(i + 1, secret);
      await symlink(`v${i + 1}`, join(root, 'current.tmp'));
      await rename(join(root, 'current.tmp'), join(root, 'current'));
      await rec.until(() => secretOf(lastChange(rec)) === secret);
    }
    // The version now current is watched too: an edit inside it, with no link swapped, is seen.
    await applied(watcher);
    expect(watcher.watching).toContain(join(root, `v${ROUNDS.length}`));
    await replaceFile(join(root, `v${ROUNDS.length}`, 'key.json'), secretKey({ clientsecret: NEW_SECRET }));
    await rec.until(() => secretOf(lastChange(rec)) === NEW_SECRET);
  });

  it('a key file linked from another directory (cfg/key.json → secret/key.json) replaced where it really is', async () => {
    const root = await tempDir();
    await mkdir(join(root, 'secret'));
    await mkdir(join(root, 'cfg'));
    await writeFile(join(root, 'secret', 'key.json'), secretKey());
    await symlink(join(root, 'secret', 'key.json'), join(root, 'cfg', 'key.json'));
    const rec = recorder();
    const watcher = await startWatcher({ source: { kind: 'path', path: join(root, 'cfg', 'key.json') } }, rec, WATCH_ONLY);
    expect(watcher.watching).toEqual([join(root, 'cfg'), join(root, 'secret')]);
    for (const secret of ROUNDS) {
      await replaceFile(join(root, 'secret', 'key.json'), secretKey({ clientsecret: secret }));
      await rec.until(() => secretOf(lastChange(rec)) === secret);
    }
  });

  it('sets a watch up again after it failed, and reports a failure that repeats once', async () => {
    const dir = await tempDir();
    const path = join(dir, 'key.json');
    await writeFile(path, secretKey());
    const rec = recorder();
    const live: FSWatcher[] = [];
    let refusals = 2;
    const watch: WatchFactory = (d, onEvent) => {
      if (refusals-- > 0) throw ENOSPC_ERROR;
      const w = fsWatch(d, { persistent: false }, (_event, filename) => onEvent(filename));
      live.push(w);
      rec.notify();
      return w;
    };
    const watcher = await startWatcher({ source: { kind: 'path', path } }, rec, { ...WATCH_ONLY, watch });
    expect(watcher.watching).toEqual([]);
    await watcher.reloadNow(); // refused again, alike: not reported again
    await watcher.reloadNow(); // set up
    expect(rec.watchErrors).toEqual([{ err: ENOSPC_ERROR, dir }]);
    expect(watcher.watching).toEqual([dir]);

    // A watch that fails later (inotify overflow, a removed mount) is set up again by the next reload (the poll).
    const failure = new Error('watch failed');
    live[0]?.emit('error', failure);
    expect(watcher.watching).toEqual([]);
    await watcher.reloadNow();
    expect(live).toHaveLength(2);
    expect(watcher.watching).toEqual([dir]);
    expect(rec.watchErrors).toEqual([{ err: ENOSPC_ERROR, dir }, { err: failure, dir }]);
    // Failing again at once, alike: not reported again, and not set up again before the next reload (no loop).
    live[1]?.emit('error', new Error('watch failed'));
    expect(watcher.watching).toEqual([]);
    expect(rec.watchErrors).toHaveLength(2);
    await watcher.reloadNow();
    expect(live).toHaveLength(3);
    expect(watcher.watching).toEqual([dir]);

    await replaceFile(path, secretKey({ clientsecret: NEW_SECRET }));
    await rec.until(() => rec.changes.length >= 1);
    expect(secretOf(lastChange(rec))).toBe(NEW_SECRET);
  });
});

describe('CredentialWatcher on a binding root with dot-files beside the bindings', () => {
  const oauth = (secret: string) => ({ type: 'it-rt', oauth: JSON.stringify({ clientid: CLIENT_ID, clientsecret: secret, tokenurl: TOKEN_URL, url: URL_ }) });

  for (const [name, source] of [
    ['$SERVICE_BINDING_ROOT', (root: string) => ({ kind: 'binding-root', root }) as const],
    ['--service-key at the root', (root: string) => ({ kind: 'path', path: root }) as const],
  ] as const) {
    it(`${name}: a rotation inside the binding is seen by a watch`, async () => {
      const root = await tempDir();
      const cpi = await KubeletVolume.create(oauth(OLD_SECRET), join(root, 'cpi'));
      await writeFile(join(root, '.keep'), '');
      await writeFile(join(root, '.DS_Store'), '\x00\x00\x00\x01Bud1');
      const rec = recorder();
      const watcher = await startWatcher({ source: source(root) }, rec, { pollIntervalMs: 600_000 });
      expect(watcher.current.credentials.source).toBe(join(root, 'cpi'));
      expect(watcher.watching).toEqual([root, join(root, 'cpi')]);

      await cpi.update(oauth(NEW_SECRET));
      await rec.until(() => rec.changes.length >= 1);
      expect(secretOf(await applied(watcher))).toBe(NEW_SECRET);
    });
  }
});

describe('CredentialWatcher polling', () => {
  it('polls when the directory cannot be watched', async () => {
    const dir = await tempDir();
    const path = join(dir, 'key.json');
    await writeFile(path, secretKey());
    const rec = recorder();
    const watcher = await startWatcher({ source: { kind: 'path', path } }, rec, {
      pollIntervalMs: 30,
      watch: () => {
        throw ENOSPC_ERROR;
      },
    });
    expect(rec.watchErrors).toEqual([{ err: ENOSPC_ERROR, dir }]);
    expect(watcher.watching).toEqual([]);

    await replaceFile(path, secretKey({ clientsecret: NEW_SECRET }));
    await rec.until(() => rec.changes.length >= 1);
    expect(secretOf(await applied(watcher))).toBe(NEW_SECRET);
  });

  it('falls back to polling when a watch fails later, without crashing', async () => {
    const dir = await tempDir();
    const path = join(dir, 'key.json');
    await writeFile(path, secretKey());
    const rec = recorder();
    const fake = fakeWatchFactory();
    const watcher = await startWatcher({ source: { kind: 'path', path } }, rec, { pollIntervalMs: 30, watch: fake.factory });
    const [w] = fake.watches;
    expect(w?.dir).toBe(dir);

    const failure = new Error('watch failed');
    w?.emit('error', failure);
    expect(w?.closed).toBe(true);
    expect(rec.watchErrors).toEqual([{ err: failure, dir }]);
    expect(watcher.watching).toEqual([]);

    await replaceFile(path, secretKey({ clientsecret: NEW_SECRET }));
    await rec.until(() => rec.changes.length >= 1);
    expect(secretOf(await applied(watcher))).toBe(NEW_SECRET);
    expect(rec.errors).toEqual([]);
  });

  it('polls sources that have nothing to watch (a load whose result changes)', async () => {
    const spec: CredentialSpec = { source: { kind: 'inline', json: secretKey(), label: 'SIDECAR_SERVICE_KEY_JSON' } };
    const rec = recorder();
    let secret = OLD_SECRET;
    const load: typeof loadCredentials = (s, opts) =>
      loadCredentials({ ...s, source: { kind: 'inline', json: secretKey({ clientsecret: secret }), label: 'test' } }, opts);
    const watcher = await startWatcher(spec, rec, { pollIntervalMs: 10, load });
    expect(watcher.watching).toEqual([]);

    secret = NEW_SECRET;
    await rec.until(() => rec.changes.length >= 1);
    expect(secretOf(await applied(watcher))).toBe(NEW_SECRET);
  });
});

describe('CredentialWatcher scheduling', () => {
  const spec: CredentialSpec = { source: { kind: 'inline', json: secretKey(), label: 'test' } };

  it('coalesces a burst of events into one reload', async () => {
    const rec = recorder();
    const fake = fakeWatchFactory();
    const path = await keyFile();
    // Each load notes which phase it started in: the start's own comparison, the burst, or the single event after it.
    let phase: 'start' | 'burst' | 'after' = 'start';
    const loads = { start: { started: 0, finished: 0 }, burst: { started: 0, finished: 0 }, after: { started: 0, finished: 0 } };
    const { load } = countingLoad(rec, () => loads[phase]);
    await startWatcher({ source: { kind: 'path', path } }, rec, { load, watch: fake.factory });
    expect(loads.start.started, "the start's own comparison").toBe(1);
    const fire = fake.watches[0]?.fire;
    expect(fire).toBeDefined();

    // A swap (the file changed) and its burst of events.
    await writeFile(path, secretKey({ clientsecret: NEW_SECRET }));
    phase = 'burst';
    for (let i = 0; i < 10; i++) fire?.();
    // Nothing while the events still come: the reload waits for a quiet period.
    expect(loads.burst.started, 'reloads during the burst').toBe(0);
    // The change is the end of the burst's reload: a further reload queued behind it starts in the same
    // microtasks, before the next macrotask, and the watcher is idle by then otherwise.
    await rec.until(() => rec.changes.length >= 1);
    expect(secretOf(lastChange(rec))).toBe(NEW_SECRET);
    await new Promise((resolve) => setImmediate(resolve));
    // …then one more event, whose reload can only come after everything the burst caused.
    phase = 'after';
    fire?.();
    await rec.until(() => loads.after.finished >= 1);
    expect(loads.burst.started, 'reloads for a burst of 10 events').toBe(1);
    expect(loads.after.started).toBe(1);
  });

  it('still reloads while events keep coming: at most 4 debounce periods after the first one', async () => {
    const rec = recorder();
    const { load, counts } = countingLoad(rec);
    const fake = fakeWatchFactory();
    const path = await keyFile();
    await startWatcher({ source: { kind: 'path', path } }, rec, { load, watch: fake.factory });
    const fire = fake.watches[0]!.fire;
    const before = counts.started; // the start's own comparison
    // The debounce timer and the clock it reads under the test's control: an event every quarter period, never
    // a quiet one, however loaded the machine (real timers would let a late event leave a gap).
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    let now = Math.ceil(performance.now());
    const clock = vi.spyOn(performance, 'now').mockImplementation(() => now);
    let reloadedAt: number | undefined;
    try {
      for (let t = 0; t < 10 * DEBOUNCE_MS && reloadedAt === undefined; t += DEBOUNCE_MS / 4) {
        fire();
        now += DEBOUNCE_MS / 4;
        vi.advanceTimersByTime(DEBOUNCE_MS / 4);
        if (counts.started > before) reloadedAt = t + DEBOUNCE_MS / 4;
      }
    } finally {
      clock.mockRestore();
      vi.useRealTimers();
    }
    expect(reloadedAt, 'ms from the first event of the storm to its reload').toBeDefined();
    // A debounce still (not a reload per period), but capped.
    expect(reloadedAt).toBeGreaterThan(DEBOUNCE_MS);
    expect(reloadedAt).toBeLessThanOrEqual(4 * DEBOUNCE_MS);
    await rec.until(() => counts.finished === counts.started); // not cut by the watcher's close
  });

  it('never overlaps reloads and runs once more for a request made during one', async () => {
    const rec = recorder();
    const initial = await loadCredentials(spec);
    // The first read is the start's comparison, not held.
    const gates = [undefined, deferred<void>(), deferred<void>()];
    let running = 0;
    let maxRunning = 0;
    let calls = 0;
    const load: typeof loadCredentials = async (s, opts) => {
      const gate = gates[calls++];
      running += 1;
      maxRunning = Math.max(maxRunning, running);
      await gate?.promise;
      running -= 1;
      return loadCredentials(s, opts);
    };
    const watcher = await startWatcher(spec, rec, { initial, load });

    expect(calls).toBe(1);
    const first = watcher.reloadNow();
    const second = watcher.reloadNow();
    const third = watcher.reloadNow();
    expect(calls).toBe(2);
    gates[1]?.resolve();
    gates[2]?.resolve();
    await Promise.all([first, second, third]);
    expect(calls).toBe(3);
    expect(maxRunning).toBe(1);
  });

  it('offers a change again when onChange fails', async () => {
    const rec = recorder();
    const initial = await loadCredentials(spec);
    let secret = OLD_SECRET;
    const load: typeof loadCredentials = (_s, opts) =>
      loadCredentials({ source: { kind: 'inline', json: secretKey({ clientsecret: secret }), label: 'test' } }, opts);
    const refused = new Error('token server refused the new credentials');
    let attempts = 0;
    let release!: () => void;
    const retrying = new Promise<void>((resolve) => (release = resolve));
    let lastErrorDuringRetry: unknown = 'not seen';
    const watcher = await startWatcher(spec, rec, {
      initial,
      load,
      onChange: async (loaded) => {
        attempts += 1;
        if (attempts === 1) throw refused;
        lastErrorDuringRetry = watcher.lastError;
        await retrying;
        rec.onChange(loaded);
      },
    });

    secret = NEW_SECRET;
    await watcher.reloadNow();
    expect(rec.errors).toEqual([refused]);
    expect(watcher.lastError).toBe(refused);
    expect(watcher.current).toBe(initial);

    const retry = watcher.reloadNow();
    await vi.waitFor(() => expect(attempts).toBe(2));
    // Not applied yet: readiness and the reload-failing gauge must not flip to healthy during the retry.
    expect(lastErrorDuringRetry).toBe(refused);
    release();
    await retry;
    expect(attempts).toBe(2);
    expect(secretOf(await applied(watcher))).toBe(NEW_SECRET);
    expect(watcher.lastError).toBeUndefined();
  });

  /**
   * A watcher on a key file whose `onChange` refuses every change (as a token server refusing new credentials
   * would), with a hand-fired directory event: `write` puts a secret in the file (or none: a neighbour written)
   * and waits until the reload that event set off has read the key.
   */
  async function refusingWatcher() {
    const rec = recorder();
    const { load, counts } = countingLoad(rec);
    const fake = fakeWatchFactory();
    const path = await keyFile();
    const refused = new Error('token server refused the new credentials');
    const offers = { count: 0 };
    const onChange = (): void => {
      offers.count += 1;
      throw refused;
    };
    const watcher = await startWatcher({ source: { kind: 'path', path } }, rec, { load, watch: fake.factory, onChange });
    const fire = fake.watches[0]!.fire;
    const write = async (secret?: string): Promise<void> => {
      if (secret !== undefined) await writeFile(path, secretKey({ clientsecret: secret }));
      const before = counts.finished;
      fire();
      await rec.until(() => counts.finished > before);
    };
    return { rec, watcher, refused, offers, write, path };
  }

  it('offers a refused change again at the next reloadNow or poll, not on every directory event (a busy file beside the key)', async () => {
    const { rec, watcher, refused, offers, write } = await refusingWatcher();
    await write(NEW_SECRET);
    await rec.until(() => rec.errors.length === 1);
    for (let i = 0; i < 5; i++) await write(); // a neighbour written again: the key is read, the refused change not offered
    await watcher.reloadNow(); // waits for any reload in flight, then offers the change once more
    expect({ attempts: offers.count, errors: rec.errors.length }).toEqual({ attempts: 2, errors: 2 });
    expect(watcher.lastError).toBe(refused);
    expect(watcher.current.credentials.kind === 'client-secret' && watcher.current.credentials.clientSecret).toBe(OLD_SECRET);
  });

  it('a refused change written again after the files broke is reported as refused again, not as the broken file', async () => {
    const { rec, watcher, refused, offers, write, path } = await refusingWatcher();
    await write(NEW_SECRET);
    await rec.until(() => rec.errors.length === 1);
    await writeFile(path, '{ "clientid": ');
    await write(); // broken: reported as such
    await rec.until(() => rec.errors.length === 2);
    expect(errorText(watcher.lastError)).toMatch(/JSON/);
    await write(NEW_SECRET); // the refused change again: not offered before the next poll, but reported as what it is
    await vi.waitFor(() => expect(watcher.lastError).toBe(refused));
    await watcher.reloadNow(); // the poll's offer
    expect(offers.count).toBe(2);
    expect(rec.errors).toHaveLength(3);
  });

  it('a refused change written again after the files went back to the credentials in use is offered at once', async () => {
    const { rec, watcher, refused, offers, write } = await refusingWatcher();
    await write(NEW_SECRET);
    await rec.until(() => rec.errors.length === 1);
    await write(OLD_SECRET); // back to what is in use: nothing to report
    await vi.waitFor(() => expect(watcher.lastError).toBeUndefined());
    await write(NEW_SECRET); // the same change again: news, offered and reported
    await rec.until(() => rec.errors.length === 2);
    expect(offers.count).toBe(2);
    expect(watcher.lastError).toBe(refused);
  });

  it('a poll offers a refused change again', async () => {
    const rec = recorder();
    const initial = await loadCredentials(spec);
    const load: typeof loadCredentials = (_s, opts) =>
      loadCredentials({ source: { kind: 'inline', json: secretKey({ clientsecret: NEW_SECRET }), label: 'test' } }, opts);
    const refused = new Error('token server refused the new credentials');
    await startWatcher(spec, rec, { initial, load, pollIntervalMs: 30, onChange: () => Promise.reject(refused) });
    await rec.until(() => rec.errors.length >= 3);
    expect(rec.errors.every((err) => err === refused)).toBe(true);
  });

  it('rejects unusable timer options', async () => {
    const rec = recorder();
    const initial = await loadCredentials(spec);
    await expect(startWatcher(spec, rec, { initial, debounceMs: -1 })).rejects.toThrow(RangeError);
    await expect(startWatcher(spec, rec, { initial, pollIntervalMs: 0 })).rejects.toThrow(/pollIntervalMs/);
  });
});

describe('CredentialWatcher.close', () => {
  it('stops watching: later file changes trigger nothing', async () => {
    const path = await keyFile();
    const rec = recorder();
    const { load, counts } = countingLoad(rec);
    const watcher = await startWatcher({ source: { kind: 'path', path } }, rec, { load, pollIntervalMs: 20 });
    watcher.close();
    watcher.close();
    expect(watcher.watching).toEqual([]);

    // A twin watcher on the same directory, started after it with the same timings, proves the change was
    // observable: once the twin has reloaded and reported it, the closed watcher would have too. Its watch
    // event comes first (same directory, older watch), and so would its debounce and poll timers.
    const twin = recorder();
    await startWatcher({ source: { kind: 'path', path } }, twin, { pollIntervalMs: 20 });
    await replaceFile(path, secretKey({ clientsecret: NEW_SECRET }));
    await twin.until(() => twin.changes.length >= 1);
    expect(secretOf(lastChange(twin))).toBe(NEW_SECRET);
    await watcher.reloadNow();
    expect(counts.started, 'the comparison at start, nothing after close').toBe(1);
    expect(rec.changes).toEqual([]);
    expect(rec.errors).toEqual([]);
    expect(secretOf(watcher.current)).toBe(OLD_SECRET);
  });

  it('drops the result of a reload in flight', async () => {
    const spec: CredentialSpec = { source: { kind: 'inline', json: secretKey(), label: 'test' } };
    const rec = recorder();
    const initial = await loadCredentials(spec);
    const gate = deferred<void>();
    let calls = 0;
    const load: typeof loadCredentials = async (s, opts) => {
      if (calls++ === 0) return loadCredentials(s, opts); // the start's comparison: unchanged
      await gate.promise;
      return loadCredentials({ source: { kind: 'inline', json: secretKey({ clientsecret: NEW_SECRET }), label: 'test' } }, opts);
    };
    const watcher = await startWatcher(spec, rec, { initial, load });

    const reload = watcher.reloadNow();
    watcher.close();
    gate.resolve();
    await reload;
    expect(rec.changes).toEqual([]);
    expect(watcher.current).toBe(initial);
  });
});

describe('credentialFingerprint', () => {
  const base: SecretCredentials = {
    kind: 'client-secret',
    clientId: CLIENT_ID,
    clientSecret: OLD_SECRET,
    tokenUrl: TOKEN_URL,
    url: URL_,
    source: '/a/key.json',
  };

  it('changes with anything used to authenticate, not with the source label', () => {
    const fp = credentialFingerprint(base);
    expect(fp).toMatch(/^[0-9a-f]{64}$/); // a digest: the secret itself cannot be in it
    expect(credentialFingerprint({ ...base, source: '/b/key.json' })).toBe(fp);
    for (const change of [
      { clientSecret: NEW_SECRET },
      { clientId: 'other' },
      { tokenUrl: `${TOKEN_URL}2` },
      { url: undefined },
    ]) {
      expect(credentialFingerprint({ ...base, ...change })).not.toBe(fp);
    }
  });
});

describe('CredentialWatcher: fingerprints and close()', () => {
  it("a certificate key's fingerprint changes with its url (a rotation that moves the tenant), as a secret key's does", () => {
    const cert: CertificateCredentials = {
      kind: 'certificate',
      clientId: CLIENT_ID,
      tokenUrl: TOKEN_URL,
      url: URL_,
      source: '/a/key.json',
      certificate: certs.chainPem,
      key: certs.leafKeyPkcs1,
      fingerprint: 'leaf',
      notAfter: new Date(Date.now() + DAY_MS),
    };
    const fp = credentialFingerprint(cert);
    expect(credentialFingerprint({ ...cert, source: '/b/key.json' })).toBe(fp);
    for (const change of [{ url: `${URL_}2` }, { url: undefined }, { tokenUrl: `${TOKEN_URL}2` }, { clientId: 'other' }, { certificate: certs.leafPem }]) {
      expect(credentialFingerprint({ ...cert, ...change })).not.toBe(fp);
    }
  });

  it('close() closes its directory watches (inotify watches are a per-user limit) and clears its timers', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval'] });
    try {
      const path = await keyFile();
      const rec = recorder();
      const fake = fakeWatchFactory();
      const watcher = await startWatcher({ source: { kind: 'path', path } }, rec, { watch: fake.factory });
      expect(fake.watches.length).toBeGreaterThan(0);
      fake.watches[0]!.fire(); // a directory event: its reload is debounced
      expect(vi.getTimerCount()).toBe(2); // the poll and the debounce
      watcher.close();
      expect(fake.watches.every((w) => w.closed)).toBe(true);
      expect(vi.getTimerCount()).toBe(0);
    } finally {
      vi.useRealTimers();
    }
  });
});

describe('CredentialWatcher: a reload that finds a new directory to watch', () => {
  it('reads again: a change made between its read and the new watch is not left to the poll', async () => {
    const root = await tempDir();
    await mkdir(join(root, 'gen1'));
    await writeFile(join(root, 'gen1', 'key.json'), secretKey());
    await mkdir(join(root, 'gen2'));
    await writeFile(join(root, 'gen2', 'key.json'), secretKey({ clientsecret: NEW_SECRET }));
    await symlink('gen1', join(root, 'current'));
    const spec: CredentialSpec = { source: { kind: 'path', path: join(root, 'current', 'key.json') } };
    const rec = recorder();
    const fake = fakeWatchFactory();
    let calls = 0;
    const load: typeof loadCredentials = async (s, opts) => {
      const loaded = await loadCredentials(s, opts);
      if (++calls === 2) {
        // The link moves on right after this read, before any watch on its new directory exists.
        await symlink('gen2', join(root, 'current.tmp'));
        await rename(join(root, 'current.tmp'), join(root, 'current'));
      }
      return loaded;
    };
    const watcher = await startWatcher(spec, rec, { load, watch: fake.factory, pollIntervalMs: 600_000 });
    expect(fake.watches.map((w) => w.dir).sort()).toEqual([root, join(root, 'gen1')].sort());
    await watcher.reloadNow(); // resolves once the reload loop has run dry
    expect(secretOf(watcher.current)).toBe(NEW_SECRET);
  });
});

describe('CredentialWatcher.close: a failing reload in flight', () => {
  it('reports nothing: the failure of a reload that was in flight when it was closed is dropped too', async () => {
    const spec: CredentialSpec = { source: { kind: 'inline', json: secretKey(), label: 'test' } };
    const rec = recorder();
    const initial = await loadCredentials(spec);
    const gate = deferred<void>();
    let calls = 0;
    const load: typeof loadCredentials = async (s, opts) => {
      if (calls++ === 0) return loadCredentials(s, opts); // the start's comparison: unchanged
      await gate.promise;
      throw new ConfigError([{ source: 'test', field: 'oauth.clientsecret', message: 'is missing' }]);
    };
    const watcher = await startWatcher(spec, rec, { initial, load });

    const reload = watcher.reloadNow();
    watcher.close();
    gate.resolve();
    await reload;
    expect(rec.errors).toEqual([]);
    expect(watcher.lastError).toBeUndefined();
  });
});
