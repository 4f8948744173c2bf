import { X509Certificate, type KeyObject } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  formatPemBlock,
  parseCertificateChain,
  parseCertificates,
  parsePrivateKey,
  PemError,
  splitPemBlocks,
} from '../../src/pem.js';
import { unitCerts } from '../helpers/unit-certs.js';

const certs = await unitCerts();

/** The same PEM as Node prints it: 64 columns, real newlines, trailing newline. */
const canonical = (pem: string) => `${pem.trim()}\n`;

/** The base64 body of the first block, for checks that errors never echo it. */
const bodyOf = (pem: string) => pem.split('\n').filter((l) => l && !l.startsWith('-----')).join('');

function thrownBy(fn: () => unknown): Error {
  try {
    fn();
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected a throw');
}

/** The chain's PEM as the sidecar keeps it, or `''` when `text` holds no certificate. */
function normalizePem(text: string): string {
  try {
    return parseCertificateChain(text).pem;
  } catch (err) {
    if (err instanceof PemError) return '';
    throw err;
  }
}

describe('certificate PEM repair (parseCertificateChain)', () => {
  const leaf = canonical(certs.leafPem);

  it('keeps a well-formed PEM as it is', () => {
    expect(normalizePem(leaf)).toBe(leaf);
  });

  it.each([
    ['CRLF line ends', leaf.replaceAll('\n', '\r\n')],
    ['literal \\n escapes', leaf.replaceAll('\n', '\\n')],
    ['double-escaped \\\\n', leaf.replaceAll('\n', '\\\\n')],
    ['literal \\r\\n escapes', leaf.replaceAll('\n', '\\r\\n')],
    ['a JSON-quoted value', JSON.stringify(leaf)],
    ['a value quoted twice', JSON.stringify(JSON.stringify(leaf))],
    ['single quotes around it', `'${leaf}'`],
    ['one line with spaces', leaf.replaceAll('\n', ' ')],
    ['surrounding whitespace and text', `  subject=CN=x\n\n${leaf}\n\n  `],
    ['tabs and indentation', leaf.replaceAll('\n', '\n\t  ')],
  ])('repairs %s', (_name, text) => {
    expect(normalizePem(text)).toBe(leaf);
  });

  it('re-wraps bodies at 64 columns', () => {
    const body = bodyOf(leaf);
    const wide = `-----BEGIN CERTIFICATE-----\n${body.match(/.{1,76}/g)?.join('\n')}\n-----END CERTIFICATE-----`;
    const lines = normalizePem(wide).split('\n');
    expect(normalizePem(wide)).toBe(leaf);
    expect(Math.max(...lines.map((l) => l.length))).toBe(64);
  });

  it('keeps every block of a chain, joined by newlines, ending in one', () => {
    const escapedChain = certs.chainPem.replaceAll('\n', '\\n');
    expect(normalizePem(escapedChain)).toBe(`${certs.leafPem}\n${certs.intermediatePem}\n`);
  });

  it('returns an empty string when there is no PEM block', () => {
    expect(normalizePem('not a certificate')).toBe('');
    expect(normalizePem('-----BEGIN CERTIFICATE-----\nMIIB')).toBe('');
  });
});

describe('splitPemBlocks', () => {
  it('names each block and strips its body to base64', () => {
    const blocks = splitPemBlocks(`${certs.chainPem}${certs.leafKeyPkcs1}`.replaceAll('\n', '\\n'));
    expect(blocks.map((b) => b.type)).toEqual(['CERTIFICATE', 'CERTIFICATE', 'RSA PRIVATE KEY']);
    expect(blocks.every((b) => /^[A-Za-z0-9+/=]+$/.test(b.base64))).toBe(true);
  });

  it('ignores a block whose END label does not match', () => {
    expect(splitPemBlocks('-----BEGIN CERTIFICATE-----\nAAAA\n-----END PRIVATE KEY-----\n')).toEqual([]);
  });

  it('round-trips through formatPemBlock', () => {
    const [block] = splitPemBlocks(certs.leafPem);
    expect(block && formatPemBlock(block)).toBe(certs.leafPem.trim());
  });
});

describe('parseCertificateChain', () => {
  const leafFingerprint = new X509Certificate(certs.leafPem).fingerprint256;
  const intermediateFingerprint = new X509Certificate(certs.intermediatePem).fingerprint256;
  const rootFingerprint = new X509Certificate(certs.rootPem).fingerprint256;

  it('parses leaf and intermediate, leaf first, into canonical PEM', () => {
    const chain = parseCertificateChain(certs.chainPem.replaceAll('\n', '\\n'));
    expect(chain.leaf.fingerprint256).toBe(leafFingerprint);
    expect(chain.certificates.map((c) => c.fingerprint256)).toEqual([leafFingerprint, intermediateFingerprint]);
    expect(chain.pem).toBe(`${certs.leafPem}\n${certs.intermediatePem}\n`);
  });

  it('puts the leaf first when the chain was pasted root first', () => {
    const chain = parseCertificateChain([certs.rootPem, certs.intermediatePem, certs.leafPem].join('\n'));
    expect(chain.certificates.map((c) => c.fingerprint256)).toEqual([
      leafFingerprint,
      intermediateFingerprint,
      rootFingerprint,
    ]);
  });

  it('takes the certificate of the private key as leaf, else the first that issued no other', () => {
    // Root first and no intermediate: the root issued nothing here either, so only the key tells the leaf.
    const rootThenLeaf = `${certs.rootPem}\n${certs.leafPem}`;
    const leafKey = parsePrivateKey(certs.leafKeyPkcs1).key;
    const order = (text: string, key?: KeyObject) =>
      parseCertificateChain(text, key).certificates.map((c) => c.fingerprint256);
    expect(order(rootThenLeaf, leafKey)).toEqual([leafFingerprint, rootFingerprint]);
    expect(parseCertificateChain(rootThenLeaf, leafKey).pem).toBe(`${certs.leafPem}\n${certs.rootPem}\n`);
    // Without a key, or with one that matches none, the order is as before.
    expect(order(rootThenLeaf)).toEqual([rootFingerprint, leafFingerprint]);
    const reversed = [certs.rootPem, certs.intermediatePem, certs.leafPem].join('\n');
    const unrelatedKey = parsePrivateKey(certs.otherKeyPkcs8).key;
    expect(order(reversed, unrelatedKey)).toEqual([leafFingerprint, intermediateFingerprint, rootFingerprint]);
  });

  it('never takes a CA certificate as the leaf, even with its own key (the wrong file)', () => {
    const chain = parseCertificateChain(certs.chainPem, parsePrivateKey(certs.intermediateKeyPkcs8).key);
    expect(chain.leaf.fingerprint256).toBe(leafFingerprint);
    expect(chain.certificates.map((c) => c.fingerprint256)).toEqual([leafFingerprint, intermediateFingerprint]);
  });

  it('picks the certificate of the key among several leaves and puts its issuers after it', () => {
    const ecFingerprint = new X509Certificate(certs.ecLeafPem).fingerprint256;
    const text = [certs.leafPem, certs.ecLeafPem, certs.intermediatePem].join('\n');
    const chain = parseCertificateChain(text, parsePrivateKey(certs.ecKeySec1).key);
    expect(chain.leaf.fingerprint256).toBe(ecFingerprint);
    expect(chain.certificates.map((c) => c.fingerprint256)).toEqual([
      ecFingerprint,
      intermediateFingerprint,
      leafFingerprint,
    ]);
  });

  it('parses a single certificate', () => {
    expect(parseCertificateChain(certs.ecLeafPem).certificates).toHaveLength(1);
  });

  it('skips private key blocks mixed into the text', () => {
    const chain = parseCertificateChain(`${certs.leafKeyPkcs8}${certs.leafPem}`);
    expect(chain.certificates.map((c) => c.fingerprint256)).toEqual([leafFingerprint]);
  });

  it('refuses text without a certificate', () => {
    const err = thrownBy(() => parseCertificateChain(certs.leafKeyPkcs8));
    expect(err).toBeInstanceOf(PemError);
    expect(err.message).toBe('no PEM CERTIFICATE block found');
  });

  it('names the broken certificate by position', () => {
    const broken = '-----BEGIN CERTIFICATE-----\nMIIBroken0000\n-----END CERTIFICATE-----\n';
    const err = thrownBy(() => parseCertificateChain(`${certs.leafPem}\n${broken}`));
    expect(err).toBeInstanceOf(PemError);
    expect(err.message).toBe('certificate 2 is not valid X.509');
  });
});

describe('parseCertificates', () => {
  it('parses every certificate in the given order', () => {
    const parsed = parseCertificates(`${certs.rootPem}\n${certs.leafPem}`);
    expect(parsed.map((c) => c.fingerprint256)).toEqual([
      new X509Certificate(certs.rootPem).fingerprint256,
      new X509Certificate(certs.leafPem).fingerprint256,
    ]);
  });

  it('refuses a garbage block and text without a certificate', () => {
    const garbage = '-----BEGIN CERTIFICATE-----\nMIIBgarbage0000\n-----END CERTIFICATE-----\n';
    expect(() => parseCertificates(garbage)).toThrow(new PemError('certificate 1 is not valid X.509'));
    expect(() => parseCertificates('-----BEGIN CERTIFICATE-----\nMIIB\n')).toThrow(new PemError('no PEM CERTIFICATE block found'));
  });
});

describe('parsePrivateKey', () => {
  it.each([
    ['PKCS#1', certs.leafKeyPkcs1, 'RSA PRIVATE KEY', 'rsa'],
    ['PKCS#8', certs.leafKeyPkcs8, 'PRIVATE KEY', 'rsa'],
    ['SEC1 EC', certs.ecKeySec1, 'EC PRIVATE KEY', 'ec'],
  ])('reads a %s key and keeps its format', (_name, pem, label, type) => {
    const key = parsePrivateKey(pem.replaceAll('\n', '\\n'));
    expect(key.key.asymmetricKeyType).toBe(type);
    expect(key.pem).toBe(canonical(pem));
    expect(key.pem.startsWith(`-----BEGIN ${label}-----\n`)).toBe(true);
  });

  it('picks the key out of a combined certificate and key file', () => {
    expect(parsePrivateKey(`${certs.leafPem}\n${certs.leafKeyPkcs1}`).pem).toBe(canonical(certs.leafKeyPkcs1));
  });

  it('refuses text without a private key', () => {
    expect(() => parsePrivateKey(certs.leafPem)).toThrow(new PemError('no PEM PRIVATE KEY block found'));
  });

  it('refuses an encrypted key with a hint', () => {
    const encrypted = [
      '-----BEGIN ENCRYPTED PRIVATE KEY-----',
      'MIIFHDBOBgkqhkiG9w0BBQ0wQTApBgkq',
      '-----END ENCRYPTED PRIVATE KEY-----',
    ].join('\n');
    expect(() => parsePrivateKey(encrypted)).toThrow(/encrypted; supply it without a passphrase/);
  });

  it('refuses a legacy OpenSSL-encrypted key (Proc-Type header) with the same hint', () => {
    // `openssl genrsa -aes128 -traditional -passout pass:fixture 512`: a throwaway key, encrypted.
    const legacy = [
      '-----BEGIN RSA PRIVATE KEY-----',
      'Proc-Type: 4,ENCRYPTED',
      'DEK-Info: AES-128-CBC,2A81E326272264459235F3B791B0F6AA',
      '',
      '24rSaUj3+Vjh+bZTxBuvvbTQtWTVMMGSCenFU6yeZNSPgt2v8JjWBEtXzVdglG7q',
      'Te+iFFeXsXmfExegfmA2zVBkd8WQaE3sJxoNk5woPywZyVmQDdAH7TDMEiif02fH',
      'GqA34qqDejwAB0LXZ1TxoQMLGr29zla9W3Kl7ciQ0RioR4iZ+FKGkZ2phMyKsTqm',
      'NvMhZV2UY40LEEh8GYnUoBAsHquZIG9NOYFb50WEUXIT3YxjrU7JDNrks0bUZmAj',
      'CfEmeB6rwDTfM97Vam3yvF9AA5Jq5XH2R1wDeDfjnAPqmpwgbavAU7V8IOLYNnvb',
      'azxYQv+iY+3NZw9IItKRgWjfBrW4hf6O4F/GiYJ0s6q1UK4FovxhZzzAVN3DchBv',
      'sW4ayZxNQgUbX4/STV7iO6Vs1f3DEksRAhlZdpe4CVs=',
      '-----END RSA PRIVATE KEY-----',
      '',
    ].join('\n');
    const message = 'the key is encrypted; supply it without a passphrase';
    expect(() => parsePrivateKey(legacy)).toThrow(new PemError(message));
    // As a service key carries it: JSON-escaped newlines.
    expect(() => parsePrivateKey(legacy.replaceAll('\n', '\\n'))).toThrow(new PemError(message));
    expect(() => parsePrivateKey(legacy.replace('RSA PRIVATE', 'EC PRIVATE').replace('RSA PRIVATE', 'EC PRIVATE'))).toThrow(new PemError(message));
  });

  it('never echoes key material when a key is corrupt', () => {
    const body = bodyOf(certs.leafKeyPkcs1);
    const corrupt = `-----BEGIN RSA PRIVATE KEY-----\n${body.slice(0, 400)}\n-----END RSA PRIVATE KEY-----\n`;
    const err = thrownBy(() => parsePrivateKey(corrupt));
    expect(err).toBeInstanceOf(PemError);
    expect(err.message).toBe('the RSA PRIVATE KEY block is not valid');
    expect(err.message).not.toContain(body.slice(40, 60));
    expect(err.cause).toBeUndefined();
  });
});

/** Whether `keyPem` is the private key of `leaf`, as service-key checks it. */
const checkKeyPair = (leaf: X509Certificate, keyPem: string): boolean => leaf.checkPrivateKey(parsePrivateKey(keyPem).key);

describe('parsePrivateKey against a certificate', () => {
  const leaf = new X509Certificate(certs.leafPem);

  it('accepts the leaf key as PKCS#1 and as PKCS#8, even escaped', () => {
    expect(checkKeyPair(leaf, certs.leafKeyPkcs1)).toBe(true);
    expect(checkKeyPair(leaf, certs.leafKeyPkcs8.replaceAll('\n', '\\\\n'))).toBe(true);
  });

  it('accepts an EC key for its EC certificate', () => {
    expect(checkKeyPair(new X509Certificate(certs.ecLeafPem), certs.ecKeySec1)).toBe(true);
  });

  it('rejects another RSA key and a key of another type', () => {
    expect(checkKeyPair(leaf, certs.otherKeyPkcs8)).toBe(false);
    expect(checkKeyPair(leaf, certs.ecKeySec1)).toBe(false);
  });

  it('throws PemError when the key is not PEM', () => {
    expect(() => checkKeyPair(leaf, 'clientsecret')).toThrow(PemError);
  });
});
