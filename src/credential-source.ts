/** Reads service keys and client key pairs from files, secret mounts, bindings or env JSON; `service-key` validates. */

import type { Stats } from 'node:fs';
import { lstat, readdir, readFile, readlink, realpath, stat } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, parse, resolve, sep } from 'node:path';
import type { ClientCertSource, ClientKeyPair, CredentialSource, CredentialSpec } from './credentials.js';
import { ConfigError, type ConfigProblem } from './errors.js';
import { descriptorsText } from './network-error.js';
import { jsonPosition, NOT_UTF8, notUtf8, withoutBom } from './text-file.js';

/** The service key as found, not yet validated, and where it was found. */
export interface RawServiceKey {
  raw: unknown;
  /** A file or directory path, or a label such as `VCAP_SERVICES (it-rt/my-instance)`. */
  source: string;
}

/** btp-operator writes this beside the credential files; `container: true` marks the secretKey file. */
const METADATA_FILE = '.metadata';
/** servicebinding.io: a binding directory must hold a `type` entry; others are ignored. */
const TYPE_FILE = 'type';
/** The offering the sidecar is built for; preferred when several bindings are mounted. */
const DEFAULT_SERVICE = 'it-rt';
const VCAP_LABEL = 'VCAP_SERVICES';
/** The kubelet's AtomicWriter layout: visible `name → ..data/name` links, `..data → ..<timestamp>/`. */
const DATA_LINK = '..data';
/** Reads of one secret directory started over because `..data` moved under them, before giving up. */
const MAX_GENERATION_READS = 3;
/** The files of a `kubernetes.io/tls` secret. */
const TLS_CERT = 'tls.crt';
const TLS_KEY = 'tls.key';

export async function readCredentialSource(source: CredentialSource): Promise<RawServiceKey> {
  switch (source.kind) {
    case 'path': {
      const from = source.from;
      return named(readPath(source.path, source.binding, from), from === undefined ? undefined : () => from);
    }
    case 'binding-root':
      return named(readBindingRoot(source.root, source.binding), () => 'SERVICE_BINDING_ROOT');
    case 'vcap':
      return readVcap(source.json, source.binding, VCAP_LABEL);
    case 'vcap-file':
      return named(readNonEmpty(source.path).then((json) => readVcap(json, source.binding, source.path)), () => 'VCAP_SERVICES_FILE_PATH');
    case 'inline':
      return { raw: parseJson(source.json, source.label), source: source.label };
  }
}

/** Reads the PEM pair from two files or a `kubernetes.io/tls` directory (`tls.crt`, `tls.key`). */
export async function readClientCert(source: ClientCertSource): Promise<ClientKeyPair> {
  const names = source.names;
  if (source.kind === 'tls-dir') {
    const { dir } = source;
    const [certFile, keyFile] = [join(dir, TLS_CERT), join(dir, TLS_KEY)];
    const [certificate, key] = await named(readPair(certFile, keyFile), names && (() => names.dir));
    return {
      certificate,
      key,
      source: dir,
      certificateFrom: { source: certFile, field: names?.dir ?? 'certificate' },
      keyFrom: { source: keyFile, field: names?.dir ?? 'key' },
    };
  }
  const { certFile, keyFile } = source;
  // One file for both (a PEM holding the certificate and its key): read once, its problem named by both settings.
  const oneFile = resolve(certFile) === resolve(keyFile);
  // A problem of neither file is one of the directory they share (its `..data` read): both settings lead there.
  const nameOf =
    names &&
    ((p: ConfigProblem) => (!oneFile && p.source === certFile ? names.cert : !oneFile && p.source === keyFile ? names.key : `${names.cert}, ${names.key}`));
  const reading = oneFile ? readNonEmpty(certFile).then((text): [string, string] => [text, text]) : readPair(certFile, keyFile);
  const [certificate, key] = await named(reading, nameOf);
  return {
    certificate,
    key,
    source: `${certFile}, ${keyFile}`,
    certificateFrom: { source: certFile, field: names?.cert ?? 'certificate' },
    keyFrom: { source: keyFile, field: names?.key ?? 'key' },
  };
}

