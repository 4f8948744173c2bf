import { execFileSync } from 'node:child_process';
import { mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config.js';
import { ConfigError } from '../../src/errors.js';
import { readBasicAuthFile } from '../../src/inbound-control.js';
import { MAX_TEXT_FILE_BYTES, readFailure, readTextFile, readTextFileSync } from '../../src/text-file.js';

let dir: string;
let fifo: string;
let large: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'text-file-'));
  fifo = join(dir, 'fifo');
  execFileSync('mkfifo', [fifo]);
  large = join(dir, 'large.pem');
  await writeFile(large, '');
  await truncate(large, MAX_TEXT_FILE_BYTES + 1); // sparse: nothing is written
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function problemsOf(argv: string[]) {
  try {
    parseConfig(argv, {});
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems;
  }
  throw new Error('expected a ConfigError');
}

describe('the edge reads only regular files of a sane size', () => {
  it('refuses a FIFO, a device and a file over the limit at once, sync and async', async () => {
    const why = (read: () => unknown) => {
      try {
        read();
      } catch (err) {
        return readFailure(err, 'file');
      }
      return 'read';
    };
    expect(why(() => readTextFileSync(fifo))).toBe('file is not a regular file');
    expect(why(() => readTextFileSync('/dev/zero'))).toBe('file is not a regular file');
    expect(why(() => readTextFileSync(large))).toBe(`file is larger than ${MAX_TEXT_FILE_BYTES} bytes (${MAX_TEXT_FILE_BYTES + 1})`);
    expect(why(() => readTextFileSync(join(dir, 'missing')))).toBe('cannot read file (ENOENT)');
    await expect(readTextFile(fifo)).rejects.toThrow('is not a regular file');
    await expect(readTextFile(large)).rejects.toThrow('is larger than');
  });

  it('a FIFO or a huge file as --config, --ca or NODE_EXTRA_CA_CERTS is a configuration problem naming it, not a hang', () => {
    expect(problemsOf(['--config', fifo])).toEqual([{ source: fifo, field: '', message: 'config file is not a regular file' }]);
    expect(problemsOf(['--service-key', '/k', '--ca', fifo])).toEqual([{ source: fifo, field: 'ca', message: 'CA file is not a regular file' }]);
    expect(problemsOf(['--service-key', '/k', '--ca', '/dev/zero'])).toEqual([{ source: '/dev/zero', field: 'ca', message: 'CA file is not a regular file' }]);
    expect(problemsOf(['--service-key', '/k', '--ca', large])).toEqual([
      { source: large, field: 'ca', message: `CA file is larger than ${MAX_TEXT_FILE_BYTES} bytes (${MAX_TEXT_FILE_BYTES + 1})` },
    ]);
  });

  it('a FIFO as --basic-auth-file is a configuration problem naming it', async () => {
    const err = await readBasicAuthFile(fifo).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).problems).toEqual([{ source: fifo, field: 'basic-auth-file', message: 'user list is not a regular file' }]);
  });
});
