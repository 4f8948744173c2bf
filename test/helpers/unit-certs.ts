/** Test certificates and keys generated once per process, so no private key is ever committed as a fixture. */

// @peculiar/x509 resolves its algorithms through tsyringe, which needs the Reflect metadata API loaded first.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { createPrivateKey, webcrypto } from 'node:crypto';

export interface UnitCerts {
  /** Self-signed EC root CA. */
  rootPem: string;
  /** EC intermediate CA issued by the root. */
  intermediatePem: string;
  /** RSA 2048 leaf issued by the intermediate, valid from yesterday for a year. */
  leafPem: string;
  /** Leaf then intermediate, as SAP ships it. */
  chainPem: string;
  /** The leaf key as `PRIVATE KEY` (PKCS#8). */
  leafKeyPkcs8: string;
  /** The leaf key as `RSA PRIVATE KEY` (PKCS#1), the format of SAP-generated keys. */
  leafKeyPkcs1: string;
  /** An RSA key that matches none of the certificates. */
  otherKeyPkcs8: string;
  /** The intermediate CA's own key (PKCS#8): the wrong file to pair with the leaf. */
  intermediateKeyPkcs8: string;
  /** Same key as the leaf; expired yesterday. */
  expiredPem: string;
  /** Same key as the leaf; expires in 10 days. */
  expiringPem: string;
  /** The intermediate re-issued (same key and subject) to expire in 10 days, before the leaf; and one expired yesterday. */
  expiringIntermediatePem: string;
  expiredIntermediatePem: string;
  /** The root re-issued (same key and subject), expired yesterday: a self-signed root sent along. */
  expiredRootPem: string;
  /** The root's subject and key, cross-signed by an older root and expired yesterday (as public CAs ship them). */
  crossSignedRootPem: string;
  /** The intermediate's subject under a new key, issued by the root for 5 years: it did not sign the leaves. */
  rekeyedIntermediatePem: string;
  /** The intermediate's subject and key, cross-signed by a root not in this set, for 5 years. */
  otherRootIntermediatePem: string;
  /** EC P-256 leaf issued by the intermediate, and its key as `EC PRIVATE KEY` (SEC1). */
  ecLeafPem: string;
  ecKeySec1: string;
  /** RSA 768 leaf issued by the intermediate and its key (PKCS#8): below OpenSSL's security level for TLS. */
  weakLeafPem: string;
  weakKeyPkcs8: string;
}

type CryptoKey = webcrypto.CryptoKey;

const DAY_MS = 86_400_000;
const RSA_KEY = {
  name: 'RSASSA-PKCS1-v1_5',
  hash: 'SHA-256',
  publicExponent: new Uint8Array([1, 0, 1]),
  modulusLength: 2048,
};
const EC_KEY = { name: 'ECDSA', namedCurve: 'P-256' };
/** Certificates are signed by EC CAs. */
const EC_SIGNATURE = { name: 'ECDSA', hash: 'SHA-256' };

let cached: Promise<UnitCerts> | undefined;

/** The certificate set, generated on first use and shared by every test in the process. */
export function unitCerts(): Promise<UnitCerts> {
  cached ??= generate();
  return cached;
}