/**
 * `reading`, its problems about the file or directory itself (field `''`) named by where its path was given
 * (`--service-key`, `SIDECAR_CLIENT_CERT`, `routes[1].clientCert`): the path alone does not say which setting to fix.
 */
async function named<T>(reading: Promise<T>, nameOf: ((problem: ConfigProblem) => string) | undefined): Promise<T> {
  try {
    return await reading;
  } catch (err) {
    if (!nameOf || !(err instanceof ConfigError)) throw err;
    throw new ConfigError(err.problems.map((p) => (p.field === '' ? { ...p, field: nameOf(p) } : p)));
  }
}

/**
 * Two files of one directory (a `kubernetes.io/tls` secret, or `--client-cert`/`--client-key` in one volume) from
 * one version of it: a new certificate with the old key would fail as a mismatched pair.
 */
function readPair(certFile: string, keyFile: string): Promise<[string, string]> {
  // Compared resolved: `/tls//tls.key` (a `$(DIR)/` template) and `./certs/…` beside `certs/…` are one directory.
  const dir = dirname(resolve(certFile));
  if (dirname(resolve(keyFile)) !== dir) return settleReads(readNonEmpty(certFile), readNonEmpty(keyFile));
  return readOneGeneration(dir, (from) =>
    settleReads(readNonEmpty(join(from, basename(certFile)), certFile), readNonEmpty(join(from, basename(keyFile)), keyFile)),
  );
}

/**
 * Real directories to watch, non-recursively, for rotation; recomputed by the watcher as links and directories
 * change. A file is watched through its directory: the kubelet swaps the `..data` symlink, and a watch on the
 * file itself goes silent after the first swap. Env values never change.
 */
export async function watchTargets(spec: CredentialSpec): Promise<string[]> {
  const paths = [...(await sourcePaths(spec.source)), ...clientCertPaths(spec.clientCert)];
  const dirs = await Promise.all(paths.map(announcingDirs));
  return [...new Set(dirs.flat())];
}

/** The most links followed in one path (Linux's MAXSYMLINKS); beyond it the path is treated as not there. */
const MAX_LINKS = 40;

/**
 * The directories where a change to what `path` names shows up: the one holding each symlink on the way (a link
 * replaced by `rename()` — the kubelet's `..data`, `ln -sfn`'s `current → v2` — is an event there, not below it)
 * and the real directory itself, or for a file the real directory holding it. A path that does not exist is
 * watched through its deepest existing ancestor, where it will appear. Left out: the kubelet's `..<timestamp>`
 * payload directories (never changed, only swapped, which the volume's directory sees; a key behind
 * `sub → ..data/sub` is thus watched through the volume) and the filesystem root (a link there, such as macOS's
 * `/tmp`, is the system's layout, not a rotation).
 */
async function announcingDirs(path: string): Promise<string[]> {
  const absolute = resolve(path);
  const dirs: string[] = [];
  const pending = segments(absolute);
  let real = parse(absolute).root;
  let isDir = true;
  let links = 0;
  for (let name = pending.shift(); name !== undefined; name = pending.shift()) {
    if (name === '..') {
      real = dirname(real); // `real` has no links left in it, so `..` is its parent
      continue;
    }
    const next = join(real, name);
    let info: Stats;
    try {
      info = await lstat(next);
    } catch {
      break; // not there (yet): `real` is where it would appear
    }
    if (info.isSymbolicLink()) {
      dirs.push(real);
      if (++links > MAX_LINKS) break;
      let target: string;
      try {
        target = await readlink(next);
      } catch {
        break;
      }
      if (isAbsolute(target)) real = parse(target).root;
      pending.unshift(...segments(target));
      continue;
    }
    real = next;
    isDir = info.isDirectory();
  }
  dirs.push(isDir ? real : dirname(real));
  return dirs.filter((dir) => dirname(dir) !== dir && !dir.split(sep).some((s) => s.startsWith('..')));
}

