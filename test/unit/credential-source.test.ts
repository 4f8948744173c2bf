import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rename, rm, symlink, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { MAX_KEY_FILE_BYTES, readClientCert, readCredentialSource, settleReads, watchTargets } from '../../src/credential-source.js';
import type { CredentialSource } from '../../src/credentials.js';
import { ConfigError, type ConfigProblem } from '../../src/errors.js';
import { parseServiceKey } from '../../src/service-key.js';

const OAUTH = {
  clientid: 'sb-fake-0000!b1|it-rt-acme-dev!b196',
  clientsecret: 'fake-0000$FAKE_secret_value=',
  url: 'https://acme-dev.it-cpi000-rt.cfapps.eu10-000.hana.ondemand.com',
  tokenurl: 'https://acme-dev.authentication.eu10.hana.ondemand.com/oauth/token',
};
/** What btp-operator adds beside the credential fields of a default secret. */
const INSTANCE_FILES = {
  instance_name: 'my-instance',
  instance_guid: '00000000-0000-0000-0000-00000000fake',
  plan: 'integration-flow',
  label: 'it-rt',
  type: 'it-rt',
  tags: '["it-rt"]',
};
const DEFAULT_METADATA = JSON.stringify({
  credentialProperties: [{ name: 'oauth', format: 'json' }],
  metaDataProperties: Object.keys(INSTANCE_FILES).map((name) => ({ name, format: 'text' })),
});
const FIRST_WRITE = '..2026_01_01_00_00_00.123';
const vcapJson = () => readFile(new URL('../fixtures/service-keys/vcap-services.json', import.meta.url), 'utf8');

const created: string[] = [];
afterEach(async () => {
  await Promise.all(created.splice(0).map((dir) => rm(dir, { recursive: true, force: true })));
});

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'credential-source-'));
  created.push(dir);
  return dir;
}

async function writeFiles(dir: string, files: Record<string, string>): Promise<string> {
  await mkdir(dir, { recursive: true });
  await Promise.all(Object.entries(files).map(([name, text]) => writeFile(join(dir, name), text)));
  return dir;
}

/** Lays out `files` as the kubelet's AtomicWriter does: timestamped dir, `..data` → it, visible symlinks. */
async function writeKubeletSecret(dir: string, files: Record<string, string>): Promise<string> {
  await writeFiles(join(dir, FIRST_WRITE), files);
  await symlink(FIRST_WRITE, join(dir, '..data'));
  await Promise.all(Object.keys(files).map((name) => symlink(join('..data', name), join(dir, name))));
  return dir;
}

/** A kubelet update: new timestamped dir, `..data_tmp` renamed over `..data`, old dir removed. */
async function rotateKubeletSecret(dir: string, files: Record<string, string>): Promise<void> {
  const next = '..2026_02_01_00_00_00.456';
  await writeFiles(join(dir, next), files);
  await symlink(next, join(dir, '..data_tmp'));
  await rename(join(dir, '..data_tmp'), join(dir, '..data'));
  await rm(join(dir, FIRST_WRITE), { recursive: true });
}

async function problemsOf(promise: Promise<unknown>): Promise<ConfigProblem[]> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ConfigError);
  return [...(err as ConfigError).problems];
}

/** The client id the service-key parser finds in what was read: proves the layout is usable end to end. */
async function clientIdFrom(source: CredentialSource): Promise<string> {
  const { raw, source: label } = await readCredentialSource(source);
  return parseServiceKey(raw, label).credentials.clientId;
}

