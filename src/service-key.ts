/** Service-key validation: every SAP key shape becomes typed Credentials, or one ConfigError listing all problems. */

import type { X509Certificate } from 'node:crypto';
import { createSecureContext } from 'node:tls';
import type {
  CertificateCredentials,
  ClientKeyPair,
  CredentialNotice,
  Credentials,
  LoadedCredentials,
  SecretCredentials,
} from './credentials.js';
import { endpointUrl } from './endpoint-url.js';
import { ConfigError, type ConfigProblem } from './errors.js';
import { intermediateExpiry, oneLineDn, parseCertificateChain, parsePrivateKey, PemError } from './pem.js';

/** A certificate this close to `notAfter` earns a warning at load time. */
export const EXPIRY_WARNING_DAYS = 30;

export interface ParseServiceKeyOptions {
  /** Clock for the expiry checks; tests pass a fixed date. */
  now?: Date;
  /** An explicitly supplied key pair; used for mTLS whatever the key type. */
  clientCert?: ClientKeyPair;
  /** The route has no upstream of its own: `url` is required (see `CredentialSpec.needsUrl`). */
  needsUrl?: boolean | undefined;
  /** Where the route takes a key pair, for the message about an External Certificate key without one. */
  pairSettings?: string | undefined;
}

const DAY_MS = 86_400_000;
/** Fields that mark an object as the credential object itself (flat key, or the content of `oauth`). */
const CREDENTIAL_FIELDS = ['clientid', 'clientsecret', 'tokenurl', 'url', 'certificate', 'key'];
/** `credentials` → `oauth` and the secretRootKey map are the deepest wrappings seen; stop soon after. */
const MAX_WRAPPER_DEPTH = 3;
/** `<sub>.authentication.<region>…` without `.cert.`: XSUAA only accepts client certificates on the `.cert.` host. */
const NON_MTLS_AUTH_HOST = /^([^.]+)\.authentication\.(?!cert\.)(.+)$/;

/** Where a single route (flags and variables) takes its client key pair: see `ParseServiceKeyOptions.pairSettings`. */
const FLAG_PAIR_SETTINGS =
  '--client-cert/--client-key or SIDECAR_CLIENT_CERT/SIDECAR_CLIENT_KEY (or --client-tls-dir, a kubernetes.io/tls secret directory)';

function externalCertificateHelp(pairSettings: string): string {
  return `is missing: this is an External Certificate key (certificate without key), so its key pair must be supplied with ${pairSettings}`;
}

type Fields = Record<string, unknown>;

/** Where a PEM value came from, for problems and notices. */
interface PemInput {
  text: string;
  field: string;
  source: string;
}

/** Problems and notices gathered in one pass over one service key. */
class Findings {
  readonly problems: ConfigProblem[] = [];
  readonly notices: CredentialNotice[] = [];

  constructor(
    readonly source: string,
    readonly prefix: string,
    readonly now: Date,
  ) {}

  /** A problem with a field of the service key (named with its prefix, e.g. `oauth.clientid`). */
  keyProblem(name: string, message: string): void {
    this.problems.push({ source: this.source, field: `${this.prefix}${name}`, message });
  }

  problem(input: Pick<PemInput, 'field' | 'source'>, message: string): void {
    this.problems.push({ source: input.source, field: input.field, message });
  }

  notice(level: CredentialNotice['level'], message: string): void {
    this.notices.push({ level, message });
  }
}

/** Validates a parsed service key (any nesting) into credentials plus load-time notices. */
export function parseServiceKey(raw: unknown, source: string, opts: ParseServiceKeyOptions = {}): LoadedCredentials {
  const located = locateFields(raw, '', 0);
  if ('problem' in located) throw new ConfigError([{ source, ...located.problem }]);
  const found = new Findings(source, located.prefix, opts.now ?? new Date());
  const { fields } = located;
  const clientId = requiredString(found, fields, 'clientid');
  const tokenUrl = urlField(found, fields, 'tokenurl', true);
  const url = urlField(found, fields, 'url', false);
  if (opts.needsUrl && url === undefined) reportNoUrl(found, fields['url']);
  const auth = readAuth(found, fields, opts.clientCert, opts.pairSettings ?? FLAG_PAIR_SETTINGS);
  if (found.problems.length > 0 || !clientId || !tokenUrl || !auth) throw new ConfigError(found.problems);
  const credentials: Credentials =
    auth.kind === 'client-secret'
      ? { ...auth, clientId, tokenUrl, url, source }
      : { ...auth, clientId, tokenUrl: mtlsTokenUrl(found, tokenUrl), url, source };
  return { credentials, notices: found.notices };
}

type Located = { fields: Fields; prefix: string } | { problem: { field: string; message: string } };