function segments(path: string): string[] {
  return path.split(sep).filter((s) => s !== '' && s !== '.');
}

/** Awaits both reads, then throws one ConfigError with the problems of both; other errors pass through. */
export async function settleReads<A, B>(a: Promise<A>, b: Promise<B>): Promise<[A, B]> {
  const [ra, rb] = await Promise.allSettled([a, b]);
  const problems: ConfigProblem[] = [];
  for (const r of [ra, rb]) {
    if (r.status === 'rejected' && !(r.reason instanceof ConfigError)) throw r.reason;
    if (r.status === 'rejected') problems.push(...(r.reason as ConfigError).problems);
  }
  if (ra.status === 'rejected' || rb.status === 'rejected') throw new ConfigError(problems);
  return [ra.value, rb.value];
}

/** The paths whose directories announce a change of the source: a file, or a directory and its bindings. */
async function sourcePaths(source: CredentialSource): Promise<string[]> {
  switch (source.kind) {
    case 'path':
      return (await isDirectory(source.path)) ? directoryPaths(source.path, false) : [source.path];
    case 'binding-root':
      return directoryPaths(source.root, true);
    case 'vcap-file':
      return [source.path];
    case 'vcap':
    case 'inline':
      return [];
  }
}

/**
 * The directory and, for a binding root, each binding in it: their `..data` swaps are invisible from above.
 * `bindingRoot` is the binding-root source (`$SERVICE_BINDING_ROOT`), a root whatever files lie beside the
 * bindings. Best effort: a directory that cannot be listed (an entry removed mid-swap) is watched alone; the
 * next reload, which fails then if the problem stays, looks again.
 */
async function directoryPaths(dir: string, bindingRoot: boolean): Promise<string[]> {
  try {
    const { files, dirs } = await listDir(dir);
    if (bindingRoot) return [dir, ...(await findBindings(dirs)).map((b) => b.dir)];
    const bindings = keyFiles(files).length === 0 ? await bindingsBelow(dir, dirs) : [];
    return [dir, ...bindings.map((b) => b.dir)];
  } catch {
    return [dir];
  }
}

function clientCertPaths(source: ClientCertSource | undefined): string[] {
  if (!source) return [];
  return source.kind === 'files' ? [source.certFile, source.keyFile] : [source.dir];
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch {
    return false; // watched as a file: through the deepest directory there is
  }
}

/**
 * `binding` (--binding) names one of several bindings below a directory: given for a single key, it is an error.
 * `from`: the setting that gave the path, which a directory of several bindings is told to point at one of them.
 */
async function readPath(path: string, binding: string | undefined, from?: string): Promise<RawServiceKey> {
  if ((await statOrFail(path)).isDirectory()) return readSecretDir(path, binding, from);
  if (binding !== undefined) fail(path, NOT_A_ROOT);
  return { raw: parseJson(await readNonEmpty(path), path), source: path };
}

const NOT_A_ROOT = 'is one service key, not a directory of bindings: --binding (SIDECAR_BINDING) picks one of several, so leave it out';

/**
 * A Kubernetes secret or binding directory: one file per field, JSON files
 * parsed, `.metadata` honoured; or, without files (dot-files aside), a root of bindings.
 * In the kubelet's layout the fields are those of the one version `..data` names (see `readOneGeneration`).
 */