describe('problems about a file itself name where its path was given', () => {
  it('the service key (flag, variable or route key) and each file of a client key pair', async () => {
    const dir = await tempDir();
    const empty = join(dir, 'empty.json');
    await writeFile(empty, '');
    for (const from of ['--service-key', 'SIDECAR_SERVICE_KEY', 'routes[1].serviceKey']) {
      expect(await problemsOf(readCredentialSource({ kind: 'path', path: empty, from }))).toEqual([{ source: empty, field: from, message: 'is empty' }]);
    }
    const utf16 = join(dir, 'utf16.json');
    await writeFile(utf16, Buffer.from('{"clientid": "c"}', 'utf16le'));
    expect(await problemsOf(readCredentialSource({ kind: 'path', path: utf16, from: '--service-key' }))).toEqual([
      { source: utf16, field: '--service-key', message: "holds NUL bytes: saved as UTF-16 (PowerShell's > writes that)? Save it as UTF-8" },
    ]);
    // Only text that must be JSON is judged so: a directory's other files (a `.DS_Store`) may be binary.
    const keyDir = join(dir, 'secret');
    await mkdir(keyDir);
    await Promise.all(Object.entries(OAUTH).map(([name, value]) => writeFile(join(keyDir, name), value)));
    await writeFile(join(keyDir, '.DS_Store'), Buffer.from([0, 0, 0, 1, 0x42, 0x75, 0x64, 0x31, 0]));
    await writeFile(join(keyDir, 'keystore.p12'), Buffer.from([0x30, 0x82, 0, 0, 0]));
    expect(parseServiceKey((await readCredentialSource({ kind: 'path', path: keyDir })).raw, keyDir).credentials.clientId).toBe(OAUTH.clientid);
    // A field the key uses, saved as UTF-16, is refused with the fix, and so is a client certificate file.
    const hint = "holds NUL bytes: saved as UTF-16 (PowerShell's > writes that)? Save it as UTF-8";
    await writeFile(join(keyDir, 'clientsecret'), Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from('s3cret', 'utf16le')]));
    expect(await problemsOf(readCredentialSource({ kind: 'path', path: keyDir, from: '--service-key' }))).toEqual([
      { source: join(keyDir, 'clientsecret'), field: '--service-key', message: hint },
    ]);
    // So is a JSON object under another name (the btp-operator's `oauth`, a secretRootKey's map), BOM or not.
    const opDir = join(dir, 'operator');
    await mkdir(opDir);
    await writeFile(join(opDir, 'oauth'), Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(JSON.stringify(OAUTH), 'utf16le')]));
    await writeFile(join(opDir, 'binding'), Buffer.from(`  ${JSON.stringify({ oauth: '{}' })}`, 'utf16le'));
    expect(await problemsOf(readCredentialSource({ kind: 'path', path: opDir }))).toEqual([{ source: join(opDir, 'binding'), field: '', message: hint }]);
    const pem = join(dir, 'utf16.pem');
    await writeFile(pem, Buffer.from('-----BEGIN CERTIFICATE-----\n', 'utf16le'));
    expect((await problemsOf(readClientCert({ kind: 'files', certFile: pem, keyFile: pem }))).map((p) => p.message)).toContain(hint);
    const missing = join(dir, 'nope');
    expect(await problemsOf(readCredentialSource({ kind: 'binding-root', root: missing }))).toEqual([{ source: missing, field: 'SERVICE_BINDING_ROOT', message: 'does not exist' }]);
    const names = { cert: 'SIDECAR_CLIENT_CERT', key: '--client-key', dir: 'routes[1].clientTlsDir' };
    const [cert, key] = [join(dir, 'c.pem'), join(dir, 'k.pem')];
    expect(await problemsOf(readClientCert({ kind: 'files', certFile: cert, keyFile: key, names }))).toEqual([
      { source: cert, field: 'SIDECAR_CLIENT_CERT', message: 'does not exist' },
      { source: key, field: '--client-key', message: 'does not exist' },
    ]);
    expect((await problemsOf(readClientCert({ kind: 'tls-dir', dir: missing, names }))).map((p) => p.field)).toEqual(['routes[1].clientTlsDir', 'routes[1].clientTlsDir']);
    // One file for both (a PEM with the certificate and its key), written two ways: one problem, named by both settings.
    expect(await problemsOf(readClientCert({ kind: 'files', certFile: join(dir, 'both.pem'), keyFile: `${dir}/./both.pem`, names }))).toEqual([
      { source: join(dir, 'both.pem'), field: 'SIDECAR_CLIENT_CERT, --client-key', message: 'does not exist' },
    ]);
    // A problem of the directory both files are in (a `..data` link that loops) is named by both settings.
    const looping = join(dir, 'looping');
    await mkdir(looping);
    await symlink('..data', join(looping, '..data'));
    const pair = { certFile: join(looping, 'tls.crt'), keyFile: join(looping, 'tls.key') };
    expect((await problemsOf(readClientCert({ kind: 'files', ...pair, names }))).map((p) => [p.source, p.field])).toEqual([
      [join(looping, '..data'), 'SIDECAR_CLIENT_CERT, --client-key'],
    ]);
  });
});

describe('readCredentialSource: JSON file', () => {
  it('reads a service key file', async () => {
    const file = join(await tempDir(), 'key.json');
    await writeFile(file, JSON.stringify({ oauth: OAUTH }));
    expect(await readCredentialSource({ kind: 'path', path: file })).toEqual({ raw: { oauth: OAUTH }, source: file });
  });

  it('reads a key file saved with a byte order mark (Windows editors)', async () => {
    const file = join(await tempDir(), 'key.json');
    await writeFile(file, `\uFEFF${JSON.stringify({ oauth: OAUTH })}`);
    expect(await readCredentialSource({ kind: 'path', path: file })).toEqual({ raw: { oauth: OAUTH }, source: file });
  });

  it('names a missing file', async () => {
    const file = join(await tempDir(), 'nope.json');
    expect(await problemsOf(readCredentialSource({ kind: 'path', path: file }))).toEqual([
      { source: file, field: '', message: 'does not exist' },
    ]);
  });

  it('names an empty file', async () => {
    const file = join(await tempDir(), 'key.json');
    await writeFile(file, '\n');
    expect((await problemsOf(readCredentialSource({ kind: 'path', path: file })))[0]?.message).toBe('is empty');
  });

  it('reports a JSON syntax error by position, never by content', async () => {
    const file = join(await tempDir(), 'key.json');
    await writeFile(file, '{\n  "oauth": {"clientsecret": "FAKE-secret-1",}\n}');
    expect(await problemsOf(readCredentialSource({ kind: 'path', path: file }))).toEqual([
      { source: file, field: '', message: 'is not valid JSON (line 2, column 45)' },
    ]);
  });

  it('reads only a regular file: a FIFO in the key\'s place is refused at once, not waited on for good', async () => {
    const fifo = join(await tempDir(), 'key.json');
    execFileSync('mkfifo', [fifo]);
    expect(await problemsOf(readCredentialSource({ kind: 'path', path: fifo }))).toEqual([
      { source: fifo, field: '', message: 'is not a regular file' },
    ]);
  });

  it('refuses a file over MAX_KEY_FILE_BYTES (a Kubernetes secret holds at most 1 MiB) instead of reading it whole', async () => {
    const file = join(await tempDir(), 'key.json');
    await writeFile(file, '');
    await truncate(file, MAX_KEY_FILE_BYTES + 1); // sparse: nothing is written
    expect(await problemsOf(readCredentialSource({ kind: 'path', path: file }))).toEqual([
      { source: file, field: '', message: `is larger than ${MAX_KEY_FILE_BYTES} bytes (${MAX_KEY_FILE_BYTES + 1}), which no service key or certificate is` },
    ]);
  });

  it('does not echo content when the parser gives no position', async () => {
    const file = join(await tempDir(), 'key.json');
    await writeFile(file, 'FAKE-secret-2');
    const [problem] = await problemsOf(readCredentialSource({ kind: 'path', path: file }));
    expect(problem?.message).toBe('is not valid JSON');
  });
});

