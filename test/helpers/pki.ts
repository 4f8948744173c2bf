/** Test PKI (root → intermediate → server/client leaves, plus a rogue client) generated once per process with @peculiar/x509. */
import { createPrivateKey, webcrypto } from 'node:crypto';
import type * as X509 from '@peculiar/x509';

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;

/** A certificate with its private key, PEM encoded. */
export interface IssuedCert {
  /** The leaf alone. */
  leaf: string;
  /** Leaf followed by the intermediate (what a TLS peer sends). */
  chain: string;
  /** PKCS#8 (`-----BEGIN PRIVATE KEY-----`). */
  keyPkcs8: string;
  /** RFC 4514-style subject as issued, e.g. `CN=sidecar-client, O=Test, C=DE`. */
  subject: string;
  notBefore: Date;
  notAfter: Date;
}

export interface ClientCert extends IssuedCert {
  /** PKCS#1 (`-----BEGIN RSA PRIVATE KEY-----`), as SAP puts it in certificate service keys. */
  keyPkcs1: string;
}

export interface IssueClientCertOptions {
  cn: string;
  notBefore?: Date;
  notAfter?: Date;
  /** `ec` (P-256, fast, the default) or `rsa` (2048, adds `keyPkcs1`). */
  keyType?: 'ec' | 'rsa';
}

export interface Pki {
  /** Root CA PEM: the trust anchor for server certificates and for client certificates. */
  ca: string;
  /** Intermediate CA PEM (not a trust anchor: peers must send it in their chain). */
  intermediate: string;
  /** Server leaf for `localhost`, `127.0.0.1`, `::1`. */
  server: { cert: string; chain: string; key: string };
  /** RSA client leaf `CN=sidecar-client, O=Test, C=DE`, signed by the intermediate. */
  client: ClientCert;
  /** Same subject as `client`, but issued by a self-signed CA nobody trusts. */
  rogue: { chain: string; key: string; subject: string };
  /** A further client certificate from the intermediate, e.g. one that expires soon. */
  issueClientCert(options: IssueClientCertOptions): Promise<IssuedCert & { keyPkcs1?: string }>;
}

export const CLIENT_SUBJECT = 'CN=sidecar-client, O=Test, C=DE';

const EC: webcrypto.EcKeyGenParams = { name: 'ECDSA', namedCurve: 'P-256' };
const EC_SIGNING: webcrypto.EcdsaParams = { name: 'ECDSA', hash: 'SHA-256' };
const RSA: webcrypto.RsaHashedKeyGenParams = {
  name: 'RSASSA-PKCS1-v1_5',
  modulusLength: 2048,
  publicExponent: new Uint8Array([1, 0, 1]),
  hash: 'SHA-256',
};
const HOUR = 3_600_000;
const DAY = 24 * HOUR;

interface Authority {
  cert: X509.X509Certificate;
  keys: CryptoKeyPair;
}

let memo: Promise<Pki> | undefined;
let x509: typeof X509;

/** The process-wide test PKI, generated on first call (0.5–1.2 s: loading @peculiar/x509 and one RSA key). */
export function createPki(): Promise<Pki> {
  memo ??= generatePki();
  return memo;
}

/**
 * Compare form of a distinguished name: `CN=a, O=b, C=c` (RFC 4514), its
 * reverse `C=c, O=b, CN=a`, and Node's newline-separated
 * `X509Certificate.subject` (`CN=a\nO=b\nC=c`) normalise to the same string.
 * Attribute order is ignored, types are upper-cased, whitespace around
 * separators dropped. (Values containing `,` are not supported.)
 */
export function normalizeDn(dn: string): string {
  return dn
    .split(/[\n,]/)
    .map((rdn) => rdn.trim())
    .filter((rdn) => rdn.length > 0)
    .map((rdn) => {
      const eq = rdn.indexOf('=');
      return eq < 0 ? rdn : `${rdn.slice(0, eq).trim().toUpperCase()}=${rdn.slice(eq + 1).trim()}`;
    })
    .sort()
    .join(',');
}

