/** PEM repair and parsing: service keys carry escaped, quoted or one-line PEMs that TLS stacks reject as they are. */

import { createPrivateKey, X509Certificate, type KeyObject } from 'node:crypto';

/** One `-----BEGIN <type>-----` block with its body reduced to bare base64. */
export interface PemBlock {
  /** The label, e.g. `CERTIFICATE`, `RSA PRIVATE KEY`, `PRIVATE KEY`, `EC PRIVATE KEY`. */
  type: string;
  base64: string;
  /** RFC 1421 headers mark the body encrypted (`Proc-Type: 4,ENCRYPTED`: OpenSSL's legacy `-traditional` keys). */
  encrypted: boolean;
}

/** A failure to read PEM text; the message names the problem, never the material. */
export class PemError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PemError';
  }
}

const BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----([\s\S]*?)-----END \1-----/g;
/** A literal escape left over from JSON (`\n`, `\\n`, `\r\n`, `\t`) stands for whitespace. */
const ESCAPED_WHITESPACE = /\\+[nrt]/g;
const NOT_BASE64 = /[^A-Za-z0-9+/=]/g;
/** Looked for before the body is reduced to base64, which would keep the header's letters as key material. */
const ENCRYPTED_HEADER = /Proc-Type:\s*4\s*,\s*ENCRYPTED/i;
const LINE_WIDTH = 64;

/** Every PEM block in `text`, whatever newlines, escapes or quotes surround the base64. */
export function splitPemBlocks(text: string): PemBlock[] {
  const unescaped = text.replace(ESCAPED_WHITESPACE, '\n');
  return [...unescaped.matchAll(BLOCK)].map((m) => ({
    type: m[1] ?? '',
    base64: (m[2] ?? '').replace(NOT_BASE64, ''),
    encrypted: ENCRYPTED_HEADER.test(m[2] ?? ''),
  }));
}

/** One block as RFC 7468 text: 64-column body, no trailing newline. */
export function formatPemBlock(block: Pick<PemBlock, 'type' | 'base64'>): string {
  const lines = block.base64.match(new RegExp(`.{1,${LINE_WIDTH}}`, 'g')) ?? [];
  return [`-----BEGIN ${block.type}-----`, ...lines, `-----END ${block.type}-----`].join('\n');
}

/** A certificate chain ordered leaf first, with its normalised PEM. */
export interface CertificateChain {
  leaf: X509Certificate;
  /** Leaf first, then its issuers, then any unrelated certificates in their given order. */
  certificates: X509Certificate[];
  pem: string;
}

/** Parses every `CERTIFICATE` block of `text`, in order; throws `PemError` when there is none or one is broken. */
export function parseCertificates(text: string): X509Certificate[] {
  const blocks = splitPemBlocks(text).filter((b) => b.type === 'CERTIFICATE');
  if (blocks.length === 0) throw new PemError('no PEM CERTIFICATE block found');
  return blocks.map((block, i) => parseCertificate(block, i + 1));
}

/**
 * Parses a client certificate chain, leaf first; throws `PemError` like `parseCertificates`.
 * With `privateKey`, the certificate of that key is the leaf, whatever its position.
 */
export function parseCertificateChain(text: string, privateKey?: KeyObject): CertificateChain {
  const certificates = orderLeafFirst(parseCertificates(text), privateKey);
  const [leaf] = certificates;
  if (!leaf) throw new PemError('no PEM CERTIFICATE block found');
  return { leaf, certificates, pem: certificates.map((c) => c.toString()).join('') };
}

/**
 * The intermediate certificates a token server would build the client's path through (RFC 5280 §6.1), as far
 * as the chain sent can tell, leaf first, leaf excluded. From the leaf, each step takes, among the certificates
 * sent that issued the current one (by name and key identifiers, and by signature where several do: without an
 * Authority Key Identifier, a re-issue under a new key matches by name alone), one that leads to a self-signed
 * root sent along if any does, else the one that runs longest (a server prefers a time-valid issuer, OpenSSL
 * among them, and ignores extra certificates: RFC 8446 §4.4.2). It stops at a self-signed root, or at a
 * certificate whose subject such a root sent along also has (a cross-signed root, which the server may trust as
 * itself). The server's trust anchors are its own, so its path may end earlier: what this finds may, not must,
 * refuse the chain when it runs out.
 */
