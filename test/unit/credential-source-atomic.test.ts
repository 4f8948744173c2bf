/**
 * A secret directory in the kubelet's AtomicWriter layout is read from one version, even when `..data` is
 * swapped between the reads of two of its files. The swap is made from inside a file read (`node:fs/promises`
 * is wrapped), so the interleaving is exact: no timing, no sleeps.
 */
import { rm, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { readClientCert, readCredentialSource } from '../../src/credential-source.js';
import { ConfigError } from '../../src/errors.js';
import { fsHooks } from '../helpers/fs-read-hook.js';
import { kubeletSecret as makeKubeletSecret, type KubeletSecret } from '../helpers/kubelet-secret.js';

vi.mock('node:fs/promises', async (original) => (await import('../helpers/fs-read-hook.js')).hookedFsPromises(original));

const OLD = { clientid: 'sb-old!b1|it-rt-acme!b196', clientsecret: 'old-FAKE-secret$0000=', url: 'https://old.example.com', tokenurl: 'https://old.example.com/oauth/token' };
const NEW = { clientid: 'sb-new!b2|it-rt-acme!b196', clientsecret: 'new-FAKE-secret$1111=', url: 'https://new.example.com', tokenurl: 'https://new.example.com/oauth/token' };

const created: KubeletSecret[] = [];
afterEach(async () => {
  fsHooks.read = undefined;
  await Promise.all(created.splice(0).map((secret) => secret.remove()));
});

async function kubeletSecret(files: Record<string, string>): Promise<KubeletSecret> {
  const secret = await makeKubeletSecret(files, 'credential-source-atomic-');
  created.push(secret);
  return secret;
}

/** Swaps `..data` once, right after the first read of a file named `name` has returned the old content. */
function swapAfterFirstRead(secret: Pick<KubeletSecret, 'swap'>, name: string, files: Record<string, string>, removeOld = false): void {
  let swapped = false;
  fsHooks.read = async (path, read) => {
    const text = await read();
    if (basename(path) === name && !swapped) {
      swapped = true;
      await secret.swap(files, { removeOld });
    }
    return text;
  };
}

/**
 * The two files of a pair are read concurrently: the key's read returns the old content, then `..data` is swapped to
 * a new pair, and only then does the certificate's read run.
 */
function swapBetweenKeyAndCertificate(secret: Pick<KubeletSecret, 'swap'>): void {
  let swapped!: () => void;
  const swapDone = new Promise<void>((resolve) => (swapped = resolve));
  let first = true;
  fsHooks.read = async (path, read) => {
    if (!first) return read();
    if (basename(path) === 'tls.crt') {
      await swapDone;
      first = false;
      return read();
    }
    const text = await read();
    await secret.swap({ 'tls.crt': 'NEW-CERT', 'tls.key': 'NEW-KEY' });
    swapped();
    return text;
  };
}

describe('reading a kubelet secret directory while ..data is swapped', () => {
  it('takes every field from one version when the swap comes between two field reads', async () => {
    const { dir, ...secret } = await kubeletSecret(OLD);
    // Fields are read in name order: clientid first, so a per-file read would pair the old id with the new secret.
    swapAfterFirstRead(secret, 'clientid', NEW);
    const { raw, source } = await readCredentialSource({ kind: 'path', path: dir });
    expect(raw).toEqual(NEW);
    expect(source).toBe(dir);
  });

  it('takes every field from one version when the old version is removed right after the swap', async () => {
    const { dir, ...secret } = await kubeletSecret(OLD);
    swapAfterFirstRead(secret, 'clientid', NEW, true);
    const { raw } = await readCredentialSource({ kind: 'path', path: dir });
    expect(raw).toEqual(NEW);
  });

  it('reads the fields of the new version, also one the old version did not have', async () => {
    const { clientsecret: _, ...withoutSecret } = OLD;
    const { dir, ...secret } = await kubeletSecret(withoutSecret);
    swapAfterFirstRead(secret, 'clientid', NEW);
    expect((await readCredentialSource({ kind: 'path', path: dir })).raw).toEqual(NEW);
  });

  it('gives up with an error naming ..data when it moves during every read', async () => {
    const { dir, ...secret } = await kubeletSecret(OLD);
    let generation = 0;
    fsHooks.read = async (path, read) => {
      const text = await read();
      if (basename(path) === 'clientid') await secret.swap({ ...NEW, clientsecret: `secret-${++generation}` }, { removeOld: true });
      return text;
    };
    const err = await readCredentialSource({ kind: 'path', path: dir }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).problems).toEqual([
      {
        source: join(dir, '..data'),
        field: '',
        message: 'changed during each of 3 reads: the secret kept being updated while it was read',
      },
    ]);
    expect(generation).toBe(3);
    expect((err as ConfigError).message).not.toContain('secret-');
  });

  it('names a missing field as the file in the secret directory, not in the version directory', async () => {
    const { dir } = await kubeletSecret({ 'tls.crt': 'CERT-PEM' });
    await expect(readClientCert({ kind: 'tls-dir', dir })).rejects.toMatchObject({
      problems: [{ source: join(dir, 'tls.key'), field: '', message: 'does not exist' }],
    });
  });

  it('reads a kubernetes.io/tls pair from one version when the swap comes between the two reads', async () => {
    const { dir, ...secret } = await kubeletSecret({ 'tls.crt': 'OLD-CERT', 'tls.key': 'OLD-KEY' });
    swapBetweenKeyAndCertificate(secret);
    expect(await readClientCert({ kind: 'tls-dir', dir })).toEqual({ certificate: 'NEW-CERT', key: 'NEW-KEY', source: dir });
  });

  it('reads --client-cert and --client-key in one secret volume from one version too', async () => {
    const { dir, ...secret } = await kubeletSecret({ 'tls.crt': 'OLD-CERT', 'tls.key': 'OLD-KEY' });
    swapBetweenKeyAndCertificate(secret);
    const certFile = join(dir, 'tls.crt');
    const keyFile = join(dir, 'tls.key');
    expect(await readClientCert({ kind: 'files', certFile, keyFile })).toEqual({ certificate: 'NEW-CERT', key: 'NEW-KEY', source: `${certFile}, ${keyFile}` });
  });

  it('a field the new version dropped, whose link the kubelet removes only after the swap, is absent, not an error', async () => {
    const { dir, ...secret } = await kubeletSecret({ ...OLD, certificate: 'OLD-CERT', key: 'OLD-KEY' });
    await secret.swap(NEW); // the certificate and key links are left, leading nowhere
    expect((await readCredentialSource({ kind: 'path', path: dir })).raw).toEqual(NEW);
  });

  it('reads a directory without ..data file by file, as before', async () => {
    // A plain directory: the kubelet's, with its links replaced by the files themselves.
    const { dir } = await kubeletSecret(OLD);
    await rm(join(dir, '..data'));
    for (const [name, text] of Object.entries(OLD)) {
      await rm(join(dir, name));
      await writeFile(join(dir, name), text);
    }
    const seen: string[] = [];
    fsHooks.read = (path, read) => {
      seen.push(path);
      return read();
    };
    expect((await readCredentialSource({ kind: 'path', path: dir })).raw).toEqual(OLD);
    expect(seen).toEqual(Object.keys(OLD).sort().map((name) => join(dir, name)));
  });
});