async function generatePki(): Promise<Pki> {
  // RSA key generation dominates (0.1–0.9 s, thread pool): overlap it with the rest.
  const clientKeys = generate(RSA);
  x509 = await loadX509();
  const now = Date.now();
  const notBefore = new Date(now - HOUR);

  const root = await selfSignedCa('CN=oauth-sidecar Test Root CA, O=Test, C=DE', notBefore);
  const intermediate = await issue(root, {
    subject: 'CN=oauth-sidecar Test Intermediate CA, O=Test, C=DE',
    keys: await generate(EC),
    notBefore,
    notAfter: new Date(now + 365 * DAY),
    extensions: caExtensions(0),
  });

  const serverKeys = await generate(EC);
  const server = await issue(intermediate, {
    subject: 'CN=localhost, O=Test, C=DE',
    keys: serverKeys,
    notBefore,
    notAfter: new Date(now + 30 * DAY),
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension([
        { type: 'dns', value: 'localhost' },
        { type: 'ip', value: '127.0.0.1' },
        { type: 'ip', value: '::1' },
      ]),
    ],
  });

  const issueClient = async (options: IssueClientCertOptions, keys: CryptoKeyPair): Promise<IssuedCert> => {
    const subject = `CN=${options.cn}, O=Test, C=DE`;
    const issued = await issue(intermediate, {
      subject,
      keys,
      notBefore: options.notBefore ?? new Date(Date.now() - HOUR),
      notAfter: options.notAfter ?? new Date(Date.now() + 30 * DAY),
      extensions: clientExtensions(),
    });
    return {
      leaf: issued.cert.toString('pem'),
      chain: pemChain(issued.cert, intermediate.cert),
      keyPkcs8: await pkcs8Pem(keys.privateKey),
      subject,
      notBefore: issued.cert.notBefore,
      notAfter: issued.cert.notAfter,
    };
  };

  const issueClientCert = async (options: IssueClientCertOptions): Promise<IssuedCert & { keyPkcs1?: string }> => {
    const issued = await issueClient(options, await generate(options.keyType === 'rsa' ? RSA : EC));
    return options.keyType === 'rsa' ? { ...issued, keyPkcs1: toPkcs1(issued.keyPkcs8) } : issued;
  };

  const client = await issueClient({ cn: 'sidecar-client' }, await clientKeys);

  // Same subject, but its own self-signed CA: servers trusting `ca` must refuse it.
  const rogueCa = await selfSignedCa('CN=Rogue CA, O=Test, C=DE', notBefore);
  const rogueLeaf = await issue(rogueCa, {
    subject: CLIENT_SUBJECT,
    keys: await generate(EC),
    notBefore,
    notAfter: new Date(now + 30 * DAY),
    extensions: clientExtensions(),
  });

  return {
    ca: root.cert.toString('pem'),
    intermediate: intermediate.cert.toString('pem'),
    server: {
      cert: server.cert.toString('pem'),
      chain: pemChain(server.cert, intermediate.cert),
      key: await pkcs8Pem(serverKeys.privateKey),
    },
    client: { ...client, keyPkcs1: toPkcs1(client.keyPkcs8) },
    rogue: {
      chain: pemChain(rogueLeaf.cert, rogueCa.cert),
      key: await pkcs8Pem(rogueLeaf.keys.privateKey),
      subject: CLIENT_SUBJECT,
    },
    issueClientCert,
  };
}

function generate(algorithm: webcrypto.EcKeyGenParams | webcrypto.RsaHashedKeyGenParams): Promise<CryptoKeyPair> {
  return webcrypto.subtle.generateKey(algorithm, true, ['sign', 'verify']) as Promise<CryptoKeyPair>;
}

function caExtensions(pathLength: number | undefined): X509.Extension[] {
  return [
    new x509.BasicConstraintsExtension(true, pathLength, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
  ];
}

function clientExtensions(): X509.Extension[] {
  return [
    new x509.BasicConstraintsExtension(false, undefined, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
    new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth]),
  ];
}