describe('readCredentialSource: secret directories', () => {
  it('reads the btp-operator default layout: oauth as JSON, instance fields, .metadata', async () => {
    const dir = await writeFiles(await tempDir(), {
      oauth: JSON.stringify(OAUTH),
      '.metadata': DEFAULT_METADATA,
      ...INSTANCE_FILES,
    });
    const { raw, source } = await readCredentialSource({ kind: 'path', path: dir });
    expect(source).toBe(dir);
    expect(raw).toEqual({ oauth: OAUTH, ...INSTANCE_FILES });
    expect(await clientIdFrom({ kind: 'path', path: dir })).toBe(OAUTH.clientid);
  });

  it('reads one file per flat field, leaving trimming to the parser', async () => {
    const files = Object.fromEntries(Object.entries(OAUTH).map(([k, v]) => [k, `${v}\n`]));
    const dir = await writeFiles(await tempDir(), files);
    const { raw } = await readCredentialSource({ kind: 'path', path: dir });
    expect((raw as Record<string, string>).clientsecret).toBe(`${OAUTH.clientsecret}\n`);
    expect(await clientIdFrom({ kind: 'path', path: dir })).toBe(OAUTH.clientid);
  });

  it('reads the secretKey layout through .metadata, naming the container file', async () => {
    const dir = await writeFiles(await tempDir(), {
      credentials: JSON.stringify({ oauth: OAUTH }),
      '.metadata': JSON.stringify({ credentialProperties: [{ name: 'credentials', format: 'json', container: true }] }),
      ...INSTANCE_FILES,
    });
    expect(await readCredentialSource({ kind: 'path', path: dir })).toEqual({
      raw: { oauth: OAUTH },
      source: join(dir, 'credentials'),
    });
  });

  it('reads the secretKey layout without .metadata', async () => {
    const files = { 'service-key': JSON.stringify({ oauth: OAUTH }), ...INSTANCE_FILES };
    const dir = await writeFiles(await tempDir(), files);
    expect(await clientIdFrom({ kind: 'path', path: dir })).toBe(OAUTH.clientid);
  });

  it('reads the secretRootKey layout: a map of strings with oauth encoded again', async () => {
    const map = { oauth: JSON.stringify(OAUTH), ...INSTANCE_FILES };
    const dir = await writeFiles(await tempDir(), { binding: JSON.stringify(map) });
    const { raw } = await readCredentialSource({ kind: 'path', path: dir });
    expect(typeof (raw as { binding: { oauth: unknown } }).binding.oauth).toBe('string');
    expect(await clientIdFrom({ kind: 'path', path: dir })).toBe(OAUTH.clientid);
  });

  it('reads the secretRootKey layout under the root key `oauth`: the binding map, its own oauth inside', async () => {
    const map = { oauth: JSON.stringify(OAUTH), ...INSTANCE_FILES };
    const dir = await writeFiles(await tempDir(), { oauth: JSON.stringify(map) });
    expect(await clientIdFrom({ kind: 'path', path: dir })).toBe(OAUTH.clientid);
  });

  it('refuses a FIFO in a field\'s place by name, not as a missing field (nor waits on it)', async () => {
    const { clientsecret: _, ...rest } = OAUTH;
    const dir = await writeFiles(await tempDir(), rest);
    execFileSync('mkfifo', [join(dir, 'clientsecret')]);
    expect(await problemsOf(readCredentialSource({ kind: 'path', path: dir }))).toEqual([
      { source: join(dir, 'clientsecret'), field: '', message: 'is not a regular file' },
    ]);
    // So is the container file `.metadata` names.
    const container = await writeFiles(await tempDir(), { '.metadata': JSON.stringify({ credentialProperties: [{ name: 'credentials', format: 'json', container: true }] }) });
    execFileSync('mkfifo', [join(container, 'credentials')]);
    expect(await problemsOf(readCredentialSource({ kind: 'path', path: container }))).toEqual([
      { source: join(container, 'credentials'), field: '', message: 'is not a regular file' },
    ]);
    // Beside the fields, one is ignored (an agent's socket in a shared volume, a dot-FIFO).
    const beside = await writeFiles(await tempDir(), OAUTH);
    execFileSync('mkfifo', [join(beside, 'agent.pipe'), join(beside, '.control')]);
    expect(await clientIdFrom({ kind: 'path', path: beside })).toBe(OAUTH.clientid);
  });

  it('follows the kubelet ..data symlinks and hides the ..-prefixed entries', async () => {
    const dir = await writeKubeletSecret(await tempDir(), { oauth: JSON.stringify(OAUTH), ...INSTANCE_FILES });
    const { raw } = await readCredentialSource({ kind: 'path', path: dir });
    expect(Object.keys(raw as object).sort()).toEqual(['oauth', ...Object.keys(INSTANCE_FILES)].sort());
    expect(await clientIdFrom({ kind: 'path', path: dir })).toBe(OAUTH.clientid);
  });

  it('sees the new values after a kubelet rotation', async () => {
    const dir = await writeKubeletSecret(await tempDir(), { oauth: JSON.stringify(OAUTH) });
    await rotateKubeletSecret(dir, { oauth: JSON.stringify({ ...OAUTH, clientid: 'sb-rotated!b1' }) });
    expect(await clientIdFrom({ kind: 'path', path: dir })).toBe('sb-rotated!b1');
  });

  it('passes over a link that leads nowhere or in a loop beside the fields; a needed field behind one is missing', async () => {
    const dir = await writeFiles(join(await tempDir(), 'secret'), OAUTH);
    await symlink('gone', join(dir, 'stale'));
    await symlink('loopy', join(dir, 'loopy'));
    expect(await clientIdFrom({ kind: 'path', path: dir })).toBe(OAUTH.clientid);
    await rm(join(dir, 'clientsecret'));
    await symlink('gone', join(dir, 'clientsecret'));
    const { raw, source } = await readCredentialSource({ kind: 'path', path: dir });
    expect(() => parseServiceKey(raw, source)).toThrow(/clientsecret/);
    // Nothing but such links: they are named.
    const empty = join(await tempDir(), 'gone');
    await mkdir(empty);
    await symlink('nowhere', join(empty, 'clientid'));
    expect(await problemsOf(readCredentialSource({ kind: 'path', path: empty }))).toEqual([
      { source: empty, field: '', message: 'contains no service key files, only links that lead nowhere (clientid)' },
    ]);
  });

  it('names the file holding invalid JSON', async () => {
    const dir = await writeKubeletSecret(await tempDir(), { oauth: '{"clientid": "x",', ...INSTANCE_FILES });
    const [problem] = await problemsOf(readCredentialSource({ kind: 'path', path: dir }));
    expect(problem?.source).toBe(join(dir, 'oauth'));
    expect(problem?.message).toMatch(/^is not valid JSON/);
  });

  it('names an empty directory', async () => {
    const dir = await tempDir();
    expect(await problemsOf(readCredentialSource({ kind: 'path', path: dir }))).toEqual([
      { source: dir, field: '', message: 'contains no service key files and no binding directories' },
    ]);
  });

  it('treats a directory of binding directories as a binding root', async () => {
    const root = await tempDir();
    await writeFiles(join(root, 'db'), { type: 'postgresql', username: 'u' });
    await writeKubeletSecret(join(root, 'cpi'), { type: 'it-rt', oauth: JSON.stringify(OAUTH) });
    expect(await readCredentialSource({ kind: 'path', path: root })).toMatchObject({ source: join(root, 'cpi') });
  });

  it('treats it as a binding root whatever dot-files lie beside the bindings (.keep, .DS_Store)', async () => {
    const root = await writeFiles(await tempDir(), { '.keep': '', '.DS_Store': 'Bud1' });
    await writeKubeletSecret(join(root, 'cpi'), { type: 'it-rt', oauth: JSON.stringify(OAUTH) });
    expect(await readCredentialSource({ kind: 'path', path: root })).toMatchObject({ source: join(root, 'cpi') });
    expect(await clientIdFrom({ kind: 'path', path: root })).toBe(OAUTH.clientid);
    // A key file beside them still makes it a secret directory.
    await writeFile(join(root, 'clientid'), 'sb-beside!b1');
    expect(await readCredentialSource({ kind: 'path', path: root })).toMatchObject({ source: root });
  });
});