async function readSecretDir(dir: string, binding?: string, from?: string): Promise<RawServiceKey> {
  const { files, dirs } = await listDir(dir);
  if (keyFiles(files).length === 0) {
    const bindings = await bindingsBelow(dir, dirs);
    if (bindings.length > 0) {
      // A route of a config file has no binding key (and --binding does not go with --config): only its path picks.
      const choose = from?.startsWith('routes[') ? `point ${from} at one of them` : 'name it with --binding (SIDECAR_BINDING) or point --service-key at it';
      return readSecretDir(pickBinding(dir, bindings, binding, choose).dir);
    }
  }
  // One key: nothing for --binding to pick (a directory with neither key files nor bindings is reported below).
  if (binding !== undefined && keyFiles(files).length > 0) fail(dir, NOT_A_ROOT);
  // The fields are those of the one version the files come from, listed there: right after the kubelet's swap the
  // links in `dir` are still the old version's, and may all lead nowhere while the new version is complete.
  const values = await readOneGeneration(dir, async (from) => {
    const listing = await listDir(from);
    // A FIFO, socket or device in a field's place would block the read or is no field: named, not taken for
    // missing. Beside the fields (an agent's socket in a shared volume) it is ignored, as a binary file is.
    const inPlace = listing.special.find((name) => KEY_FIELDS.has(name) || name === METADATA_FILE || name === 'oauth');
    if (inPlace !== undefined) fail(join(dir, inPlace), 'is not a regular file');
    if (listing.files.length === 0) {
      fail(dir, listing.broken.length > 0 ? `contains no service key files, only links that lead nowhere (${listing.broken.join(', ')})` : 'contains no service key files and no binding directories');
    }
    const fields = await readFields(dir, from, listing.files);
    const container = containerName(fields[METADATA_FILE]); // the file `.metadata` names is in a field's place too
    if (container !== undefined && listing.special.includes(container)) fail(join(dir, container), 'is not a regular file');
    return fields;
  });
  const container = containerName(values[METADATA_FILE]);
  if (container !== undefined && container in values) {
    if (values[container] === BINARY) fail(join(dir, container), NOT_UTF8);
    return { raw: values[container], source: join(dir, container) };
  }
  delete values[METADATA_FILE];
  for (const [name, value] of Object.entries(values)) if (value === BINARY) delete values[name];
  return { raw: values, source: dir };
}

/** Each of `names` read from `from` (JSON objects parsed), named in messages as the file in `dir`. */
async function readFields(dir: string, from: string, names: readonly string[]): Promise<Record<string, unknown>> {
  const values: Record<string, unknown> = {};
  for (const name of names) {
    const text = await readText(join(from, name), join(dir, name));
    // A binary file beside the fields (a keystore) is no field; a field, or a JSON object (the btp-operator's
    // `oauth`, a secretRootKey's map), saved as UTF-16 must not pass as one or vanish without a word.
    if (notUtf8(text) !== undefined && !KEY_FIELDS.has(name) && !text.replace(/[\u0000\ufeff\ufffd]/g, '').trimStart().startsWith('{')) {
      values[name] = BINARY;
      continue;
    }
    values[name] = parseIfObject(text, join(dir, name));
  }
  return values;
}

/** What a binary file not named as a key field is read as: never a field's value, nor a container's JSON. */
const BINARY = Symbol('binary file');
/** A service key's own fields, as files of a secret directory. */
const KEY_FIELDS = new Set(['clientid', 'clientsecret', 'url', 'tokenurl', 'certificate', 'key']);

/**
 * Runs `read` on the one directory the files of `dir` come from. Each path through a link is resolved again, so
 * files read one by one while the link is switched could mix two versions of the secret — an old `clientid` with
 * a new `clientsecret`, new credentials with the old `url`. In the kubelet's AtomicWriter layout the link is
 * `..data`; a subdirectory of a secret volume (`items: path: cpi/<field>`) is reached through its parent's
 * `..data`, and a directory may be a link switched by hand (`current -> v2`, `ln -sfn`). So the directory is
 * resolved once (`..data` where there is one, else every link on its path) and everything is read from the real
 * directory; if `dir` resolves to another one afterwards (the old one may be gone already), the read starts over
 * there.
 */
