/**
 * A reload racing the kubelet's `..data` swap hands the watcher one version of the secret, never a mix of two:
 * a mixed key (old client id, new secret) would be offered as a change, refused by the token server and
 * reported as a failed rotation. The swap is made from inside a file read (`node:fs/promises` is wrapped), so
 * the race is staged exactly: no timing, no sleeps.
 */
import { mkdir, mkdtemp, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { CredentialWatcher } from '../../src/credential-watcher.js';
import { loadCredentials, type CredentialSpec, type LoadedCredentials } from '../../src/credentials.js';

type ReadHook = (path: string, read: () => Promise<string>) => Promise<string>;
const fsHooks = vi.hoisted(() => ({ read: undefined as ReadHook | undefined }));

vi.mock('node:fs/promises', async (importOriginal) => {
  const actual = await importOriginal<typeof import('node:fs/promises')>();
  const readFile = (async (...args: Parameters<typeof actual.readFile>) => {
    const hook = fsHooks.read;
    const read = () => actual.readFile(...args) as Promise<string>;
    return hook ? hook(String(args[0]), read) : read();
  }) as typeof actual.readFile;
  return { ...actual, readFile, default: { ...actual, readFile } };
});

const TOKEN_URL = 'https://acme-dev.authentication.eu10.hana.ondemand.com/oauth/token';
const OLD = { clientid: 'sb-old!b1|it-rt-acme!b196', clientsecret: 'old-FAKE-secret$0000=', tokenurl: TOKEN_URL, url: 'https://old.example.com' };
const NEW = { clientid: 'sb-new!b2|it-rt-acme!b196', clientsecret: 'new-FAKE-secret$1111=', tokenurl: TOKEN_URL, url: 'https://new.example.com' };

const dirs: string[] = [];
const watchers: CredentialWatcher[] = [];
afterEach(async () => {
  fsHooks.read = undefined;
  for (const w of watchers.splice(0)) w.close();
  await Promise.all(dirs.splice(0).map((dir) => rm(dir, { recursive: true, force: true })));
});

/** A flat per-field secret volume as the kubelet writes it, with `rotate` doing AtomicWriter's swap. */
async function kubeletVolume(files: Record<string, string>) {
  const dir = await mkdtemp(join(tmpdir(), 'rotation-atomic-'));
  dirs.push(dir);
  let version = 0;
  const writeVersion = async (content: Record<string, string>) => {
    const name = `..2026_01_01_00_0${version++}_00.000000001`;
    await mkdir(join(dir, name));
    await Promise.all(Object.entries(content).map(([file, text]) => writeFile(join(dir, name, file), text)));
    return name;
  };
  let current = await writeVersion(files);
  await symlink(current, join(dir, '..data'));
  await Promise.all(Object.keys(files).map((name) => symlink(join('..data', name), join(dir, name))));
  return {
    dir,
    /** New version, `..data_tmp` renamed over `..data`, old version removed. */
    async rotate(content: Record<string, string>) {
      const next = await writeVersion(content);
      await symlink(next, join(dir, '..data_tmp'));
      await rename(join(dir, '..data_tmp'), join(dir, '..data'));
      await rm(join(dir, current), { recursive: true });
      current = next;
    },
  };
}

const pair = (l: LoadedCredentials) => [l.credentials.clientId, l.credentials.kind === 'client-secret' ? l.credentials.clientSecret : '', l.credentials.url];

describe('a reload while the kubelet swaps ..data', () => {
  it('offers the new key whole: no mixed key, no failed reload', async () => {
    const volume = await kubeletVolume(OLD);
    const spec: CredentialSpec = { source: { kind: 'path', path: volume.dir } };
    const changes: LoadedCredentials[] = [];
    const errors: unknown[] = [];
    const watcher = await CredentialWatcher.start(spec, {
      initial: await loadCredentials(spec),
      // Reloads only when the test asks: no watch events, no poll during the test.
      watch: () => ({ on: () => undefined, close: () => undefined }),
      pollIntervalMs: 2_147_483_647,
      onChange: (loaded) => {
        changes.push(loaded);
      },
      onError: (err) => errors.push(err),
    });
    watchers.push(watcher);

    // The kubelet swaps just after the reload has read `clientid` (the first field) of the old version.
    let swapped = false;
    fsHooks.read = async (path, read) => {
      const text = await read();
      if (!swapped && basename(path) === 'clientid') {
        swapped = true;
        await volume.rotate(NEW);
      }
      return text;
    };
    await watcher.reloadNow();
    expect(swapped).toBe(true);
    expect(errors).toEqual([]);
    expect(changes.map(pair)).toEqual([[NEW.clientid, NEW.clientsecret, NEW.url]]);
    expect(pair(watcher.current)).toEqual([NEW.clientid, NEW.clientsecret, NEW.url]);
  });
});