describe("readCredentialSource: @sap/xsenv's layout (/etc/secrets/sapcp/<service>/<instance>/)", () => {
  async function sapcp(): Promise<string> {
    const root = await tempDir();
    // Hand-made secrets: no `type` file; the service directory names the service.
    await writeKubeletSecret(join(root, 'it-rt', 'my-instance'), { oauth: JSON.stringify({ ...OAUTH, clientid: 'id-cpi' }) });
    await writeKubeletSecret(join(root, 'xsuaa', 'my-uaa'), { clientid: 'id-uaa', clientsecret: 's' });
    return root;
  }

  it('given the root, picks the it-rt instance', async () => {
    const root = await sapcp();
    expect(await clientIdFrom({ kind: 'path', path: root })).toBe('id-cpi');
    expect(await readCredentialSource({ kind: 'path', path: root })).toMatchObject({ source: join(root, 'it-rt', 'my-instance') });
  });

  it('given the service directory, picks its only instance', async () => {
    const root = await sapcp();
    expect(await clientIdFrom({ kind: 'path', path: join(root, 'it-rt') })).toBe('id-cpi');
  });

  it('lists the instances when several could be meant', async () => {
    const root = await sapcp();
    await writeKubeletSecret(join(root, 'it-rt', 'second'), { oauth: JSON.stringify(OAUTH) });
    const [problem] = await problemsOf(readCredentialSource({ kind: 'path', path: root }));
    expect(problem?.message).toBe(
      'has several bindings, so name it with --binding (SIDECAR_BINDING) or point --service-key at it; found: my-instance (type it-rt), second (type it-rt), my-uaa (type xsuaa)',
    );
    // A config file's route has no --binding: it is told to point its own key at one of them.
    const [fromRoute] = await problemsOf(readCredentialSource({ kind: 'path', path: root, from: 'routes[0].serviceKey' }));
    expect(fromRoute).toMatchObject({ field: 'routes[0].serviceKey' });
    expect(fromRoute?.message).toMatch(/^has several bindings, so point routes\[0\]\.serviceKey at one of them; found: my-instance/);
    // --binding names it.
    expect(await clientIdFrom({ kind: 'path', path: root, binding: 'second' })).toBe(OAUTH.clientid);
    expect(await clientIdFrom({ kind: 'path', path: root, binding: 'my-instance' })).toBe('id-cpi');
    const [unknown] = await problemsOf(readCredentialSource({ kind: 'path', path: root, binding: 'third' }));
    expect(unknown?.message).toMatch(/^has no binding named "third"; found: my-instance/);
  });

  it('refuses --binding for a single service key (a file or a secret directory) rather than ignoring it', async () => {
    const root = await sapcp();
    const instance = join(root, 'it-rt', 'my-instance');
    const file = join(await tempDir(), 'key.json');
    await writeFile(file, JSON.stringify({ oauth: OAUTH }));
    for (const path of [instance, file]) {
      expect(await problemsOf(readCredentialSource({ kind: 'path', path, binding: 'my-instance' }))).toEqual([
        { source: path, field: '', message: 'is one service key, not a directory of bindings: --binding (SIDECAR_BINDING) picks one of several, so leave it out' },
      ]);
    }
    // An empty directory (a root not filled yet) is no single key: it is reported as empty.
    const empty = await tempDir();
    expect(await problemsOf(readCredentialSource({ kind: 'path', path: empty, binding: 'my-instance' }))).toEqual([
      { source: empty, field: '', message: 'contains no service key files and no binding directories' },
    ]);
  });

  it('given the root, finds the instance whatever dot-files lie in the root and service directories', async () => {
    const root = await sapcp();
    await writeFiles(root, { '.DS_Store': 'Bud1' });
    await writeFiles(join(root, 'it-rt'), { '.keep': '' });
    expect(await readCredentialSource({ kind: 'path', path: root })).toMatchObject({ source: join(root, 'it-rt', 'my-instance') });
  });

  it('watches the root and each instance directory (the kubelet swaps ..data inside them)', async () => {
    const root = await sapcp();
    expect(await watchTargets({ source: { kind: 'path', path: root } })).toEqual([root, join(root, 'it-rt', 'my-instance'), join(root, 'xsuaa', 'my-uaa')]);
  });
});

