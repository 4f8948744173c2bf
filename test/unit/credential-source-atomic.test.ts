/**
 * A secret directory in the kubelet's AtomicWriter layout is read from one version, even when `..data` is
 * swapped between the reads of two of its files. The swap is made from inside a file read (`node:fs/promises`
 * is wrapped), so the interleaving is exact: no timing, no sleeps.
 */
import { mkdir, mkdtemp, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join, relative } from 'node:path';
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
    expect(await readClientCert({ kind: 'tls-dir', dir })).toMatchObject({ certificate: 'NEW-CERT', key: 'NEW-KEY', source: dir });
  });

  it('reads --client-cert and --client-key in one secret volume from one version too', async () => {
    const { dir, ...secret } = await kubeletSecret({ 'tls.crt': 'OLD-CERT', 'tls.key': 'OLD-KEY' });
    swapBetweenKeyAndCertificate(secret);
    const certFile = join(dir, 'tls.crt');
    const keyFile = join(dir, 'tls.key');
    expect(await readClientCert({ kind: 'files', certFile, keyFile })).toMatchObject({ certificate: 'NEW-CERT', key: 'NEW-KEY', source: `${certFile}, ${keyFile}` });
  });

  it.each([
    ['a doubled slash (a $(DIR)/ template)', (dir: string) => [`${dir}/tls.crt`, `${dir}//tls.key`]],
    ['a relative path and one with ./', (dir: string) => [relative(process.cwd(), join(dir, 'tls.crt')), `./${relative(process.cwd(), join(dir, 'tls.key'))}`]],
  ])('reads --client-cert and --client-key spelled differently (%s) from one version too', async (_, spell) => {
    const { dir, ...secret } = await kubeletSecret({ 'tls.crt': 'OLD-CERT', 'tls.key': 'OLD-KEY' });
    swapBetweenKeyAndCertificate(secret);
    const [certFile, keyFile] = spell(dir) as [string, string];
    // The files as given are named in messages and the source.
    expect(await readClientCert({ kind: 'files', certFile, keyFile })).toMatchObject({ certificate: 'NEW-CERT', key: 'NEW-KEY', source: `${certFile}, ${keyFile}` });
  });

  it('a field the new version dropped, whose link the kubelet removes only after the swap, is absent, not an error', async () => {
    const { dir, ...secret } = await kubeletSecret({ ...OLD, certificate: 'OLD-CERT', key: 'OLD-KEY' });
    await secret.swap(NEW); // the certificate and key links are left, leading nowhere
    expect((await readCredentialSource({ kind: 'path', path: dir })).raw).toEqual(NEW);
  });

  it('reads a version whose fields all have new names, while the links of the old names still lead nowhere', async () => {
    // The kubelet renames ..data first and makes the new names' links after it: a read in between sees only the old
    // links, broken. Here the binding moved to btp-operator's secretKey layout (one JSON file and .metadata).
    const { dir, ...secret } = await kubeletSecret(OLD);
    await secret.swap({
      '.metadata': JSON.stringify({ credentialProperties: [{ name: 'credentials', format: 'json', container: true }] }),
      credentials: JSON.stringify(NEW),
    });
    const { raw, source } = await readCredentialSource({ kind: 'path', path: dir });
    expect(raw).toEqual(NEW);
    expect(source).toBe(join(dir, 'credentials'));
  });

  it('reads a subdirectory of a secret volume (items: path: cpi/<field>) from one version too', async () => {
    // The volume's `cpi` is a link through ..data: the directory the key is read from has no ..data of its own.
    const { dir: volume } = await kubeletSecret({});
    const version = async (files: Record<string, string>) => {
      const name = `..v${Math.random().toString(36).slice(2)}`;
      await mkdir(join(volume, name, 'cpi'), { recursive: true });
      for (const [file, text] of Object.entries(files)) await writeFile(join(volume, name, 'cpi', file), text);
      return name;
    };
    await rm(join(volume, '..data'));
    await symlink(await version(OLD), join(volume, '..data'));
    await symlink(join('..data', 'cpi'), join(volume, 'cpi'));
    let swapped = false;
    fsHooks.read = async (path, read) => {
      const text = await read();
      if (basename(path) === 'clientid' && !swapped) {
        swapped = true;
        await symlink(await version(NEW), join(volume, '..data_tmp'));
        await rename(join(volume, '..data_tmp'), join(volume, '..data'));
      }
      return text;
    };
    const dir = join(volume, 'cpi');
    const { raw, source } = await readCredentialSource({ kind: 'path', path: dir });
    expect(raw).toEqual(NEW);
    expect(source).toBe(dir);
  });

  it('reads a directory behind a link switched with ln -sfn (current -> v1 -> v2) from one version', async () => {
    const root = await mkdtemp(join(tmpdir(), 'credential-source-link-'));
    try {
      for (const [name, files] of [['v1', OLD], ['v2', NEW]] as const) {
        await mkdir(join(root, name));
        for (const [file, text] of Object.entries(files)) await writeFile(join(root, name, file), text);
      }
      await symlink('v1', join(root, 'current'));
      let swapped = false;
      fsHooks.read = async (path, read) => {
        const text = await read();
        if (basename(path) === 'clientid' && !swapped) {
          swapped = true;
          await symlink('v2', join(root, 'current.tmp'));
          await rename(join(root, 'current.tmp'), join(root, 'current'));
        }
        return text;
      };
      const dir = join(root, 'current');
      const { raw, source } = await readCredentialSource({ kind: 'path', path: dir });
      expect(raw).toEqual(NEW);
      expect(source).toBe(dir);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  it('reads a kubernetes.io/tls pair behind a switched link from one version', async () => {
    const root = await mkdtemp(join(tmpdir(), 'credential-source-link-'));
    try {
      for (const [name, cert, key] of [['v1', 'OLD-CERT', 'OLD-KEY'], ['v2', 'NEW-CERT', 'NEW-KEY']] as const) {
        await mkdir(join(root, name));
        await writeFile(join(root, name, 'tls.crt'), cert);
        await writeFile(join(root, name, 'tls.key'), key);
      }
      await symlink('v1', join(root, 'current'));
      swapBetweenKeyAndCertificate({
        swap: async () => {
          await symlink('v2', join(root, 'current.tmp'));
          await rename(join(root, 'current.tmp'), join(root, 'current'));
        },
      });
      const dir = join(root, 'current');
      expect(await readClientCert({ kind: 'tls-dir', dir })).toMatchObject({ certificate: 'NEW-CERT', key: 'NEW-KEY', source: dir });
    } finally {
      await rm(root, { recursive: true, force: true });
    }
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