async function readOneGeneration<T>(dir: string, read: (from: string) => Promise<T>): Promise<T> {
  let generation = await generationOf(dir);
  for (let attempt = 1; generation !== undefined; attempt++) {
    const result = await read(generation.dir).then(
      (value) => ({ value }),
      (err: unknown) => ({ err }),
    );
    const after = await generationOf(dir);
    if (after?.dir === generation.dir) {
      if ('err' in result) throw result.err;
      return result.value;
    }
    if (attempt === MAX_GENERATION_READS) {
      fail(generation.link, `changed during each of ${MAX_GENERATION_READS} reads: the secret kept being updated while it was read`);
    }
    generation = after;
  }
  return read(dir); // not there (any more): the read names what is missing
}

/**
 * The real directory the files of `dir` are read from now, and the link that names it (for messages): the one
 * `dir/..data` names, else `dir` with every link on its path resolved; undefined when neither is there. A
 * version's directory is never reused.
 */
async function generationOf(dir: string): Promise<{ dir: string; link: string } | undefined> {
  const data = join(dir, DATA_LINK);
  const real = (await realDirectory(data)) ?? (await realDirectory(dir));
  return real === undefined ? undefined : { dir: real.path, link: real.of };
}

async function realDirectory(path: string): Promise<{ path: string; of: string } | undefined> {
  try {
    return { path: await realpath(path), of: path };
  } catch (err) {
    if (errorCode(err) === 'ENOENT' || errorCode(err) === 'ENOTDIR') return undefined;
    failRead(path, err);
  }
}

/** The secretKey file named by btp-operator's `.metadata` (`{"name":X,"format":"json","container":true}`). */
function containerName(metadata: unknown): string | undefined {
  if (!isObject(metadata) || !Array.isArray(metadata.credentialProperties)) return undefined;
  const marked: unknown = metadata.credentialProperties.find((p: unknown) => isObject(p) && p.container === true);
  return isObject(marked) && typeof marked.name === 'string' ? marked.name : undefined;
}

/** Files holding a JSON object are parsed (as @sap/xsenv does); anything else stays text. */
function parseIfObject(text: string, path: string): unknown {
  const why = notUtf8(text);
  if (why !== undefined) fail(path, why);
  return text.trim().startsWith('{') ? parseJson(text, path) : text;
}

interface Binding {
  name: string;
  type: string;
  dir: string;
}

async function readBindingRoot(root: string, binding: string | undefined): Promise<RawServiceKey> {
  if (!(await statOrFail(root)).isDirectory()) fail(root, 'is not a directory');
  const bindings = await findBindings((await listDir(root)).dirs);
  return readSecretDir(pickBinding(root, bindings, binding).dir);
}

/**
 * The files that can hold a key field. Dot-files (`.keep`, `.DS_Store`, btp-operator's `.metadata`, which is
 * never alone) do not make a directory a secret rather than a root of bindings.
 */
function keyFiles(files: string[]): string[] {
  return files.filter((name) => !name.startsWith('.'));
}

/**
 * The bindings in a directory without key files: servicebinding.io-style directories with a `type` file; else
 * @sap/xsenv's layout (`/etc/secrets/sapcp/<service>/<instance>/`, sap.md §2), given the service directory
 * or its root, where an instance without a `type` file takes its service directory's name as its type.
 */
async function bindingsBelow(dir: string, dirs: string[]): Promise<Binding[]> {
  const typed = await findBindings(dirs);
  if (typed.length > 0) return typed;
  const instances = await xsenvInstances(basename(dir), dirs);
  if (instances.length > 0) return instances;
  const nested: Binding[] = [];
  for (const service of dirs) nested.push(...(await xsenvInstances(basename(service), (await listDir(service)).dirs)));
  return nested;
}

/** Directories holding key files, as instances of `service`. */
async function xsenvInstances(service: string, dirs: string[]): Promise<Binding[]> {
  const instances: Binding[] = [];
  for (const dir of dirs) {
    if (keyFiles((await listDir(dir)).files).length === 0) continue;
    instances.push({ name: basename(dir), type: (await readTypeFile(dir)) ?? service, dir });
  }
  return instances;
}