describe('readCredentialSource: servicebinding.io binding root', () => {
  async function bindingRoot(bindings: Record<string, string | undefined>): Promise<string> {
    const root = await tempDir();
    for (const [name, type] of Object.entries(bindings)) {
      const oauth = JSON.stringify({ ...OAUTH, clientid: `id-${name}` });
      await writeKubeletSecret(join(root, name), type === undefined ? { oauth } : { type, oauth });
    }
    return root;
  }

  it('picks the binding named', async () => {
    const root = await bindingRoot({ a: 'it-rt', b: 'it-rt' });
    expect(await clientIdFrom({ kind: 'binding-root', root, binding: 'b' })).toBe('id-b');
  });

  it('picks the it-rt binding among others', async () => {
    const root = await bindingRoot({ a: 'xsuaa', b: 'it-rt', c: 'postgresql' });
    expect(await clientIdFrom({ kind: 'binding-root', root })).toBe('id-b');
  });

  it('picks the only binding whatever its type, ignoring directories without type', async () => {
    const root = await bindingRoot({ a: 'user-provided', b: undefined });
    expect(await clientIdFrom({ kind: 'binding-root', root })).toBe('id-a');
  });

  it('lists the candidates when the choice is ambiguous', async () => {
    const root = await bindingRoot({ a: 'xsuaa', b: 'destination' });
    expect(await problemsOf(readCredentialSource({ kind: 'binding-root', root }))).toEqual([
      {
        source: root,
        field: 'SERVICE_BINDING_ROOT',
        message: 'has several bindings, so name the one to use with --binding (SIDECAR_BINDING); found: a (type xsuaa), b (type destination)',
      },
    ]);
  });

  it('lists the candidates when the named binding is absent', async () => {
    const root = await bindingRoot({ a: 'it-rt' });
    const [problem] = await problemsOf(readCredentialSource({ kind: 'binding-root', root, binding: 'cpi' }));
    expect(problem?.message).toBe('has no binding named "cpi"; found: a (type it-rt)');
  });

  it('says when there is no binding at all', async () => {
    const root = await bindingRoot({ a: undefined });
    const [problem] = await problemsOf(readCredentialSource({ kind: 'binding-root', root }));
    expect(problem?.message).toBe('has no bindings (subdirectories with a type file)');
  });

  it('names a missing root', async () => {
    const root = join(await tempDir(), 'bindings');
    expect((await problemsOf(readCredentialSource({ kind: 'binding-root', root })))[0]).toMatchObject({
      source: root,
      message: 'does not exist',
    });
  });
});