/** Finds the credential object: under `oauth`, flat, or inside one wrapper such as `credentials`. */
function locateFields(value: unknown, prefix: string, depth: number): Located {
  const object = asObject(value);
  if (!object) return { problem: { field: prefix.slice(0, -1), message: 'is not a JSON object' } };
  if ('oauth' in object) {
    const oauth = asObject(object.oauth);
    if (!oauth) return { problem: { field: `${prefix}oauth`, message: 'is not a JSON object' } };
    // A secretRootKey named `oauth` holds the whole binding, its own `oauth` inside: one level down.
    if (!hasCredentialField(oauth) && 'oauth' in oauth && depth < MAX_WRAPPER_DEPTH) return locateFields(oauth, `${prefix}oauth.`, depth + 1);
    return { fields: oauth, prefix: `${prefix}oauth.` };
  }
  if (hasCredentialField(object)) return { fields: object, prefix };
  const wrappers = Object.entries(object).filter(([, v]) => asObject(v));
  const [only] = wrappers;
  if (wrappers.length === 1 && only && depth < MAX_WRAPPER_DEPTH) {
    return locateFields(only[1], `${prefix}${only[0]}.`, depth + 1);
  }
  return {
    problem: {
      field: prefix.slice(0, -1),
      message:
        'contains no service key: expected clientid, tokenurl and clientsecret or certificate, ' +
        'under oauth or at the top level',
    },
  };
}

/** A credential field with a value of its own: a wrapper may be named like a field (a secretRootKey called `key`). */
function hasCredentialField(object: Fields): boolean {
  return CREDENTIAL_FIELDS.some((f) => f in object && !asObject(object[f]));
}

/** Objects may arrive JSON-encoded, even twice (btp-operator secretRootKey): decode up to two times. */
function asObject(value: unknown): Fields | undefined {
  const decoded = decodeJsonString(decodeJsonString(value));
  return typeof decoded === 'object' && decoded !== null && !Array.isArray(decoded) ? (decoded as Fields) : undefined;
}

function decodeJsonString(value: unknown): unknown {
  if (typeof value !== 'string') return value;
  const text = value.trim();
  if (!text.startsWith('{') && !text.startsWith('"')) return value;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return value;
  }
}

/** A trimmed string, or undefined when absent or blank; secrets from files often end in a newline. */
function optionalString(found: Findings, fields: Fields, name: string): string | undefined {
  const value = fields[name];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'string') {
    found.keyProblem(name, 'must be a string');
    return undefined;
  }
  return value.trim() || undefined;
}

function requiredString(found: Findings, fields: Fields, name: string): string | undefined {
  const value = optionalString(found, fields, name);
  if (value === undefined) reportAbsent(found, fields, name, 'is missing');
  return value;
}

/** The one problem of a required field that gave no value; one that is not a string was reported by `optionalString`. */
function reportAbsent(found: Findings, fields: Fields, name: string, missing: string): void {
  const value = fields[name];
  if (value === undefined || value === null) found.keyProblem(name, missing);
  else if (typeof value === 'string') found.keyProblem(name, 'is empty');
}

/** `url` is absent or blank where the route needs it (a value that is no URL was reported as such). */
function reportNoUrl(found: Findings, value: unknown): void {
  const absent = value === undefined || value === null;
  if (!absent && !(typeof value === 'string' && value.trim() === '')) return;
  found.keyProblem('url', `is ${absent ? 'missing' : 'empty'}, and the route has no upstream of its own: set --upstream (or upstream: on the route)`);
}

function urlField(found: Findings, fields: Fields, name: string, required: boolean): string | undefined {
  const value = required ? requiredString(found, fields, name) : optionalString(found, fields, name);
  if (value === undefined) return undefined;
  const { problem } = endpointUrl(value, name === 'url' ? 'upstream' : 'token');
  if (problem !== undefined) {
    found.keyProblem(name, problem);
    return undefined;
  }
  return value;
}

/** A URL as logs and diagnostics show it: without its query (it may be signed) or fragment. */
export function shownUrl(value: string): string {
  try {
    const url = new URL(value);
    return `${url.origin}${url.pathname}${url.search ? '?…' : ''}`;
  } catch {
    return '(not a URL)';
  }
}

/** What the key type contributes to the credentials; the rest is common to all kinds. */
type BaseFields = 'clientId' | 'tokenUrl' | 'url' | 'source';
type SecretAuth = Omit<SecretCredentials, BaseFields>;
type CertificateAuth = Omit<CertificateCredentials, BaseFields>;
type Auth = SecretAuth | CertificateAuth;

