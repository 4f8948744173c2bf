/**
 * A hook into `node:fs/promises.readFile`, for staging a race inside a read (a kubelet `..data` swap between
 * two field reads) exactly, without timing. A test file installs it with
 *
 *   vi.mock('node:fs/promises', async (original) => (await import('../helpers/fs-read-hook.js')).hookedFsPromises(original));
 *
 * and sets `fsHooks.read` (cleared after each test). No file system module is imported here: this module is
 * loaded by the mock itself.
 */

/** Called instead of each `readFile` while set: `read()` is the real read. */
export type ReadHook = (path: string, read: () => Promise<string>) => Promise<string>;

export const fsHooks: { read: ReadHook | undefined } = { read: undefined };

type FsPromises = typeof import('node:fs/promises');

export async function hookedFsPromises(importOriginal: <T>() => Promise<T>): Promise<FsPromises & { default: FsPromises }> {
  const actual = await importOriginal<FsPromises>();
  const readFile = (async (...args: Parameters<FsPromises['readFile']>) => {
    const hook = fsHooks.read;
    const read = () => actual.readFile(...args) as Promise<string>;
    return hook ? hook(String(args[0]), read) : read();
  }) as FsPromises['readFile'];
  return { ...actual, readFile, default: { ...actual, readFile } };
}
