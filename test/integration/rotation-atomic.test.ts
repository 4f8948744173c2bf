/**
 * A reload racing the kubelet's `..data` swap hands the watcher one version of the secret, never a mix of two:
 * a mixed key (old client id, new secret) would be offered as a change, refused by the token server and
 * reported as a failed rotation. The swap is made from inside a file read (`node:fs/promises` is wrapped), so
 * the race is staged exactly: no timing, no sleeps.
 */
import { basename } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { CredentialWatcher } from '../../src/credential-watcher.js';
import { loadCredentials, type CredentialSpec, type LoadedCredentials } from '../../src/credentials.js';
import { fsHooks } from '../helpers/fs-read-hook.js';
import { kubeletSecret, type KubeletSecret } from '../helpers/kubelet-secret.js';

vi.mock('node:fs/promises', async (original) => (await import('../helpers/fs-read-hook.js')).hookedFsPromises(original));

const TOKEN_URL = 'https://acme-dev.authentication.eu10.hana.ondemand.com/oauth/token';
const OLD = { clientid: 'sb-old!b1|it-rt-acme!b196', clientsecret: 'old-FAKE-secret$0000=', tokenurl: TOKEN_URL, url: 'https://old.example.com' };
const NEW = { clientid: 'sb-new!b2|it-rt-acme!b196', clientsecret: 'new-FAKE-secret$1111=', tokenurl: TOKEN_URL, url: 'https://new.example.com' };

const volumes: KubeletSecret[] = [];
const watchers: CredentialWatcher[] = [];
afterEach(async () => {
  fsHooks.read = undefined;
  for (const w of watchers.splice(0)) w.close();
  await Promise.all(volumes.splice(0).map((volume) => volume.remove()));
});

const pair = (l: LoadedCredentials) => [l.credentials.clientId, l.credentials.kind === 'client-secret' ? l.credentials.clientSecret : '', l.credentials.url];

describe('a reload while the kubelet swaps ..data', () => {
  it('offers the new key whole: no mixed key, no failed reload', async () => {
    const volume = await kubeletSecret(OLD, 'rotation-atomic-');
    volumes.push(volume);
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
        await volume.swap(NEW, { removeOld: true });
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
