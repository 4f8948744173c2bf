import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config.js';
import { ConfigError } from '../../src/errors.js';
import { readBasicAuthFile } from '../../src/inbound-control.js';
import { MAX_TEXT_FILE_BYTES, readFailure, readTextFile, readTextFileSync } from '../../src/text-file.js';
import { unitCerts } from '../helpers/unit-certs.js';

let dir: string;
let large: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'text-file-'));
  large = join(dir, 'large.pem');
  await writeFile(large, '');
  await truncate(large, MAX_TEXT_FILE_BYTES + 1); // sparse: nothing is written
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A new FIFO in `dir`. */
function fifo(name: string): string {
  const path = join(dir, name);
  execFileSync('mkfifo', [path]);
  return path;
}

/** A process that writes `text` into `path` (a FIFO: it waits for the reader), then closes it. */
function writer(path: string, text: string): ChildProcess {
  return spawn('sh', ['-c', 'printf "%s" "$TEXT" > "$TARGET"'], { env: { ...process.env, TEXT: text, TARGET: path }, stdio: 'ignore' });
}

function exited(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => (child.exitCode !== null ? resolve() : child.once('exit', () => resolve())));
}

function problemsOf(argv: string[]) {
  try {
    parseConfig(argv, {});
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems;
  }
  throw new Error('expected a ConfigError');
}

const why = (read: () => unknown): string => {
  try {
    read();
  } catch (err) {
    return readFailure(err, 'file');
  }
  return 'read';
};