export function issuerPath(certificates: readonly X509Certificate[]): X509Certificate[] {
  const selfSigned = (c: X509Certificate): boolean => c.checkIssued(c);
  const rootNames = new Set(certificates.filter(selfSigned).map((c) => c.subject));
  const issuersOf = (from: X509Certificate, among: readonly X509Certificate[]): X509Certificate[] => {
    const named = among.filter((c) => c !== from && from.checkIssued(c));
    return named.length > 1 ? named.filter((c) => signedBy(from, c)) : named;
  };
  const reaches = new Map<X509Certificate, boolean>();
  const reachesRoot = (from: X509Certificate): boolean => {
    const known = reaches.get(from);
    if (known !== undefined) return known;
    reaches.set(from, false); // under way: a loop (A issued B issued A) leads nowhere through itself
    const result = rootNames.has(from.subject) || issuersOf(from, certificates).some(reachesRoot);
    reaches.set(from, result);
    return result;
  };
  const path: X509Certificate[] = [];
  let current = certificates[0];
  while (current) {
    const from: X509Certificate = current;
    const candidates = issuersOf(from, certificates.filter((c) => !path.includes(c) && !selfSigned(c)));
    const rooted = candidates.filter(reachesRoot);
    const next = (rooted.length > 0 ? rooted : candidates).sort((a, b) => Date.parse(b.validTo) - Date.parse(a.validTo))[0];
    if (!next || rootNames.has(next.subject)) break;
    path.push(next);
    current = next;
  }
  return path;
}

function signedBy(certificate: X509Certificate, issuer: X509Certificate): boolean {
  try {
    return certificate.verify(issuer.publicKey);
  } catch {
    return false;
  }
}

/**
 * The intermediate on the path (`issuerPath`) that runs out first, when that is before the leaf: a server that
 * builds its path through it refuses the chain from then on (RFC 5280 §6.1.3 (a)(2)).
 */
export function intermediateExpiry(certificates: readonly X509Certificate[], leafNotAfter: Date): { certificate: X509Certificate; notAfter: Date } | undefined {
  const [first] = issuerPath(certificates).sort((a, b) => Date.parse(a.validTo) - Date.parse(b.validTo));
  if (!first) return undefined;
  const notAfter = new Date(first.validTo);
  return notAfter < leafNotAfter ? { certificate: first, notAfter } : undefined;
}

/** `CN=a\nO=b` (Node) → `CN=a, O=b`. */
export function oneLineDn(dn: string): string {
  return dn.split('\n').join(', ');
}

function parseCertificate(block: PemBlock, position: number): X509Certificate {
  try {
    return new X509Certificate(formatPemBlock(block));
  } catch {
    throw new PemError(`certificate ${position} is not valid X.509`);
  }
}

/**
 * Puts the leaf first, then its issuers in turn; certificates outside that path
 * keep their order at the end. Chains pasted root first would otherwise present
 * the wrong leaf to the token server. The leaf is the certificate of the private
 * key when one is given and matches; else the first that issued no other, which
 * picks an unrelated root when the intermediate is left out and the root comes first.
 */
function orderLeafFirst(certs: X509Certificate[], privateKey: KeyObject | undefined): X509Certificate[] {
  const issuedNone = (c: X509Certificate) => !certs.some((other) => other !== c && other.checkIssued(c));
  // A CA certificate is never the leaf, even when the key given is its own (the wrong file): then the
  // usual leaf stays first, and the key check reports the mismatch instead of presenting the CA.
  const ofKey = privateKey ? certs.filter((c) => !c.ca && c.checkPrivateKey(privateKey)) : [];
  const leaf = ofKey.find(issuedNone) ?? ofKey[0] ?? certs.find(issuedNone) ?? certs[0];
  const ordered: X509Certificate[] = [];
  let next = leaf;
  while (next) {
    const current: X509Certificate = next;
    ordered.push(current);
    next = certs.find((c) => !ordered.includes(c) && current.checkIssued(c));
  }
  return [...ordered, ...certs.filter((c) => !ordered.includes(c))];
}

/** A private key with its normalised PEM (PKCS#1, PKCS#8 or SEC1 EC, as given). */
export interface PrivateKey {
  key: KeyObject;
  pem: string;
}

/** Parses the first `… PRIVATE KEY` block of `text`; throws `PemError` without echoing the key. */
export function parsePrivateKey(text: string): PrivateKey {
  const block = splitPemBlocks(text).find((b) => b.type.endsWith('PRIVATE KEY'));
  if (!block) throw new PemError('no PEM PRIVATE KEY block found');
  if (block.type === 'ENCRYPTED PRIVATE KEY' || block.encrypted) {
    throw new PemError('the key is encrypted; supply it without a passphrase');
  }
  const pem = `${formatPemBlock(block)}\n`;
  try {
    return { key: createPrivateKey(pem), pem };
  } catch {
    throw new PemError(`the ${block.type} block is not valid`);
  }
}
