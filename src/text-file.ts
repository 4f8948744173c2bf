/**
 * The operator's small files read at the edge — a config file, CA bundles, the basic-auth user list — as text:
 * a regular file only, and only up to a size none of them reaches. A FIFO or a device (a mistyped path,
 * `/dev/zero`) would otherwise be waited on or read without end at startup, with nothing said. Service keys have
 * their own, tighter reader (`credential-source`).
 */
import { readFileSync, statSync, type Stats } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';

/** Larger than any config file, CA bundle (Mozilla's is ~220 KB) or user list. */
export const MAX_TEXT_FILE_BYTES = 4 * 1024 * 1024;

/** The file exists but is not one to read: its message says why. */
export class FileRefused extends Error {}

export function readTextFileSync(path: string, limit = MAX_TEXT_FILE_BYTES): string {
  refuseUnless(statSync(path), limit);
  return readFileSync(path, 'utf8');
}

export async function readTextFile(path: string, limit = MAX_TEXT_FILE_BYTES): Promise<string> {
  refuseUnless(await stat(path), limit);
  return readFile(path, 'utf8');
}

/** Why `what` (e.g. "config file") could not be read, for a configuration problem: never its content. */
export function readFailure(err: unknown, what: string): string {
  if (err instanceof FileRefused) return `${what} ${err.message}`;
  return `cannot read ${what} (${(err as NodeJS.ErrnoException)?.code ?? 'error'})`;
}

function refuseUnless(info: Stats, limit: number): void {
  if (!info.isFile()) throw new FileRefused('is not a regular file');
  if (info.size > limit) throw new FileRefused(`is larger than ${limit} bytes (${info.size})`);
}