describe('readCredentialSource: VCAP_SERVICES and inline JSON', () => {
  it('takes the only it-rt instance and labels the source', async () => {
    const services = JSON.parse(await vcapJson());
    services['it-rt'] = services['it-rt'].filter((i: { name: string }) => i.name === 'my-instance');
    const { raw, source } = await readCredentialSource({ kind: 'vcap', json: JSON.stringify(services) });
    expect(source).toBe('VCAP_SERVICES (it-rt/my-instance)');
    expect(parseServiceKey(raw, source).credentials.clientId).toMatch(/\|it-rt-acme-dev!b196$/);
  });

  it('refuses two it-rt instances (integration-flow and api) until --binding names one', async () => {
    const json = await vcapJson();
    expect(await problemsOf(readCredentialSource({ kind: 'vcap', json }))).toEqual([
      {
        source: 'VCAP_SERVICES',
        field: '',
        message:
          'has several it-rt bindings, so name the one to use with --binding (SIDECAR_BINDING); found: xsuaa/my-xsuaa, it-rt/my-instance, it-rt/my-api-instance',
      },
    ]);
    expect((await readCredentialSource({ kind: 'vcap', json, binding: 'my-instance' })).source).toBe('VCAP_SERVICES (it-rt/my-instance)');
    // Naming the label picks no one of the two either.
    expect((await problemsOf(readCredentialSource({ kind: 'vcap', json, binding: 'it-rt' })))[0]?.message).toMatch(
      /^has several it-rt bindings, so name the instance to use with --binding \(SIDECAR_BINDING\); found: /,
    );
  });

  it('reads the file VCAP_SERVICES_FILE_PATH names, labelled with its path, and watches it', async () => {
    const dir = await tempDir();
    const path = join(dir, 'vcap_services');
    await writeFile(path, await vcapJson());
    const { raw, source } = await readCredentialSource({ kind: 'vcap-file', path, binding: 'my-api-instance' });
    expect(source).toBe(`${path} (it-rt/my-api-instance)`);
    expect(parseServiceKey(raw, source).credentials.url).toMatch(/^https:\/\//);
    expect(await problemsOf(readCredentialSource({ kind: 'vcap-file', path }))).toEqual([
      { source: path, field: 'VCAP_SERVICES_FILE_PATH', message: expect.stringMatching(/^has several it-rt bindings/) },
    ]);
    expect(await watchTargets({ source: { kind: 'vcap-file', path } })).toEqual([dir]);
    const missing = join(dir, 'absent');
    expect(await problemsOf(readCredentialSource({ kind: 'vcap-file', path: missing }))).toEqual([
      { source: missing, field: 'VCAP_SERVICES_FILE_PATH', message: 'does not exist' },
    ]);
  });

  it('takes the instance named, across labels', async () => {
    const json = await vcapJson();
    expect((await readCredentialSource({ kind: 'vcap', json, binding: 'my-api-instance' })).source).toBe(
      'VCAP_SERVICES (it-rt/my-api-instance)',
    );
    expect((await readCredentialSource({ kind: 'vcap', json, binding: 'my-xsuaa' })).source).toBe(
      'VCAP_SERVICES (xsuaa/my-xsuaa)',
    );
  });

  it('takes the first instance of the label named', async () => {
    const { source } = await readCredentialSource({ kind: 'vcap', json: await vcapJson(), binding: 'xsuaa' });
    expect(source).toBe('VCAP_SERVICES (xsuaa/my-xsuaa)');
  });

  it('lists what is bound when there is no it-rt', async () => {
    const json = JSON.stringify({ xsuaa: [{ name: 'my-xsuaa', credentials: {} }], destination: [{ name: 'd' }] });
    expect(await problemsOf(readCredentialSource({ kind: 'vcap', json }))).toEqual([
      { source: 'VCAP_SERVICES', field: '', message: 'has no it-rt binding; found: xsuaa/my-xsuaa, destination/d' },
    ]);
  });

  it('names the instance without credentials', async () => {
    const json = JSON.stringify({ 'it-rt': [{ name: 'bare' }] });
    expect(await problemsOf(readCredentialSource({ kind: 'vcap', json }))).toEqual([
      { source: 'VCAP_SERVICES (it-rt/bare)', field: 'credentials', message: 'is missing' },
    ]);
  });

  it('refuses VCAP_SERVICES that is not JSON', async () => {
    const [problem] = await problemsOf(readCredentialSource({ kind: 'vcap', json: '{"it-rt": [' }));
    expect(problem).toMatchObject({ source: 'VCAP_SERVICES', message: expect.stringMatching(/^is not valid JSON/) });
  });

  it('reads inline JSON under its label', async () => {
    const json = JSON.stringify({ oauth: OAUTH });
    expect(await readCredentialSource({ kind: 'inline', json, label: 'SIDECAR_SERVICE_KEY_JSON' })).toEqual({
      raw: { oauth: OAUTH },
      source: 'SIDECAR_SERVICE_KEY_JSON',
    });
  });

  it('labels an inline JSON error with the variable, not the content', async () => {
    const json = '{"oauth": {"clientsecret": "FAKE-secret-3" }';
    const source = { kind: 'inline', json, label: 'SIDECAR_SERVICE_KEY_JSON' } as const;
    const [problem] = await problemsOf(readCredentialSource(source));
    expect(problem?.source).toBe('SIDECAR_SERVICE_KEY_JSON');
    expect(problem?.message).not.toContain('FAKE-secret-3');
  });
});

describe('readClientCert', () => {
  it('reads a certificate file and a key file', async () => {
    const dir = await writeFiles(await tempDir(), { 'client.crt': 'CERT-PEM', 'client.key': 'KEY-PEM' });
    const certFile = join(dir, 'client.crt');
    const keyFile = join(dir, 'client.key');
    expect(await readClientCert({ kind: 'files', certFile, keyFile })).toMatchObject({
      certificate: 'CERT-PEM',
      key: 'KEY-PEM',
      source: `${certFile}, ${keyFile}`,
    });
  });

  it('reads a kubernetes.io/tls secret through ..data', async () => {
    const dir = await writeKubeletSecret(await tempDir(), { 'tls.crt': 'CERT-PEM', 'tls.key': 'KEY-PEM' });
    expect(await readClientCert({ kind: 'tls-dir', dir })).toMatchObject({
      certificate: 'CERT-PEM',
      key: 'KEY-PEM',
      source: dir,
    });
  });

  it('tells each half\'s file and the setting that named it, for the messages about its content', async () => {
    const dir = await writeFiles(await tempDir(), { 'tls.crt': 'CERT-PEM', 'tls.key': 'KEY-PEM' });
    const names = { cert: '--client-cert', key: '--client-key', dir: 'routes[1].clientTlsDir' };
    expect(await readClientCert({ kind: 'tls-dir', dir, names })).toMatchObject({
      certificateFrom: { source: join(dir, 'tls.crt'), field: 'routes[1].clientTlsDir' },
      keyFrom: { source: join(dir, 'tls.key'), field: 'routes[1].clientTlsDir' },
    });
    const [certFile, keyFile] = [join(dir, 'tls.crt'), join(dir, 'tls.key')];
    expect(await readClientCert({ kind: 'files', certFile, keyFile, names })).toMatchObject({
      certificateFrom: { source: certFile, field: '--client-cert' },
      keyFrom: { source: keyFile, field: '--client-key' },
    });
  });

  it('reports both files when both are missing or empty', async () => {
    const dir = await writeFiles(await tempDir(), { 'tls.key': '  \n' });
    expect(await problemsOf(readClientCert({ kind: 'tls-dir', dir }))).toEqual([
      { source: join(dir, 'tls.crt'), field: '', message: 'does not exist' },
      { source: join(dir, 'tls.key'), field: '', message: 'is empty' },
    ]);
  });
});

describe('settleReads', () => {
  it('returns both values', async () => {
    expect(await settleReads(Promise.resolve(1), Promise.resolve('two'))).toEqual([1, 'two']);
  });

  it('lets an unexpected error through', async () => {
    await expect(settleReads(Promise.reject(new TypeError('bug')), Promise.resolve(1))).rejects.toThrow(TypeError);
  });
});

describe('watchTargets', () => {
  it('watches a file through its directory, and a directory itself', async () => {
    const dir = await writeFiles(await tempDir(), { 'key.json': '{}' });
    expect(await watchTargets({ source: { kind: 'path', path: join(dir, 'key.json') } })).toEqual([dir]);
    expect(await watchTargets({ source: { kind: 'path', path: dir } })).toEqual([dir]);
  });

  it('does not mistake the kubelet ..data directories of a binding for bindings', async () => {
    const dir = await writeKubeletSecret(await tempDir(), { type: 'it-rt', oauth: JSON.stringify(OAUTH) });
    expect(await watchTargets({ source: { kind: 'path', path: dir } })).toEqual([dir]);
  });

  it('watches a binding root and each binding in it', async () => {
    const root = await tempDir();
    await writeKubeletSecret(join(root, 'cpi'), { type: 'it-rt' });
    await writeFiles(join(root, 'not-a-binding'), { readme: 'x' });
    expect(await watchTargets({ source: { kind: 'binding-root', root } })).toEqual([root, join(root, 'cpi')]);
  });

  it('watches the bindings of a root with files beside them: any for $SERVICE_BINDING_ROOT, dot-files for a path', async () => {
    const root = await writeFiles(await tempDir(), { '.keep': '' });
    await writeKubeletSecret(join(root, 'cpi'), { type: 'it-rt' });
    expect(await watchTargets({ source: { kind: 'path', path: root } })).toEqual([root, join(root, 'cpi')]);
    await writeFiles(root, { README: 'bindings of this pod' });
    expect(await watchTargets({ source: { kind: 'binding-root', root } })).toEqual([root, join(root, 'cpi')]);
    expect(await watchTargets({ source: { kind: 'path', path: root } })).toEqual([root]); // a secret directory now
  });

  it('watches where each link on the way lives and the real directory, never a kubelet payload directory', async () => {
    const dir = await tempDir();
    // cfg/key.json → secret/key.json
    await writeFiles(join(dir, 'secret'), { 'key.json': '{}' });
    await mkdir(join(dir, 'cfg'));
    await symlink(join(dir, 'secret', 'key.json'), join(dir, 'cfg', 'key.json'));
    expect(await watchTargets({ source: { kind: 'path', path: join(dir, 'cfg', 'key.json') } })).toEqual([join(dir, 'cfg'), join(dir, 'secret')]);
    // current → v1 (relative), as `ln -sfn v1 current` leaves it; for a file in it and for the directory itself.
    await writeFiles(join(dir, 'v1'), { 'key.json': '{}' });
    await symlink('v1', join(dir, 'current'));
    expect(await watchTargets({ source: { kind: 'path', path: join(dir, 'current', 'key.json') } })).toEqual([dir, join(dir, 'v1')]);
    expect(await watchTargets({ source: { kind: 'path', path: join(dir, 'current') } })).toEqual([dir, join(dir, 'v1')]);
    // A kubelet volume: key.json → ..data/key.json → ..<timestamp>/key.json; only the volume sees every swap.
    const volume = await writeKubeletSecret(join(dir, 'volume'), { 'key.json': '{}' });
    expect(await watchTargets({ source: { kind: 'path', path: join(volume, 'key.json') } })).toEqual([volume]);
    const tls = await writeKubeletSecret(join(dir, 'tls'), { 'tls.crt': 'c', 'tls.key': 'k' });
    const files = { kind: 'files', certFile: join(tls, 'tls.crt'), keyFile: join(tls, 'tls.key') } as const;
    expect(await watchTargets({ source: { kind: 'path', path: join(dir, 'cfg', 'key.json') }, clientCert: files })).toEqual([join(dir, 'cfg'), join(dir, 'secret'), tls]);
  });

  it('watches a path that is not there through its deepest existing directory, where it will appear', async () => {
    const dir = await tempDir();
    expect(await watchTargets({ source: { kind: 'path', path: join(dir, 'gone', 'key.json') } })).toEqual([dir]);
    expect(await watchTargets({ source: { kind: 'path', path: join(dir, 'gone') } })).toEqual([dir]);
    await symlink('nowhere', join(dir, 'dangling'));
    expect(await watchTargets({ source: { kind: 'path', path: join(dir, 'dangling') } })).toEqual([dir]);
  });

  it('adds the client certificate directories once, and nothing for env values', async () => {
    const certs = await writeFiles(await tempDir(), { 'tls.crt': 'c', 'tls.key': 'k' });
    const spec = {
      source: { kind: 'vcap', json: '{}' },
      clientCert: { kind: 'files', certFile: join(certs, 'tls.crt'), keyFile: join(certs, 'tls.key') },
    } as const;
    expect(await watchTargets(spec)).toEqual([certs]);
    const inline = { kind: 'inline', json: '{}', label: 'X' } as const;
    expect(await watchTargets({ source: inline, clientCert: { kind: 'tls-dir', dir: certs } })).toEqual([certs]);
  });
});

describe('watchTargets: a client key apart from its certificate', () => {
  it('watches the directory of the client key too when it lies apart from the certificate', async () => {
    const dir = await tempDir();
    await writeFiles(join(dir, 'sk'), { 'key.json': '{}' });
    await writeFiles(join(dir, 'certs'), { 'client.crt': 'c' });
    await writeFiles(join(dir, 'keys'), { 'client.key': 'k' });
    const clientCert = { kind: 'files', certFile: join(dir, 'certs', 'client.crt'), keyFile: join(dir, 'keys', 'client.key') } as const;
    expect(await watchTargets({ source: { kind: 'path', path: join(dir, 'sk', 'key.json') }, clientCert })).toEqual([
      join(dir, 'sk'),
      join(dir, 'certs'),
      join(dir, 'keys'),
    ]);
  });
});