async function selfSignedCa(name: string, notBefore: Date): Promise<Authority> {
  const keys = await generate(EC);
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    name,
    keys,
    notBefore,
    notAfter: new Date(notBefore.getTime() + 2 * 365 * DAY),
    signingAlgorithm: EC_SIGNING,
    extensions: [...caExtensions(undefined), await x509.SubjectKeyIdentifierExtension.create(keys.publicKey)],
  });
  return { cert, keys };
}

async function issue(
  issuer: Authority,
  params: { subject: string; keys: CryptoKeyPair; notBefore: Date; notAfter: Date; extensions: X509.Extension[] },
): Promise<Authority> {
  const cert = await x509.X509CertificateGenerator.create({
    subject: params.subject,
    issuer: issuer.cert.subject,
    publicKey: params.keys.publicKey,
    signingKey: issuer.keys.privateKey,
    signingAlgorithm: EC_SIGNING,
    notBefore: params.notBefore,
    notAfter: params.notAfter,
    extensions: [
      ...params.extensions,
      await x509.SubjectKeyIdentifierExtension.create(params.keys.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(issuer.keys.publicKey),
    ],
  });
  return { cert, keys: params.keys };
}

function pemChain(...certs: X509.X509Certificate[]): string {
  return certs.map((cert) => cert.toString('pem')).join('\n') + '\n';
}

async function pkcs8Pem(key: CryptoKey): Promise<string> {
  const der = await webcrypto.subtle.exportKey('pkcs8', key);
  return x509.PemConverter.encode(der, 'PRIVATE KEY') + '\n';
}

function toPkcs1(pkcs8: string): string {
  return createPrivateKey(pkcs8).export({ type: 'pkcs1', format: 'pem' }).toString();
}

/**
 * @peculiar/x509 2.x resolves its algorithms through tsyringe, which refuses to
 * load without a Reflect metadata polyfill ("tsyringe requires a reflect
 * polyfill"), and none is installed. Its decorators only need the four calls
 * below, so install a minimal one (unless a real one is present) before the
 * first import.
 */
async function loadX509(): Promise<typeof X509> {
  installReflectMetadata();
  const lib = await import('@peculiar/x509');
  lib.cryptoProvider.set(webcrypto);
  return lib;
}

type MetadataKey = unknown;
type PropertyKeyOrNone = string | symbol | undefined;

interface ReflectMetadata {
  getMetadata?: (key: MetadataKey, target: object, property?: PropertyKeyOrNone) => unknown;
  getOwnMetadata?: (key: MetadataKey, target: object, property?: PropertyKeyOrNone) => unknown;
  defineMetadata?: (key: MetadataKey, value: unknown, target: object, property?: PropertyKeyOrNone) => void;
  metadata?: (key: MetadataKey, value: unknown) => (target: object, property?: PropertyKeyOrNone) => void;
}

function installReflectMetadata(): void {
  const reflect = Reflect as unknown as ReflectMetadata;
  if (typeof reflect.getMetadata === 'function') return;

  const store = new WeakMap<object, Map<PropertyKeyOrNone, Map<MetadataKey, unknown>>>();
  const own = (target: object, property: PropertyKeyOrNone, create: boolean): Map<MetadataKey, unknown> | undefined => {
    let byProperty = store.get(target);
    if (!byProperty && create) store.set(target, (byProperty = new Map()));
    let entries = byProperty?.get(property);
    if (!entries && create && byProperty) byProperty.set(property, (entries = new Map()));
    return entries;
  };

  reflect.defineMetadata = (key, value, target, property) => void own(target, property, true)?.set(key, value);
  reflect.getOwnMetadata = (key, target, property) => own(target, property, false)?.get(key);
  reflect.getMetadata = (key, target, property) => {
    for (let t: object | null = target; t !== null; t = Object.getPrototypeOf(t) as object | null) {
      const entries = own(t, property, false);
      if (entries?.has(key)) return entries.get(key);
    }
    return undefined;
  };
  reflect.metadata = (key, value) => (target, property) => reflect.defineMetadata?.(key, value, target, property);
}