/** Decides the key type from the fields present, preferring an explicitly supplied key pair. */
function readAuth(found: Findings, fields: Fields, clientCert: ClientKeyPair | undefined, pairSettings: string): Auth | undefined {
  const certificate = optionalString(found, fields, 'certificate');
  const key = optionalString(found, fields, 'key');
  const clientSecret = optionalString(found, fields, 'clientsecret');
  if (clientCert) return readSuppliedPair(found, clientCert, { certificate, key, clientSecret });
  if (certificate && key) {
    return readKeyPair(found, 'certificate', ownPem(found, 'certificate', certificate), ownPem(found, 'key', key));
  }
  if (clientSecret) return { kind: 'client-secret', clientSecret };
  if (isAbsent(fields.certificate) && isAbsent(fields.key)) {
    reportAbsent(found, fields, 'clientsecret', 'is missing: a service key needs clientsecret, or certificate and key');
  } else {
    reportIncompletePair(found, fields, certificate, key, pairSettings);
  }
  return undefined;
}

function isAbsent(value: unknown): boolean {
  return value === undefined || value === null;
}

function ownPem(found: Findings, name: 'certificate' | 'key', text: string): PemInput {
  return { text, field: `${found.prefix}${name}`, source: found.source };
}

/**
 * A key with `certificate` or `key` but not both usable: one problem per field of the pair.
 * Only a readable certificate with no `key` at all is taken for an External Certificate key.
 */
function reportIncompletePair(
  found: Findings,
  fields: Fields,
  certificate: string | undefined,
  key: string | undefined,
  pairSettings: string,
): void {
  if (certificate === undefined) {
    reportAbsent(found, fields, 'certificate', 'is missing (the key has a "key")');
  } else {
    const chain = parsePem(found, ownPem(found, 'certificate', certificate), 'certificate', parseCertificateChain);
    if (chain && isAbsent(fields.key)) found.keyProblem('key', externalCertificateHelp(pairSettings));
  }
  // A `key` that is not a string was reported as such by `optionalString`.
  if (key !== undefined) parsePem(found, ownPem(found, 'key', key), 'private key', parsePrivateKey);
  else if (typeof fields.key === 'string') found.keyProblem('key', 'is empty');
}

function readSuppliedPair(
  found: Findings,
  pair: ClientKeyPair,
  own: { certificate: string | undefined; key: string | undefined; clientSecret: string | undefined },
): Auth | undefined {
  // Each half named as given (`--client-cert`, `routes[1].clientTlsDir`) with its own file: not as the key's own fields.
  const cert = { text: pair.certificate, field: 'certificate', source: pair.source, ...pair.certificateFrom };
  const keyInput = { text: pair.key, field: 'key', source: pair.source, ...pair.keyFrom };
  const auth = readKeyPair(found, own.key ? 'certificate' : 'external-certificate', cert, keyInput);
  if (own.key) found.notice('info', `using the client key pair from ${pair.source} instead of the service key's own`);
  else if (own.certificate && auth) comparePinned(found, own.certificate, auth, pair.source);
  if (!own.key && own.clientSecret) {
    // Legitimate (the instance's client id takes the certificate of another of its keys), but the secret goes unused.
    found.notice('info', `using the client key pair from ${pair.source} for mTLS: the service key's clientsecret is not used`);
  }
  return auth;
}

/** External Certificate keys may pin their certificate: a different one is likely refused. */
function comparePinned(found: Findings, ownCertificate: string, supplied: CertificateAuth, pairSource: string): void {
  // The supplied key picks the pinned leaf out of the key's own certificate, whatever the order.
  const suppliedKey = parsePrivateKey(supplied.key).key;
  const parse = (text: string) => parseCertificateChain(text, suppliedKey);
  const own = parsePem(found, ownPem(found, 'certificate', ownCertificate), 'certificate', parse);
  if (own && own.leaf.fingerprint256 !== supplied.fingerprint) {
    found.notice(
      'warn',
      `the client certificate from ${pairSource} differs from ${found.prefix}certificate of the service key; ` +
        'if certificate pinning is on, the token server will reject it',
    );
  }
}