async function findBindings(dirs: string[]): Promise<Binding[]> {
  const bindings: Binding[] = [];
  for (const dir of dirs) {
    const type = await readTypeFile(dir);
    if (type !== undefined) bindings.push({ name: basename(dir), type, dir });
  }
  return bindings;
}

async function readTypeFile(dir: string): Promise<string | undefined> {
  const path = join(dir, TYPE_FILE);
  const info = await statOrAbsent(path);
  if (info === undefined || info.isDirectory()) return undefined;
  return (await readText(path)).trim();
}

/** The binding named, else the only `it-rt` one, else the only one. */
function pickBinding(root: string, bindings: Binding[], wanted: string | undefined, choose = 'name the one to use with --binding (SIDECAR_BINDING)'): Binding {
  const found = bindings.map((b) => `${b.name} (type ${b.type})`).join(', ') || 'none';
  if (wanted !== undefined) {
    return bindings.find((b) => b.name === wanted) ?? fail(root, `has no binding named "${wanted}"; found: ${found}`);
  }
  const preferred = bindings.filter((b) => b.type === DEFAULT_SERVICE);
  const candidates = preferred.length > 0 ? preferred : bindings;
  const [only] = candidates;
  if (candidates.length === 1 && only) return only;
  if (candidates.length === 0) fail(root, 'has no bindings (subdirectories with a type file)');
  return fail(root, `has several bindings, so ${choose}; found: ${found}`);
}

interface VcapInstance {
  label: string;
  instance: Record<string, unknown>;
}

/**
 * Cloud Foundry: the instance whose name (else label) is `binding`, else the only `it-rt` one. `label` names
 * where the JSON came from: `VCAP_SERVICES`, or the file `VCAP_SERVICES_FILE_PATH` names.
 */
function readVcap(json: string, binding: string | undefined, label: string): RawServiceKey {
  const services = parseJson(json, label);
  if (!isObject(services)) fail(label, 'is not a JSON object');
  const instances: VcapInstance[] = Object.entries(services).flatMap(([service, list]) =>
    Array.isArray(list) ? list.filter(isObject).map((instance) => ({ label: service, instance })) : [],
  );
  const found = (): string => instances.map(describeVcapInstance).join(', ') || 'none';
  let chosen: VcapInstance | undefined;
  if (binding === undefined) {
    // An app bound to an integration-flow and an api instance of it-rt: taking either would send half the
    // traffic to the wrong host; like a directory of bindings, several are refused until one is named.
    const candidates = instances.filter((i) => i.label === DEFAULT_SERVICE);
    if (candidates.length > 1) fail(label, `has several ${DEFAULT_SERVICE} bindings, so name the one to use with --binding (SIDECAR_BINDING); found: ${found()}`);
    chosen = candidates[0];
  } else {
    chosen = instances.find((i) => i.instance.name === binding);
    if (chosen === undefined) {
      // A label (`--binding it-rt`) names an instance only when it has one: which of several would be a guess.
      const labelled = instances.filter((i) => i.label === binding);
      if (labelled.length > 1) fail(label, `has several ${binding} bindings, so name the instance to use with --binding (SIDECAR_BINDING); found: ${found()}`);
      chosen = labelled[0];
    }
  }
  if (!chosen) fail(label, `has no ${binding === undefined ? DEFAULT_SERVICE : `"${binding}"`} binding; found: ${found()}`);
  const source = `${label} (${describeVcapInstance(chosen)})`;
  if (!('credentials' in chosen.instance)) fail(source, 'is missing', 'credentials');
  return { raw: chosen.instance.credentials, source };
}

function describeVcapInstance({ label, instance }: VcapInstance): string {
  return `${label}/${typeof instance.name === 'string' ? instance.name : '?'}`;
}

