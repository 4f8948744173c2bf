/** A secret volume as the kubelet's AtomicWriter writes it: `..<timestamp>/` with the files, `..data` → it, `name → ..data/name`. */
import { mkdir, mkdtemp, readlink, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface KubeletSecret {
  readonly dir: string;
  /** AtomicWriter's update: a new version, `..data_tmp` renamed over `..data`; `removeOld` as the kubelet then does. */
  swap(files: Record<string, string>, options?: { removeOld?: boolean }): Promise<void>;
  remove(): Promise<void>;
}

export async function kubeletSecret(files: Record<string, string>, prefix = 'kubelet-secret-'): Promise<KubeletSecret> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  let versions = 0;
  const writeVersion = async (content: Record<string, string>): Promise<string> => {
    const name = `..2026_01_01_00_00_00.${String(++versions).padStart(9, '0')}`;
    await mkdir(join(dir, name));
    await Promise.all(Object.entries(content).map(([file, text]) => writeFile(join(dir, name, file), text)));
    return name;
  };
  await symlink(await writeVersion(files), join(dir, '..data'));
  await Promise.all(Object.keys(files).map((name) => symlink(join('..data', name), join(dir, name))));
  return {
    dir,
    async swap(content, { removeOld = false } = {}) {
      const old = await readlink(join(dir, '..data'));
      await symlink(await writeVersion(content), join(dir, '..data_tmp'));
      await rename(join(dir, '..data_tmp'), join(dir, '..data'));
      if (removeOld) await rm(join(dir, old), { recursive: true });
    },
    remove: () => rm(dir, { recursive: true, force: true }),
  };
}