function readKeyPair(
  found: Findings,
  kind: 'certificate' | 'external-certificate',
  cert: PemInput,
  key: PemInput,
): CertificateAuth | undefined {
  // The key is read first so that it can pick the leaf out of a chain in any order; its problems still come second.
  const privateKey = tryPem(key.text, parsePrivateKey);
  const keyObject = privateKey instanceof PemError ? undefined : privateKey.key;
  const chain = parsePem(found, cert, 'certificate', (text) => parseCertificateChain(text, keyObject));
  if (privateKey instanceof PemError) reportPem(found, key, 'private key', privateKey);
  if (!chain || privateKey instanceof PemError) return undefined;
  if (!chain.leaf.checkPrivateKey(privateKey.key)) found.problem(key, `does not match the certificate in ${cert.field}`);
  else {
    const refusal = tlsRefusal(chain.pem, privateKey.pem);
    if (refusal) found.problem(cert, `cannot be used for TLS: OpenSSL refuses it (${refusal}); a new certificate with a stronger key or signature is needed`);
  }
  const notAfter = new Date(chain.leaf.validTo);
  checkExpiry(found, cert, notAfter);
  checkIntermediates(found, cert, chain.certificates, notAfter);
  const notBefore = new Date(chain.leaf.validFrom);
  if (notBefore > found.now) {
    // A clock behind, or a certificate issued ahead: the token server's TLS refuses it until then.
    found.notice('warn', `the client certificate in ${cert.field} (${cert.source}) is not valid before ${notBefore.toISOString()}`);
  }
  return { kind, certificate: chain.pem, key: privateKey.pem, fingerprint: chain.leaf.fingerprint256, notAfter };
}

/**
 * What OpenSSL says when the pair cannot go into a TLS context (a 512- or 768-bit RSA key is below its security
 * level): found here, it is a configuration problem, not an unexplained failure when the route is built.
 */
function tlsRefusal(certificate: string, key: string): string | undefined {
  try {
    createSecureContext({ cert: certificate, key, ca: [] }); // no trust store: only the pair is checked
    return undefined;
  } catch (err) {
    const reason = (err as { reason?: unknown }).reason;
    return typeof reason === 'string' ? reason : String((err as Error).message);
  }
}

function parsePem<T>(found: Findings, input: PemInput, what: string, parse: (text: string) => T): T | undefined {
  const parsed = tryPem(input.text, parse);
  if (!(parsed instanceof PemError)) return parsed;
  reportPem(found, input, what, parsed);
  return undefined;
}

/** The parsed value, or the `PemError` that refused it (any other error is a bug and thrown). */
function tryPem<T>(text: string, parse: (text: string) => T): T | PemError {
  try {
    return parse(text);
  } catch (err) {
    if (!(err instanceof PemError)) throw err;
    return err;
  }
}

function reportPem(found: Findings, input: PemInput, what: string, err: PemError): void {
  found.problem(input, `is not a PEM ${what} (${err.message})`);
}

function checkExpiry(found: Findings, cert: PemInput, notAfter: Date): void {
  const daysLeft = (notAfter.getTime() - found.now.getTime()) / DAY_MS;
  if (daysLeft <= 0) {
    found.problem(cert, `expired on ${notAfter.toISOString()}`);
  } else if (daysLeft <= EXPIRY_WARNING_DAYS) {
    found.notice('warn', `the client certificate in ${cert.field} (${cert.source}) expires on ${inDays(notAfter, daysLeft)}`);
  }
}

/**
 * An intermediate that runs out before the leaf (a customer PKI's, for External Certificate keys): warned like
 * the leaf, but never refused, as the token server may build its path another way (pem `issuerPath`).
 */
function checkIntermediates(found: Findings, cert: PemInput, certificates: readonly X509Certificate[], leafNotAfter: Date): void {
  const first = intermediateExpiry(certificates, leafNotAfter);
  if (!first) return;
  const daysLeft = (first.notAfter.getTime() - found.now.getTime()) / DAY_MS;
  if (daysLeft > EXPIRY_WARNING_DAYS) return;
  const which = `the intermediate certificate ${oneLineDn(first.certificate.subject)} in ${cert.field} (${cert.source})`;
  const effect = 'a token server that builds the chain through it refuses the client certificate';
  found.notice(
    'warn',
    daysLeft <= 0
      ? `${which} expired on ${first.notAfter.toISOString()}: ${effect}; put its renewed intermediate after the leaf`
      : `${which} expires on ${inDays(first.notAfter, daysLeft)}, before the client certificate: ${effect} from then on`,
  );
}

function inDays(notAfter: Date, daysLeft: number): string {
  const days = Math.round(daysLeft);
  return `${notAfter.toISOString()}, in ${days} day${days === 1 ? '' : 's'}`;
}

/** Switches `<sub>.authentication.<region>…` to `<sub>.authentication.cert.<region>…` for mTLS. */
function mtlsTokenUrl(found: Findings, tokenUrl: string): string {
  const url = new URL(tokenUrl);
  const match = NON_MTLS_AUTH_HOST.exec(url.hostname);
  if (!match) return tokenUrl;
  const from = url.hostname;
  url.hostname = `${match[1]}.authentication.cert.${match[2]}`;
  found.notice(
    'info',
    `token URL host switched from ${from} to ${url.hostname}: XSUAA accepts client certificates only there`,
  );
  return url.href;
}