describe('the edge reads regular files of a sane size, and pipes that deliver', () => {
  it('refuses a device and a file over the limit at once, sync and async', async () => {
    expect(why(() => readTextFileSync('/dev/zero'))).toBe('file is not a regular file or a pipe');
    expect(why(() => readTextFileSync(large))).toBe(`file is larger than ${MAX_TEXT_FILE_BYTES} bytes (${MAX_TEXT_FILE_BYTES + 1})`);
    expect(why(() => readTextFileSync(join(dir, 'missing')))).toBe('file does not exist');
    await expect(readTextFile('/dev/zero')).rejects.toThrow('is not a regular file or a pipe');
    await expect(readTextFile(large)).rejects.toThrow('is larger than');
  });

  it('refuses a UTF-16 file (PowerShell\'s >) with the fix, sync and async', async () => {
    const utf16 = join(dir, 'utf16.yaml');
    await writeFile(utf16, Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from('routes: []\n', 'utf16le')]));
    const fix = "holds NUL bytes: saved as UTF-16 (PowerShell's > writes that)? Save it as UTF-8";
    expect(why(() => readTextFileSync(utf16))).toBe(`file ${fix}`);
    await expect(readTextFile(utf16)).rejects.toThrow(fix);
  });

  it('a FIFO nobody writes to, or one that goes on for ever, is given up instead of waited on or read without end', async () => {
    const silent = fifo('silent');
    expect(why(() => readTextFileSync(silent, { silenceMs: 100 }))).toBe('file is a pipe that gave nothing for 0.1 s (nobody wrote to it, or what did wrote nothing)');
    await expect(readTextFile(silent, { silenceMs: 100 })).rejects.toThrow('is a pipe that gave nothing for 0.1 s');
    const endless = fifo('endless');
    const yes = spawn('sh', ['-c', 'yes > "$TARGET"'], { env: { ...process.env, TARGET: endless }, stdio: 'ignore' });
    try {
      await expect(readTextFile(endless, { bytes: 1024 * 1024 })).rejects.toThrow('is a pipe that gave more than 1048576 bytes');
    } finally {
      yes.kill();
      await exited(yes);
    }
  });

  it('a pipe that pauses between writes is read whole (the silence counts from its last bytes), and closed after, sync and async', async () => {
    // Five pieces, 0.3 s apart: each pause well within the 0.9 s allowed, all of them together beyond it.
    const script = 'printf a; sleep 0.3; printf b; sleep 0.3; printf c; sleep 0.3; printf d; sleep 0.3; printf e';
    const slow = (path: string): ChildProcess => spawn('sh', ['-c', `{ ${script}; } > "$TARGET"`], { env: { ...process.env, TARGET: path }, stdio: 'ignore' });
    const openFds = (): number => readdirSync('/proc/self/fd').length;
    const before = openFds();
    const sync = fifo('slow-sync');
    const first = slow(sync);
    expect(readTextFileSync(sync, { silenceMs: 900 })).toBe('abcde');
    await exited(first);
    const async = fifo('slow-async');
    const second = slow(async);
    expect(await readTextFile(async, { silenceMs: 900 })).toBe('abcde');
    await exited(second);
    expect(openFds()).toBe(before);
  });

  it('refuses a file in an 8-bit encoding (Windows-1252), but not a CA bundle whose comment is one (PEM text outside its blocks has none)', async () => {
    const ansi = join(dir, 'ansi.yaml');
    await writeFile(ansi, Buffer.from('# für\nroutes: []\n', 'latin1'));
    const fix = 'is not UTF-8 text: saved as Windows-1252 ("ANSI") or Latin-1? Save it as UTF-8';
    expect(why(() => readTextFileSync(ansi))).toBe(`file ${fix}`);
    await expect(readTextFile(ansi)).rejects.toThrow(fix);
    const bundle = join(dir, 'ca-latin1.pem');
    const { leafPem } = await unitCerts();
    await writeFile(bundle, Buffer.concat([Buffer.from('# Zertifikat für Test\n', 'latin1'), Buffer.from(`${leafPem}\n`)]));
    expect(readTextFileSync(bundle, { pem: true })).toContain('-----BEGIN CERTIFICATE-----');
    const result = parseConfig(['token', '--service-key', '/k.json', '--ca', bundle], {});
    expect(result.kind === 'run' && String(result.config.network.ca)).toContain('-----BEGIN CERTIFICATE-----');
    // A certificate exported as DER (Windows' default .cer): told to convert it, not that it may be UTF-16.
    const der = join(dir, 'ca.cer');
    await writeFile(der, new X509Certificate(leafPem).raw);
    expect(problemsOf(['--service-key', '/k', '--ca', der])).toEqual([
      { source: der, field: '--ca', message: 'CA file is DER (binary), not PEM text: convert it with `openssl x509 -inform der -in FILE -out FILE.pem`' },
    ]);
  });

  it('reads --config and --ca from a pipe (process substitution: --config <(envsubst < routes.yaml)), and refuses a device', async () => {
    const config = fifo('routes.yaml');
    const child = writer(config, 'routes:\n  - prefix: /\n    serviceKey: /k.json\n');
    // The read does not block the event loop for good: the writer is another process, the FIFO opened without blocking.
    const result = parseConfig(['--config', config], {});
    await exited(child);
    expect(result.kind === 'run' && result.config.routes[0]?.credentials.source).toEqual({ kind: 'path', path: '/k.json', from: 'routes[0].serviceKey' });
    expect(problemsOf(['--service-key', '/k', '--ca', '/dev/zero'])).toEqual([{ source: '/dev/zero', field: '--ca', message: 'CA file is not a regular file or a pipe' }]);
    expect(problemsOf(['--service-key', '/k', '--ca', large])).toEqual([
      { source: large, field: '--ca', message: `CA file is larger than ${MAX_TEXT_FILE_BYTES} bytes (${MAX_TEXT_FILE_BYTES + 1})` },
    ]);
  });

  it('reads --basic-auth-file from a pipe, and refuses a device naming it', async () => {
    const users = fifo('users');
    const child = writer(users, 'erp:sha256:' + 'a'.repeat(64) + '\n');
    const verifier = await readBasicAuthFile(users);
    await exited(child);
    expect(verifier).toBeDefined();
    const err = await readBasicAuthFile('/dev/zero').then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).problems).toEqual([{ source: '/dev/zero', field: 'basic-auth-file', message: 'user list is not a regular file or a pipe' }]);
  });
});