/** Visible entries of a directory, symlinks followed; `..`-prefixed names are the kubelet's own. */
async function listDir(dir: string): Promise<{ files: string[]; dirs: string[]; broken: string[]; special: string[] }> {
  let names: string[];
  try {
    names = (await readdir(dir)).filter((n) => !n.startsWith('..')).sort();
  } catch (err) {
    failRead(dir, err);
  }
  const files: string[] = [];
  const dirs: string[] = [];
  const broken: string[] = [];
  const special: string[] = [];
  for (const name of names) {
    const info = await statOrAbsent(join(dir, name));
    if (info === undefined) broken.push(name);
    else if (info.isDirectory()) dirs.push(join(dir, name));
    else if (info.isFile()) files.push(name);
    else special.push(name);
  }
  return { files, dirs, broken, special };
}

/**
 * A link that leads nowhere (or in a loop) is no entry: the kubelet swaps `..data` first and removes the links of
 * fields the new version dropped only after it, and a stray broken link beside the key is not part of it. A field
 * that is needed and gone is reported as missing, by name.
 */
async function statOrAbsent(path: string): Promise<Stats | undefined> {
  try {
    return await stat(path);
  } catch (err) {
    const code = errorCode(err);
    if (code === 'ENOENT' || code === 'ELOOP') return undefined;
    failRead(path, err);
  }
}

async function statOrFail(path: string): Promise<Stats> {
  try {
    return await stat(path);
  } catch (err) {
    failRead(path, err);
  }
}

/**
 * The largest file read as (part of) a service key or client certificate: a Kubernetes secret holds at most
 * 1 MiB. A larger one is no key, and reading it whole (again at every poll) could take the container's memory.
 */
export const MAX_KEY_FILE_BYTES = 1024 * 1024;

/**
 * `label`: the path as the user knows it (a file behind `..data` is named as seen in its secret directory).
 * Only a regular file is read: a FIFO put in a key's place would block the read, and with it every later
 * reload, for good.
 */
async function readText(path: string, label = path): Promise<string> {
  try {
    const info = await stat(path);
    if (!info.isFile()) fail(label, 'is not a regular file');
    if (info.size > MAX_KEY_FILE_BYTES) fail(label, `is larger than ${MAX_KEY_FILE_BYTES} bytes (${info.size}), which no service key or certificate is`);
    return await readFile(path, 'utf8');
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    return failRead(label, err);
  }
}

async function readNonEmpty(path: string, label = path): Promise<string> {
  const text = await readText(path, label);
  if (text.trim() === '') fail(label, 'is empty');
  const why = notUtf8(text);
  if (why !== undefined) fail(label, why);
  return text;
}

/** Parses JSON; a syntax error reports only the position, never the content (it may hold a secret). */
function parseJson(text: string, source: string): unknown {
  try {
    // A byte order mark (a key saved by a Windows editor) is not JSON, but nobody means it.
    return JSON.parse(withoutBom(text)) as unknown;
  } catch (err) {
    // Only here, where the text must be JSON: a directory's other files (a `.DS_Store`, a keystore) may be binary.
    fail(source, notUtf8(text) ?? `is not valid JSON${jsonPosition(text, err)}`);
  }
}

/**
 * A file or directory that could not be read. Out of file descriptors (EMFILE, ENFILE) is the process's state, not
 * the key's: the problem is `transient`, and a reload meeting it says so instead of calling the key rejected.
 */
function failRead(source: string, err: unknown): never {
  const code = errorCode(err);
  const descriptors = code === 'EMFILE' || code === 'ENFILE';
  throw new ConfigError([{ source, field: '', message: describeFsError(err), ...(descriptors ? { transient: true } : {}) }]);
}

function describeFsError(err: unknown): string {
  const code = errorCode(err);
  if (code === 'ENOENT') return 'does not exist';
  if (code === 'EACCES' || code === 'EPERM') return 'cannot be read: permission denied';
  if (code === 'EMFILE' || code === 'ENFILE') return `cannot be read now: ${descriptorsText(code)}`;
  return `cannot be read (${code ?? 'unknown error'})`;
}

function errorCode(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function fail(source: string, message: string, field = ''): never {
  throw new ConfigError([{ source, field, message }]);
}