async function generate(): Promise<UnitCerts> {
  x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);
  const subtle = webcrypto.subtle;
  const now = Date.now();
  const days = (n: number) => new Date(now + n * DAY_MS);

  const rootKeys = await subtle.generateKey(EC_KEY, true, ['sign', 'verify']);
  const intermediateKeys = await subtle.generateKey(EC_KEY, true, ['sign', 'verify']);
  const leafKeys = await subtle.generateKey(RSA_KEY, true, ['sign', 'verify']);
  const otherKeys = await subtle.generateKey(RSA_KEY, true, ['sign', 'verify']);
  const ecLeafKeys = await subtle.generateKey(EC_KEY, true, ['sign', 'verify']);
  const weakKeys = await subtle.generateKey({ ...RSA_KEY, modulusLength: 768 }, true, ['sign', 'verify']);
  const caExtensions = () => [
    new x509.BasicConstraintsExtension(true, undefined, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
  ];

  const root = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: '01',
    name: 'CN=Fake Unit Test Root CA',
    notBefore: days(-30),
    notAfter: days(3650),
    keys: rootKeys,
    signingAlgorithm: EC_SIGNATURE,
    extensions: caExtensions(),
  });
  const intermediate = await x509.X509CertificateGenerator.create({
    serialNumber: '02',
    subject: 'CN=Fake Unit Test Client CA',
    issuer: root.subject,
    notBefore: days(-30),
    notAfter: days(1825),
    publicKey: intermediateKeys.publicKey,
    signingKey: rootKeys.privateKey,
    signingAlgorithm: EC_SIGNATURE,
    extensions: caExtensions(),
  });
  const reissueIntermediate = (serialNumber: string, notAfter: Date) =>
    x509.X509CertificateGenerator.create({
      serialNumber,
      subject: intermediate.subject,
      issuer: root.subject,
      notBefore: days(-30),
      notAfter,
      publicKey: intermediateKeys.publicKey,
      signingKey: rootKeys.privateKey,
      signingAlgorithm: EC_SIGNATURE,
      extensions: caExtensions(),
    });
  const expiringIntermediate = await reissueIntermediate('03', days(10));
  const expiredIntermediate = await reissueIntermediate('04', days(-1));
  const expiredRoot = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: '05',
    name: root.subject,
    notBefore: days(-30),
    notAfter: days(-1),
    keys: rootKeys,
    signingAlgorithm: EC_SIGNATURE,
    extensions: caExtensions(),
  });
  const oldRootKeys = await subtle.generateKey(EC_KEY, true, ['sign', 'verify']);
  const crossSignedRoot = await x509.X509CertificateGenerator.create({
    serialNumber: '06',
    subject: root.subject,
    issuer: 'CN=Fake Unit Test Old Root CA',
    notBefore: days(-30),
    notAfter: days(-1),
    publicKey: rootKeys.publicKey,
    signingKey: oldRootKeys.privateKey,
    signingAlgorithm: EC_SIGNATURE,
    extensions: caExtensions(),
  });
  const rekeyedIntermediate = await x509.X509CertificateGenerator.create({
    serialNumber: '07',
    subject: intermediate.subject,
    issuer: root.subject,
    notBefore: days(-30),
    notAfter: days(1825),
    publicKey: (await subtle.generateKey(EC_KEY, true, ['sign', 'verify'])).publicKey,
    signingKey: rootKeys.privateKey,
    signingAlgorithm: EC_SIGNATURE,
    extensions: caExtensions(),
  });
  const otherRootIntermediate = await x509.X509CertificateGenerator.create({
    serialNumber: '08',
    subject: intermediate.subject,
    issuer: 'CN=Fake Unit Test Other Root CA',
    notBefore: days(-30),
    notAfter: days(1825),
    publicKey: intermediateKeys.publicKey,
    signingKey: oldRootKeys.privateKey,
    signingAlgorithm: EC_SIGNATURE,
    extensions: caExtensions(),
  });
  const issueLeaf = (serialNumber: string, publicKey: CryptoKey, notBefore: Date, notAfter: Date) =>
    x509.X509CertificateGenerator.create({
      serialNumber,
      subject: `CN=fake-client-${serialNumber}, O=Fake`,
      issuer: intermediate.subject,
      notBefore,
      notAfter,
      publicKey,
      signingKey: intermediateKeys.privateKey,
      signingAlgorithm: EC_SIGNATURE,
    });

  const leaf = await issueLeaf('10', leafKeys.publicKey, days(-1), days(365));
  const expired = await issueLeaf('11', leafKeys.publicKey, days(-60), days(-1));
  const expiring = await issueLeaf('12', leafKeys.publicKey, days(-60), days(10));
  const ecLeaf = await issueLeaf('13', ecLeafKeys.publicKey, days(-1), days(365));
  const weakLeaf = await issueLeaf('14', weakKeys.publicKey, days(-1), days(365));

  const toKeyObject = async (key: CryptoKey) =>
    createPrivateKey({ key: Buffer.from(await subtle.exportKey('pkcs8', key)), format: 'der', type: 'pkcs8' });
  const leafKey = await toKeyObject(leafKeys.privateKey);

  const leafPem = leaf.toString('pem');
  const intermediatePem = intermediate.toString('pem');
  return {
    rootPem: root.toString('pem'),
    intermediatePem,
    leafPem,
    chainPem: `${leafPem}\n${intermediatePem}\n`,
    leafKeyPkcs8: leafKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    leafKeyPkcs1: leafKey.export({ type: 'pkcs1', format: 'pem' }).toString(),
    otherKeyPkcs8: (await toKeyObject(otherKeys.privateKey)).export({ type: 'pkcs8', format: 'pem' }).toString(),
    intermediateKeyPkcs8: (await toKeyObject(intermediateKeys.privateKey)).export({ type: 'pkcs8', format: 'pem' }).toString(),
    expiredPem: expired.toString('pem'),
    expiringPem: expiring.toString('pem'),
    expiringIntermediatePem: expiringIntermediate.toString('pem'),
    expiredIntermediatePem: expiredIntermediate.toString('pem'),
    expiredRootPem: expiredRoot.toString('pem'),
    crossSignedRootPem: crossSignedRoot.toString('pem'),
    rekeyedIntermediatePem: rekeyedIntermediate.toString('pem'),
    otherRootIntermediatePem: otherRootIntermediate.toString('pem'),
    ecLeafPem: ecLeaf.toString('pem'),
    ecKeySec1: (await toKeyObject(ecLeafKeys.privateKey)).export({ type: 'sec1', format: 'pem' }).toString(),
    weakLeafPem: weakLeaf.toString('pem'),
    weakKeyPkcs8: (await toKeyObject(weakKeys.privateKey)).export({ type: 'pkcs8', format: 'pem' }).toString(),
  };
}
